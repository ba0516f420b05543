"""`-m set` matches judged from the contents of their ipsets (spec section 2, sets): the contents
joined to the rules of both front-ends, the relation of each set type to each class, and what is
said where the contents are not known. Pure: sets are built as the ipset reader returns them."""
import ipaddress
import struct

import pytest

from datadog_checks.loopback_traffic.classify import ALL, NONE, SOME, classify
from datadog_checks.loopback_traffic.collect import Collected, collected_text
from datadog_checks.loopback_traffic.evaluator import Source, evaluate
from datadog_checks.loopback_traffic.ipset import IpSet, IpsetSnapshot, Member
from datadog_checks.loopback_traffic.ipset_contents import NOT_IN_A_SAVED_RULESET, SetsRead, resolve_rule, with_sets
from datadog_checks.loopback_traffic.model import Match, Option, Rule, Target
from datadog_checks.loopback_traffic.nft_decode import _m_set
from datadog_checks.loopback_traffic.parser import parse_ruleset
from datadog_checks.loopback_traffic.report import describe_position, explanation, message
from datadog_checks.loopback_traffic.requirements import (
    INPUT_ACCEPT_LO,
    INPUT_DROP_LOOPBACK_SOURCE,
    OUTPUT_ACCEPT_LO,
    REQUIREMENTS,
    SET_IPV6_LOOPBACK_TRAFFIC,
    SET_LOOPBACK_TRAFFIC,
    Bits,
)
from datadog_checks.loopback_traffic.results import Status

from .rulesets import filter_table

V4 = {r.name: r.packet_class(SET_LOOPBACK_TRAFFIC.loopback) for r in REQUIREMENTS}
V6 = {r.name: r.packet_class(SET_IPV6_LOOPBACK_TRAFFIC.loopback) for r in REQUIREMENTS}
LO_IN, LO_OUT, SPOOF = INPUT_ACCEPT_LO, OUTPUT_ACCEPT_LO, INPUT_DROP_LOOPBACK_SOURCE


def net(text):
    return ipaddress.ip_network(text)


def a_set(name, kind, *members, family='inet', index=0, **header):
    return IpSet(name, kind, family, index=index, members=tuple(members), **header)


def nets(*texts, nomatch=()):
    return tuple(Member(address=net(t)) for t in texts) + tuple(Member(address=net(t), nomatch=True) for t in nomatch)


def sets(*found):
    return SetsRead(IpsetSnapshot(tuple(found)))


def set_rule(reference, directions='src', negated=False, extra=(), target='DROP'):
    option = Option('--match-set', (reference, directions), negated)
    text = '-A INPUT -m set {}--match-set {} {} -j {}'.format('! ' if negated else '', reference, directions, target)
    return Rule('INPUT', (Match('set', (option,) + tuple(extra)),), Target(target), text=text)


def judged(found, requirement, reference='s', directions='src', negated=False, extra=(), version=4):
    resolved = resolve_rule(set_rule(reference, directions, negated, extra), sets(*found) if found is not None else None)
    return classify(resolved, (V4 if version == 4 else V6)[requirement])


LOOP = a_set('s', 'hash:net', *nets('127.0.0.0/8'))


@pytest.mark.parametrize(
    'found, requirement, directions, negated, expected',
    [
        (LOOP, SPOOF, 'src', False, ALL),
        (LOOP, SPOOF, 'src', True, NONE),
        (LOOP, LO_IN, 'dst', False, ALL),  # lo input goes to a loopback address
        (LOOP, SPOOF, 'dst', False, SOME),  # a spoofed packet goes anywhere
        (a_set('s', 'hash:net', *nets('127.0.0.0/9', '127.128.0.0/9')), SPOOF, 'src', False, ALL),  # the union covers the class
        (a_set('s', 'hash:net', *nets('127.0.0.0/9')), SPOOF, 'src', False, SOME),
        (a_set('s', 'hash:net', *nets('10.0.0.0/8')), SPOOF, 'src', False, NONE),
        (a_set('s', 'hash:net'), SPOOF, 'src', False, NONE),  # an empty set matches nothing
        (a_set('s', 'hash:net'), SPOOF, 'src', True, ALL),
        (a_set('s', 'hash:ip', Member(address=net('127.0.0.1/32'))), SPOOF, 'src', False, SOME),
        (a_set('s', 'hash:net', *nets('127.0.0.0/8', nomatch=('127.0.0.0/9',))), SPOOF, 'src', False, SOME),
        (a_set('s', 'hash:net', *nets('127.0.0.0/8', nomatch=('10.0.0.0/9',))), SPOOF, 'src', False, ALL),
        (a_set('s', 'bitmap:ip', Member(address=net('127.0.0.0/8'))), SPOOF, 'src', False, ALL),
        # more dimensions: the address decides NONE; ports are never all of a class
        (a_set('s', 'hash:net,port', Member(address=net('127.0.0.0/8'), port=53, proto=17)), SPOOF, 'src,dst', False, SOME),
        (a_set('s', 'hash:net,port', Member(address=net('10.0.0.0/8'), port=53, proto=17)), SPOOF, 'src,dst', False, NONE),
        (a_set('s', 'hash:net,port', Member(address=net('127.0.0.0/8'), port=53, proto=17)), SPOOF, 'src', False, NONE),  # too few directions
        (a_set('s', 'hash:net,iface', Member(address=net('127.0.0.0/8'), interface='lo')), LO_IN, 'src,src', False, ALL),
        (a_set('s', 'hash:net,iface', Member(address=net('127.0.0.0/8'), interface='lo')), SPOOF, 'src,src', False, NONE),
        (a_set('s', 'hash:net,iface', Member(address=net('127.0.0.0/8'), interface='lo')), LO_OUT, 'src,dst', False, ALL),
        (a_set('s', 'hash:net,iface', Member(address=net('127.0.0.0/8'), interface='eth', interface_wildcard=True)), SPOOF, 'src,src', False, SOME),
        (a_set('s', 'hash:net,iface', Member(address=net('127.0.0.0/8'), interface='lo', physdev=True)), LO_IN, 'src,src', False, SOME),
        (a_set('s', 'hash:net,net', Member(address=net('127.0.0.0/8'), address2=net('127.0.0.0/8'))), LO_IN, 'src,dst', False, ALL),
        (a_set('s', 'hash:net,net', Member(address=net('127.0.0.0/8'), address2=net('10.0.0.0/8'))), LO_IN, 'src,dst', False, NONE),
        (
            a_set('s', 'hash:net,iface', Member(address=net('127.0.0.0/8'), interface='lo'), Member(address=net('127.0.0.0/9'), interface='lo', nomatch=True)),
            LO_IN, 'src,src', False, SOME,
        ),
        (a_set('s', 'hash:mac', Member(mac='00:11:22:33:44:55')), LO_IN, 'src', False, SOME),
        (a_set('s', 'hash:net', *nets('::1/128'), family='inet6'), SPOOF, 'src', False, NONE),  # a set of the other family
        (a_set('s', 'hash:net', *nets('127.0.0.0/8'), bitmask=ipaddress.ip_address('255.0.255.0')), SPOOF, 'src', False, SOME),
    ],
)
def test_set_relations(found, requirement, directions, negated, expected):
    assert judged((found,), requirement, directions=directions, negated=negated) is expected


def test_ipv6_sets():
    loop6 = a_set('s', 'hash:net', *nets('::1/128'), family='inet6')
    assert judged((loop6,), SPOOF, version=6) is ALL
    assert judged((LOOP,), SPOOF, version=6) is NONE


def test_a_mark_dimension_is_judged_from_the_mark_earlier_rules_set():
    marked = a_set('s', 'hash:ip,mark', Member(address=net('127.0.0.0/8'), mark=0x8000), markmask=0x8000)
    rule = resolve_rule(set_rule('s', 'dst,src'), sets(marked))
    assert classify(rule, V4[LO_IN]) is SOME
    from dataclasses import replace

    assert classify(rule, replace(V4[LO_IN], mark=Bits().set_xmark(0x8000, 0x8000))) is ALL
    assert classify(rule, replace(V4[LO_IN], mark=Bits().set_xmark(0, 0x8000))) is NONE


def test_a_list_set_matches_what_any_member_set_matches():
    other = a_set('other', 'hash:net', *nets('10.0.0.0/8'), index=1)
    listed = a_set('s', 'list:set', Member(set_name='other'), Member(set_name='loop'), family='unspec', index=2)
    loop = a_set('loop', 'hash:net', *nets('127.0.0.0/8'), index=3)
    assert judged((other, listed, loop), SPOOF) is ALL
    assert judged((other, a_set('s', 'list:set', Member(set_name='other'), family='unspec')), SPOOF) is NONE
    assert judged((a_set('s', 'list:set', family='unspec'),), SPOOF) is NONE  # an empty list
    missing = resolve_rule(set_rule('s'), sets(a_set('s', 'list:set', Member(set_name='gone'), family='unspec')))
    assert classify(missing, V4[SPOOF]) is SOME
    assert 'lists gone, which was not read' in missing.matches[0].contents.unknown


@pytest.mark.parametrize(
    'extra, expected',
    [
        ((Option('--update-counters', (), True), Option('--update-subcounters', (), True)), ALL),  # no effect on what matches
        ((Option('--packets-gt', ('5',)),), SOME),
        ((Option('--bytes-eq', ('7',), True),), SOME),
        ((Option('--return-nomatch'),), NONE),  # only nomatch members match then: there are none
    ],
)
def test_match_options(extra, expected):
    assert judged((LOOP,), SPOOF, extra=extra) is expected


def test_return_nomatch_matches_the_nomatch_members_only():
    flag = (Option('--return-nomatch'),)
    holes = a_set('s', 'hash:net', *nets('127.0.0.0/8', nomatch=('127.0.0.0/9',)))
    assert judged((holes,), SPOOF, extra=flag) is SOME
    assert judged((holes,), SPOOF, extra=flag, negated=True) is SOME
    elsewhere = a_set('s', 'hash:net', *nets('127.0.0.0/8', nomatch=('10.0.0.0/9',)))
    assert judged((elsewhere,), SPOOF, extra=flag) is NONE
    assert judged((LOOP,), SPOOF, extra=flag, negated=True) is ALL
    # A type without nomatch members (no net dimension) ignores the flag.
    hosts = a_set('s', 'hash:ip', Member(address=net('127.0.0.1/32')))
    assert judged((hosts,), SPOOF, extra=flag) is SOME
    listed = a_set('s', 'list:set', Member(set_name='loop'), family='unspec')
    assert judged((listed, a_set('loop', 'hash:net', *nets('127.0.0.0/8'))), SPOOF, extra=flag) is NONE


def test_sets_not_read_keep_the_match_some_and_say_why():
    assert judged(None, SPOOF) is SOME  # a saved ruleset
    unread = SetsRead(unread='the ipsets could not be read: reading the ipsets needs CAP_NET_ADMIN')
    rule = resolve_rule(set_rule('s'), unread)
    assert classify(rule, V4[SPOOF]) is SOME and 'CAP_NET_ADMIN' in rule.matches[0].contents.unknown
    gone = resolve_rule(set_rule('#7'), sets(LOOP))
    assert classify(gone, V4[SPOOF]) is SOME and 'no ipset #7 was read' in gone.matches[0].contents.unknown
    odd = resolve_rule(set_rule('s'), sets(a_set('s', 'frob')))
    assert classify(odd, V4[SPOOF]) is SOME and 'does not model' in odd.matches[0].contents.unknown


def test_the_kernels_index_is_looked_up_and_the_text_names_the_set():
    found = a_set('loopnets', 'hash:net', *nets('127.0.0.0/8'), index=4)
    rule = resolve_rule(set_rule('#4'), sets(a_set('other', 'hash:net', index=3), found))
    assert classify(rule, V4[SPOOF]) is ALL
    assert '--match-set loopnets src' in rule.text and '#4' not in rule.text


@pytest.mark.parametrize(
    'revision, info, options',
    [
        (1, struct.pack('=HBB', 4, 1, 0b010), [('--match-set', ('#4', 'src'), False)]),
        (1, struct.pack('=HBB', 4, 2, 0b101), [('--match-set', ('#4', 'dst,src'), True)]),
        # v4: counter value then operator; flags at 40 (return-nomatch, skip counter update)
        (
            4,
            struct.pack('=HBB4xQB7xQB7xI4x', 4, 1, 0b010, 5, 4, 0, 0, 0x88),
            [('--match-set', ('#4', 'src'), False), ('--packets-gt', ('5',), False), ('--update-counters', (), True), ('--return-nomatch', (), False)],
        ),
        # revisions 1 and 2: return-nomatch in the flags byte
        (2, struct.pack('=HBB', 4, 1, 0x82), [('--match-set', ('#4', 'src'), False), ('--return-nomatch', (), False)]),
        # revision 0: a u32 per dimension (IPSET_SRC 1, IPSET_DST 2, IPSET_MATCH_INV 4 in the first), up to the first zero
        (0, struct.pack('=H2x7I', 4, 1 | 4, 2, 0, 1, 0, 0, 0), [('--match-set', ('#4', 'src,dst'), True)]),
        # v3: operator then value
        (3, struct.pack('=HBB4xB7xQB7xQI4x', 4, 1, 0b010, 0, 0, 2, 7, 0), [('--match-set', ('#4', 'src'), False), ('--bytes-eq', ('7',), True)]),
    ],
)
def test_the_netlink_front_end_decodes_the_set_match(revision, info, options):
    match = _m_set(info, revision, 0)
    assert [(o.name, o.values, o.negated) for o in match.options] == options


def _cis_with_set(name='loop'):
    return filter_table('-A INPUT -i lo -j ACCEPT', '-A INPUT -m set --match-set {} src -j DROP'.format(name), '-A OUTPUT -o lo -j ACCEPT')


def _evaluate(text, read):
    return evaluate(SET_LOOPBACK_TRAFFIC, [Source(with_sets(parse_ruleset(text), read))])


def test_the_text_front_end_judges_the_set_by_name():
    result = _evaluate(_cis_with_set(), sets(a_set('loop', 'hash:net', *nets('127.0.0.0/8'))))
    assert result.status is Status.PASS
    assert result.requirement(SPOOF).deciding.index == 2 and result.requirement(SPOOF).uncertain == ()


def test_a_saved_ruleset_says_the_set_could_not_be_judged():
    collected = collected_text(_cis_with_set(), '/tmp/saved')
    assert collected.sets is not None and collected.sets.unread == NOT_IN_A_SAVED_RULESET
    result = _evaluate(collected.text, collected.sets)
    spoof = result.requirement(SPOOF)
    assert spoof.status is Status.FAIL and spoof.deciding.is_policy
    assert spoof.uncertain == ('ipset loop: ' + NOT_IN_A_SAVED_RULESET,)
    assert NOT_IN_A_SAVED_RULESET in explanation(spoof)
    assert NOT_IN_A_SAVED_RULESET in message(result)


def test_a_some_rule_of_an_unknown_set_names_the_reason_where_it_deviates():
    text = filter_table('-A INPUT -i lo -j ACCEPT', '-A INPUT -m set --match-set keep src -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP',
                        '-A OUTPUT -o lo -j ACCEPT')
    result = _evaluate(text, SetsRead(unread='the ipsets could not be read: denied'))
    spoof = result.requirement(SPOOF)
    assert spoof.status is Status.PARTIAL
    (deviation,) = spoof.deviations
    assert deviation.where.index == 2 and 'ipset keep: the ipsets could not be read: denied' in describe_position(deviation.where)


def test_a_set_changed_behind_the_same_rules_is_another_ruleset():
    text = _cis_with_set()
    before = Collected('nft', 'iptables-save', text, sets=sets(a_set('loop', 'hash:net', *nets('127.0.0.0/8'))))
    same = Collected('nft', 'iptables-save', text, sets=sets(a_set('loop', 'hash:net', *nets('127.0.0.0/8'))))
    after = Collected('nft', 'iptables-save', text, sets=sets(a_set('loop', 'hash:net')))
    assert before.identity == same.identity and before.identity != after.identity
    reordered = sets(a_set('loop', 'hash:net', *nets('127.0.0.0/9', '127.128.0.0/9')))
    assert sets(a_set('loop', 'hash:net', *nets('127.128.0.0/9', '127.0.0.0/9'))).identity == reordered.identity


def test_members_in_an_unforeseen_shape_keep_the_match_some_instead_of_failing():
    odd = a_set('s', 'hash:net', Member(address='127.0.0.0/8'))  # not a network object
    rule = resolve_rule(set_rule('s'), sets(odd))
    assert classify(rule, V4[SPOOF]) is SOME
    assert 'could not be compared' in rule.matches[0].contents.unknown
