"""The core on real rulesets: loaded with the real restore tools into lt- namespaces, saved back with
the real save tools, parsed and evaluated; and cross-checked against what the kernel does to real packets.
"""
import shlex

import pytest

from datadog_checks.loopback_traffic.requirements import (
    ACCEPT,
    DENY,
    INPUT_ACCEPT_LO,
    INPUT_DROP_LOOPBACK_SOURCE,
    OUTPUT_ACCEPT_LO,
)
from datadog_checks.loopback_traffic.results import Status
from datadog_checks.loopback_traffic.report import explanation

from .netns import netns, netns_pair, probe_loopback, probe_spoofed_loopback_source, require_tools, ufw_in_netns  # noqa: F401
from .rulesets import CIS_V4, CIS_V6, evaluate_text, filter_table

LEGACY_WARNING = 'iptables-legacy tables present'

MISORDERED_V4 = filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
POLICY_DROP = filter_table(input_policy='DROP', output_policy='DROP')
CONNTRACK_FIRST = filter_table(
    '-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT', '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', input_policy='DROP'
)


def evaluate_namespace(ns, family='ipv4', backend='nft'):
    """Collect like the check does: the save tool, plus the legacy save tool when the nft one warns."""
    saved = ns.save(family, backend)
    assert saved.returncode == 0, saved.stderr
    texts = [saved.stdout]
    if backend == 'nft' and LEGACY_WARNING in saved.stderr:
        legacy = ns.save(family, 'legacy')
        assert legacy.returncode == 0, legacy.stderr
        texts.append(legacy.stdout)
    return evaluate_text(*texts, family=family)


def statuses(result):
    return {r.requirement: r.status for r in result.requirements}


def apply_fixes(ns, result):
    for requirement in result.requirements:
        for command in requirement.remediation:
            ns.run(shlex.split(command), check=True)


@pytest.mark.parametrize('backend', ['nft', 'legacy'])
@pytest.mark.parametrize('family, ruleset', [('ipv4', CIS_V4), ('ipv6', CIS_V6)])
def test_the_exact_remediation_passes(netns, backend, family, ruleset):
    netns.restore(ruleset, family, backend)
    result = evaluate_namespace(netns, family, backend)
    assert result.status is Status.PASS, result
    assert result.requirement(INPUT_ACCEPT_LO).deciding.index == 1
    assert result.requirement(INPUT_DROP_LOOPBACK_SOURCE).deciding.text.startswith('-A INPUT -s {} -j DROP'.format('127.0.0.0/8' if family == 'ipv4' else '::1/128'))


def test_the_cis_commands_as_an_administrator_types_them(netns):
    for command in ('iptables -A INPUT -i lo -j ACCEPT', 'iptables -A OUTPUT -o lo -j ACCEPT', 'iptables -A INPUT -s 127.0.0.1/8 -j DROP',
                    'ip6tables -A INPUT -i lo -j ACCEPT', 'ip6tables -A OUTPUT -o lo -j ACCEPT', 'ip6tables -A INPUT -s ::1 -j DROP'):
        netns.run(command.split(), check=True)
    assert evaluate_namespace(netns, 'ipv4').status is Status.PASS
    assert evaluate_namespace(netns, 'ipv6').status is Status.PASS


@pytest.mark.parametrize('backend', ['nft', 'legacy'])
def test_misordered_ruleset_fails_and_its_fix_passes(netns, backend):
    netns.restore(MISORDERED_V4, 'ipv4', backend)
    result = evaluate_namespace(netns, 'ipv4', backend)
    accept = result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is Status.FAIL
    assert (accept.deciding.chain, accept.deciding.index, accept.deciding.text) == ('INPUT', 1, '-A INPUT -s 127.0.0.0/8 -j DROP')
    assert accept.remediation == ('iptables -I INPUT 1 -i lo -j ACCEPT',)
    if backend == 'nft':
        apply_fixes(netns, result)
        assert evaluate_namespace(netns, 'ipv4').status is Status.PASS


@pytest.mark.parametrize('family, ruleset', [('ipv4', POLICY_DROP), ('ipv4', CONNTRACK_FIRST), ('ipv6', POLICY_DROP), ('ipv4', filter_table())])
def test_remediation_commands_fix_the_live_ruleset(netns, family, ruleset):
    netns.restore(ruleset, family)
    before = evaluate_namespace(netns, family)
    assert before.status is not Status.PASS
    apply_fixes(netns, before)
    after = evaluate_namespace(netns, family)
    assert after.status is Status.PASS, [explanation(r) for r in after.requirements]


def test_ufw_rules_and_the_loopback_hardening(netns):
    require_tools('ufw')
    ufw_in_netns(netns, [['--force', 'enable']])
    for family, prefix in (('ipv4', 'ufw'), ('ipv6', 'ufw6')):
        result = evaluate_namespace(netns, family)
        accept = result.requirement(INPUT_ACCEPT_LO)
        assert accept.status is Status.PASS
        assert (accept.deciding.chain, accept.deciding.index) == (prefix + '-before-input', 1)
        assert result.requirement(OUTPUT_ACCEPT_LO).deciding.chain == prefix + '-before-output'
        drop = result.requirement(INPUT_DROP_LOOPBACK_SOURCE)
        # Denied in bulk (policy DROP / ufw-not-local), but ufw's RELATED,ESTABLISHED and ICMP accepts come first.
        assert drop.status is Status.PARTIAL
        assert '--ctstate RELATED,ESTABLISHED -j ACCEPT' in drop.deviations[0].where.text
    ufw_in_netns(netns, [['allow', 'in', 'on', 'lo'], ['allow', 'out', 'on', 'lo'], ['deny', 'in', 'from', '127.0.0.0/8'], ['deny', 'in', 'from', '::1']])
    saved = netns.save('ipv4').stdout
    assert '-A ufw-user-input -s 127.0.0.0/8 -j DROP' in saved
    assert '-A ufw6-user-input -s ::1/128 -j DROP' in netns.save('ipv6').stdout
    for family in ('ipv4', 'ipv6'):
        result = evaluate_namespace(netns, family)
        assert statuses(result) == {INPUT_ACCEPT_LO: Status.PASS, OUTPUT_ACCEPT_LO: Status.PASS, INPUT_DROP_LOOPBACK_SOURCE: Status.PARTIAL}
    ipv6_drop = evaluate_namespace(netns, 'ipv6').requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert (ipv6_drop.deciding.chain, ipv6_drop.deciding.text) == ('ufw6-user-input', '-A ufw6-user-input -s ::1/128 -j DROP')


def test_both_backends_holding_rules(netns):
    require_tools('iptables-legacy-restore')
    netns.restore(CIS_V4, 'ipv4', 'nft')
    netns.restore(filter_table('-A INPUT -i lo -p udp -j DROP'), 'ipv4', 'legacy')
    saved = netns.save('ipv4', 'nft')
    assert LEGACY_WARNING in saved.stderr
    result = evaluate_namespace(netns, 'ipv4')
    accept = result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is Status.PARTIAL
    (deviation,) = accept.deviations
    assert deviation.where.ruleset == 'legacy' and deviation.where.index == 1
    assert accept.remediation == ('iptables-legacy -I INPUT 1 -i lo -j ACCEPT',)
    assert result.requirement(INPUT_DROP_LOOPBACK_SOURCE).status is Status.PASS


# --- the kernel cross-check -------------------------------------------------------------------------

LEGACY_LO_DROP = filter_table('-A INPUT -i lo -j DROP')
UFW = 'ufw'

CROSS_CHECK_CASES = [
    pytest.param(CIS_V4, None, id='cis'),
    pytest.param(MISORDERED_V4, None, id='misordered'),
    pytest.param(filter_table(), None, id='empty-policy-accept'),
    pytest.param(POLICY_DROP, None, id='policy-drop'),
    pytest.param(CONNTRACK_FIRST, None, id='conntrack-first'),
    pytest.param(filter_table('-A INPUT -s 127.0.0.0/8 ! -i lo -j DROP', '-A OUTPUT -o lo -j DROP'), None, id='output-drop'),
    pytest.param(CIS_V4, LEGACY_LO_DROP, id='both-backends'),
    pytest.param(UFW, None, id='ufw'),
]


@pytest.mark.parametrize('ruleset, legacy', CROSS_CHECK_CASES)
def test_evaluator_bulk_verdict_agrees_with_the_kernel(netns_pair, ruleset, legacy):
    receiver = netns_pair.receiver
    if ruleset == UFW:
        require_tools('ufw')
        ufw_in_netns(receiver, [['--force', 'enable']])
    else:
        receiver.restore(ruleset, 'ipv4')
    if legacy is not None:
        receiver.restore(legacy, 'ipv4', 'legacy')
    result = evaluate_namespace(receiver, 'ipv4')
    lo_accepted = result.requirement(INPUT_ACCEPT_LO).verdict == ACCEPT and result.requirement(OUTPUT_ACCEPT_LO).verdict == ACCEPT
    spoof_denied = result.requirement(INPUT_DROP_LOOPBACK_SOURCE).verdict == DENY
    assert probe_loopback(receiver, 'ipv4', 'udp') is lo_accepted
    assert probe_loopback(receiver, 'ipv4', 'icmp') is lo_accepted
    assert probe_spoofed_loopback_source(netns_pair, 'ipv4') is not spoof_denied


@pytest.mark.parametrize('ruleset', [CIS_V6, MISORDERED_V4.replace('127.0.0.0/8', '::1/128'), POLICY_DROP], ids=['cis', 'misordered', 'policy-drop'])
def test_ipv6_loopback_verdict_agrees_with_the_kernel(netns, ruleset):
    netns.restore(ruleset, 'ipv6')
    result = evaluate_namespace(netns, 'ipv6')
    lo_accepted = result.requirement(INPUT_ACCEPT_LO).verdict == ACCEPT and result.requirement(OUTPUT_ACCEPT_LO).verdict == ACCEPT
    assert probe_loopback(netns, 'ipv6', 'udp') is lo_accepted
