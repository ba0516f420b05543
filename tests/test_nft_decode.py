"""nf_tables expressions -> the model (loopback_traffic.nft_decode): byte-built fixtures for every
construct, and real rulesets loaded into lt- namespaces, read back over netlink and decoded."""
import base64
import pickle
import struct
import textwrap

import pytest

from datadog_checks.loopback_traffic.model import JUMP, STATEMENT, BaseChain, Match, Option, Rule, Target
from datadog_checks.loopback_traffic.nf_tables import (
    NFT_DATA_VERDICT,
    NFT_SET_ANONYMOUS,
    NFT_SET_CONCAT,
    NFT_SET_INTERVAL,
    NFT_SET_MAP,
    KernelChain,
    KernelRuleset,
    KernelTable,
)
from datadog_checks.loopback_traffic.nft_decode import decode_rule, decode_tables
from datadog_checks.loopback_traffic.parser import parse_ruleset

from . import nft_bytes as nb
from .netns import require_tools
from .rulesets import CIS_V4

NETWORK, TRANSPORT = 1, 2
META_MARK, META_IIF, META_IIFNAME, META_OIFNAME, META_NFPROTO, META_L4PROTO = 3, 4, 6, 7, 15, 16
CT_STATE, CT_MARK, CT_ZONE = 0, 3, 17
LO = nb.ifname('lo')


def builtin(name, *values, negated=False):
    return Match('', (Option(name, values, negated),))


def decode(*expressions, sets=None, family='ip', iptables=True, comment=None):
    return decode_rule(nb.rule(*expressions, family=family, comment=comment), sets or {}, family, iptables=iptables)


def native(*expressions, sets=None, family='inet', comment=None):
    return decode(*expressions, sets=sets, family=family, iptables=False, comment=comment)


# ----------------------------------------------------------------------------- iptables-nft's encodings


def test_source_prefix_as_iptables_nft_writes_it():
    rule = decode(nb.payload(NETWORK, 12, 1), nb.cmp(nb.EQ, b'\x7f'), nb.counter(), nb.verdict(nb.DROP))
    assert rule == Rule('INPUT', (builtin('-s', '127.0.0.0/8'),), Target('DROP', kind=STATEMENT))
    assert (rule.text, rule.handle, rule.undecoded) == ('-A INPUT -s 127.0.0.0/8 -j DROP', 7, '')


def test_negated_source_and_a_partial_byte_prefix():
    rule = decode(nb.payload(NETWORK, 12, 2), nb.bitwise(b'\xff\xf0'), nb.cmp(nb.NEQ, b'\xac\x10'), nb.verdict(nb.DROP))
    assert rule.matches == (builtin('-s', '172.16.0.0/12', negated=True),)
    assert rule.text == '-A INPUT ! -s 172.16.0.0/12 -j DROP'


def test_host_address_and_non_prefix_mask():
    host = decode(nb.payload(NETWORK, 16, 4), nb.cmp(nb.EQ, bytes([127, 0, 0, 1])), nb.verdict(nb.ACCEPT))
    assert host.matches == (builtin('-d', '127.0.0.1/32'),)
    masked = decode(nb.payload(NETWORK, 16, 4), nb.bitwise(bytes([255, 0, 255, 0])), nb.cmp(nb.EQ, bytes([10, 0, 0, 0])), nb.verdict(nb.DROP))
    assert masked.matches == (builtin('-d', '10.0.0.0/255.0.255.0'),)


def test_ipv6_source():
    rule = decode(nb.payload(NETWORK, 8, 16), nb.cmp(nb.EQ, bytes(15) + b'\x01'), nb.verdict(nb.DROP), family='ip6')
    assert rule.matches == (builtin('-s', '::1/128'),)
    assert rule.text == '-A INPUT -s ::1/128 -j DROP'


@pytest.mark.parametrize('data, op, option', [
    (b'lo\0', nb.EQ, builtin('-i', 'lo')),
    (b'lo', nb.EQ, builtin('-i', 'lo+')),
    (b'lo\0', nb.NEQ, builtin('-i', 'lo', negated=True)),
    (LO, nb.EQ, builtin('-i', 'lo')),
])
def test_input_interface(data, op, option):
    rule = decode(nb.meta(META_IIFNAME), nb.cmp(op, data), nb.verdict(nb.ACCEPT))
    assert rule.matches == (option,)


def test_output_interface_text():
    assert decode(nb.meta(META_OIFNAME), nb.cmp(nb.EQ, b'lo\0'), nb.verdict(nb.ACCEPT)).text == '-A INPUT -o lo -j ACCEPT'


def test_protocol_and_port_make_iptables_tcp_match():
    rule = decode(nb.meta(META_L4PROTO), nb.cmp(nb.EQ, b'\x06'), nb.payload(TRANSPORT, 2, 2), nb.cmp(nb.EQ, b'\x00\x16'), nb.verdict(nb.ACCEPT))
    assert rule.matches == (builtin('-p', 'tcp'), Match('tcp', (Option('--dport', ('22',)),)))
    assert rule.text == '-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT'


def test_port_range_from_two_comparisons_and_both_ports_in_one_match():
    rule = decode(nb.meta(META_L4PROTO), nb.cmp(nb.EQ, b'\x11'), nb.payload(TRANSPORT, 0, 2), nb.cmp(nb.EQ, b'\x00\x35'),
                  nb.payload(TRANSPORT, 2, 2), nb.cmp(nb.GTE, (1000).to_bytes(2, 'big')), nb.cmp(nb.LTE, (2000).to_bytes(2, 'big')),
                  nb.verdict(nb.ACCEPT))
    assert rule.matches[1] == Match('udp', (Option('--sport', ('53',)), Option('--dport', ('1000:2000',))))


def conntrack_info(state_mask, invert=False, alias=False):
    flags = 1 | (1 << 13 if alias else 0)
    return bytes(146) + struct.pack('=HHHH', flags, 1 if invert else 0, state_mask, 0) + bytes(8)


@pytest.mark.parametrize('info, expected', [
    (conntrack_info(2 | 4), Match('conntrack', (Option('--ctstate', ('RELATED,ESTABLISHED',)),))),
    (conntrack_info(8, invert=True), Match('conntrack', (Option('--ctstate', ('NEW',), True),))),
    (conntrack_info(256 | 1), Match('conntrack', (Option('--ctstate', ('INVALID,UNTRACKED',)),))),
    (conntrack_info(8, alias=True), Match('state', (Option('--state', ('NEW',)),))),
])
def test_compat_conntrack(info, expected):
    rule = decode(nb.compat_match('conntrack', 3, info), nb.verdict(nb.ACCEPT))
    assert rule.matches == (expected,)


def test_compat_state_addrtype_mark_comment_limit_multiport_rpfilter():
    cases = [
        (('state', 0, struct.pack('=I', 2)), Match('state', (Option('--state', ('ESTABLISHED',)),))),
        (('addrtype', 1, struct.pack('=HHI', 4, 0, 0)), Match('addrtype', (Option('--src-type', ('LOCAL',)),))),
        (('addrtype', 1, struct.pack('=HHI', 0, 4 | 2, 2)), Match('addrtype', (Option('--dst-type', ('UNICAST,LOCAL',), True),))),
        (('mark', 1, struct.pack('=IIB', 0x8000, 0x8000, 1) + bytes(3)), Match('mark', (Option('--mark', ('0x8000/0x8000',), True),))),
        (('comment', 0, b'hello world'.ljust(256, b'\0')), Match('comment', (Option('--comment', ('hello world',)),))),
        (('limit', 0, struct.pack('=II', 120000, 5) + bytes(24)), Match('limit', (Option('--limit', ('5/min',)),))),
        (('multiport', 1, struct.pack('=BB15H15BB', 1, 3, 53, 1000, 2000, *([0] * 12), 0, 1, 0, *([0] * 12), 0)),
         Match('multiport', (Option('--dports', ('53,1000:2000',)),))),
        (('rpfilter', 0, bytes([8]) + bytes(3)), Match('rpfilter', (Option('--invert'),))),
        (('pkttype', 0, struct.pack('=ii', 1, 0)), Match('pkttype', (Option('--pkt-type', ('broadcast',)),))),
        (('tcp', 0, struct.pack('=4H4B', 0, 0xFFFF, 22, 22, 0, 0x12, 0x02, 0)),
         Match('tcp', (Option('--dport', ('22',)), Option('--tcp-flags', ('SYN,ACK', 'SYN'))))),
        (('physdev', 0, bytes(64) + bytes([0, 4]) + bytes(2)), Match('physdev', (Option('--physdev-is-bridged'),))),
        (('owner', 1, bytes(16)), Match('owner', ())),
    ]
    for (name, revision, info), expected in cases:
        rule = decode(nb.compat_match(name, revision, info), nb.verdict(nb.ACCEPT))
        assert rule.matches == (expected,), name
        assert rule.undecoded == '', name


def test_native_mark_match_in_an_iptables_table():
    rule = decode(nb.meta(META_MARK), nb.bitwise(nb.host32(0x8000)), nb.cmp(nb.EQ, nb.host32(0x8000)), nb.verdict(nb.ACCEPT))
    assert rule.matches == (Match('mark', (Option('--mark', ('0x8000/0x8000',)),)),)
    assert rule.text == '-A INPUT -m mark --mark 0x8000/0x8000 -j ACCEPT'


def test_jump_goto_and_user_chain_named_like_an_extension():
    assert decode(nb.verdict(nb.JUMP, 'MYCHAIN')).target == Target('MYCHAIN', kind=JUMP)
    assert decode(nb.verdict(nb.GOTO, 'MYCHAIN')).target == Target('MYCHAIN', goto=True, kind=JUMP)
    chain_named_log = decode(nb.counter(), nb.verdict(nb.JUMP, 'LOG'))
    assert chain_named_log.target == Target('LOG', kind=JUMP)
    log_target = decode(nb.counter(), nb.compat_target('LOG', 0, bytes([4, 0]) + b'x: '.ljust(30, b'\0')))
    assert log_target.target == Target('LOG', ('--log-prefix', 'x: '), kind=STATEMENT)
    assert log_target.text == '-A INPUT -j LOG --log-prefix "x: "'
    assert decode(nb.verdict(nb.RETURN)).target == Target('RETURN', kind=STATEMENT)


def test_compat_targets():
    cases = [
        (('REJECT', 0, struct.pack('=I', 3)), ('--reject-with', 'icmp-port-unreachable')),
        (('MARK', 2, struct.pack('=II', 1, 0xFFFFFFFF)), ('--set-xmark', '0x1/0xffffffff')),
        (('CONNMARK', 2, struct.pack('=IIIBBB', 2, 0xFF, 0, 0, 0, 0) + bytes(1)), ('--set-xmark', '0x2/0xff')),
        (('CT', 2, struct.pack('=HHII', 1, 0, 0, 0) + bytes(56)), ('--notrack',)),
        (('CT', 2, struct.pack('=HHII', 0, 5, 0, 0) + bytes(56)), ('--zone', '5')),
        (('NFLOG', 0, struct.pack('=IHHHH', 0, 2, 1, 0, 0) + bytes(64)), ('--nflog-group', '2')),
        (('SNAT', 0, struct.pack('=II4s4sHH', 1, 1, bytes([1, 1, 1, 1]), bytes([1, 1, 1, 1]), 0, 0)), ('--to-source', '1.1.1.1')),
        (('DNAT', 2, struct.pack('=I16s16s', 3, bytes([1, 2, 3, 4]), bytes([1, 2, 3, 4])) + struct.pack('>HHH', 80, 80, 0)),
         ('--to-destination', '1.2.3.4:80')),
        (('MASQUERADE', 0, struct.pack('=II', 1, 0) + bytes(12)), ()),
        (('REDIRECT', 0, struct.pack('=II', 1, 2) + bytes(8) + struct.pack('>HH', 8080, 8080)), ('--to-ports', '8080')),
        (('SYNPROXY', 0, struct.pack('=BBH', 1 | 4, 0, 1460)), ('--mss', '1460', '--sack-perm')),
    ]
    for (name, revision, info), args in cases:
        rule = decode(nb.compat_target(name, revision, info))
        assert rule.target == Target(name, args, kind=STATEMENT), name
        assert rule.undecoded == '', name


# ----------------------------------------------------------------------------- native expressions


def test_native_iifname_iif_and_prefix():
    assert native(nb.meta(META_IIFNAME), nb.cmp(nb.EQ, LO), nb.verdict(nb.ACCEPT)).text == 'iifname "lo" accept'
    wildcard = native(nb.meta(META_IIFNAME), nb.cmp(nb.EQ, b'lo'), nb.verdict(nb.ACCEPT))
    assert (wildcard.matches, wildcard.text) == ((builtin('-i', 'lo+'),), 'iifname "lo*" accept')
    assert native(nb.meta(META_IIF), nb.cmp(nb.EQ, nb.host32(1)), nb.verdict(nb.ACCEPT)).matches == (builtin('-i', 'lo'),)
    assert native(nb.meta(META_IIF), nb.cmp(nb.EQ, nb.host32(7)), nb.verdict(nb.ACCEPT)).matches == (builtin('-i', '#7'),)


def test_native_ip_and_ip6_saddr_in_inet_with_nfproto():
    rule = native(nb.meta(META_NFPROTO), nb.cmp(nb.EQ, b'\x02'), nb.payload(NETWORK, 12, 1), nb.cmp(nb.EQ, b'\x7f'), nb.verdict(nb.DROP),
                  comment='no spoof')
    assert rule.matches == (builtin('--nfproto', 'ipv4'), builtin('-s', '127.0.0.0/8'),
                            Match('comment', (Option('--comment', ('no spoof',)),)))
    assert rule.text == 'meta nfproto ipv4 ip saddr 127.0.0.0/8 drop comment "no spoof"'
    six = native(nb.meta(META_NFPROTO), nb.cmp(nb.EQ, b'\x0a'), nb.payload(NETWORK, 8, 16), nb.cmp(nb.EQ, bytes(15) + b'\x01'),
                 nb.verdict(nb.DROP))
    assert six.matches == (builtin('--nfproto', 'ipv6'), builtin('-s', '::1/128'))
    assert six.text == 'meta nfproto ipv6 ip6 saddr ::1 drop'


def test_inet_payload_without_nfproto_gets_one():
    rule = native(nb.payload(NETWORK, 12, 4), nb.cmp(nb.EQ, bytes([127, 0, 0, 1])), nb.verdict(nb.DROP))
    assert rule.matches == (builtin('--nfproto', 'ipv4'), builtin('-s', '127.0.0.1/32'))


def test_anonymous_set_and_inverted_named_interval_set():
    anonymous = nb.kernel_set('__set0', nb.element(bytes([192, 168, 0, 0])), nb.element(bytes([10, 0, 0, 1])), flags=NFT_SET_ANONYMOUS)
    rule = native(nb.payload(NETWORK, 12, 4), nb.lookup('__set0'), nb.verdict(nb.ACCEPT), family='ip', sets={'__set0': anonymous})
    assert rule.matches == (builtin('-s', '192.168.0.0/32', '10.0.0.1/32'),)
    # The kernel lists an interval set as starts and ends (the first key after), in reverse order.
    interval = nb.kernel_set('allowed', nb.element(bytes([128, 0, 0, 0]), end=True), nb.element(bytes([127, 0, 0, 0])),
                             nb.element(bytes([10, 0, 0, 6]), end=True), nb.element(bytes([10, 0, 0, 0])),
                             nb.element(bytes(4), end=True), flags=NFT_SET_INTERVAL)
    rule = native(nb.payload(NETWORK, 12, 4), nb.lookup('allowed', inverted=True), nb.verdict(nb.DROP), family='ip', sets={'allowed': interval})
    assert rule.matches == (builtin('-s', '10.0.0.0/30', '10.0.0.4/31', '127.0.0.0/8', negated=True),)
    assert rule.text == 'ip saddr != @allowed drop'


def test_interface_and_port_sets():
    names = nb.kernel_set('ifs', nb.element(LO), nb.element(nb.ifname('eth0')), key_length=16)
    assert native(nb.meta(META_IIFNAME), nb.lookup('ifs'), nb.verdict(nb.ACCEPT), sets={'ifs': names}).matches == (builtin('-i', 'lo', 'eth0'),)
    ports = nb.kernel_set('ports', nb.element(b'\x00\x50'), nb.element(b'\x01\xbb'), key_length=2)
    rule = native(nb.meta(META_L4PROTO), nb.cmp(nb.EQ, b'\x06'), nb.payload(TRANSPORT, 2, 2), nb.lookup('ports'), nb.verdict(nb.ACCEPT),
                  sets={'ports': ports})
    assert rule.matches[1] == Match('tcp', (Option('--dport', ('80', '443')),))


@pytest.mark.parametrize('sets', [
    {},  # missing
    {'s': nb.kernel_set('s', nb.element(LO), key_length=16, complete=False)},
    {'s': nb.kernel_set('s', nb.element(bytes(8)), key_length=8, flags=NFT_SET_CONCAT)},
])
def test_sets_whose_contents_are_not_known(sets):
    rule = native(nb.meta(META_IIFNAME), nb.lookup('s'), nb.verdict(nb.ACCEPT), sets=sets)
    assert rule.matches == (Match('nft', (Option('lookup @s (contents not known)'),)),)
    assert rule.target == Target('ACCEPT', kind=STATEMENT)


def test_verdict_map_is_one_rule_per_element():
    vmap = nb.kernel_set('vm', nb.element(LO, verdict_code=nb.ACCEPT), nb.element(nb.ifname('eth1'), verdict_code=nb.JUMP, chain='extra'),
                         key_length=16, flags=NFT_SET_MAP, data_type=NFT_DATA_VERDICT)
    rules = native(nb.meta(META_NFPROTO), nb.cmp(nb.EQ, b'\x02'), nb.meta(META_IIFNAME), nb.lookup('vm', dreg=0), sets={'vm': vmap})
    assert isinstance(rules, tuple) and len(rules) == 2
    assert rules[0] == Rule('INPUT', (builtin('--nfproto', 'ipv4'), builtin('-i', 'lo')), Target('ACCEPT', kind=STATEMENT))
    assert rules[1] == Rule('INPUT', (builtin('--nfproto', 'ipv4'), builtin('-i', 'eth1')), Target('extra', kind=JUMP))
    assert {rule.handle for rule in rules} == {7} and rules[0].text == rules[1].text


def test_verdict_map_that_cannot_be_read_is_undecoded():
    rule = native(nb.meta(META_IIFNAME), nb.lookup('vm', dreg=0))
    assert isinstance(rule, Rule) and 'vm' in rule.undecoded


def test_ct_state_forms():
    established = native(nb.ct(CT_STATE), nb.bitwise(nb.host32(6)), nb.cmp(nb.NEQ, nb.host32(0)), nb.verdict(nb.ACCEPT))
    assert established.matches == (Match('conntrack', (Option('--ctstate', ('RELATED,ESTABLISHED',)),)),)
    assert established.text == 'ct state related,established accept'
    not_new = native(nb.ct(CT_STATE), nb.bitwise(nb.host32(8)), nb.cmp(nb.EQ, nb.host32(0)), nb.verdict(nb.DROP))
    assert not_new.matches == (Match('conntrack', (Option('--ctstate', ('NEW',), True),)),)
    untracked = native(nb.ct(CT_STATE), nb.cmp(nb.EQ, nb.host32(64)), nb.verdict(nb.ACCEPT))
    assert untracked.matches == (Match('conntrack', (Option('--ctstate', ('UNTRACKED',)),)),)


def test_fib_rpfilter_and_addrtype():
    saddr_iif = 1 | 8
    missing = native(nb.fib(1, saddr_iif | 32), nb.cmp(nb.EQ, b'\0'), nb.verdict(nb.DROP))
    assert (missing.matches, missing.text) == ((Match('rpfilter', (Option('--invert'),)),), 'fib saddr . iif oif missing drop')
    oif_zero = native(nb.fib(1, saddr_iif), nb.cmp(nb.EQ, nb.host32(0)), nb.verdict(nb.DROP))
    assert oif_zero.matches == (Match('rpfilter', (Option('--invert'),)),)
    exists = native(nb.fib(1, saddr_iif), nb.cmp(nb.NEQ, nb.host32(0)), nb.verdict(nb.ACCEPT))
    assert exists.matches == (Match('rpfilter', ()),)
    local = native(nb.fib(3, 2), nb.cmp(nb.EQ, nb.host32(2)), nb.verdict(nb.ACCEPT))
    assert local.matches == (Match('addrtype', (Option('--dst-type', ('LOCAL',)),)),)


def test_native_statements():
    reject = native(nb.expr('reject', nb.u32(1, 0), nb.attr(2, b'\x03')), family='ip')
    assert reject.target == Target('REJECT', ('--reject-with', 'icmp-port-unreachable'), kind=STATEMENT)
    queue = native(nb.expr('queue', nb.attr(1, b'\x00\x03'), nb.attr(2, b'\x00\x01'), nb.attr(3, b'\x00\x00')))
    assert queue.target == Target('NFQUEUE', ('--queue-num', '3'), kind=STATEMENT)
    dnat = native(nb.immediate(1, bytes([10, 0, 0, 1])), nb.immediate(2, b'\x1f\x90'),
                  nb.expr('nat', nb.u32(1, 1), nb.u32(2, 2), nb.u32(3, 1), nb.u32(4, 1), nb.u32(5, 2), nb.u32(6, 2)), family='ip')
    assert dnat.target == Target('DNAT', ('--to-destination', '10.0.0.1:8080'), kind=STATEMENT)
    assert native(nb.expr('masq')).target == Target('MASQUERADE', kind=STATEMENT)
    assert native(nb.expr('notrack')).target == Target('NOTRACK', kind=STATEMENT)
    log_drop = native(nb.expr('log', nb.text(2, 'in: ')), nb.verdict(nb.DROP))
    assert (log_drop.target, log_drop.actions) == (Target('DROP', kind=STATEMENT), (Target('LOG', ('--log-prefix', 'in: '), kind=STATEMENT),))
    mark = native(nb.immediate(1, nb.host32(5)), nb.meta_set(META_MARK), nb.counter(), nb.verdict(nb.ACCEPT))
    assert mark.actions == (Target('MARK', ('--set-xmark', '0x5/0xffffffff'), kind=STATEMENT),)
    zone = native(nb.immediate(1, nb.host32(4)), nb.ct_set(CT_ZONE))
    assert zone.target == Target('CT', ('--zone', '4'), kind=STATEMENT)
    connmark = native(nb.immediate(1, nb.host32(0x20)), nb.ct_set(CT_MARK))
    assert connmark.target == Target('CONNMARK', ('--set-xmark', '0x20/0xffffffff'), kind=STATEMENT)


def test_limit_and_other_conditions_are_described():
    limit = native(nb.expr('limit', nb.u64(1, 10), nb.u64(2, 1), nb.u32(3, 5), nb.u32(4, 0), nb.u32(5, 0)), nb.verdict(nb.ACCEPT))
    assert limit.matches == (Match('limit', (Option('--limit', ('10/sec',)),)),)
    quota = native(nb.expr('quota', nb.u64(1, 100), nb.u32(2, 1)), nb.verdict(nb.DROP))
    assert quota.matches == (Match('nft', (Option('quota over 100 bytes'),)),) and quota.undecoded == ''


def test_statement_before_a_condition_is_flagged():
    rule = native(nb.immediate(1, nb.host32(1)), nb.meta_set(META_MARK), nb.payload(NETWORK, 12, 4), nb.cmp(nb.EQ, bytes([1, 2, 3, 4])),
                  nb.verdict(nb.DROP), family='ip')
    assert rule.matches == (builtin('-s', '1.2.3.4/32'),)
    assert rule.actions == (Target('MARK', ('--set-xmark', '0x1/0xffffffff'), kind=STATEMENT),)
    assert rule.target == Target('DROP', kind=STATEMENT)
    assert rule.undecoded == 'a statement before a condition'


def test_conditions_after_the_verdict_are_dead():
    rule = native(nb.verdict(nb.ACCEPT), nb.meta(META_IIFNAME), nb.cmp(nb.EQ, LO))
    assert rule.matches == () and rule.target == Target('ACCEPT', kind=STATEMENT) and rule.undecoded == ''


@pytest.mark.parametrize('expressions, why', [
    ((nb.expr('frobnicate'), nb.verdict(nb.DROP)), "unknown expression 'frobnicate'"),
    ((nb.cmp(nb.EQ, b'\x01', sreg=2), nb.verdict(nb.DROP)), 'nothing loaded'),
    ((nb.meta(META_MARK), nb.bitwise(nb.host32(1), op=1), nb.cmp(nb.EQ, nb.host32(0)), nb.verdict(nb.DROP)), 'shift'),
    ((nb.expr('cmp', nb.u32(1, 1)),), 'cmp'),
])
def test_undecodable_expressions(expressions, why):
    rule = native(*expressions)
    assert why in rule.undecoded
    assert rule.target == Target('DROP', kind=STATEMENT) or not rule.target
    assert any(match.module == 'nft' for match in rule.matches)


def test_malformed_expression_stream_never_raises():
    rule = decode_rule(nb.rule(b'\x20\x00\x01\x00abcd'), {}, 'ip')
    assert isinstance(rule, Rule) and rule.undecoded


def test_register_aliasing_16_byte_and_4_byte_registers():
    # NFT_REG_2 (16 bytes) is NFT_REG32_04..07: a load into reg 2 is read back from reg32 12.
    rule = native(nb.payload(NETWORK, 12, 4, dreg=2), nb.cmp(nb.EQ, bytes([127, 0, 0, 1]), sreg=12), nb.verdict(nb.DROP), family='ip')
    assert rule.matches == (builtin('-s', '127.0.0.1/32'),) and rule.undecoded == ''
    # A 16-byte load into reg 1 covers NFT_REG32_00..03; a later load into reg32 1 replaces part of it.
    clobbered = native(nb.meta(META_IIFNAME), nb.payload(NETWORK, 12, 4, dreg=9), nb.cmp(nb.EQ, LO, sreg=1), nb.verdict(nb.DROP), family='ip')
    assert clobbered.matches == (builtin('-i', 'lo'),)


# ----------------------------------------------------------------------------- tables


def test_decode_tables_iptables_and_native():
    chains = (
        KernelChain('ip', 'filter', 'INPUT', hook='input', priority=0, type='filter', policy='drop'),
        KernelChain('ip', 'filter', 'MYCHAIN'),
        KernelChain('inet', 'hostfw', 'input', hook='input', priority=10, type='filter', policy='accept'),
        KernelChain('ip', 'odd', 'INPUT', hook='input', priority=0, type='filter', policy='accept'),
        KernelChain('ip', 'raw', 'PREROUTING', hook='prerouting', priority=0, type='filter', policy='accept'),
    )
    rules = {('ip', 'filter', 'INPUT'): (nb.rule(nb.meta(META_IIFNAME), nb.cmp(nb.EQ, b'lo\0'), nb.verdict(nb.ACCEPT)),),
             ('ip', 'filter', 'MYCHAIN'): (), ('ip', 'odd', 'INPUT'): (), ('ip', 'raw', 'PREROUTING'): (), ('inet', 'hostfw', 'input'): ()}
    kernel = KernelRuleset(1, (KernelTable('ip', 'filter'), KernelTable('inet', 'hostfw', flags=1), KernelTable('ip', 'odd'),
                               KernelTable('ip', 'raw')), chains, rules)
    # A chain whose rules were not read is left out: a jump to it is known to lead to a chain not read.
    unread = KernelRuleset(1, kernel.tables, chains, {key: value for key, value in rules.items() if key[2] != 'MYCHAIN'})
    assert 'MYCHAIN' not in decode_tables(unread, 'ip')[0].chains
    filter_table, odd, raw = decode_tables(kernel, 'ip')
    assert (filter_table.name, filter_table.family, filter_table.native, filter_table.dormant) == ('filter', 'ip', False, False)
    assert filter_table.chains['INPUT'].policy == 'DROP'
    assert filter_table.chains['INPUT'].base == BaseChain('input', 0, 'filter')
    assert filter_table.chains['MYCHAIN'].policy is None and filter_table.chains['MYCHAIN'].base is None
    assert filter_table.chains['INPUT'].rules[0].text == '-A INPUT -i lo -j ACCEPT'
    assert odd.native and raw.native  # not an iptables table name; raw PREROUTING at the wrong priority
    (hostfw,) = decode_tables(kernel, 'inet')
    assert hostfw.native and hostfw.dormant and hostfw.chains['input'].base == BaseChain('input', 10, 'filter')


# ----------------------------------------------------------------------------- real rulesets, real bytes

_READER = textwrap.dedent('''
    import base64, pickle, sys
    from datadog_checks.loopback_traffic import netlink
    sys.stdout.write(base64.b64encode(pickle.dumps(netlink.read_ruleset())).decode())
''')

IPTABLES_RULES = CIS_V4.replace('COMMIT\n', '''-A INPUT ! -s 127.0.0.0/8 -j DROP
-A INPUT -i lo+ -j ACCEPT
-A INPUT ! -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p udp -m multiport --dports 53,123 -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m state --state NEW -j ACCEPT
-A INPUT -m addrtype --src-type LOCAL -j DROP
-A INPUT -m mark --mark 0x8000/0x8000 -j ACCEPT
-A INPUT -m comment --comment "hello world" -j ACCEPT
-A INPUT -s 10.0.0.1/32 -m comment --comment "a/b:c" -m comment --comment "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" -j ACCEPT
-A INPUT -j MYCHAIN
-A INPUT -g MYCHAIN
-A INPUT -j REJECT --reject-with icmp-port-unreachable
-A INPUT -j MARK --set-xmark 0x1/0xffffffff
-A INPUT -d 10.0.0.0/255.0.255.0 -j DROP
-A INPUT -m limit --limit 5/min -j ACCEPT
-A INPUT -m pkttype --pkt-type unicast -j ACCEPT
-A MYCHAIN -j RETURN
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A INPUT -j LOG --log-prefix "x: "
-A INPUT -j CONNMARK --set-xmark 0x2/0xff
-A INPUT -j NFLOG --nflog-group 2
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -j CT --notrack
-A PREROUTING -m rpfilter --invert -j DROP
-A OUTPUT -j CT --zone 5
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4:80
-A POSTROUTING -j MASQUERADE
-A POSTROUTING -s 10.0.0.0/8 -j SNAT --to-source 1.1.1.1
COMMIT
''').replace(':OUTPUT ACCEPT [0:0]\n', ':OUTPUT ACCEPT [0:0]\n:MYCHAIN - [0:0]\n', 1)

NATIVE_RULES = '''
table inet hostfw {
    set allowed4 { type ipv4_addr; flags interval; elements = { 127.0.0.0/8, 10.0.0.0-10.0.0.5 } }
    map vm { type ifname : verdict; elements = { "lo" : accept, "eth1" : jump extra } }
    chain extra { return; }
    chain input {
        type filter hook input priority 10; policy drop;
        iif lo accept
        iifname "veth*" accept
        ip saddr 127.0.0.0/8 counter drop comment "no spoof"
        ip6 saddr ::1 drop
        ip saddr != @allowed4 drop
        iifname vmap @vm
        iifname vmap { "eth2" : drop }
        ct state established,related accept
        fib saddr . iif oif missing drop
        tcp dport { 80, 443 } accept
        reject with icmpx type port-unreachable
        log prefix "in: " drop
        jump extra
    }
}
table ip dorm {
    flags dormant
    chain c { type filter hook input priority 0; policy accept; }
}
'''


def _read_kernel(ns):
    proc = ns.run(['python3', '-c', _READER], timeout=60, check=True)
    return pickle.loads(base64.b64decode(proc.stdout))


def _without_kinds(rule):
    """The text front-end cannot tell a jump from an extension target: compare without the kind."""
    target = rule.target and Target(rule.target.name, rule.target.args, rule.target.goto)
    return Rule(rule.chain, rule.matches, target, actions=rule.actions, undecoded=rule.undecoded)


def test_iptables_nft_rules_decode_like_iptables_save(netns):
    require_tools('iptables-nft-restore', 'iptables-nft-save')
    netns.restore(IPTABLES_RULES)
    saved = parse_ruleset(netns.save().stdout)
    tables = {table.name: table for table in decode_tables(_read_kernel(netns), 'ip')}
    assert set(tables) == set(saved.tables)
    for name, table in saved.tables.items():
        decoded = tables[name]
        assert not decoded.native
        assert list(decoded.chains) == list(table.chains) or set(decoded.chains) == set(table.chains)
        for chain_name, chain in table.chains.items():
            ours = decoded.chains[chain_name]
            assert (ours.policy, ours.base) == (chain.policy, chain.base), chain_name
            assert [_without_kinds(rule) for rule in ours.rules] == [_without_kinds(rule) for rule in chain.rules], chain_name
            assert [rule.text for rule in ours.rules] == [rule.text for rule in chain.rules]
            assert all(rule.undecoded == '' for rule in ours.rules)


def test_native_ruleset_decodes_as_specified(netns):
    require_tools('nft')
    netns.run(['nft', '-f', '-'], input=NATIVE_RULES, check=True)
    kernel = _read_kernel(netns)
    (dorm,) = decode_tables(kernel, 'ip')
    assert dorm.dormant and dorm.native
    (hostfw,) = decode_tables(kernel, 'inet')
    assert hostfw.native and not hostfw.dormant
    chain = hostfw.chains['input']
    assert (chain.policy, chain.base) == ('DROP', BaseChain('input', 10, 'filter'))
    rules = chain.rules
    accept, drop = Target('ACCEPT', kind=STATEMENT), Target('DROP', kind=STATEMENT)
    ipv4, ipv6 = builtin('--nfproto', 'ipv4'), builtin('--nfproto', 'ipv6')
    expected = [
        ((builtin('-i', 'lo'),), accept),
        ((builtin('-i', 'veth+'),), accept),
        ((ipv4, builtin('-s', '127.0.0.0/8'), Match('comment', (Option('--comment', ('no spoof',)),))), drop),
        ((ipv6, builtin('-s', '::1/128')), drop),
        ((ipv4, builtin('-s', '10.0.0.0/30', '10.0.0.4/31', '127.0.0.0/8', negated=True)), drop),
        ((builtin('-i', 'lo'),), accept),
        ((builtin('-i', 'eth1'),), Target('extra', kind=JUMP)),
        ((builtin('-i', 'eth2'),), drop),
        ((Match('conntrack', (Option('--ctstate', ('RELATED,ESTABLISHED',)),)),), accept),
        ((Match('rpfilter', (Option('--invert'),)),), drop),
        ((builtin('-p', 'tcp'), Match('tcp', (Option('--dport', ('80', '443')),))), accept),
        ((), Target('REJECT', ('--reject-with', 'icmpx-port-unreachable'), kind=STATEMENT)),
        ((), drop),
        ((), Target('extra', kind=JUMP)),
    ]
    found = sorted_values([(rule.matches, rule.target) for rule in rules])
    expected = sorted_values(expected)
    # the verdict map's elements (rules 5 and 6) come in the kernel's order
    assert found[:5] + sorted(found[5:7], key=repr) + found[7:] == expected[:5] + sorted(expected[5:7], key=repr) + expected[7:]
    assert all(rule.undecoded == '' for rule in rules)
    assert rules[0].text == 'iif lo accept'
    assert rules[-2].actions == (Target('LOG', ('--log-prefix', 'in: '), kind=STATEMENT),)
    assert {rules[5].handle, rules[6].handle} == {rules[5].handle}


def sorted_values(pairs):
    """Set elements come in the kernel's order: compare the values of multi-valued options as sets."""
    def norm(match):
        return Match(match.module, tuple(Option(o.name, tuple(sorted(o.values)), o.negated) for o in match.options))
    return [(tuple(norm(m) for m in matches), target) for matches, target in pairs]


# ----------------------------------------------------------------------------- what one instance keeps between generations


def _kernel_of(generation, family, handles):
    """One iptables-style filter INPUT of two rules (the lo ACCEPT, a DROP) in ``family``, under ``handles``."""
    table = 'filter'
    chains = (KernelChain(family, table, 'INPUT', hook='input', priority=0, type='filter', policy='accept'),)
    accept = nb.rule(nb.meta(META_IIFNAME), nb.cmp(nb.EQ, b'lo\0'), nb.verdict(nb.ACCEPT), family=family, handle=handles[0])
    drop = nb.rule(nb.verdict(nb.DROP), family=family, handle=handles[1])
    return KernelRuleset(generation, (KernelTable(family, table),), chains, {(family, table, 'INPUT'): (accept, drop)})


def test_the_decode_cache_keeps_a_familys_rules_while_another_family_moves_on(monkeypatch):
    from datadog_checks.loopback_traffic import nft_decode

    decoded = []
    real = nft_decode.decode_rule
    monkeypatch.setattr(nft_decode, 'decode_rule', lambda rule, *args, **kwargs: decoded.append(rule.family) or real(rule, *args, **kwargs))
    cache = nft_decode.DecodeCache()
    ip, ip6 = _kernel_of(1, 'ip', (2, 3)), _kernel_of(1, 'ip6', (2, 3))
    for kernel, family in ((ip, 'ip'), (ip6, 'ip6')):
        assert len(list(decode_tables(kernel, family, cache)[0].chains['INPUT'].walk_rules)) == 2
    assert decoded == ['ip', 'ip', 'ip6', 'ip6']
    decoded.clear()
    for generation in (2, 3, 4):  # the ip6 walk is decoded again and again; the ip one was kept meanwhile
        list(decode_tables(_kernel_of(generation, 'ip6', (2, 3)), 'ip6', cache)[0].chains['INPUT'].walk_rules)
    (table,) = decode_tables(_kernel_of(5, 'ip', (2, 3)), 'ip', cache)
    walked = list(table.chains['INPUT'].walk_rules)
    assert [(rule.matches, rule.target) for rule in walked] == [((builtin('-i', 'lo'),), Target('ACCEPT', kind=STATEMENT)), ((), Target('DROP', kind=STATEMENT))]
    assert decoded == []
    # Decoded for the walk: no text; the whole rules (what messages and listings show) have theirs.
    texts = [table.chains['INPUT'].walk_rules.text_at(index) for index in (0, 1)]
    assert [rule.text for rule in walked] == ['', ''] and texts == ['-A INPUT -i lo -j ACCEPT', '-A INPUT -j DROP']
    assert [rule.text for rule in table.chains['INPUT'].rules] == ['-A INPUT -i lo -j ACCEPT', '-A INPUT -j DROP']


def test_a_chain_rewritten_as_it_was_is_decoded_once_under_its_new_handles(monkeypatch):
    from datadog_checks.loopback_traffic import nft_decode

    cache = nft_decode.DecodeCache()
    first = decode_tables(_kernel_of(1, 'ip', (2, 3)), 'ip', cache)[0].chains['INPUT']
    kept = first.walk_rules
    assert [rule.handle for rule in kept] == [2, 3]
    monkeypatch.setattr(nft_decode, 'decode_rule', lambda *args, **kwargs: pytest.fail('decoded again'))
    again = decode_tables(_kernel_of(2, 'ip', (7, 8)), 'ip', cache)[0]
    assert again.chains['INPUT'].walk_rules is kept  # what walks kept of it is found again
    assert [rule.handle for rule in again.chains['INPUT'].walk_rules] == [7, 8]
    assert [nft_decode.current_handle(again, 'INPUT', index) for index in (1, 2, 3)] == [7, 8, None]
