"""The relation of a match to a packet class (spec section 2, "What the class's packets are known to
be"): one entry per match module, the state earlier rules set, coverage along the source address; and
the property that a rule matching no packet of any class changes nothing."""
from dataclasses import replace
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datadog_checks.loopback_traffic.classify import ALL, MODULES, NONE, SOME, after, classify, cover
from datadog_checks.loopback_traffic.evaluator import EFFECTIVE, LITERAL, Source, evaluate
from datadog_checks.loopback_traffic.model import Chain, Match, Option, RawRule, Rule, Ruleset, Table, Target
from datadog_checks.loopback_traffic.parser import parse_rule, parse_ruleset
from datadog_checks.loopback_traffic.requirements import (
    COMPLIANCE_RULES,
    CT_UNATTACHED,
    CT_UNTRACKED,
    INPUT_ACCEPT_LO,
    INPUT_DROP_LOOPBACK_SOURCE,
    OUTPUT_ACCEPT_LO,
    REQUIREMENTS,
    SET_IPV6_LOOPBACK_TRAFFIC,
    SET_LOOPBACK_TRAFFIC,
    Bits,
    requirement_named,
)

from .rulesets import filter_table
from .test_properties import rulesets

V4 = {r.name: r.packet_class(SET_LOOPBACK_TRAFFIC.loopback) for r in REQUIREMENTS}
V6 = {r.name: r.packet_class(SET_IPV6_LOOPBACK_TRAFFIC.loopback) for r in REQUIREMENTS}
LO_IN, LO_OUT, SPOOF = INPUT_ACCEPT_LO, OUTPUT_ACCEPT_LO, INPUT_DROP_LOOPBACK_SOURCE


def rule(criteria, target='ACCEPT', chain='INPUT'):
    text = '-A {} {} -j {}'.format(chain, criteria, target)
    return parse_ruleset(filter_table(text)).chain('filter', chain).rules[0]


def test_the_modules_are_one_table():
    assert {'', 'comment', 'addrtype', 'rpfilter', 'physdev', 'mark', 'connmark', 'conntrack', 'state', 'set'} <= set(MODULES)


@pytest.mark.parametrize(
    'criteria, requirement, expected',
    [
        # addrtype: loopback addresses are LOCAL
        ('-m addrtype --src-type LOCAL', SPOOF, ALL),
        ('-m addrtype --src-type LOCAL', LO_IN, ALL),
        ('-m addrtype --src-type UNICAST,LOCAL', SPOOF, ALL),
        ('-m addrtype ! --src-type LOCAL', SPOOF, NONE),
        ('-m addrtype --src-type UNICAST', SPOOF, NONE),
        ('-m addrtype --dst-type LOCAL', LO_IN, ALL),
        ('-m addrtype --dst-type LOCAL', LO_OUT, ALL),
        ('-m addrtype --dst-type LOCAL', SPOOF, SOME),  # any destination
        ('-m addrtype --src-type LOCAL --limit-iface-in', SPOOF, SOME),
        ('-m addrtype --src-type LOCAL ! -i lo', SPOOF, ALL),
        ('-m addrtype --src-type LOCAL ! -i lo', LO_IN, NONE),
        # rpfilter: lo passes the reverse-path test, loopback sources elsewhere fail it
        ('-m rpfilter --invert', SPOOF, ALL),
        ('-m rpfilter --invert', LO_IN, NONE),
        ('-m rpfilter', SPOOF, NONE),
        ('-m rpfilter', LO_IN, ALL),
        ('-m rpfilter --loose --invert', SPOOF, ALL),
        ('-m rpfilter --accept-local --loose --invert', SPOOF, NONE),
        ('-m rpfilter --validmark --invert', SPOOF, SOME),
        # physdev: bridged packets only
        ('-m physdev --physdev-in eth0', LO_IN, NONE),
        ('-m physdev --physdev-is-bridged', LO_OUT, NONE),
        ('-m physdev ! --physdev-is-in', LO_IN, ALL),
        ('-m physdev --physdev-in eth0', SPOOF, SOME),
        # comment: always
        ('-m comment --comment "x y"', SPOOF, ALL),
        # without state set earlier: some
        ('-m mark --mark 0x1', LO_IN, SOME),
        ('-m connmark --mark 0x1', LO_IN, SOME),
        ('-m conntrack --ctstate UNTRACKED', SPOOF, SOME),
        ('-m set --match-set lo src', LO_IN, SOME),  # a set whose contents were not read with the rules
        ('-m frobnicate --level 3', LO_IN, SOME),
    ],
)
def test_module_relations(criteria, requirement, expected):
    chain = 'OUTPUT' if requirement == LO_OUT else 'INPUT'
    assert classify(rule(criteria, chain=chain), V4[requirement]) is expected


def test_the_native_forms_are_judged_by_the_same_entries():
    fib_missing = Rule('INPUT', (Match('rpfilter', (Option('--invert'),)),), Target('DROP'))
    assert classify(fib_missing, V4[SPOOF]) is ALL and classify(fib_missing, V4[LO_IN]) is NONE
    local = Rule('INPUT', (Match('addrtype', (Option('--src-type', ('LOCAL',)),)),), Target('DROP'))
    assert classify(local, V6[SPOOF]) is ALL
    native = Rule('INPUT', (Match('nft', (Option('meta cpu 1'),)),), Target('DROP'))
    assert classify(native, V4[LO_IN]) is SOME


def test_bits():
    bits = Bits().set_xmark(0x8000, 0x8000)
    assert bits.test(0x8000, 0x8000) is True
    assert bits.test(0, 0x8000) is False
    assert bits.test(0x8001, 0xFFFF) is None  # the other bits are not known
    assert Bits().set_xmark(0x1, 0xFFFFFFFF).test(0x1, 0xFFFFFFFF) is True
    assert bits.meet(Bits()).known == 0
    assert bits.meet(Bits().set_xmark(0x8000, 0xC000)).known == 0x8000


@pytest.mark.parametrize(
    'setting, criteria, expected',
    [
        ('-j MARK --set-xmark 0x8000/0x8000', '-m mark --mark 0x8000/0x8000', ALL),
        ('-j MARK --set-xmark 0x8000/0x8000', '-m mark ! --mark 0x8000/0x8000', NONE),
        ('-j MARK --set-xmark 0x0/0x8000', '-m mark --mark 0x8000/0x8000', NONE),  # the bits contradict
        ('-j MARK --set-xmark 0x8000/0x8000', '-m mark --mark 0x8000', SOME),  # the other bits are not known
        ('-j MARK --set-mark 0x2', '-m mark --mark 0x2', ALL),
        ('-j MARK --or-mark 0x4', '-m mark --mark 0x4/0x4', ALL),
        ('-j MARK --and-mark 0x0', '-m mark --mark 0x0', ALL),
        # INVALID packets have no connection (the match fails for them): never all, but none where it contradicts
        ('-j CONNMARK --set-xmark 0x1/0xffffffff', '-m connmark --mark 0x1', SOME),
        ('-j CONNMARK --set-xmark 0x1/0xffffffff', '-m connmark --mark 0x2', NONE),
        ('-j CONNMARK --set-xmark 0x1/0xffffffff', '-m connmark ! --mark 0x1', NONE),
        ('-j MARK --set-xmark 0x8000/0x8000', '-m connmark --mark 0x8000/0x8000', SOME),
    ],
)
def test_state_set_for_the_whole_class(setting, criteria, expected):
    setter = rule('', setting.split()[1] + ' ' + ' '.join(setting.split()[2:]))
    packets = after(setter, ALL, V4[LO_IN])
    assert classify(rule(criteria), packets) is expected


def test_a_field_set_for_part_of_the_class_stays_some():
    setter = rule('-p tcp', 'MARK --set-xmark 0x8000/0x8000')
    packets = after(setter, classify(setter, V4[LO_IN]), V4[LO_IN])
    assert classify(rule('-m mark --mark 0x8000/0x8000'), packets) is SOME


def test_notrack_makes_the_state_untracked_only_before_conntrack():
    notrack = rule('', 'CT --notrack')
    unattached = replace(V4[SPOOF], conntrack=CT_UNATTACHED)
    untracked = after(notrack, ALL, unattached)
    assert untracked.conntrack == CT_UNTRACKED
    assert classify(rule('-m conntrack --ctstate UNTRACKED'), untracked) is ALL
    assert classify(rule('-m state --state UNTRACKED'), untracked) is ALL
    assert classify(rule('-m conntrack --ctstate RELATED,ESTABLISHED'), untracked) is NONE
    assert classify(rule('-m conntrack ! --ctstate UNTRACKED'), untracked) is NONE
    assert classify(rule('-m connmark --mark 0x1'), untracked) is NONE
    # Packets already tracked (lo input: on their way out) are left as they were.
    assert after(notrack, ALL, V4[LO_IN]) == V4[LO_IN]


def _zone_match(*values, negated=False):
    return Rule('INPUT', (Match('ctzone', (Option('--zone', values, negated),)),), Target('DROP'))


def test_a_ct_zone_set_before_conntrack_makes_zone_matches_decidable():
    unattached = replace(V4[SPOOF], conntrack=CT_UNATTACHED)
    zoned = after(rule('', 'CT --zone 5'), ALL, unattached)
    # INVALID packets have no connection, so no zone: a zone match is never all of a class
    assert classify(_zone_match('5'), zoned) is SOME
    assert classify(_zone_match('1', '5'), zoned) is SOME
    assert classify(_zone_match('5', negated=True), zoned) is NONE
    assert classify(_zone_match('6'), zoned) is NONE
    assert classify(_zone_match('6', negated=True), zoned) is SOME
    assert classify(_zone_match('5'), unattached) is SOME  # no template: the zone is not known
    assert after(rule('', 'CT --zone-orig 7'), ALL, unattached).zone.test(7, 0xFFFF) is True
    assert classify(_zone_match('7'), after(rule('', 'CT --zone-orig 7'), ALL, unattached)) is SOME
    assert after(rule('', 'CT --zone mark'), ALL, unattached).zone.known == 0
    # Set for part of the class, or on packets already tracked: not known.
    part = rule('-p udp', 'CT --zone 5')
    assert classify(_zone_match('5'), after(part, classify(part, unattached), unattached)) is SOME
    assert after(rule('', 'CT --zone 5'), ALL, V4[LO_IN]) == V4[LO_IN]
    # Untracked packets have no connection: the native expression never matches.
    untracked = after(rule('', 'CT --notrack'), ALL, unattached)
    assert classify(_zone_match('5'), untracked) is NONE and classify(_zone_match('5', negated=True), untracked) is NONE


def test_coverage_along_the_source_address():
    packets = V4[SPOOF]
    first = cover(rule('-s 127.0.0.0/9'), packets, (packets.source,))
    assert first[0] is SOME and [str(n) for n in first[1]] == ['127.128.0.0/9']
    assert cover(rule('-s 127.128.0.0/9'), packets, first[1]) == (ALL, ())
    assert cover(rule('-s 127.0.0.0/10'), packets, first[1])[0] is NONE
    assert cover(rule('-s 127.128.0.0/9 -p tcp'), packets, first[1])[0] is SOME
    assert cover(rule('-p tcp'), packets, first[1]) is None


# --- the property: a rule that matches no packet of any class changes no result ------------------------

NEVER_MATCHING = [
    '-s 10.0.0.0/8 -s fe80::/10',
    '! -s 127.0.0.0/8 ! -s ::1/128 -p tcp',
    '-i lo -o lo',
    '-m addrtype ! --src-type LOCAL',
    '-m physdev --physdev-is-in -i lo -m comment --comment x',
    '-m rpfilter --invert -i lo',
    '-m mark --mark 0x1/0x0',
]
ANY_TARGET = ['-j ACCEPT', '-j DROP', '-j REJECT', '-j RETURN', '-j QUEUE', '-j MARK --set-xmark 0x1/0x1', '-j CT --notrack',
              '-j A', '-g B', '-j UNDECLARED', '-j SYNPROXY', '-j INPUT', '']


def _never_matching_for_every_class(text):
    candidate = parse_rule(RawRule(0, '-A X ' + text))
    return all(classify(candidate, packets) is NONE for classes in (V4, V6) for packets in classes.values())


def test_the_never_matching_criteria_are_none_for_every_class():
    for criteria in NEVER_MATCHING:
        assert _never_matching_for_every_class(criteria), criteria


def _observable(result):
    if result.error:
        return ('error', result.status)
    return tuple(
        (
            r.requirement,
            r.status,
            r.verdict,
            (r.deciding.table, r.deciding.chain, r.deciding.text) if r.deciding else None,
            sorted((d.where.table, d.where.chain, d.where.text, d.verdict, d.part) for d in r.deviations),
        )
        for r in result.requirements
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rulesets(), st.data())
def test_adding_a_rule_that_matches_no_class_changes_no_result(generated, data):
    ruleset, tables = generated
    if not tables:
        return
    table_name = data.draw(st.sampled_from(sorted(tables)))
    chains = dict(tables[table_name].chains)
    chain_name = data.draw(st.sampled_from(sorted(chains)))
    chain = chains[chain_name]
    criteria = data.draw(st.sampled_from(NEVER_MATCHING))
    target = data.draw(st.sampled_from(ANY_TARGET))
    position = data.draw(st.integers(0, len(chain.raw_rules)))
    line = RawRule(0, '-A {} {} {}'.format(chain_name, criteria, target).strip())
    raw = chain.raw_rules[:position] + (line,) + chain.raw_rules[position:]
    chains[chain_name] = Chain(chain.name, chain.policy, raw, parse_rule, chain.counters, base=chain.base)
    changed = Ruleset(MappingProxyType({**ruleset.tables, table_name: Table(table_name, MappingProxyType(chains))}))
    for compliance_rule in COMPLIANCE_RULES:
        for mode in (EFFECTIVE, LITERAL):
            before = evaluate(compliance_rule, [Source(ruleset)], mode)
            now = evaluate(compliance_rule, [Source(changed)], mode)
            assert _observable(now) == _observable(before), (criteria, target, chain_name)


def test_requirements_carry_their_class_and_literal_rule_as_data():
    accept = requirement_named(INPUT_ACCEPT_LO)
    assert accept.literal.text(SET_LOOPBACK_TRAFFIC.loopback) == '-A INPUT -i lo -j ACCEPT'
    assert requirement_named(INPUT_DROP_LOOPBACK_SOURCE).literal.text(SET_IPV6_LOOPBACK_TRAFFIC.loopback) == '-A INPUT -s ::1/128 -j DROP'
    spoof = requirement_named(INPUT_DROP_LOOPBACK_SOURCE).packet_class(SET_LOOPBACK_TRAFFIC.loopback)
    assert spoof.destination is None and spoof.in_interface.all_but


_ADDRESS_TEXT = st.one_of(
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(), st.integers(-1, 130)).map(lambda pair: '{}/{}'.format(*pair)),
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)).map(lambda pair: '{}/{}'.format(*pair)),  # a dotted mask
    st.text(alphabet='0123456789abcdef.:/x +-', max_size=24),
)


@settings(max_examples=400, deadline=None)
@given(_ADDRESS_TEXT, st.sampled_from([4, 6]))
def test_the_fast_address_parse_agrees_with_ipaddress(text, version):
    from datadog_checks.loopback_traffic.classify import _parsed_range, _prefix_range

    assert _prefix_range(text, version) == _parsed_range(text, version)
