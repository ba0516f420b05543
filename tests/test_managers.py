"""The ufw and nftables rules (spec sections 1 and 4), on real rulesets: ufw and ``nft -f`` load them
into ``lt-`` namespaces, the check runs inside the namespace (the CLI, the pipeline the Agent runs),
real packets say what the kernel does, and the fixes the check gives, applied there, make it OK."""
import json
import os
import re
import shlex
import sys

import pytest

from .netns import netns, netns_pair, probe_loopback, probe_spoofed_loopback_source, require_tools, ufw_in_netns  # noqa: F401

UFW_RULE = 'set_ufw_loopback_traffic'
NFTABLES_RULE = 'set_nftables_loopback_traffic'
FAMILIES = ('ipv4', 'ipv6')
_BEFORE_RULES_FIX = re.compile(r'^in (/etc/ufw/before6?\.rules) add `(-A (\S+) .*)` above its first `-A \S+` line, then run `ufw reload`$')

CIS_NFTABLES = [
    'add table inet filter',
    "add chain inet filter input { type filter hook input priority 0; policy drop; }",
    'add rule inet filter input iif lo accept',
    'add rule inet filter input ip saddr 127.0.0.0/8 counter drop',
    'add rule inet filter input ip6 saddr ::1 counter drop',
    'add rule inet filter input ct state established,related accept',
    "add chain inet filter output { type filter hook output priority 0; policy accept; }",
]


def judge(ns, rule, *options):
    """The check's JSON verdict on ``rule``, run inside ``ns`` as on a host."""
    done = ns.run([sys.executable, '-m', 'datadog_checks.loopback_traffic', '--json', '--rules', rule, *options])
    assert done.returncode in (0, 1, 2, 3) and 'Traceback' not in done.stderr, done.stdout + done.stderr
    [found] = json.loads(done.stdout)['rules']
    assert found['rule'] == rule
    return found


def requirement(found, family, name):
    [hit] = [r for r in found['requirements'] if r['family'] == family and r['requirement'] == name]
    return hit


def statuses(found):
    return {(r['family'], r['requirement']): r['status'] for r in found['requirements']}


def fixes_of(found):
    return list(dict.fromkeys(fix for r in found['requirements'] for fix in r['remediation']))


def nft(ns, commands):
    ns.run(['nft', '-f', '-'], input='\n'.join(commands) + '\n', check=True)


def apply_fixes(ns, fixes):
    """Do what each fix says, inside ``ns``: a command, or an edit of ufw's before.rules then `ufw reload`.
    nftables.conf is what a host loads at boot; nothing loads it in a namespace."""
    for fix in fixes:
        edit = _BEFORE_RULES_FIX.match(fix)
        if edit:
            path, line, chain = edit.groups()
            copy = os.path.join(ns.etc_dir(), path[len('/etc/'):])
            with open(copy) as before:
                lines = before.read().split('\n')
            first = next(i for i, text in enumerate(lines) if text.startswith('-A {} '.format(chain)))
            lines.insert(first, line)
            with open(copy, 'w') as before:
                before.write('\n'.join(lines))
            ufw_in_netns(ns, [['reload']])
        elif fix.startswith('in /etc/nftables.conf '):
            continue
        elif fix == 'ufw enable':
            ufw_in_netns(ns, [['--force', 'enable']])
        elif fix.startswith('ufw '):
            ufw_in_netns(ns, [shlex.split(fix)[1:]])
        else:
            ns.run(['sh', '-c', fix], check=True)


def fix_until_ok(ns, rule, rounds=3):
    """Apply the check's fixes, and again on its next verdict, until it says OK: the verdicts seen."""
    seen = []
    for _ in range(rounds):
        found = judge(ns, rule, '--applicability', 'always')
        seen.append(found)
        if found['status'] == 'OK':
            return seen
        apply_fixes(ns, fixes_of(found))
    raise AssertionError('still {} after {} rounds of fixes: {}'.format(seen[-1]['status'], rounds, seen[-1]['message']))


def kernel_agrees(pair, found):
    """Real packets give what the verdict says: lo traffic through, spoofed loopback sources dropped (the
    bulk of the class; IPv6's ::1 from outside is dropped by the kernel before the firewall whatever it says)."""
    for family in FAMILIES:
        accepted = requirement(found, family, 'input_accept_lo')['status'] == 'pass'
        outgoing = [r for r in found['requirements'] if r['family'] == family and r['requirement'] == 'output_accept_lo']
        if outgoing:
            accepted = accepted and outgoing[0]['status'] == 'pass'
        assert probe_loopback(pair.receiver, family) is accepted, (family, found['message'])
    denied = requirement(found, 'ipv4', 'input_drop_loopback_source')['status'] != 'fail'
    assert probe_spoofed_loopback_source(pair, 'ipv4') is not denied, found['message']


# --------------------------------------------------------------------------- nftables


def test_nftables_cis_remediation_passes_and_the_kernel_agrees(netns_pair):
    require_tools('nft')
    nft(netns_pair.receiver, CIS_NFTABLES)
    found = judge(netns_pair.receiver, NFTABLES_RULE, '--applicability', 'always')
    assert found['status'] == 'OK' and found['families'] == list(FAMILIES) and found['message'] is None
    # Two requirements per family, as the CIS nftables control: no output requirement.
    assert statuses(found) == {(f, r): 'pass' for f in FAMILIES for r in ('input_accept_lo', 'input_drop_loopback_source')}
    accept = requirement(found, 'ipv4', 'input_accept_lo')['deciding']
    assert (accept['table'], accept['chain'], accept['position']) == ('inet filter', 'input', 1)
    drop = requirement(found, 'ipv6', 'input_drop_loopback_source')['deciding']
    assert (drop['table'], drop['chain'], drop['position']) == ('inet filter', 'input', 3)
    kernel_agrees(netns_pair, found)


def test_nftables_misordered_input_chain_fails_and_its_fix_makes_it_ok(netns_pair):
    require_tools('nft')
    misordered = [CIS_NFTABLES[0], CIS_NFTABLES[1], CIS_NFTABLES[3], CIS_NFTABLES[4], CIS_NFTABLES[2]]
    nft(netns_pair.receiver, misordered)
    found = judge(netns_pair.receiver, NFTABLES_RULE, '--applicability', 'always')
    assert found['status'] == 'CRITICAL'
    for family, position in (('ipv4', 1), ('ipv6', 2)):
        hit = requirement(found, family, 'input_accept_lo')
        assert hit['status'] == 'fail'
        assert (hit['deciding']['table'], hit['deciding']['chain'], hit['deciding']['position']) == ('inet filter', 'input', position)
        assert hit['remediation'] == [
            'nft insert rule inet filter input iif lo accept',
            'in /etc/nftables.conf add `iif lo accept` first in chain input of table inet filter',
        ]
    assert found['message'].split('\n')[1].startswith('Fix: nft insert rule inet filter input iif lo accept')
    kernel_agrees(netns_pair, found)
    seen = fix_until_ok(netns_pair.receiver, NFTABLES_RULE)
    assert len(seen) == 2
    kernel_agrees(netns_pair, seen[-1])


def test_nftables_drop_in_a_second_table_at_a_later_priority(netns_pair):
    require_tools('nft')
    late = ['add table inet late', "add chain inet late input { type filter hook input priority 10; }", 'add rule inet late input iif lo drop']
    nft(netns_pair.receiver, CIS_NFTABLES + late)
    found = judge(netns_pair.receiver, NFTABLES_RULE, '--applicability', 'always')
    assert found['status'] == 'CRITICAL'
    for family in FAMILIES:
        hit = requirement(found, family, 'input_accept_lo')
        assert hit['status'] == 'fail'
        assert (hit['deciding']['table'], hit['deciding']['chain'], hit['deciding']['position']) == ('inet late', 'input', 1)
        assert hit['remediation'][0] == 'nft insert rule inet late input iif lo accept'
        assert requirement(found, family, 'input_drop_loopback_source')['status'] == 'pass'
    kernel_agrees(netns_pair, found)
    seen = fix_until_ok(netns_pair.receiver, NFTABLES_RULE)
    kernel_agrees(netns_pair, seen[-1])


def test_nftables_host_with_nothing_loaded_gets_a_table_of_its_own(netns_pair):
    require_tools('nft')
    found = judge(netns_pair.receiver, NFTABLES_RULE, '--applicability', 'always')
    assert found['status'] == 'CRITICAL'
    hit = requirement(found, 'ipv4', 'input_drop_loopback_source')
    assert hit['status'] == 'fail'
    assert hit['remediation'][:3] == [
        'nft add table inet filter',
        "nft add chain inet filter input '{ type filter hook input priority 0; policy accept; }'",
        'nft add rule inet filter input iif != lo ip saddr 127.0.0.0/8 drop',
    ]
    assert hit['remediation'][3].startswith('in /etc/nftables.conf add `iif != lo ip saddr 127.0.0.0/8 drop`')
    kernel_agrees(netns_pair, found)
    seen = fix_until_ok(netns_pair.receiver, NFTABLES_RULE)
    kernel_agrees(netns_pair, seen[-1])


def test_nftables_rule_applies_on_this_host_as_the_readme_runs_it(netns):
    # applicability auto: the nftables package is installed here (CI installs it) and firewalld is not enabled.
    require_tools('nft')
    nft(netns, CIS_NFTABLES)
    found = judge(netns, NFTABLES_RULE)
    assert found['applicable'] is True and found['applicability'] == 'applicable: nftables installed, firewalld not enabled'
    assert found['status'] == 'OK'


# --------------------------------------------------------------------------- ufw


def test_ufw_default_is_partial_and_the_fix_edits_before_rules(netns_pair):
    receiver = netns_pair.receiver
    ufw_in_netns(receiver, [['--force', 'enable']])
    found = judge(receiver, UFW_RULE)  # applicability auto: ufw is installed here (CI installs it)
    assert found['applicability'] == 'applicable: ufw installed'
    assert found['status'] == 'WARNING'
    for family, chain in (('ipv4', 'ufw-before-'), ('ipv6', 'ufw6-before-')):
        for name, direction in (('input_accept_lo', 'input'), ('output_accept_lo', 'output')):
            hit = requirement(found, family, name)
            assert hit['status'] == 'pass'
            assert (hit['deciding']['chain'], hit['deciding']['position']) == (chain + direction, 1)
        drop = requirement(found, family, 'input_drop_loopback_source')
        assert drop['status'] == 'partial'
        assert any(d['chain'] == chain + 'input' and d['verdict'] == 'accept' for d in drop['deviations'])  # the conntrack ACCEPT
    assert requirement(found, 'ipv4', 'input_drop_loopback_source')['remediation'] == [
        'in /etc/ufw/before.rules add `-A ufw-before-input -s 127.0.0.0/8 ! -i lo -j DROP` above its first `-A ufw-before-input` line, '
        'then run `ufw reload`'
    ]
    assert requirement(found, 'ipv6', 'input_drop_loopback_source')['remediation'] == [
        'in /etc/ufw/before6.rules add `-A ufw6-before-input -s ::1/128 ! -i lo -j DROP` above its first `-A ufw6-before-input` line, '
        'then run `ufw reload`'
    ]
    kernel_agrees(netns_pair, found)
    seen = fix_until_ok(receiver, UFW_RULE)
    assert len(seen) == 2
    kernel_agrees(netns_pair, seen[-1])


def test_ufw_commands_alone_do_not_pass_while_before_rules_accepts_first(netns_pair):
    receiver = netns_pair.receiver
    commands = [['allow', 'in', 'on', 'lo'], ['allow', 'out', 'on', 'lo'], ['deny', 'in', 'from', '127.0.0.0/8'], ['deny', 'in', 'from', '::1']]
    ufw_in_netns(receiver, [['--force', 'enable']] + commands)
    found = judge(receiver, UFW_RULE)
    # The user rules come after ufw-before-input's conntrack ACCEPT: the deny is partial, and says so.
    assert found['status'] == 'WARNING'
    for family, prefix in (('ipv4', 'ufw'), ('ipv6', 'ufw6')):
        drop = requirement(found, family, 'input_drop_loopback_source')
        assert drop['status'] == 'partial'
        assert any(d['chain'] == prefix + '-before-input' and 'RELATED,ESTABLISHED' in d['text'] for d in drop['deviations'])
        assert drop['remediation'][0].startswith('in /etc/ufw/before{}.rules add '.format('' if family == 'ipv4' else '6'))
    # IPv6 has no ufw-not-local: the user rule's DROP is what drops the rest.
    assert requirement(found, 'ipv6', 'input_drop_loopback_source')['deciding']['chain'] == 'ufw6-user-input'
    kernel_agrees(netns_pair, found)


def test_ufw_hardened_passes(netns_pair):
    receiver = netns_pair.receiver
    ufw_in_netns(receiver, [['--force', 'disable']])  # the copies of ufw's files exist from here on
    for name, line in (('before.rules', '-A ufw-before-input -s 127.0.0.0/8 ! -i lo -j DROP'), ('before6.rules', '-A ufw6-before-input -s ::1/128 ! -i lo -j DROP')):
        path = os.path.join(receiver.etc_dir(), 'ufw', name)
        with open(path) as before:
            text = before.read()
        chain = line.split()[1]
        at = text.index('-A {} '.format(chain))
        with open(path, 'w') as before:
            before.write(text[:at] + line + '\n' + text[at:])
    ufw_in_netns(receiver, [['--force', 'enable'], ['allow', 'in', 'on', 'lo'], ['allow', 'out', 'on', 'lo']])
    found = judge(receiver, UFW_RULE)
    assert found['status'] == 'OK', found['message']
    assert requirement(found, 'ipv4', 'input_drop_loopback_source')['deciding']['chain'] == 'ufw-before-input'
    kernel_agrees(netns_pair, found)


def test_ufw_inactive_says_so_and_enabling_it_is_the_first_fix(netns_pair):
    receiver = netns_pair.receiver
    ufw_in_netns(receiver, [['--force', 'disable']])
    found = judge(receiver, UFW_RULE)
    assert found['status'] == 'CRITICAL'
    assert 'ufw is installed but not enabled (ENABLED=no in /etc/ufw/ufw.conf)' in found['message']
    assert found['message'].split('\n')[1].startswith('Fix: ufw enable; ufw deny in from 127.0.0.0/8')
    assert requirement(found, 'ipv6', 'input_drop_loopback_source')['remediation'] == ['ufw enable', 'ufw deny in from ::1']
    kernel_agrees(netns_pair, found)
    seen = fix_until_ok(receiver, UFW_RULE)
    assert [s['status'] for s in seen] == ['CRITICAL', 'WARNING', 'OK']
    kernel_agrees(netns_pair, seen[-1])


def test_ufw_without_its_loopback_lines_gets_them_back_first_in_before_rules(netns_pair):
    receiver = netns_pair.receiver
    ufw_in_netns(receiver, [['--force', 'disable']])
    for name in ('before.rules', 'before6.rules'):
        path = os.path.join(receiver.etc_dir(), 'ufw', name)
        with open(path) as before:
            kept = [line for line in before.read().split('\n') if not re.match(r'-A ufw6?-before-(input -i|output -o) lo -j ACCEPT$', line)]
        with open(path, 'w') as before:
            before.write('\n'.join(kept))
    ufw_in_netns(receiver, [['--force', 'enable']])
    found = judge(receiver, UFW_RULE)
    assert found['status'] == 'CRITICAL'
    hit = requirement(found, 'ipv4', 'input_accept_lo')
    # ufw's default policy drops it, and before.rules' INVALID DROP a part of it: `ufw allow in on lo` (a user
    # rule, after that DROP) would leave it partial, so the lo ACCEPT goes back first in before.rules.
    assert hit['status'] == 'fail' and hit['deciding']['chain'] == 'INPUT' and hit['deciding']['position'] is None
    assert any(d['chain'] == 'ufw-before-input' and 'INVALID' in d['text'] for d in hit['deviations'])
    assert hit['remediation'] == [
        'in /etc/ufw/before.rules add `-A ufw-before-input -i lo -j ACCEPT` above its first `-A ufw-before-input` line, then run `ufw reload`'
    ]
    kernel_agrees(netns_pair, found)
    apply_fixes(receiver, fixes_of(found))
    after = judge(receiver, UFW_RULE)
    assert {status for (_, name), status in statuses(after).items() if name != 'input_drop_loopback_source'} == {'pass'}
    kernel_agrees(netns_pair, after)


# --------------------------------------------------------------------------- the bundled examples


def test_the_nftables_host_example_is_read_back_from_a_throwaway_namespace(capsys):
    from datadog_checks.loopback_traffic.cli import main

    from .netns import namespace_exists, require_netns

    require_netns()
    require_tools('nft')
    code = main(['--example', 'nftables-host', '--json'])
    out = capsys.readouterr().out
    [found] = json.loads(out)['rules']
    assert code == 1 and found['rule'] == NFTABLES_RULE and found['status'] == 'WARNING'
    assert found['sources'] == ['nf_tables (netlink)', 'nf_tables (netlink)']
    for family, address in (('ipv4', 'ip saddr 127.0.0.0/8'), ('ipv6', 'ip6 saddr ::1/128')):
        accept = requirement(found, family, 'input_accept_lo')
        assert accept['status'] == 'partial' and (accept['deciding']['table'], accept['deciding']['position']) == ('inet filter', 3)
        assert [d['text'] for d in accept['deviations']] == ['ct state invalid drop']
        drop = requirement(found, family, 'input_drop_loopback_source')
        assert drop['status'] == 'partial' and drop['remediation'][0] == 'nft insert rule inet filter input iif != lo {} drop'.format(address)
    assert not namespace_exists('lt-example-{}'.format(os.getpid()))


def test_a_ufw_user_rule_that_denies_lo_is_changed_in_place_by_the_ufw_command(netns_pair):
    receiver = netns_pair.receiver
    ufw_in_netns(receiver, [['--force', 'disable']])
    path = os.path.join(receiver.etc_dir(), 'ufw', 'before.rules')
    with open(path) as before:
        kept = [line for line in before.read().split('\n') if not re.match(r'-A ufw-before-(input -i lo -j ACCEPT|output -o lo -j ACCEPT|input .*INVALID.*)$', line)]
    with open(path, 'w') as before:
        before.write('\n'.join(kept))
    ufw_in_netns(receiver, [['--force', 'enable'], ['deny', 'in', 'on', 'lo']])
    found = judge(receiver, UFW_RULE)
    hit = requirement(found, 'ipv4', 'input_accept_lo')
    assert hit['status'] == 'fail' and (hit['deciding']['chain'], hit['deciding']['text']) == ('ufw-user-input', '-A ufw-user-input -i lo -j DROP')
    # `ufw prepend allow in on lo` would be skipped as an existing rule; `ufw allow in on lo` updates it.
    assert hit['remediation'] == ['ufw allow in on lo']
    kernel_agrees(netns_pair, found)
    apply_fixes(receiver, hit['remediation'])
    after = judge(receiver, UFW_RULE)
    assert requirement(after, 'ipv4', 'input_accept_lo')['status'] == 'pass'
    assert probe_loopback(receiver, 'ipv4')
