"""Reading what the kernel runs: nf_tables over netlink (in the judged namespace, with
`network_namespace`) plus the legacy xtables, compared with a full iptables-save where the tools can
show everything, and with the kernel's own verdict on real packets where they cannot."""
import importlib.util
import os
import sys
import time

import pytest

from datadog_checks.loopback_traffic.applicability import ApplicabilityChecker
from datadog_checks.loopback_traffic.collect import KERNEL, CollectionError, KernelCache, collect, read_file
from datadog_checks.loopback_traffic.config import parse_options
from datadog_checks.loopback_traffic.pipeline import InstanceState, run_rule
from datadog_checks.loopback_traffic.requirements import INPUT_ACCEPT_LO, INPUT_DROP_LOOPBACK_SOURCE, OUTPUT_ACCEPT_LO, rule_for_family, rule_named
from datadog_checks.loopback_traffic.results import Status
from datadog_checks.loopback_traffic.report import explanation

from .netns import netns, probe_loopback, require_tools  # noqa: F401
from .rulesets import CIS_V4, CIS_V6, filter_table, table

_GENERATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'generate.py')
_spec = importlib.util.spec_from_file_location('loopback_traffic_benchmark_generate', _GENERATE)
generate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = generate
_spec.loader.exec_module(generate)

PASS, PARTIAL, FAIL = Status.PASS, Status.PARTIAL, Status.FAIL
CIS = {'ipv4': CIS_V4, 'ipv6': CIS_V6}


def namespace_path(ns):
    return '/run/netns/' + ns.name


def options(ns, family, collection='auto', **more):
    """The check judging the namespace: over netlink (`network_namespace`), or its save tools."""
    instance = {'applicability': 'always', 'families': [family], 'collection': collection}
    if collection == 'auto':
        instance['network_namespace'] = namespace_path(ns)
    else:
        prefix = ns.argv_prefix()
        for tool in ('iptables_save', 'ip6tables_save', 'iptables_legacy_save', 'ip6tables_legacy_save'):
            instance[tool + '_command'] = prefix + [tool.replace('_', '-')]
    instance.update(more)
    return parse_options(instance)


def evaluate_with(ns, family, collection='auto', state=None, expect_error=False, **more):
    opts = options(ns, family, collection, **more)
    outcome = run_rule(opts, rule_for_family(family), ApplicabilityChecker(opts), state=state)
    if not expect_error:
        assert outcome.result.error is None, outcome.result.error
    return outcome


def statuses(result):
    return {r.requirement: r.status for r in result.requirements}


def deciding(result, requirement):
    where = result.requirement(requirement).deciding
    return (where.table, where.chain, where.index, where.ruleset)


PRESETS = [('cis', None), ('cis', 'bottom'), ('ufw', None), ('ufw', 'top'), ('k8s-1k', None), ('k8s-1k', 'bottom'), ('k8s-1k', 'none')]


@pytest.mark.parametrize('family', ['ipv4', 'ipv6'])
@pytest.mark.parametrize('preset, cis_position', PRESETS)
def test_the_kernel_read_gives_the_result_of_a_full_save(netns, preset, cis_position, family):
    """Where the iptables tools show everything, netlink and the save agree: statuses, deciding
    rules (table, chain, position), fixes and the rule count."""
    chosen = generate.PRESETS[preset]
    if cis_position is not None:
        chosen = chosen.with_cis(cis_position)
    netns.restore(chosen.text(family), family)
    kernel = evaluate_with(netns, family).result
    saved = evaluate_with(netns, family, 'save').result
    assert statuses(kernel) == statuses(saved)
    for requirement in (INPUT_ACCEPT_LO, OUTPUT_ACCEPT_LO, INPUT_DROP_LOOPBACK_SOURCE):
        assert deciding(kernel, requirement) == deciding(saved, requirement)
        assert kernel.requirement(requirement).remediation == saved.requirement(requirement).remediation
    assert kernel.rules_on_path == saved.rules_on_path


def test_both_backends_are_read_side_by_side(netns):
    netns.restore(CIS_V4, 'ipv4')
    netns.restore(filter_table(input_policy='DROP'), 'ipv4', 'legacy')
    kernel = evaluate_with(netns, 'ipv4')
    assert kernel.origins == ('nf_tables (netlink)', 'nsenter --net={} iptables-legacy-save'.format(namespace_path(netns)))
    accept = kernel.result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL and accept.deciding.ruleset == 'legacy'
    assert not probe_loopback(netns, 'ipv4', 'udp')


def test_an_unchanged_generation_reuses_the_last_read_and_result(netns):
    netns.restore(CIS_V4, 'ipv4')
    state = InstanceState()
    first = evaluate_with(netns, 'ipv4', state=state)
    kernel = state.kernel.ruleset
    second = evaluate_with(netns, 'ipv4', state=state)
    assert state.kernel.ruleset is kernel and second.result is first.result
    netns.run(['iptables', '-I', 'INPUT', '1', '-i', 'lo', '-j', 'DROP'], check=True)
    third = evaluate_with(netns, 'ipv4', state=state)
    assert state.kernel.ruleset is not kernel and state.kernel.ruleset.generation != kernel.generation
    assert third.result.requirement(INPUT_ACCEPT_LO).status is FAIL


def test_two_walks_of_one_family_in_one_generation_each_get_their_own_result(netns):
    """Several compliance rules walk the same family: within one generation each walk's result is
    its own (a rule without the output requirement is not given the output failure of another)."""
    netns.restore(filter_table('-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A OUTPUT -o lo -j DROP',
                               input_policy='DROP'), 'ipv4')
    opts, cache = options(netns, 'ipv4'), KernelCache()
    (first,) = collect(opts, 'ipv4', cache=cache, walk=lambda kernel, beside: 'first', walk_key='first')
    (second,) = collect(opts, 'ipv4', cache=cache, walk=lambda kernel, beside: 'second', walk_key='second')
    assert first.kernel.generation == second.kernel.generation and (first.walked, second.walked) == ('first', 'second')
    walked = []

    def walk(kernel, beside):
        walked.append('again')
        return 'again'

    (reused,) = collect(opts, 'ipv4', cache=cache, walk=walk, walk_key='first')
    assert reused.walked == 'first' and reused.kernel is second.kernel and walked == []  # the same walk: its result, kept
    # Every rule of the family, through the pipeline: the nftables rule has no output requirement.
    state = InstanceState()
    checker = ApplicabilityChecker(opts)
    iptables = run_rule(opts, rule_for_family('ipv4'), checker, state=state).result
    nftables = run_rule(opts, rule_named('set_nftables_loopback_traffic').part('ipv4'), checker, state=state).result
    assert iptables.requirement(OUTPUT_ACCEPT_LO).status is FAIL
    assert [r.requirement for r in nftables.requirements] == [INPUT_ACCEPT_LO, INPUT_DROP_LOOPBACK_SOURCE]
    assert nftables.status is Status.PASS


def nft(ns, *commands):
    for command in commands:
        ns.run(['nft'] + command.split(), check=True)


def nft_file(ns, text):
    ns.run(['nft', '-f', '-'], input=text, check=True)


# --- issue 11's reproductions: each read from the kernel, each verdict checked against real packets ---


def test_native_table_on_the_input_hook_is_read(netns):
    """1. A native inet table that drops everything arriving on lo, beside the CIS rules."""
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    netns.restore(CIS_V6, 'ipv6')
    nft_file(netns, 'table inet hostfw {\n chain in {\n  type filter hook input priority 0;\n  iif lo drop\n }\n}\n')
    for family in ('ipv4', 'ipv6'):
        assert not probe_loopback(netns, family, 'udp')
        result = evaluate_with(netns, family).result
        accept = result.requirement(INPUT_ACCEPT_LO)
        assert accept.status is FAIL, accept
        assert (accept.deciding.table, accept.deciding.chain, accept.deciding.index) == ('inet hostfw', 'in', 1)
        assert accept.remediation == ('nft insert rule inet hostfw in iif lo accept',)
        assert 'inet hostfw in rule 1' in explanation(accept)


def test_the_saves_cannot_see_a_native_table(netns):
    """What the text path (sudo, wrappers) still cannot see: a native table iptables-nft-save does not print."""
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    nft_file(netns, 'table inet hostfw {\n chain in {\n  type filter hook input priority 0;\n  iif lo drop\n }\n}\n')
    assert evaluate_with(netns, 'ipv4', 'save').result.status is PASS  # documented in the README
    assert evaluate_with(netns, 'ipv4').result.status is FAIL


@pytest.mark.parametrize(
    'how',
    [
        pytest.param('*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT DROP [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n', id='policy'),
        pytest.param('nft add rule ip nat OUTPUT oif lo drop', id='native-rule'),
    ],
)
def test_a_deny_in_nat_output_fails_the_output_requirement(netns, how):
    """2. The nat table can drop: every new connection over lo."""
    require_tools('nft')
    # A conntrack match anywhere turns connection tracking (and so nat) on.
    netns.restore(CIS_V4.replace('COMMIT', '-A FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT'), 'ipv4')
    if how.startswith('nft'):
        netns.restore('*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n', 'ipv4', noflush=True)
        netns.run(how.split(), check=True)
    else:
        netns.restore(how, 'ipv4', noflush=True)
    assert not probe_loopback(netns, 'ipv4', 'udp')
    output = evaluate_with(netns, 'ipv4').result.requirement(OUTPUT_ACCEPT_LO)
    assert output.status is FAIL
    assert (output.deciding.table, output.deciding.chain) == ('nat', 'OUTPUT')


def test_legacy_ipv6_tables_are_read_whatever_the_warning_says(netns):
    """3. Compliant nft IPv6 rules plus legacy IPv6 tables with policies DROP."""
    netns.restore(CIS_V6, 'ipv6')
    netns.restore(filter_table(input_policy='DROP', output_policy='DROP'), 'ipv6', 'legacy')
    assert not probe_loopback(netns, 'ipv6', 'udp')
    result = evaluate_with(netns, 'ipv6').result
    accept = result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL and accept.deciding.ruleset == 'legacy'
    assert accept.remediation == ('ip6tables-legacy -I INPUT 1 -i lo -j ACCEPT',)


def test_a_verdict_map_is_read_as_the_kernel_runs_it(netns):
    """5. A verdict map iptables-nft prints as a rule without a target."""
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    nft(netns, 'insert rule ip filter INPUT iifname vmap { "lo" : drop }')
    assert not probe_loopback(netns, 'ipv4', 'udp')
    accept = evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL
    assert (accept.deciding.table, accept.deciding.chain, accept.deciding.index) == ('filter', 'INPUT', 1)


def test_a_set_lookup_is_read_with_the_sets_contents(netns):
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    nft(netns, 'insert rule ip filter INPUT ip saddr { 127.0.0.0/8, 10.0.0.0/8 } iifname "lo" drop')
    assert not probe_loopback(netns, 'ipv4', 'udp')
    assert evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO).status is FAIL


def test_nf_tables_rules_are_read_where_iptables_is_the_legacy_variant(netns):
    """6. The configured save tool is iptables-legacy-save; a rule in nf_tables drops lo input."""
    netns.restore(CIS_V4, 'ipv4', 'legacy')
    netns.run(['iptables-nft', '-I', 'INPUT', '-i', 'lo', '-j', 'DROP'], check=True)
    assert not probe_loopback(netns, 'ipv4', 'udp')
    accept = evaluate_with(netns, 'ipv4', iptables_save_command=['iptables-legacy-save']).result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL and accept.deciding.ruleset == ''
    saved = evaluate_with(netns, 'ipv4', 'save', iptables_save_command=netns.argv_prefix() + ['iptables-legacy-save'])
    assert saved.result.requirement(INPUT_ACCEPT_LO).status is FAIL


def test_a_user_chain_named_like_a_target_is_entered(netns):
    """7. A user chain called LOG, jumped to by -i lo -j LOG, holding -j DROP."""
    netns.restore(filter_table('-A INPUT -i lo -j LOG', '-A LOG -j DROP', '-A OUTPUT -o lo -j ACCEPT', chains=['LOG']), 'ipv4')
    assert not probe_loopback(netns, 'ipv4', 'udp')
    accept = evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL
    assert (accept.deciding.chain, accept.deciding.index) == ('LOG', 1)


def test_wrapped_legacy_saves_read_the_judged_namespace(netns):
    """8. With a namespace to judge, the legacy tables are looked up there, and the legacy tool enters it too."""
    netns.restore(CIS_V4, 'ipv4')
    netns.restore(filter_table(input_policy='DROP'), 'ipv4', 'legacy')
    opts = options(netns, 'ipv4')
    assert opts.save_commands[('ipv4', 'legacy')] == ('nsenter', '--net=' + namespace_path(netns), 'iptables-legacy-save')
    collected = collect(opts, 'ipv4')
    assert [piece.backend for piece in collected] == [KERNEL, 'legacy']
    # A wrapper given for the main tool is used for the legacy one too.
    wrapped = parse_options({'iptables_save_command': ['nsenter', '--net=/x', 'iptables-save']})
    assert wrapped.save_commands[('ipv4', 'legacy')] == ('nsenter', '--net=/x', 'iptables-legacy-save')


def test_a_native_base_chain_added_between_runs_is_seen_at_once(netns):
    """9. Nothing is listed table by table any more: the next run sees a new native base chain."""
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    state = InstanceState()
    assert evaluate_with(netns, 'ipv4', state=state).result.status is PASS
    nft_file(netns, 'table ip extra {\n chain pre {\n  type filter hook prerouting priority -400;\n  iifname "lo" drop\n }\n}\n')
    accept = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL and accept.deciding.table == 'ip extra'
    assert not probe_loopback(netns, 'ipv4', 'udp')


# --- native tables on each hook of the path -------------------------------------------------------


@pytest.mark.parametrize(
    'hook, priority, rule, requirement, family',
    [
        ('prerouting', -400, 'iif lo drop', INPUT_ACCEPT_LO, 'ipv4'),
        ('input', 10, 'iif lo drop', INPUT_ACCEPT_LO, 'ipv6'),
        ('output', -400, 'oif lo drop', OUTPUT_ACCEPT_LO, 'ipv4'),
        ('output', 100, 'oif lo drop', OUTPUT_ACCEPT_LO, 'ipv6'),
        ('postrouting', 300, 'oif lo drop', OUTPUT_ACCEPT_LO, 'ipv4'),
    ],
)
def test_a_native_chain_on_each_hook_before_and_after_iptables(netns, hook, priority, rule, requirement, family):
    require_tools('nft')
    netns.restore(CIS[family], family)
    nft_file(netns, 'table inet t {{\n chain c {{\n  type filter hook {} priority {};\n  {}\n }}\n}}\n'.format(hook, priority, rule))
    assert not probe_loopback(netns, family, 'udp')
    found = evaluate_with(netns, family).result.requirement(requirement)
    assert found.status is FAIL
    assert (found.deciding.table, found.deciding.chain, found.deciding.index) == ('inet t', 'c', 1)


def test_a_dormant_table_takes_no_part(netns):
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    nft_file(netns, 'table inet t {\n flags dormant;\n chain c {\n  type filter hook input priority 0;\n  iif lo drop\n }\n}\n')
    assert probe_loopback(netns, 'ipv4', 'udp')
    assert evaluate_with(netns, 'ipv4').result.status is PASS


def test_a_native_policy_drop(netns):
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    nft_file(netns, 'table ip t {\n chain c {\n  type filter hook output priority 0; policy drop;\n }\n}\n')
    assert not probe_loopback(netns, 'ipv4', 'udp')
    output = evaluate_with(netns, 'ipv4').result.requirement(OUTPUT_ACCEPT_LO)
    assert output.status is FAIL
    assert (output.deciding.table, output.deciding.chain, output.deciding.text) == ('ip t', 'c', 'policy DROP')
    assert output.remediation == ('nft insert rule ip t c oif lo accept',)


def test_the_cis_nftables_remediation_passes_the_input_requirements(netns):
    require_tools('nft')
    nft_file(
        netns,
        'table inet filter {\n chain input {\n  type filter hook input priority 0; policy drop;\n'
        '  iif lo accept\n  ip saddr 127.0.0.0/8 counter drop\n  ip6 saddr ::1 counter drop\n }\n}\n',
    )
    assert probe_loopback(netns, 'ipv4', 'udp') and probe_loopback(netns, 'ipv6', 'udp')
    for family in ('ipv4', 'ipv6'):
        result = evaluate_with(netns, family).result
        assert statuses(result) == {INPUT_ACCEPT_LO: PASS, OUTPUT_ACCEPT_LO: PASS, INPUT_DROP_LOOPBACK_SOURCE: PASS}, result


def test_a_missing_anti_spoofing_drop_in_a_native_table_gets_an_nft_fix(netns):
    require_tools('nft')
    nft_file(netns, 'table inet filter {\n chain input {\n  type filter hook input priority 0; policy accept;\n  iif lo accept\n }\n}\n')
    drop = evaluate_with(netns, 'ipv6').result.requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert drop.status is FAIL
    assert drop.remediation == ('nft insert rule inet filter input iif != lo ip6 saddr ::1/128 drop',)
    netns.run(drop.remediation[0].split(), check=True)
    assert evaluate_with(netns, 'ipv6').result.requirement(INPUT_DROP_LOOPBACK_SOURCE).status is PASS


def test_a_rule_the_decoder_cannot_read_is_unknown_where_it_could_decide_for_the_whole_class(netns):
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    # An extension header match (not decoded) alone in front of a verdict: it may match every packet.
    nft_file(netns, 'table ip t {\n chain c {\n  type filter hook input priority -10;\n  tcp option maxseg size 1400 drop\n }\n}\n')
    outcome = evaluate_with(netns, 'ipv4', expect_error=True)
    assert outcome.result.status is Status.UNKNOWN
    assert 'ip t c handle' in outcome.result.error and 'not decoded' in outcome.result.error


def test_a_rule_the_decoder_cannot_read_is_some_where_it_cannot(netns):
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    # The same, behind a narrower address: whatever it matches, it is part of the class at most.
    nft_file(netns, 'table ip t {\n chain c {\n  type filter hook input priority -10;\n  ip saddr 127.0.0.2 tcp option maxseg size 1400 drop\n }\n}\n')
    accept = evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is PARTIAL
    assert accept.deviations[0].where.table == 'ip t'


# --- the text path ---------------------------------------------------------------------------------


def test_a_whole_save_keeps_every_table(netns):
    netns.restore(generate.PRESETS['k8s-1k'].text('ipv4'), 'ipv4')
    collected = collect(options(netns, 'ipv4', 'save'), 'ipv4')[0]
    assert '*nat' in collected.text and '*filter' in collected.text
    assert '# Generated by' not in collected.text  # timestamps dropped: an unchanged save gives the same text


def test_a_saved_file_is_read_with_its_size_limit(tmp_path):
    path = tmp_path / 'rules'
    path.write_text('*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n')
    assert '-A INPUT -i lo -j ACCEPT' in read_file(str(path), 10**9)
    with pytest.raises(CollectionError, match='larger than 10 bytes'):
        read_file(str(path), 10)


# --- reading only what the walks need, and one moment ------------------------------------------------


def test_only_the_chains_the_walks_need_are_read(netns):
    behind = ['-A BIG -d 10.0.0.{}/32 -p tcp --dport 80 -j REJECT'.format(i) for i in range(1, 200)]
    decided_first = filter_table(
        '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -j BIG', '-A OUTPUT -o lo -j ACCEPT', *behind, chains=['BIG']
    )
    netns.restore(decided_first, 'ipv4')
    state = InstanceState()
    assert evaluate_with(netns, 'ipv4', state=state).result.status is PASS
    assert ('ip', 'filter', 'INPUT') in state.kernel.ruleset.rules
    assert ('ip', 'filter', 'BIG') not in state.kernel.ruleset.rules  # no loopback packet gets there
    # The same chain in front of the lo ACCEPT: the walk needs it, so it is read (in the same generation).
    netns.restore(decided_first.replace('-A INPUT -j BIG\n', '').replace('-A INPUT -i lo -j ACCEPT', '-A INPUT -j BIG\n-A INPUT -i lo -j ACCEPT'), 'ipv4')
    result = evaluate_with(netns, 'ipv4', state=state).result
    assert len(state.kernel.ruleset.rules[('ip', 'filter', 'BIG')]) == len(behind)
    assert result.status is PASS and result.rules_on_path == 4 + len(behind)


# Two states of a ruleset that both fail input_accept_lo; a walk that took INPUT from one and the
# chain it jumps to from the other would pass.
FLIP_A = filter_table('-A INPUT -i lo -j ALPHA', '-A ALPHA -j DROP', '-A BETA -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT', chains=['ALPHA', 'BETA'])
FLIP_B = filter_table('-A INPUT -i lo -j BETA', '-A BETA -j DROP', '-A ALPHA -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT', chains=['ALPHA', 'BETA'])
FLIP_LOOP = '''
import subprocess, sys, time
texts = [open(sys.argv[1]).read(), open(sys.argv[2]).read()]
end = time.monotonic() + float(sys.argv[3])
flips = 0
while time.monotonic() < end:
    subprocess.run(['iptables-nft-restore'], input=texts[flips % 2], text=True, check=True)
    flips += 1
    time.sleep(1 / 15)
print(flips)
'''


def test_a_ruleset_that_keeps_changing_never_gives_a_verdict_no_state_had(netns, tmp_path):
    """Churn: the ruleset flips atomically between two failing states about 15 times a second while
    the check runs; no run may pass, and at most a tenth may be UNKNOWN (read again next run)."""
    netns.restore(FLIP_A, 'ipv4')
    (tmp_path / 'a').write_text(FLIP_A)
    (tmp_path / 'b').write_text(FLIP_B)
    (tmp_path / 'flip.py').write_text(FLIP_LOOP)
    flipper = netns.spawn([sys.executable, str(tmp_path / 'flip.py'), str(tmp_path / 'a'), str(tmp_path / 'b'), '25'])
    state, statuses_seen, deciding_chains, runs = InstanceState(), [], set(), 0
    try:
        deadline = time.monotonic() + 20
        while runs < 300 and time.monotonic() < deadline:
            outcome = evaluate_with(netns, 'ipv4', state=state, expect_error=True)
            state.evaluated.clear()
            runs += 1
            if outcome.result.error:
                statuses_seen.append(outcome.result.status)
                continue
            accept = outcome.result.requirement(INPUT_ACCEPT_LO)
            statuses_seen.append(accept.status)
            deciding_chains.add(accept.deciding.chain)
    finally:
        flipper.kill()
        flipper.wait()
    assert runs >= 50
    assert deciding_chains == {'ALPHA', 'BETA'}  # both states were seen: the ruleset did change under the runs
    assert PASS not in statuses_seen and PARTIAL not in statuses_seen, statuses_seen
    assert statuses_seen.count(Status.UNKNOWN) <= runs // 10, statuses_seen
    print('\nchurn: {} runs, {} UNKNOWN'.format(runs, statuses_seen.count(Status.UNKNOWN)))


def test_a_netdev_ingress_chain_on_lo_takes_part(netns):
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    nft_file(netns, 'table netdev edge {\n chain in {\n  type filter hook ingress device "lo" priority 0;\n  ip saddr 127.0.0.0/8 drop\n }\n}\n')
    assert not probe_loopback(netns, 'ipv4', 'udp')
    accept = evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL
    assert (accept.deciding.table, accept.deciding.chain, accept.deciding.index) == ('netdev edge', 'in', 1)


# The same two failing states, with the change spanning two tables: the jump in mangle PREROUTING
# and the chains it may lead to, against what filter INPUT does.
FLIP_MANGLE_A = FLIP_A + table('mangle', ['-A PREROUTING -i lo -j MARK --set-mark 1'])
FLIP_MANGLE_B = FLIP_B + table('mangle', ['-A PREROUTING -i lo -j MARK --set-mark 2'])


def test_a_change_spanning_two_tables_never_gives_a_verdict_no_state_had(netns, tmp_path):
    netns.restore(FLIP_MANGLE_A, 'ipv4')
    (tmp_path / 'a').write_text(FLIP_MANGLE_A)
    (tmp_path / 'b').write_text(FLIP_MANGLE_B)
    (tmp_path / 'flip.py').write_text(FLIP_LOOP)
    flipper = netns.spawn([sys.executable, str(tmp_path / 'flip.py'), str(tmp_path / 'a'), str(tmp_path / 'b'), '25'])
    state, seen, runs = InstanceState(), [], 0
    try:
        deadline = time.monotonic() + 15
        while runs < 300 and time.monotonic() < deadline:
            outcome = evaluate_with(netns, 'ipv4', state=state, expect_error=True)
            state.evaluated.clear()
            runs += 1
            seen.append(outcome.result.status if outcome.result.error else outcome.result.requirement(INPUT_ACCEPT_LO).status)
    finally:
        flipper.kill()
        flipper.wait()
    assert PASS not in seen and PARTIAL not in seen, seen
    assert seen.count(Status.UNKNOWN) <= runs // 10, seen


def test_the_timeout_bounds_each_read_of_the_kernel_not_the_walk(netns, monkeypatch):
    """A walk longer than `timeout` (a large node's first run) still gets its chains read."""
    from datadog_checks.loopback_traffic import pipeline

    netns.restore(filter_table('-A INPUT -j SLOW', '-A SLOW -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A OUTPUT -o lo -j ACCEPT', chains=['SLOW']), 'ipv4')
    real = pipeline.decode_tables

    def slow_decode(*args, **kwargs):
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, 'decode_tables', slow_decode)
    outcome = evaluate_with(netns, 'ipv4', timeout=0.5)
    assert outcome.result.status is PASS
