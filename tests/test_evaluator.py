"""Evaluator unit tests on strings: one or more per bullet of spec sections 2 (effective) and 3 (literal)."""
from types import MappingProxyType

import pytest

from datadog_checks.loopback_traffic import classify as classify_module
from datadog_checks.loopback_traffic.classify import ALL, NONE, SOME, classify
from datadog_checks.loopback_traffic.evaluator import LITERAL, Source, evaluate
from datadog_checks.loopback_traffic.model import STATEMENT, BaseChain, Chain, Match, Option, Rule, Ruleset, Table, Target
from datadog_checks.loopback_traffic.parser import parse_ruleset
from datadog_checks.loopback_traffic.requirements import (
    INPUT_ACCEPT_LO,
    INPUT_DROP_LOOPBACK_SOURCE,
    OUTPUT_ACCEPT_LO,
    REQUIREMENTS,
    SET_IPV6_LOOPBACK_TRAFFIC,
    SET_LOOPBACK_TRAFFIC,
    rule_for_family,
)
from datadog_checks.loopback_traffic.results import SYNPROXY_PART, Fix, Insertion, Status
from datadog_checks.loopback_traffic.report import describe_position, explanation

from .rulesets import CIS_V4, CIS_V6, evaluate_text, filter_table, table

PASS, PARTIAL, FAIL, UNKNOWN = Status.PASS, Status.PARTIAL, Status.FAIL, Status.UNKNOWN
V4_CLASSES = {r.name: r.packet_class(SET_LOOPBACK_TRAFFIC.loopback) for r in REQUIREMENTS}
V6_CLASSES = {r.name: r.packet_class(SET_IPV6_LOOPBACK_TRAFFIC.loopback) for r in REQUIREMENTS}


def statuses(result):
    return {r.requirement: r.status for r in result.requirements}


def one_rule(text, chain='INPUT'):
    return parse_ruleset(filter_table('-A {} {} -j ACCEPT'.format(chain, text))).chain('filter', chain).rules[0]


# --- section 2, "Walking one chain": none / all / some -------------------------------------------


@pytest.mark.parametrize(
    'criteria, requirement, expected',
    [
        # none
        ('-i eth0', INPUT_ACCEPT_LO, NONE),
        ('! -s 127.0.0.0/8', INPUT_DROP_LOOPBACK_SOURCE, NONE),
        ('-s 10.0.0.0/8', INPUT_DROP_LOOPBACK_SOURCE, NONE),
        ('-i lo', INPUT_DROP_LOOPBACK_SOURCE, NONE),
        ('! -i +', INPUT_DROP_LOOPBACK_SOURCE, NONE),
        ('-o lo', INPUT_ACCEPT_LO, NONE),
        ('-i lo', OUTPUT_ACCEPT_LO, NONE),
        ('! -p all', INPUT_ACCEPT_LO, NONE),
        ('-d 10.0.0.1/32', INPUT_ACCEPT_LO, NONE),
        # all
        ('-i lo', INPUT_ACCEPT_LO, ALL),
        ('-i lo+', INPUT_ACCEPT_LO, ALL),
        ('-i +', INPUT_ACCEPT_LO, ALL),
        ('-i +', INPUT_DROP_LOOPBACK_SOURCE, ALL),
        ('-o lo', OUTPUT_ACCEPT_LO, ALL),
        ('-s 127.0.0.0/8', INPUT_DROP_LOOPBACK_SOURCE, ALL),
        ('-s 127.0.0.0/7', INPUT_DROP_LOOPBACK_SOURCE, ALL),
        ('-s 0.0.0.0/0', INPUT_DROP_LOOPBACK_SOURCE, ALL),
        ('! -s 10.0.0.0/8', INPUT_DROP_LOOPBACK_SOURCE, ALL),
        ('! -i lo', INPUT_DROP_LOOPBACK_SOURCE, ALL),
        ('-p all', INPUT_ACCEPT_LO, ALL),
        ('-m comment --comment "allow loopback"', INPUT_ACCEPT_LO, ALL),
        ('-s 127.0.0.0/8 -d 127.0.0.0/8 -i lo -m comment --comment x', INPUT_ACCEPT_LO, ALL),
        ('! -d 10.0.0.0/8', OUTPUT_ACCEPT_LO, ALL),
        # some
        ('-i lo+', INPUT_DROP_LOOPBACK_SOURCE, SOME),  # lo9 is another interface
        ('-i eth0', INPUT_DROP_LOOPBACK_SOURCE, SOME),
        ('! -i eth0', INPUT_DROP_LOOPBACK_SOURCE, SOME),
        ('-p tcp', INPUT_ACCEPT_LO, SOME),
        ('-p tcp -m tcp --dport 22', INPUT_ACCEPT_LO, SOME),
        ('-m conntrack --ctstate RELATED,ESTABLISHED', INPUT_DROP_LOOPBACK_SOURCE, SOME),
        ('-s 127.0.0.1/32', INPUT_DROP_LOOPBACK_SOURCE, SOME),
        ('! -s 127.0.0.1/32', INPUT_DROP_LOOPBACK_SOURCE, SOME),
        ('-d 127.0.0.1/32', INPUT_ACCEPT_LO, SOME),
        ('-d 10.0.0.0/8', INPUT_DROP_LOOPBACK_SOURCE, SOME),
        ('-m frobnicate --level 3', INPUT_ACCEPT_LO, SOME),
        ('-f', INPUT_ACCEPT_LO, SOME),
    ],
)
def test_classify_ipv4(criteria, requirement, expected):
    chain = 'OUTPUT' if requirement == OUTPUT_ACCEPT_LO else 'INPUT'
    assert classify(one_rule(criteria, chain), V4_CLASSES[requirement]) is expected


@pytest.mark.parametrize(
    'criteria, expected',
    [
        ('-s ::1/128', ALL),
        ('-s ::/0', ALL),
        ('-s ::/127', ALL),
        ('! -s ::1/128', NONE),
        ('-s fe80::/10', NONE),
        ('! -s fe80::/10', ALL),
        ('-s 127.0.0.0/8', SOME),  # not an IPv6 network: cannot tell
    ],
)
def test_classify_ipv6_prefixes(criteria, expected):
    assert classify(one_rule(criteria), V6_CLASSES[INPUT_DROP_LOOPBACK_SOURCE]) is expected


# --- section 2, "What the class's packets are known to be": one or more per bullet -------------------


def decided(result, requirement):
    """The requirement's status and its deciding rule (table, chain, position; None: the policy)."""
    found = result.requirement(requirement)
    return found.status, (found.deciding.table, found.deciding.chain, found.deciding.index)


def deviating(result, requirement):
    return [(d.where.table, d.where.chain, d.where.index, d.verdict, d.part) for d in result.requirement(requirement).deviations]


MANGLE_MARK = table('mangle', ['-A PREROUTING -j MARK --set-xmark 0x8000/0x8000'])
MARK_DROP_BEFORE_LO = filter_table('-A INPUT -m mark --mark 0x8000/0x8000 -j DROP', '-A INPUT -i lo -j ACCEPT')


def test_state_a_mark_set_in_an_earlier_chain_of_the_path_decides_a_later_match():
    result = evaluate_text(MANGLE_MARK + MARK_DROP_BEFORE_LO)
    assert decided(result, INPUT_ACCEPT_LO) == (FAIL, ('filter', 'INPUT', 1))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PASS, ('filter', 'INPUT', 1))
    assert deviating(result, INPUT_ACCEPT_LO) == []


def test_state_without_the_mark_the_match_stays_some():
    result = evaluate_text(MARK_DROP_BEFORE_LO)
    assert decided(result, INPUT_ACCEPT_LO) == (PARTIAL, ('filter', 'INPUT', 2))


def test_state_a_mark_set_earlier_in_the_same_chain():
    result = evaluate_text(filter_table('-A INPUT -j MARK --set-mark 0x1', '-A INPUT -m mark --mark 0x1 -j ACCEPT', input_policy='DROP'))
    assert decided(result, INPUT_ACCEPT_LO) == (PASS, ('filter', 'INPUT', 2))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (FAIL, ('filter', 'INPUT', 2))


def test_state_the_mark_is_known_in_a_user_chain_entered_after_it_is_set():
    text = MANGLE_MARK + filter_table('-A INPUT -j CHECK', '-A INPUT -i lo -j ACCEPT', '-A CHECK -m mark --mark 0x8000/0x8000 -j DROP', chains=['CHECK'])
    assert decided(evaluate_text(text), INPUT_ACCEPT_LO) == (FAIL, ('filter', 'CHECK', 1))


def test_state_set_bits_that_contradict_the_match_make_it_none():
    text = table('mangle', ['-A PREROUTING -j MARK --set-xmark 0x0/0x8000']) + MARK_DROP_BEFORE_LO
    result = evaluate_text(text)
    assert decided(result, INPUT_ACCEPT_LO) == (PASS, ('filter', 'INPUT', 2))
    assert deviating(result, INPUT_ACCEPT_LO) == []


def test_state_a_mark_set_for_part_of_the_class_stays_some():
    text = table('mangle', ['-A PREROUTING -p tcp -j MARK --set-xmark 0x8000/0x8000']) + MARK_DROP_BEFORE_LO
    result = evaluate_text(text)
    assert decided(result, INPUT_ACCEPT_LO) == (PARTIAL, ('filter', 'INPUT', 2))
    assert deviating(result, INPUT_ACCEPT_LO) == [('filter', 'INPUT', 1, 'deny', '')]


def test_state_a_mark_changed_for_part_of_the_class_afterwards_is_no_longer_known():
    text = table('mangle', ['-A PREROUTING -j MARK --set-xmark 0x8000/0x8000', '-A INPUT -p udp -j MARK --set-xmark 0x0/0x8000']) + MARK_DROP_BEFORE_LO
    assert decided(evaluate_text(text), INPUT_ACCEPT_LO) == (PARTIAL, ('filter', 'INPUT', 2))


def test_state_a_chain_that_accepts_part_of_the_class_before_setting_the_mark_leaves_it_unknown():
    text = table('mangle', ['-A PREROUTING -p tcp -j ACCEPT', '-A PREROUTING -j MARK --set-xmark 0x8000/0x8000']) + MARK_DROP_BEFORE_LO
    assert decided(evaluate_text(text), INPUT_ACCEPT_LO) == (PARTIAL, ('filter', 'INPUT', 2))


def test_state_connmark():
    text = table('mangle', ['-A PREROUTING -j CONNMARK --set-xmark 0x1/0xffffffff'])
    text += filter_table('-A INPUT -m connmark --mark 0x1 -j DROP', '-A INPUT -i lo -j ACCEPT')
    result = evaluate_text(text)
    # Packets conntrack finds INVALID have no connection, hence no connection mark: the DROP takes part of the class.
    assert decided(result, INPUT_ACCEPT_LO) == (PARTIAL, ('filter', 'INPUT', 2))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (FAIL, ('filter', 'INPUT', None))
    text = table('mangle', ['-A PREROUTING -j CONNMARK --set-xmark 0x1/0xffffffff'])
    text += filter_table('-A INPUT -m connmark --mark 0x2 -j DROP', '-A INPUT -i lo -j ACCEPT')
    assert decided(evaluate_text(text), INPUT_ACCEPT_LO) == (PASS, ('filter', 'INPUT', 2))  # the mark contradicts: none


def test_state_untracked_after_an_unconditional_notrack():
    text = table('raw', ['-A PREROUTING -j CT --notrack', '-A OUTPUT -j NOTRACK'])
    text += filter_table('-A INPUT -m conntrack --ctstate UNTRACKED -j DROP', '-A OUTPUT -m state --state UNTRACKED -j DROP')
    result = evaluate_text(text)
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PASS, ('filter', 'INPUT', 1))
    assert decided(result, OUTPUT_ACCEPT_LO) == (FAIL, ('filter', 'OUTPUT', 1))


def test_state_notrack_after_conntrack_or_for_packets_already_tracked_does_nothing():
    # lo input packets were tracked on their way out: a notrack in raw PREROUTING leaves them be.
    text = table('raw', ['-A PREROUTING -j CT --notrack']) + filter_table('-A INPUT -m conntrack --ctstate UNTRACKED -j DROP', '-A INPUT -i lo -j ACCEPT')
    assert decided(evaluate_text(text), INPUT_ACCEPT_LO) == (PARTIAL, ('filter', 'INPUT', 2))


def test_state_untracked_packets_skip_the_nat_chains():
    text = table('raw', ['-A PREROUTING -j CT --notrack']) + table('nat', policies={'PREROUTING': 'DROP'})
    assert decided(evaluate_text(text), INPUT_DROP_LOOPBACK_SOURCE) == (FAIL, ('raw', 'PREROUTING', None))
    tracked = evaluate_text(table('nat', policies={'PREROUTING': 'DROP'}))
    assert decided(tracked, INPUT_DROP_LOOPBACK_SOURCE) == (PARTIAL, ('nat', 'PREROUTING', None))


def _native_table(*chains):
    return Table('t', MappingProxyType({chain.name: chain for chain in chains}), family='inet', native=True)


def _native_chain(name, hook, priority, *rules, policy='ACCEPT'):
    return Chain(name, policy, tuple(rules), lambda parsed: parsed, base=BaseChain(hook, priority))


def test_state_native_meta_mark_set_arrives_in_the_actions():
    mark = Target('MARK', ('--set-xmark', '0x8000/0xffffffff'), kind=STATEMENT)
    pre = _native_chain('pre', 'prerouting', -150, Rule('pre', (), Target('ACCEPT', kind=STATEMENT), actions=(mark,), text='meta mark set 0x8000 accept'))
    mark_drop = Rule('in', (Match('mark', (Option('--mark', ('0x8000',)),)),), Target('DROP', kind=STATEMENT), text='meta mark 0x8000 drop')
    lo_accept = Rule('in', (Match('', (Option('-i', ('lo',)),)),), Target('ACCEPT', kind=STATEMENT), text='iif lo accept')
    ruleset = Ruleset(MappingProxyType({'t': _native_table(pre, _native_chain('in', 'input', 0, mark_drop, lo_accept))}))
    result = evaluate(SET_LOOPBACK_TRAFFIC, [Source(ruleset)])
    assert decided(result, INPUT_ACCEPT_LO) == (FAIL, ('inet t', 'in', 1))
    # ... and as the target of a rule that holds only the statement.
    pre = _native_chain('pre', 'prerouting', -150, Rule('pre', (), mark, text='meta mark set 0x8000'))
    ruleset = Ruleset(MappingProxyType({'t': _native_table(pre, _native_chain('in', 'input', 0, mark_drop, lo_accept))}))
    assert decided(evaluate(SET_LOOPBACK_TRAFFIC, [Source(ruleset)]), INPUT_ACCEPT_LO) == (FAIL, ('inet t', 'in', 1))


def test_addrtype_anti_spoofing_passes():
    result = evaluate_text(filter_table('-A INPUT -m addrtype --src-type LOCAL ! -i lo -j DROP'))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PASS, ('filter', 'INPUT', 1))
    assert decided(result, INPUT_ACCEPT_LO) == (PASS, ('filter', 'INPUT', None))


def test_addrtype_dst_local_accepts_the_lo_classes():
    result = evaluate_text(filter_table('-A INPUT -m addrtype --dst-type LOCAL -i lo -j ACCEPT', input_policy='DROP'))
    assert decided(result, INPUT_ACCEPT_LO) == (PASS, ('filter', 'INPUT', 1))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PASS, ('filter', 'INPUT', None))


def test_rpfilter_invert_drops_the_spoofed_class_and_not_lo():
    result = evaluate_text(table('raw', ['-A PREROUTING -m rpfilter --invert -j DROP']))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PASS, ('raw', 'PREROUTING', 1))
    assert decided(result, INPUT_ACCEPT_LO) == (PASS, ('raw', 'PREROUTING', None))
    assert deviating(result, INPUT_ACCEPT_LO) == []


def test_rpfilter_without_invert_accepts_lo_only():
    result = evaluate_text(filter_table('-A INPUT -m rpfilter -j ACCEPT', input_policy='DROP'))
    assert decided(result, INPUT_ACCEPT_LO) == (PASS, ('filter', 'INPUT', 1))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PASS, ('filter', 'INPUT', None))


def test_physdev_is_none_for_the_lo_classes_and_some_otherwise():
    result = evaluate_text(filter_table('-A INPUT -m physdev --physdev-in eth0 -j DROP', '-A INPUT -s 127.0.0.0/8 -j DROP'))
    assert decided(result, INPUT_ACCEPT_LO) == (FAIL, ('filter', 'INPUT', 2))
    assert deviating(result, INPUT_ACCEPT_LO) == []
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PASS, ('filter', 'INPUT', 2))
    some = evaluate_text(filter_table('-A INPUT -m physdev --physdev-in eth0 -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP'))
    assert decided(some, INPUT_DROP_LOOPBACK_SOURCE) == (PARTIAL, ('filter', 'INPUT', 2))
    assert deviating(some, INPUT_DROP_LOOPBACK_SOURCE) == [('filter', 'INPUT', 1, 'accept', '')]


def test_sets_whose_contents_are_not_read_are_some():
    result = evaluate_text(filter_table('-A INPUT -m set --match-set blocked src -j DROP', '-A INPUT -i lo -j ACCEPT'))
    assert decided(result, INPUT_ACCEPT_LO) == (PARTIAL, ('filter', 'INPUT', 2))
    assert deviating(result, INPUT_ACCEPT_LO) == [('filter', 'INPUT', 1, 'deny', '')]


def test_coverage_two_drops_that_cover_the_class_leave_no_bulk():
    result = evaluate_text(filter_table('-A INPUT -s 127.0.0.0/9 -j DROP', '-A INPUT -s 127.128.0.0/9 -j DROP'))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PASS, ('filter', 'INPUT', 2))
    assert deviating(result, INPUT_DROP_LOOPBACK_SOURCE) == []
    # Every part denied: the accept requirement fails (none got the required verdict).
    assert decided(result, INPUT_ACCEPT_LO) == (FAIL, ('filter', 'INPUT', 2))


def test_coverage_parts_with_different_verdicts_are_partial():
    result = evaluate_text(filter_table('-A INPUT -s 127.0.0.0/9 -j ACCEPT', '-A INPUT -s 127.128.0.0/10 -j DROP', '-A INPUT -s 127.192.0.0/10 -j DROP'))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PARTIAL, ('filter', 'INPUT', 3))
    assert deviating(result, INPUT_DROP_LOOPBACK_SOURCE) == [('filter', 'INPUT', 1, 'accept', '')]


def test_coverage_in_one_rule_with_several_sources():
    result = evaluate_text(filter_table('-A INPUT -s 127.0.0.0/9,127.128.0.0/9 -j DROP'))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PASS, ('filter', 'INPUT', 1))


def test_coverage_needs_the_other_conditions_to_hold_for_all():
    result = evaluate_text(filter_table('-A INPUT -s 127.0.0.0/9 -j DROP', '-A INPUT -p tcp -s 127.128.0.0/9 -j DROP'))
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (FAIL, ('filter', 'INPUT', None))


def test_synproxy_denies_the_tcp_syn_part_of_the_class():
    text = filter_table('-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j SYNPROXY --sack-perm --timestamp --wscale 7 --mss 1460',
                        '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP')
    result = evaluate_text(text)
    assert decided(result, INPUT_ACCEPT_LO) == (PARTIAL, ('filter', 'INPUT', 2))
    assert deviating(result, INPUT_ACCEPT_LO) == [('filter', 'INPUT', 1, 'deny', SYNPROXY_PART)]
    assert decided(result, INPUT_DROP_LOOPBACK_SOURCE) == (PASS, ('filter', 'INPUT', 3))
    # Even with a match that takes the whole class, only its SYNs are denied.
    alone = evaluate_text(filter_table('-A INPUT -j SYNPROXY', '-A INPUT -i lo -j ACCEPT'))
    assert decided(alone, INPUT_ACCEPT_LO) == (PARTIAL, ('filter', 'INPUT', 2))


# --- the result as data ---------------------------------------------------------------------------------


def test_the_fix_is_data_and_its_command_the_remediation():
    accept = evaluate_text(filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT')).requirement(INPUT_ACCEPT_LO)
    assert accept.fixes == (Fix((Insertion('iptables', 'filter', 'INPUT', 1, '-i lo -j ACCEPT'),)),)
    assert accept.remediation == tuple(fix.command for fix in accept.fixes) == ('iptables -I INPUT 1 -i lo -j ACCEPT',)
    raw = evaluate_text(filter_table('-A INPUT -i lo -j ACCEPT') + table('raw', ['-A PREROUTING -i lo -j DROP'])).requirement(INPUT_ACCEPT_LO)
    assert raw.fixes[0].steps[0] == Insertion('iptables', 'raw', 'PREROUTING', 1, '-i lo -j ACCEPT')
    literal = evaluate_text(filter_table(), mode=LITERAL).requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert [(s.chain, s.position, s.rule) for s in literal.fixes[0].steps] == [('INPUT', 1, '-i lo -j ACCEPT'), ('INPUT', 2, '-s 127.0.0.0/8 -j DROP')]
    assert literal.remediation == ('iptables -I INPUT 1 -i lo -j ACCEPT && iptables -I INPUT 2 -s 127.0.0.0/8 -j DROP',)


# --- section 2, "The path" ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    'table_name, chain',
    [('raw', 'PREROUTING'), ('mangle', 'PREROUTING'), ('mangle', 'INPUT'), ('filter', 'INPUT'), ('security', 'INPUT')],
)
def test_a_deny_in_any_chain_of_the_input_path_is_final(table_name, chain):
    text = filter_table('-A INPUT -i lo -j ACCEPT') if table_name != 'filter' else ''
    text += table(table_name, ['-A {} -i lo -j DROP'.format(chain)])
    result = evaluate_text(text)
    accept = result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL
    assert (accept.deciding.table, accept.deciding.chain, accept.deciding.index) == (table_name, chain, 1)
    assert '{} {} rule 1'.format(table_name, chain) in explanation(accept)


@pytest.mark.parametrize(
    'table_name, chain',
    [('raw', 'OUTPUT'), ('mangle', 'OUTPUT'), ('filter', 'OUTPUT'), ('security', 'OUTPUT'), ('mangle', 'POSTROUTING')],
)
def test_a_deny_in_any_chain_of_the_output_path_is_final(table_name, chain):
    result = evaluate_text(table(table_name, ['-A {} -o lo -j DROP'.format(chain)]))
    output = result.requirement(OUTPUT_ACCEPT_LO)
    assert output.status is FAIL
    assert (output.deciding.table, output.deciding.chain) == (table_name, chain)
    assert result.requirement(INPUT_ACCEPT_LO).status is PASS


def test_a_deny_in_nat_output_denies_new_connections_over_lo():
    """Spec section 2, nat chains: on the output path a nat deny counts like any other; nat's
    PREROUTING and INPUT are never consulted for traffic arriving on lo."""
    result = evaluate_text(CIS_V4 + table('nat', ['-A PREROUTING -i lo -j DROP', '-A OUTPUT -o lo -j DROP']))
    assert statuses(result) == {INPUT_ACCEPT_LO: PASS, OUTPUT_ACCEPT_LO: FAIL, INPUT_DROP_LOOPBACK_SOURCE: PASS}
    output = result.requirement(OUTPUT_ACCEPT_LO)
    assert (output.deciding.table, output.deciding.chain, output.deciding.index) == ('nat', 'OUTPUT', 1)
    assert output.remediation == ('iptables -t nat -I OUTPUT 1 -o lo -j ACCEPT',)


def test_a_nat_policy_drop_fails_the_output_requirement():
    result = evaluate_text(CIS_V4 + '*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT DROP [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n')
    output = result.requirement(OUTPUT_ACCEPT_LO)
    assert output.status is FAIL
    assert (output.deciding.table, output.deciding.chain, output.deciding.text) == ('nat', 'OUTPUT', 'policy DROP')


def test_a_nat_target_ends_the_nat_chain_without_denying():
    result = evaluate_text(CIS_V4 + table('nat', ['-A OUTPUT -j DNAT --to-destination 127.0.0.2', '-A OUTPUT -j DROP']))
    assert result.requirement(OUTPUT_ACCEPT_LO).status is PASS


def test_a_deny_in_nat_satisfies_the_drop_requirement_only_partially():
    text = filter_table('-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT') + table('nat', ['-A PREROUTING -s 127.0.0.0/8 -j DROP'])
    drop = evaluate_text(text).requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert drop.status is PARTIAL
    assert (drop.deciding.table, drop.deciding.chain, drop.deciding.index) == ('nat', 'PREROUTING', 1)
    assert 'established connections' in explanation(drop)


def test_absent_tables_and_chains_accept():
    result = evaluate_text('*filter\n:FORWARD DROP [0:0]\nCOMMIT\n')
    assert statuses(result) == {INPUT_ACCEPT_LO: PASS, OUTPUT_ACCEPT_LO: PASS, INPUT_DROP_LOOPBACK_SOURCE: FAIL}
    assert 'no such chain loaded' in explanation(result.requirement(INPUT_ACCEPT_LO))


def test_accept_ends_only_the_current_chain():
    text = table('raw', ['-A PREROUTING -i lo -j ACCEPT']) + filter_table('-A INPUT -s 127.0.0.0/8 -j DROP')
    result = evaluate_text(text)
    assert result.requirement(INPUT_ACCEPT_LO).status is FAIL
    assert result.requirement(INPUT_ACCEPT_LO).deciding.table == 'filter'


def test_drop_requirement_takes_the_best_chain():
    text = table('raw', ['-A PREROUTING -s 127.0.0.0/8 ! -i lo -j DROP']) + filter_table('-A INPUT -j ACCEPT')
    drop = evaluate_text(text).requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert drop.status is PASS
    assert (drop.deciding.table, drop.deciding.chain, drop.deciding.index) == ('raw', 'PREROUTING', 1)


def test_drop_requirement_partial_when_the_best_chain_denies_only_the_bulk():
    text = table('mangle', ['-A INPUT -p tcp -j DROP']) + filter_table(
        '-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP'
    )
    drop = evaluate_text(text).requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert drop.status is PARTIAL
    assert drop.deciding.index == 2
    assert [d.where.index for d in drop.deviations] == [1]


def test_accept_requirement_takes_the_worst_chain():
    text = table('mangle', ['-A PREROUTING -p udp -j DROP']) + CIS_V4
    accept = evaluate_text(text).requirement(INPUT_ACCEPT_LO)
    assert accept.status is PARTIAL
    assert accept.deciding.table == 'filter'
    (deviation,) = accept.deviations
    assert (deviation.where.table, deviation.where.chain, deviation.where.index, deviation.verdict) == ('mangle', 'PREROUTING', 1, 'deny')


# --- section 2, targets ------------------------------------------------------------------------------


def test_accept_drop_and_reject():
    assert evaluate_text(CIS_V4).status is PASS
    reject = filter_table('-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j REJECT --reject-with icmp-port-unreachable')
    assert evaluate_text(reject).requirement(INPUT_DROP_LOOPBACK_SOURCE).status is PASS
    reject_lo = filter_table('-A INPUT -i lo -j REJECT --reject-with icmp-port-unreachable')
    assert evaluate_text(reject_lo).requirement(INPUT_ACCEPT_LO).status is FAIL


def test_user_chain_is_entered_and_falling_off_resumes_after_the_jump():
    text = filter_table(
        '-A INPUT -j ufw-before-input',
        '-A INPUT -s 127.0.0.0/8 -j DROP',
        '-A ufw-before-input -p tcp --dport 22 -j ACCEPT',
        input_policy='DROP',
        chains=['ufw-before-input'],
    )
    result = evaluate_text(text)
    assert result.requirement(INPUT_ACCEPT_LO).status is FAIL  # lo traffic reaches the DROP after the jump
    drop = result.requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert drop.status is PARTIAL
    assert [(d.where.chain, d.where.index) for d in drop.deviations] == [('ufw-before-input', 1)]


def test_return_resumes_after_the_jump():
    text = filter_table(
        '-A INPUT -j CHECK', '-A INPUT -i lo -j ACCEPT', '-A CHECK -j RETURN', '-A CHECK -j DROP', input_policy='DROP', chains=['CHECK']
    )
    accept = evaluate_text(text).requirement(INPUT_ACCEPT_LO)
    assert accept.status is PASS
    assert accept.deciding.index == 2


def test_user_chain_decides_for_the_whole_class():
    text = filter_table('-A INPUT -j ufw-before-input', '-A ufw-before-input -i lo -j ACCEPT', input_policy='DROP', chains=['ufw-before-input'])
    accept = evaluate_text(text).requirement(INPUT_ACCEPT_LO)
    assert accept.status is PASS
    assert (accept.deciding.chain, accept.deciding.index) == ('ufw-before-input', 1)


def test_goto_does_not_come_back_falling_off_resumes_in_the_caller_of_the_calling_chain():
    text = filter_table(
        '-A INPUT -j OUTER',
        '-A INPUT -i lo -j ACCEPT',
        '-A OUTER -g INNER',
        '-A OUTER -j DROP',  # skipped: INNER returns to INPUT, not to OUTER
        input_policy='DROP',
        chains=['OUTER', 'INNER'],
    )
    accept = evaluate_text(text).requirement(INPUT_ACCEPT_LO)
    assert accept.status is PASS
    assert (accept.deciding.chain, accept.deciding.index) == ('INPUT', 2)


def test_goto_from_a_builtin_chain_falls_off_to_its_policy():
    text = filter_table('-A INPUT -g EMPTY', '-A INPUT -i lo -j ACCEPT', input_policy='DROP', chains=['EMPTY'])
    accept = evaluate_text(text).requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL
    assert accept.deciding.is_policy and accept.deciding.text == 'policy DROP'


def test_part_of_the_class_sent_back_by_a_goto_meets_the_callers_rules():
    text = filter_table(
        '-A INPUT -j C', '-A INPUT -j DROP', '-A C -p tcp -g G', '-A C -j ACCEPT', chains=['C', 'G']
    )
    accept = evaluate_text(text).requirement(INPUT_ACCEPT_LO)
    assert accept.status is PARTIAL
    assert [(d.where.chain, d.where.index, d.verdict) for d in accept.deviations] == [('INPUT', 2, 'deny')]


def test_conditional_return_sends_part_of_the_class_back():
    text = filter_table('-A INPUT -j C', '-A INPUT -j DROP', '-A C -p tcp -j RETURN', '-A C -j ACCEPT', chains=['C'])
    accept = evaluate_text(text).requirement(INPUT_ACCEPT_LO)
    assert accept.status is PARTIAL
    assert accept.deciding.chain == 'C'


def test_return_in_a_builtin_chain_applies_its_policy():
    assert evaluate_text(filter_table('-A INPUT -j RETURN', '-A INPUT -i lo -j ACCEPT', input_policy='DROP')).requirement(INPUT_ACCEPT_LO).status is FAIL
    partial = evaluate_text(filter_table('-A INPUT -p tcp -j RETURN', '-A INPUT -i lo -j ACCEPT', input_policy='DROP'))
    accept = partial.requirement(INPUT_ACCEPT_LO)
    assert accept.status is PARTIAL
    assert accept.deviations[0].where.is_policy


@pytest.mark.parametrize('target', ['QUEUE', 'NFQUEUE --queue-num 3'])
def test_queue_is_not_the_required_verdict(target):
    result = evaluate_text(filter_table('-A INPUT -j {}'.format(target)))
    assert result.requirement(INPUT_ACCEPT_LO).status is FAIL
    assert result.requirement(INPUT_DROP_LOOPBACK_SOURCE).status is FAIL


@pytest.mark.parametrize('target', ['LOG --log-prefix "lo: "', 'NFLOG', 'MARK --set-xmark 0x1/0xffffffff', 'CONNMARK --save-mark', 'CT --notrack', 'AUDIT --type drop', 'KUBE-MARK-MASQ'])
def test_other_targets_and_undeclared_jumps_do_not_decide(target):
    text = filter_table('-A INPUT -j {}'.format(target), '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A OUTPUT -j {}'.format(target), input_policy='DROP')
    assert evaluate_text(text).status is PASS


def test_rule_without_target_decides_nothing():
    assert evaluate_text(filter_table('-A INPUT -i lo', '-A INPUT -s 127.0.0.0/8', input_policy='DROP')).requirement(INPUT_ACCEPT_LO).status is FAIL


def test_falling_off_a_builtin_chain_applies_its_policy():
    accept = evaluate_text(filter_table(input_policy='DROP')).requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL
    assert describe_position(accept.deciding) == 'filter INPUT policy DROP'


# --- section 2, results --------------------------------------------------------------------------------


def test_drop_before_accept_fails_input_accept_lo_with_the_fix_in_the_right_place():
    text = filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
    result = evaluate_text(text)
    accept = result.requirement(INPUT_ACCEPT_LO)
    assert result.status is FAIL
    assert accept.status is FAIL
    assert accept.deciding.text == '-A INPUT -s 127.0.0.0/8 -j DROP'
    assert accept.remediation == ('iptables -I INPUT 1 -i lo -j ACCEPT',)


def test_empty_filter_table_with_policy_accept():
    result = evaluate_text(filter_table())
    assert statuses(result) == {INPUT_ACCEPT_LO: PASS, OUTPUT_ACCEPT_LO: PASS, INPUT_DROP_LOOPBACK_SOURCE: FAIL}
    assert result.requirement(INPUT_DROP_LOOPBACK_SOURCE).remediation == ('iptables -I INPUT 1 -s 127.0.0.0/8 ! -i lo -j DROP',)


def test_policy_drop_passes_the_drop_requirement_without_an_explicit_drop():
    drop = evaluate_text(filter_table('-A INPUT -i lo -j ACCEPT', '-A INPUT -p tcp --dport 22 -s 10.0.0.0/8 -j ACCEPT', input_policy='DROP')).requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert drop.status is PASS
    assert drop.deciding.is_policy


def test_conntrack_accept_before_the_drop_makes_it_partial_and_the_fix_goes_first():
    text = filter_table('-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT', '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP')
    drop = evaluate_text(text).requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert drop.status is PARTIAL
    assert drop.deviations[0].where.index == 1 and drop.deviations[0].verdict == 'accept'
    assert drop.remediation == ('iptables -I INPUT 1 -s 127.0.0.0/8 ! -i lo -j DROP',)


def test_drop_fix_goes_right_after_the_lo_accept():
    drop = evaluate_text(filter_table('-A INPUT -i lo -j ACCEPT', '-A INPUT -p tcp --dport 22 -j ACCEPT')).requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert drop.status is FAIL
    assert drop.remediation == ('iptables -I INPUT 2 -s 127.0.0.0/8 -j DROP',)


def test_partial_accept_deviation_names_chain_and_position():
    accept = evaluate_text(filter_table('-A INPUT -p udp --dport 53 -j DROP', '-A INPUT -i lo -j ACCEPT')).requirement(INPUT_ACCEPT_LO)
    assert accept.status is PARTIAL
    assert describe_position(accept.deviations[0].where) == 'filter INPUT rule 1: -A INPUT -p udp --dport 53 -j DROP'
    assert accept.remediation == ('iptables -I INPUT 1 -i lo -j ACCEPT',)


def test_undeclared_goto_is_unknown():
    result = evaluate_text(filter_table('-A INPUT -g NOWHERE'))
    assert result.status is UNKNOWN
    assert 'NOWHERE' in result.error and 'not declared' in result.error


def test_loop_of_jumps_is_unknown():
    result = evaluate_text(filter_table('-A INPUT -j A', '-A A -p tcp -j B', '-A B -j A', chains=['A', 'B']))
    assert result.status is UNKNOWN
    assert 'loop' in result.error


def test_jump_to_builtin_chain_is_unknown():
    assert evaluate_text(filter_table('-A INPUT -j OUTPUT')).status is UNKNOWN


def test_unparseable_rule_is_unknown_with_its_line():
    result = evaluate_text(filter_table('-A INPUT -m comment --comment "cut'))
    assert result.status is UNKNOWN
    assert 'line 5' in result.error


def test_incompatible_table_is_unknown_with_its_line():
    result = evaluate_text("# Table `filter' is incompatible, use 'nft' tool.\n")
    assert result.status is UNKNOWN
    assert 'line 1' in result.error and 'nft' in result.error


def test_empty_output_means_every_chain_accepts():
    result = evaluate_text('')
    assert statuses(result) == {INPUT_ACCEPT_LO: PASS, OUTPUT_ACCEPT_LO: PASS, INPUT_DROP_LOOPBACK_SOURCE: FAIL}
    assert result.rules_on_path == 0


def test_ipv6_rule():
    assert evaluate_text(CIS_V6, family='ipv6').status is PASS
    ipv4_rules = CIS_V4.replace(':INPUT DROP', ':INPUT ACCEPT')
    assert evaluate_text(ipv4_rules, family='ipv6').requirement(INPUT_DROP_LOOPBACK_SOURCE).status is FAIL
    result = evaluate_text(filter_table(), family='ipv6')
    assert result.requirement(INPUT_DROP_LOOPBACK_SOURCE).remediation == ('ip6tables -I INPUT 1 -s ::1/128 ! -i lo -j DROP',)


def test_rules_on_path_counts_path_chains_and_the_user_chains_packets_reach():
    # OUTPUT's jump to B matches no packet leaving through lo; FORWARD is on no path; nat OUTPUT is.
    text = filter_table(
        '-A INPUT -j A', '-A OUTPUT -o eth0 -j B', '-A FORWARD -j C', '-A A -j D', '-A A -j ACCEPT', '-A B -j RETURN',
        '-A C -j DROP', '-A D -j RETURN', chains=['A', 'B', 'C', 'D'],
    )
    nat = table('nat', ['-A OUTPUT -j DNAT --to-destination 10.0.0.1'])
    assert evaluate_text(text + nat).rules_on_path == 6  # INPUT 1 + OUTPUT 1 + A 2 + D 1 + nat OUTPUT 1
    assert evaluate_text(text.replace('-A OUTPUT -o eth0 -j B', '-A OUTPUT -o lo+ -j B')).rules_on_path == 6


@pytest.mark.parametrize(
    'before, counted',
    [
        # Every class is decided before the jump: the (large) chain behind it is not on the path.
        (['-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP'], False),
        # The non-lo class with a loopback source walks past the accept of lo.
        (['-A INPUT -i lo -j ACCEPT'], True),
        # A conditional accept decides only part of the class.
        (['-A INPUT -i lo -p tcp -j ACCEPT', '-A INPUT ! -i lo -s 127.0.0.0/8 -j DROP'], True),
        # A RETURN of the whole class from a built-in chain applies its policy: nothing after it is reached.
        (['-A INPUT -j RETURN'], False),
    ],
)
def test_a_chain_behind_rules_that_decide_every_class_is_not_counted(before, counted):
    services = ['-A KUBE-SERVICES -d 10.0.0.{} -p tcp --dport 80 -j REJECT'.format(i) for i in range(1, 51)]
    text = filter_table(*before, '-A INPUT -m conntrack --ctstate NEW -j KUBE-SERVICES', *services, chains=['KUBE-SERVICES'])
    assert evaluate_text(text).rules_on_path == len(before) + 1 + (len(services) if counted else 0)


# --- section 2, both backends --------------------------------------------------------------------------


def test_legacy_chains_join_the_path_and_are_named():
    legacy = filter_table('-A INPUT -i lo -j DROP')
    result = evaluate_text(CIS_V4, legacy)
    accept = result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL
    assert accept.deciding.ruleset == 'legacy'
    assert '(legacy ruleset)' in explanation(accept)
    assert accept.remediation == ('iptables-legacy -I INPUT 1 -i lo -j ACCEPT',)


def test_a_deny_in_either_backend_satisfies_the_drop_requirement():
    legacy = filter_table('-A INPUT -s 127.0.0.0/8 ! -i lo -j DROP')
    result = evaluate_text(filter_table('-A INPUT -i lo -j ACCEPT'), legacy)
    assert result.requirement(INPUT_DROP_LOOPBACK_SOURCE).status is PASS
    assert result.requirement(INPUT_DROP_LOOPBACK_SOURCE).deciding.ruleset == 'legacy'


# --- linear work whatever the jumps ---------------------------------------------------------------------


def test_work_is_linear_in_the_number_of_rules(monkeypatch):
    """Many conditional jumps, gotos and RETURNs: each rule is classified a bounded number of times."""
    chains = ['C{}'.format(i) for i in range(300)]
    rules = ['-A INPUT -p tcp -j C0', '-A INPUT -p udp -g C0', '-A INPUT -i lo -j ACCEPT']
    for i, name in enumerate(chains[:-1]):
        following = chains[i + 1]
        rules += [
            '-A {} -p tcp -j {}'.format(name, following),
            '-A {} -p udp -g {}'.format(name, following),
            '-A {} -m mark --mark 1 -j RETURN'.format(name),
            '-A {} -j {}'.format(name, following),
        ]
    rules.append('-A {} -p icmp -j DROP'.format(chains[-1]))
    calls = []
    real = classify_module.classify

    def counting(rule, packets):
        calls.append(1)
        return real(rule, packets)

    monkeypatch.setattr('datadog_checks.loopback_traffic.evaluator.classify', counting)
    result = evaluate_text(filter_table(*rules, input_policy='DROP', chains=chains))
    assert result.requirement(INPUT_ACCEPT_LO).status is PARTIAL
    assert len(calls) <= 4 * len(rules)


# --- section 3, literal mode ---------------------------------------------------------------------------


def test_literal_passes_on_the_cis_rules_with_comments():
    text = filter_table('-A INPUT -i lo -m comment --comment "loopback" -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A OUTPUT -o lo -j ACCEPT')
    result = evaluate_text(text, mode=LITERAL)
    assert result.status is PASS
    assert result.mode == LITERAL


@pytest.mark.parametrize(
    'rules, failing',
    [
        (['-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 ! -i lo -j DROP', '-A OUTPUT -o lo -j ACCEPT'], INPUT_DROP_LOOPBACK_SOURCE),
        (['-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j REJECT --reject-with icmp-port-unreachable', '-A OUTPUT -o lo -j ACCEPT'], INPUT_DROP_LOOPBACK_SOURCE),
        (['-A INPUT -i lo+ -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A OUTPUT -o lo -j ACCEPT'], INPUT_ACCEPT_LO),
        (['-A INPUT -j LOOP', '-A LOOP -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A OUTPUT -o lo -j ACCEPT'], INPUT_ACCEPT_LO),
        (['-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP'], OUTPUT_ACCEPT_LO),
    ],
)
def test_literal_wants_the_exact_rule_in_the_builtin_chain(rules, failing):
    result = evaluate_text(filter_table(*rules, chains=['LOOP']), mode=LITERAL)
    failed = {name for name, status in statuses(result).items() if status is FAIL}
    assert failed == {failing}


def test_literal_accept_must_stand_before_a_deny_of_its_class():
    text = filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
    accept = evaluate_text(text, mode=LITERAL).requirement(INPUT_ACCEPT_LO)
    assert accept.status is FAIL
    assert accept.deciding.index == 1
    assert accept.remediation == ('iptables -I INPUT 1 -i lo -j ACCEPT',)


def test_literal_has_no_partial_results():
    text = filter_table('-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT', '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A OUTPUT -o lo -j ACCEPT')
    assert evaluate_text(text).requirement(INPUT_DROP_LOOPBACK_SOURCE).status is PARTIAL
    assert evaluate_text(text, mode=LITERAL).status is PASS


def test_literal_ipv6_and_its_fix():
    assert evaluate_text(CIS_V6, family='ipv6', mode=LITERAL).status is PASS
    drop = evaluate_text(filter_table('-A INPUT -i lo -j ACCEPT'), family='ipv6', mode=LITERAL).requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert drop.status is FAIL
    assert drop.remediation == ('ip6tables -I INPUT 2 -s ::1/128 -j DROP',)


# --- the lo input class carries what the output path set (its packets were sent through lo) --------

_LO_ACCEPTS = ('-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')


@pytest.mark.parametrize(
    'before, criteria, expected',
    [
        (table('mangle', ['-A OUTPUT -o lo -j MARK --set-xmark 0x8000/0x8000']), '-m mark --mark 0x8000/0x8000', Status.FAIL),
        (table('mangle', ['-A POSTROUTING -j MARK --set-xmark 0x8000/0x8000']), '-m mark --mark 0x8000/0x8000', Status.FAIL),
        (table('mangle', ['-A OUTPUT -o lo -j MARK --set-xmark 0x0/0x8000']), '-m mark --mark 0x8000/0x8000', Status.PASS),
        (table('mangle', ['-A OUTPUT -p udp -j MARK --set-xmark 0x8000/0x8000']), '-m mark --mark 0x8000/0x8000', Status.PARTIAL),
        (table('raw', ['-A OUTPUT -j CT --notrack']), '-m conntrack --ctstate UNTRACKED', Status.FAIL),
        (table('raw', ['-A OUTPUT -j CT --notrack']), '-m conntrack --ctstate NEW,ESTABLISHED', Status.PASS),
        ('', '-m mark --mark 0x8000/0x8000', Status.PARTIAL),
    ],
)
def test_the_lo_input_class_keeps_what_the_output_path_set(before, criteria, expected):
    result = evaluate_text(before + filter_table('-A INPUT {} -j DROP'.format(criteria), *_LO_ACCEPTS))
    accept = result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is expected
    assert accept.deciding.index == (1 if expected is Status.FAIL else 2)


def test_a_drop_on_the_output_path_does_not_change_what_the_input_path_is_judged_on():
    text = table('mangle', ['-A OUTPUT -o lo -j MARK --set-xmark 0x8000/0x8000']) + filter_table(
        '-A INPUT -m mark --mark 0x8000/0x8000 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j DROP'
    )
    result = evaluate_text(text)
    assert result.requirement(OUTPUT_ACCEPT_LO).status is Status.FAIL
    assert result.requirement(INPUT_ACCEPT_LO).status is Status.FAIL


@pytest.mark.parametrize(
    'spoof_chain, expected',
    [
        (('-A SPOOF -j DROP',), Status.PASS),
        (('-A SPOOF -p udp -j DROP', '-A SPOOF -j REJECT'), Status.PASS),  # keeps every packet it gets
        (('-A SPOOF -j LOG',), Status.FAIL),  # they come back and get the policy
        (('-A SPOOF -p tcp -j RETURN', '-A SPOOF -j DROP'), Status.FAIL),  # TCP comes back
    ],
)
def test_coverage_counts_the_packets_a_jump_keeps(spoof_chain, expected):
    """Two jumps of the two /9 halves to a chain that drops what it gets: nothing of the class is left."""
    text = filter_table(
        '-A INPUT -i lo -j ACCEPT',
        '-A INPUT -s 127.0.0.0/9 -j SPOOF',
        '-A INPUT -s 127.128.0.0/9 -j SPOOF',
        '-A OUTPUT -o lo -j ACCEPT',
        *spoof_chain,
        chains=['SPOOF'],
    )
    spoof = evaluate_text(text).requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert spoof.status is expected
    if expected is Status.PASS:
        assert (spoof.deciding.chain, spoof.deciding.index) == ('SPOOF', len(spoof_chain))
    else:
        assert spoof.deciding.is_policy
