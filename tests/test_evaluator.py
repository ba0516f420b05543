"""Evaluator unit tests on strings: one or more per bullet of spec sections 2 (effective) and 3 (literal)."""
import pytest

from datadog_checks.loopback_traffic import classify as classify_module
from datadog_checks.loopback_traffic.classify import ALL, NONE, SOME, classify
from datadog_checks.loopback_traffic.evaluator import LITERAL
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
from datadog_checks.loopback_traffic.results import Status

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
    assert '{} {} rule 1'.format(table_name, chain) in accept.explanation


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
    assert 'established connections' in drop.explanation


def test_absent_tables_and_chains_accept():
    result = evaluate_text('*filter\n:FORWARD DROP [0:0]\nCOMMIT\n')
    assert statuses(result) == {INPUT_ACCEPT_LO: PASS, OUTPUT_ACCEPT_LO: PASS, INPUT_DROP_LOOPBACK_SOURCE: FAIL}
    assert 'no such chain loaded' in result.requirement(INPUT_ACCEPT_LO).explanation


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
    assert accept.deciding.describe() == 'filter INPUT policy DROP'


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
    assert accept.deviations[0].where.describe() == 'filter INPUT rule 1: -A INPUT -p udp --dport 53 -j DROP'
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
    assert '(legacy ruleset)' in accept.explanation
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
