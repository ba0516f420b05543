"""Waivers (spec section 5, "Waivers") as a pure function: RuleResult + waivers + today -> adjusted result."""
import datetime

import pytest

from datadog_checks.loopback_traffic.report import apply_waivers, explanation
from datadog_checks.loopback_traffic.requirements import rule_for_family
from datadog_checks.loopback_traffic.results import DECIDED, Deviation, Position, RequirementResult, RuleResult, Status
from datadog_checks.loopback_traffic.waivers import InvalidWaiver, Waiver, parse

from .rulesets import evaluate_text, filter_table

TODAY = datetime.date(2026, 12, 1)
NODEPORT = '-A KUBE-EXTERNAL-SERVICES -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP'
KUBE_NODE = filter_table(
    '-A INPUT -m conntrack --ctstate NEW -j KUBE-EXTERNAL-SERVICES',
    '-A INPUT -i lo -j ACCEPT',
    '-A INPUT -s 127.0.0.0/8 -j DROP',
    '-A OUTPUT -o lo -j ACCEPT',
    NODEPORT,
    input_policy='DROP',
    chains=['KUBE-EXTERNAL-SERVICES'],
)


def waiver(requirement='input_accept_lo', chain='KUBE-EXTERNAL-SERVICES', rule=None, expires=datetime.date(2027, 6, 30), index=0):
    return Waiver(index, requirement, None if rule else chain, rule, 'by design', expires)


def test_a_result_without_waivers_is_returned_as_it_is():
    result = evaluate_text(KUBE_NODE)
    applied = apply_waivers(result, (), TODAY)
    assert applied.result is result and applied.waived == () and applied.waived_count('input_accept_lo') == 0
    assert apply_waivers(None, (waiver(),), TODAY).result is None


def test_a_partial_requirement_whose_only_deviation_is_waived_passes_and_needs_no_fix():
    result = evaluate_text(KUBE_NODE)
    assert result.status is Status.PARTIAL
    applied = apply_waivers(result, (waiver(),), TODAY)
    adjusted = applied.result.requirement('input_accept_lo')
    assert adjusted.status is Status.PASS
    assert adjusted.deviations == () and adjusted.remediation == ()
    assert explanation(adjusted) == 'accepted by filter INPUT rule 2: -A INPUT -i lo -j ACCEPT'
    assert adjusted.deciding == result.requirement('input_accept_lo').deciding
    assert applied.result.status is Status.PASS
    assert applied.original is result  # the evaluator's result is not changed
    (match,) = applied.waived
    assert match.requirement == 'input_accept_lo' and match.waiver.index == 0
    assert match.deviation.where.chain == 'KUBE-EXTERNAL-SERVICES' and match.deviation.where.text == NODEPORT
    assert applied.waived_count('input_accept_lo') == 1 and applied.waived_count('output_accept_lo') == 0


def test_the_other_deviations_keep_the_requirement_partial():
    text = KUBE_NODE.replace('-A INPUT -i lo -j ACCEPT\n', '-A INPUT -p udp -j DROP\n-A INPUT -i lo -j ACCEPT\n')
    result = evaluate_text(text)
    assert len(result.requirement('input_accept_lo').deviations) == 2
    applied = apply_waivers(result, (waiver(),), TODAY)
    adjusted = applied.result.requirement('input_accept_lo')
    assert adjusted.status is Status.PARTIAL
    assert [d.where.text for d in adjusted.deviations] == ['-A INPUT -p udp -j DROP']
    assert adjusted.remediation == ('iptables -I INPUT 1 -i lo -j ACCEPT',)
    assert explanation(adjusted) == (
        'accepted by filter INPUT rule 3: -A INPUT -i lo -j ACCEPT; but part of it is dropped by filter INPUT rule 2: -A INPUT -p udp -j DROP'
    )


def test_a_waiver_never_turns_a_failing_bulk_into_a_pass():
    text = KUBE_NODE.replace('-A INPUT -i lo -j ACCEPT\n', '-A INPUT -i lo -j DROP\n')
    result = evaluate_text(text)
    failing = result.requirement('input_accept_lo')
    assert failing.status is Status.FAIL and len(failing.deviations) == 1
    decisive = waiver(rule='-A INPUT -i lo -j DROP', index=1)
    every_chain = waiver(chain='*', index=2)
    applied = apply_waivers(result, (waiver(), decisive, every_chain), TODAY)
    adjusted = applied.result.requirement('input_accept_lo')
    assert adjusted.status is Status.FAIL
    assert adjusted.remediation == failing.remediation
    assert applied.result.status is Status.FAIL
    assert applied.waived_count('input_accept_lo') == 1  # the NodePort deviation
    assert [m.waiver.index for m in applied.refused] == [1, 2]  # both match the rule that decides the bulk


def test_an_expired_waiver_is_ignored_and_reported():
    result = evaluate_text(KUBE_NODE)
    old = waiver(expires=datetime.date(2026, 11, 30))
    applied = apply_waivers(result, (old,), TODAY)
    assert applied.result.requirement('input_accept_lo').status is Status.PARTIAL
    assert applied.waived == ()
    (match,) = applied.expired
    assert match.waiver is old and match.deviation.where.text == NODEPORT
    assert applied.expired_waivers == (old,) and applied.lapsed == (old,)
    # On its expiry day it still applies.
    assert apply_waivers(result, (waiver(expires=TODAY),), TODAY).result.status is Status.PASS


def test_an_expired_waiver_that_matches_nothing_is_only_lapsed():
    result = evaluate_text(KUBE_NODE)
    old = waiver(chain='DOCKER-*', expires=datetime.date(2020, 1, 1))
    applied = apply_waivers(result, (old, waiver(index=1)), TODAY)
    assert applied.expired == () and applied.lapsed == (old,)
    assert applied.result.status is Status.PASS


@pytest.mark.parametrize(
    'chain, matches',
    [
        ('KUBE-EXTERNAL-SERVICES', True),
        ('KUBE-*', True),
        ('*SERVICES', True),
        ('*', True),
        ('KUBE-EXTERNAL', False),
        ('kube-*', False),  # chain names are case-sensitive
        ('KUBE-EXTERNAL-SERVICE?', False),  # only `*` is a wildcard
        ('KUBE-[E]XTERNAL-SERVICES', False),
    ],
)
def test_chain_patterns(chain, matches):
    where = Position('filter', 'KUBE-EXTERNAL-SERVICES', 1, NODEPORT)
    assert waiver(chain=chain).matches('input_accept_lo', where) is matches
    assert waiver(chain=chain).matches('output_accept_lo', where) is False


def test_a_rule_waiver_matches_the_exact_rule_text_only():
    where = Position('filter', 'KUBE-EXTERNAL-SERVICES', 1, NODEPORT)
    assert waiver(rule=NODEPORT).matches('input_accept_lo', where)
    assert not waiver(rule=NODEPORT.replace('30080', '30081')).matches('input_accept_lo', where)
    assert not waiver(rule='-A KUBE-EXTERNAL-SERVICES').matches('input_accept_lo', where)


def test_a_waiver_is_for_one_requirement():
    result = evaluate_text(KUBE_NODE)
    applied = apply_waivers(result, (waiver(requirement='output_accept_lo'),), TODAY)
    assert applied.result.status is Status.PARTIAL and applied.waived == ()


def test_a_nat_chain_deviation_of_the_deny_requirement_can_be_waived():
    # The deny requirement met only in nat (which sees the first packet of a connection) is partial by a
    # deviation that names the chain and no rule.
    rule = rule_for_family('ipv4')
    where = Position('nat', 'PREROUTING', None, '(nat chains see only the first packet of a connection)')
    deny = RequirementResult(
        'input_drop_loopback_source',
        Status.PARTIAL,
        DECIDED,
        Position('nat', 'PREROUTING', 1, '-A PREROUTING -s 127.0.0.0/8 -j DROP'),
        'deny',
        (Deviation(where, 'accept'),),
        ('iptables -I INPUT 1 -s 127.0.0.0/8 ! -i lo -j DROP',),
    )
    result = RuleResult(rule, Status.PARTIAL, (deny,), 3)
    applied = apply_waivers(result, (waiver(requirement='input_drop_loopback_source', chain='PREROUTING'),), TODAY)
    adjusted = applied.result.requirement('input_drop_loopback_source')
    assert adjusted.status is Status.PASS and adjusted.remediation == ()
    assert explanation(adjusted) == 'dropped by nat PREROUTING rule 1: -A PREROUTING -s 127.0.0.0/8 -j DROP'


def test_an_unknown_result_is_not_touched():
    rule = rule_for_family('ipv4')
    result = RuleResult(rule, Status.UNKNOWN, error='permission denied')
    assert apply_waivers(result, (waiver(),), TODAY).result is result


def test_parse_accepts_the_documented_forms():
    (first, second) = parse(
        [
            {'requirement': 'input_accept_lo', 'chain': ' KUBE-* ', 'justification': ' NodePorts ', 'expires': '2027-06-30'},
            {'requirement': 'output_accept_lo', 'rule': '-A OUTPUT -p udp -j DROP', 'justification': 'x', 'expires': datetime.date(2027, 1, 1)},
        ]
    )
    assert first == Waiver(0, 'input_accept_lo', 'KUBE-*', None, 'NodePorts', datetime.date(2027, 6, 30))
    assert second.index == 1 and second.rule == '-A OUTPUT -p udp -j DROP' and second.chain is None
    assert parse(None) == () and parse([]) == ()


@pytest.mark.parametrize(
    'entry, complaint',
    [
        ({'chain': 'KUBE-*', 'justification': 'x', 'expires': '2027-06-30'}, '`waivers[0]` (chain KUBE-*): `requirement` is required'),
        ({'requirement': 'input_accept_lo', 'chain': '', 'justification': 'x', 'expires': '2027-06-30'}, '`chain` must be a non-empty string'),
        ({'requirement': 'input_accept_lo', 'chain': 'A', 'rule': 'B', 'justification': 'x', 'expires': '2027-06-30'}, 'give exactly one of'),
        ({'requirement': 'input_accept_lo', 'chain': 'A', 'justification': 'x', 'expires': '30/06/2027'}, 'ISO 8601'),
        ({'requirement': 'input_accept_lo', 'chain': 'A', 'justification': 'x', 'expires': True}, 'ISO 8601'),
        ({'requirement': 'input_accept_lo', 'chain': 'A', 'justification': 'x', 'expire': '2027-06-30'}, 'unknown key `expire` (did you mean `expires`?)'),
    ],
)
def test_parse_names_the_entry_and_the_problem(entry, complaint):
    with pytest.raises(InvalidWaiver) as error:
        parse([entry])
    assert complaint in str(error.value)
