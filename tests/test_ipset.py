"""The ipset reader: the pure parsers on built bytes, the reader on fed replies, and the reader
against the real ``ipset`` tool inside ``lt-`` namespaces (tests/netns.py).

ipset.py is loaded with netlink.py and nf_tables.py as a private package (tests/netlink_dump.py:load),
as it imports nothing else of the check; the namespace tests run :data:`SCRIPT` inside the namespace.
"""
from __future__ import annotations

import errno
import importlib
import ipaddress
import json
from typing import Iterator
import os
import re
import struct
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .netlink_dump import PACKAGE, load
from .netns import Netns, require_netns, require_tools

load()
ipset = importlib.import_module(PACKAGE + '.ipset')
netlink = importlib.import_module(PACKAGE + '.netlink')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = 0x4000  # NLA_F_NET_BYTEORDER
NESTED = 0x8000

# --------------------------------------------------------------------------- building messages


def nla(kind: int, value: bytes) -> bytes:
    return struct.pack('=HH', 4 + len(value), kind) + value + b'\0' * (-len(value) % 4)


def nested(kind: int, *children: bytes) -> bytes:
    return nla(kind | NESTED, b''.join(children))


def text(kind: int, value: str) -> bytes:
    return nla(kind, value.encode() + b'\0')


def u8(kind: int, value: int) -> bytes:
    return nla(kind, bytes((value,)))


def be(kind: int, value: int, size: int) -> bytes:
    return nla(kind | NET, value.to_bytes(size, 'big'))


def address(kind: int, value: str) -> bytes:
    parsed = ipaddress.ip_address(value)
    inner = be(1, int(parsed), 4) if parsed.version == 4 else nla(2, parsed.packed)
    return nested(kind, inner)


def header(name: str, kind: str, family: int = 2, index: Optional[int] = 0, data: Sequence[bytes] = ()) -> bytes:
    attrs = u8(1, 7) + text(2, name) + text(3, kind) + u8(5, family) + u8(4, 1)
    if index is not None:
        attrs += be(11, index, 2)
    return attrs + nested(7, *data, be(18, 1024, 4), be(25, 1, 4))


def members(*elements: Sequence[bytes]) -> bytes:
    return nested(8, *(nested(7, *element) for element in elements))


def message(attrs: bytes, command: int = 7, flags: int = 2, seq: int = 7) -> bytes:
    payload = struct.pack('=BBH', 2, 0, 0) + attrs
    data = struct.pack('=IHHII', 16 + len(payload), (6 << 8) | command, flags, seq, 1234) + payload
    return data + b'\0' * (-len(data) % 4)


def done(seq: int = 7, code: int = 0) -> bytes:
    return struct.pack('=IHHIIi', 20, 3, 2, seq, 1234, -code)


def error(seq: int = 7, code: int = 0) -> bytes:
    payload = struct.pack('=i', -code) + struct.pack('=IHHII', 20, (6 << 8) | 1, 5, seq, 0)
    return struct.pack('=IHHII', 16 + len(payload), 2, 0x100, seq, 1234) + payload


def attrs_of(data: bytes) -> bytes:
    return data[20 : struct.unpack_from('=I', data)[0]]


def one_set(attrs: bytes) -> Any:
    (found,) = ipset.parse_dump([attrs])
    return found


Member = ipset.Member
net = ipaddress.ip_network

# --------------------------------------------------------------------------- the set types


def test_hash_ip() -> None:
    found = one_set(header('a', 'hash:ip', index=3) + members([address(1, '10.0.0.1')], [address(1, '10.0.0.2')]))
    assert (found.name, found.type, found.family, found.index, found.revision) == ('a', 'hash:ip', 'inet', 3, 1)
    assert found.members == (Member(address=net('10.0.0.1/32')), Member(address=net('10.0.0.2/32')))
    assert found.references == 1 and found.dimensions == ('ip',)
    assert found.networks() == (net('10.0.0.1/32'), net('10.0.0.2/32'))


def test_hash_ip_netmask_and_bitmask() -> None:
    masked = one_set(header('m', 'hash:ip', data=[u8(20, 24)]) + members([address(1, '172.16.3.0')]))
    assert masked.netmask == 24 and masked.members == (Member(address=net('172.16.3.0/24')),)
    prefix = one_set(header('p', 'hash:ip', data=[address(12, '255.255.0.0')]) + members([address(1, '1.2.0.0')]))
    assert prefix.netmask == 16 and prefix.bitmask is None and prefix.members[0].address == net('1.2.0.0/16')
    holes = one_set(header('h', 'hash:ip', data=[address(12, '255.0.255.0')]) + members([address(1, '9.0.7.0')]))
    assert holes.bitmask == ipaddress.ip_address('255.0.255.0') and holes.netmask is None
    assert holes.members[0].address == net('9.0.7.0/32') and holes.networks() is None


def test_hash_net_nomatch_and_effective_networks() -> None:
    found = one_set(
        header('n', 'hash:net')
        + members([address(1, '10.0.0.0'), u8(3, 8)], [address(1, '10.1.0.0'), u8(3, 16), be(8, 4, 4)], [address(1, '10.1.2.0'), u8(3, 24)])
    )
    assert found.members[1] == Member(address=net('10.1.0.0/16'), nomatch=True)
    covered = found.networks()
    inside = [ipaddress.ip_address(a) for a in ('10.0.0.1', '10.1.2.3', '10.255.0.1')]
    outside = [ipaddress.ip_address(a) for a in ('10.1.0.1', '10.1.3.1', '11.0.0.1')]
    assert all(any(a in n for n in covered) for a in inside)
    assert not any(a in n for n in covered for a in outside)


def test_hash_net_ipv6() -> None:
    found = one_set(header('six', 'hash:net', family=10) + members([address(1, 'fd00::'), u8(3, 64)], [address(1, '::1'), u8(3, 128)]))
    assert found.family == 'inet6' and found.members == (Member(address=net('fd00::/64')), Member(address=net('::1/128')))


def test_hash_ip_port_and_icmp() -> None:
    found = one_set(
        header('ipp', 'hash:ip,port')
        + members([address(1, '127.0.0.1'), be(4, 22, 2), u8(7, 6)], [address(1, '127.0.0.1'), be(4, 8 << 8, 2), u8(7, 1)])
    )
    assert found.members == (
        Member(address=net('127.0.0.1/32'), port=22, proto=6),
        Member(address=net('127.0.0.1/32'), port=2048, proto=1),
    )
    assert found.dimensions == ('ip', 'port') and found.networks() is None


def test_two_address_types() -> None:
    ipi = one_set(header('ipi', 'hash:ip,port,ip') + members([address(1, '1.2.3.4'), address(20, '5.6.7.8'), be(4, 53, 2), u8(7, 17)]))
    assert ipi.members == (Member(address=net('1.2.3.4/32'), address2=net('5.6.7.8/32'), port=53, proto=17),)
    npn = one_set(
        header('npn', 'hash:net,port,net')
        + members([address(1, '10.0.0.0'), u8(3, 8), address(20, '192.168.0.0'), u8(21, 16), be(4, 80, 2), u8(7, 6), be(8, 4, 4)])
    )
    assert npn.members == (Member(address=net('10.0.0.0/8'), address2=net('192.168.0.0/16'), port=80, proto=6, nomatch=True),)


def test_hash_net_iface() -> None:
    found = one_set(
        header('ni', 'hash:net,iface')
        + members(
            [address(1, '10.0.0.0'), u8(3, 8), text(23, 'lo')],
            [address(1, '10.0.0.0'), u8(3, 8), text(23, 'eth'), be(8, 2 | 128, 4)],
        )
    )
    assert found.members == (
        Member(address=net('10.0.0.0/8'), interface='lo'),
        Member(address=net('10.0.0.0/8'), interface='eth', physdev=True, interface_wildcard=True),
    )


def test_marks_macs_and_host_order_markmask() -> None:
    mark = one_set(header('mk', 'hash:ip,mark', data=[nla(11, struct.pack('=I', 0xFF00))]) + members([address(1, '1.2.3.4'), be(10, 0x100, 4)]))
    assert mark.markmask == 0xFF00 and mark.members == (Member(address=net('1.2.3.4/32'), mark=0x100),)
    mac = one_set(header('bim', 'bitmap:ip,mac') + members([address(1, '192.168.0.1'), nla(17, bytes.fromhex('aabbccddeeff'))], [address(1, '192.168.0.2')]))
    assert mac.members == (Member(address=net('192.168.0.1/32'), mac='aa:bb:cc:dd:ee:ff'), Member(address=net('192.168.0.2/32')))


def test_bitmaps() -> None:
    plain = one_set(header('b', 'bitmap:ip', data=[address(1, '192.168.0.0'), address(2, '192.168.0.255')]) + members([address(1, '192.168.0.5')]))
    assert plain.address_range == (ipaddress.ip_address('192.168.0.0'), ipaddress.ip_address('192.168.0.255'))
    assert plain.members == (Member(address=net('192.168.0.5/32')),)
    blocks = one_set(header('bm', 'bitmap:ip', data=[address(1, '192.168.0.0'), address(2, '192.168.255.255'), u8(20, 24)]) + members([address(1, '192.168.7.0')]))
    assert blocks.netmask == 24 and blocks.networks() == (net('192.168.7.0/24'),)
    ports = one_set(header('bp', 'bitmap:port', family=0, data=[be(4, 1, 2), be(5, 1024, 2)]) + members([be(4, 80, 2)]))
    assert ports.family == 'unspec' and ports.port_range == (1, 1024) and ports.members == (Member(port=80),)


def test_list_set_and_extensions() -> None:
    found = one_set(header('l', 'list:set', family=0, data=[be(23, 8, 4)]) + members([text(18, 'a')], [text(18, 'nn'), be(6, 30, 4)]))
    assert found.size == 8 and [m.set_name for m in found.members] == ['a', 'nn'] and found.members[1].timeout == 30
    commented = one_set(header('c', 'hash:ip', data=[be(6, 600, 4)]) + members([address(1, '5.5.5.5'), text(26, 'hi there'), be(6, 12, 4), nla(24 | NET, bytes(8))]))
    assert commented.timeout == 600 and commented.members[0].timeout == 12 and commented.members[0].comment == 'hi there'
    assert commented.members == (Member(address=net('5.5.5.5/32'), comment='hi there'),)  # the time left is not compared


def test_empty_set_and_header_only() -> None:
    sets = ipset.parse_dump([header('e', 'hash:ip') + members(), header('h', 'hash:net', index=4)])
    assert [(s.name, s.members, s.index) for s in sets] == [('e', (), 0), ('h', (), 4)]


def test_a_set_continued_over_messages() -> None:
    first = header('big', 'hash:net', index=2) + members([address(1, '10.0.0.0'), u8(3, 8)])
    rest = u8(1, 7) + text(2, 'big') + members([address(1, '11.0.0.0'), u8(3, 8)])
    after = header('next', 'hash:ip', index=5)
    big, following = ipset.parse_dump([first, rest, after])
    assert [m.address for m in big.members] == [net('10.0.0.0/8'), net('11.0.0.0/8')] and following.name == 'next'
    with pytest.raises(ipset.IpsetError, match="members of set 'big' without its header"):
        ipset.parse_dump([rest])
    with pytest.raises(ipset.IpsetError, match="without its header"):
        ipset.parse_dump([header('other', 'hash:ip'), rest])
    with pytest.raises(ipset.IpsetError, match='no set name'):
        ipset.parse_dump([u8(1, 7)])


@pytest.mark.parametrize(
    'attrs, match',
    [
        (header('x', 'hash:ip') + members([nested(1, nla(1, b'\1\2'))]), 'without a 4-byte IPv4'),
        (header('x', 'hash:ip') + members([address(1, '1.2.3.4'), nla(3, b'\1\2')]), '2 bytes instead of 1'),
        (header('x', 'bitmap:ip,mac') + members([nla(17, b'\1\2\3')]), 'MAC address of 3 bytes'),
        (header('x', 'hash:ip')[:-3], 'attribute of length'),
    ],
)
def test_malformed_members(attrs: bytes, match: str) -> None:
    with pytest.raises(ipset.IpsetError, match=match):
        ipset.parse_dump([attrs])


def longest_prefix_oracle(entries: List[Tuple[Any, bool]], address: Any) -> bool:
    containing = [(network.prefixlen, not nomatch) for network, nomatch in entries if address in network]
    return bool(containing) and max(containing)[1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(24, 32), st.booleans()), max_size=12))
def test_effective_networks_follow_the_most_specific_member(raw: List[Tuple[int, int, bool]]) -> None:
    entries = {}
    for last_octet, prefix, nomatch in raw:  # one member per network, as in the kernel
        entries.setdefault(net('10.0.0.{}/{}'.format(last_octet, prefix), strict=False), nomatch)
    elements = [[address(1, str(n.network_address)), u8(3, n.prefixlen)] + ([be(8, 4, 4)] if nomatch else []) for n, nomatch in entries.items()]
    covered = one_set(header('n', 'hash:net') + members(*elements)).networks()
    for host in net('10.0.0.0/24'):
        assert any(host in n for n in covered) == longest_prefix_oracle(list(entries.items()), host), host
    assert list(covered) == list(ipaddress.collapse_addresses(covered))


def test_effective_networks_of_a_big_set_are_fast() -> None:
    positive = [Member(address=net('10.{}.{}.0/24'.format(i >> 8, i & 255))) for i in range(20000)]
    holes = [Member(address=net('10.{}.{}.128/25'.format(i >> 8, i & 255)), nomatch=True) for i in range(0, 20000, 2)]
    found = ipset.IpSet('big', 'hash:net', 'inet', members=tuple(positive + holes))
    started = time.monotonic()
    covered = found.networks()
    assert time.monotonic() - started < 5 and sum(n.num_addresses for n in covered) == 20000 * 256 - 10000 * 128


def test_networks_of_other_and_mixed_sets() -> None:
    mixed = one_set(header('m', 'hash:net') + members([address(1, '10.0.0.0'), u8(3, 8)], [address(1, 'fd00::'), u8(3, 64)]))
    assert mixed.networks() is None
    assert one_set(header('l', 'list:set', family=0)).networks() is None
    assert one_set(header('e', 'hash:net')).networks() == ()


def test_snapshot_lookups_and_comparison() -> None:
    a = one_set(header('a', 'hash:ip', index=0) + members([address(1, '1.1.1.1'), be(6, 5, 4)], [address(1, '2.2.2.2')]))
    b = one_set(header('b', 'hash:ip', index=7))
    snapshot = ipset.IpsetSnapshot((a, b))
    assert snapshot.by_index(7) is b and snapshot.by_name('a') is a and snapshot.by_index(1) is None and snapshot.names() == {0: 'a', 7: 'b'}
    reordered = one_set(header('a', 'hash:ip', index=0) + members([address(1, '2.2.2.2')], [address(1, '1.1.1.1'), be(6, 4, 4)]))
    assert snapshot.same_as(ipset.IpsetSnapshot((b, reordered)))
    changed = one_set(header('a', 'hash:ip', index=0) + members([address(1, '2.2.2.2')]))
    assert not snapshot.same_as(ipset.IpsetSnapshot((changed, b)))
    renamed = one_set(header('b2', 'hash:ip', index=7))
    assert not snapshot.same_as(ipset.IpsetSnapshot((a, renamed)))


def test_protocol_and_name_replies() -> None:
    assert ipset.parse_protocol(u8(1, 7) + u8(10, 6)) == (7, 6)
    assert ipset.parse_protocol(u8(1, 6)) == (6, 6)
    with pytest.raises(ipset.IpsetError, match='no protocol version'):
        ipset.parse_protocol(u8(10, 6))
    assert ipset.parse_name_reply(u8(1, 7) + text(2, 'nn')) == ('nn', None)
    assert ipset.parse_name_reply(u8(1, 7) + u8(5, 2) + be(11, 2, 2)) == (None, 2)


# --------------------------------------------------------------------------- the reader on fed replies


STALE = 99


class FedReader(ipset.IpsetReader):  # type: ignore[misc, name-defined]
    """A reader whose socket is a list of datagrams (each answer patched to the request's seq, but
    those with seq :data:`STALE`)."""

    def __init__(self, datagrams: List[bytes], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.datagrams = list(datagrams)
        self.sent: List[bytes] = []

    def open(self) -> None:
        pass

    def _send(self, message: bytes) -> None:
        self.sent.append(message)

    def _recv_datagram(self, timeout: float) -> bytes:
        if not self.datagrams:
            raise ipset.IpsetError('no more replies')
        data = bytearray(self.datagrams.pop(0))
        offset = 0
        while offset + 16 <= len(data):
            length = int.from_bytes(data[offset : offset + 4], sys.byteorder)
            if int.from_bytes(data[offset + 8 : offset + 12], sys.byteorder) != STALE:
                data[offset + 8 : offset + 12] = self._seq.to_bytes(4, sys.byteorder)
            if length < 16:
                break
            offset += (length + 3) & ~3
        return bytes(data)


PROTOCOL_7 = message(u8(1, 7) + u8(10, 6), command=1, flags=0) + error()
PROTOCOL_6 = message(u8(1, 6) + u8(10, 6), command=1, flags=0) + error()
DUMP = message(header('a', 'hash:ip', index=0) + members([address(1, '1.1.1.1')])) + message(header('l', 'list:set', family=0, index=1) + members([text(18, 'a')]))


def sent_attrs(reader: Any, number: int) -> bytes:
    return attrs_of(reader.sent[number])


def test_reader_negotiates_and_dumps() -> None:
    reader = FedReader([PROTOCOL_7, DUMP, done()])
    snapshot = reader.sets()
    assert snapshot.protocol == 7 and [s.name for s in snapshot.sets] == ['a', 'l'] and snapshot.names() == {0: 'a', 1: 'l'}
    kinds = [struct.unpack_from('=IHH', m)[1:] for m in reader.sent]
    assert kinds == [((6 << 8) | 1, 0x5), ((6 << 8) | 7, 0x301)]
    assert sent_attrs(reader, 0) == u8(1, 7) and sent_attrs(reader, 1) == u8(1, 7)


def test_header_dump_asks_for_headers_only() -> None:
    reader = FedReader([PROTOCOL_7, message(header('a', 'hash:ip', index=0)) + done()])
    assert reader.headers().names() == {0: 'a'}
    assert sent_attrs(reader, 1) == u8(1, 7) + be(6, 4, 4)


def test_protocol_6_kernel_gets_indexes_by_sockopt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipset, 'sockopt_index_of_name', lambda name: {'a': 4, 'l': 9}[name])
    monkeypatch.setattr(ipset, 'sockopt_name_of_index', lambda index: 'a' if index == 4 else None)
    old = message(header('a', 'hash:ip', index=None)) + message(header('l', 'list:set', family=0, index=None))
    reader = FedReader([PROTOCOL_6, old, done()])
    snapshot = reader.sets()
    assert snapshot.protocol == 6 and snapshot.names() == {4: 'a', 9: 'l'} and sent_attrs(reader, 1) == u8(1, 6)
    assert reader.name_of_index(4) == 'a' and reader.name_of_index(5) is None and len(reader.sent) == 2


def test_name_of_index_and_index_of_name_over_netlink() -> None:
    reader = FedReader([PROTOCOL_7, message(u8(1, 7) + text(2, 'nn'), command=15, flags=0) + error()])
    assert reader.name_of_index(2) == 'nn'
    assert sent_attrs(reader, 1) == u8(1, 7) + be(11, 2, 2)
    reader.datagrams = [error(code=errno.ENOENT)]
    assert reader.name_of_index(200) is None
    reader.datagrams = [message(u8(1, 7) + u8(5, 2) + be(11, 2, 2), command=14, flags=0) + error()]
    assert reader.index_of_name('nn') == 2 and sent_attrs(reader, 3) == u8(1, 7) + text(2, 'nn')
    assert reader.name_of_index(-1) is None and reader.name_of_index(65535) is None and len(reader.sent) == 4
    with pytest.raises(ipset.IpsetError, match='is not an ipset name'):
        reader.index_of_name('x' * 32)


@pytest.mark.parametrize(
    'reply, match, code',
    [
        (error(code=errno.EPERM), 'needs CAP_NET_ADMIN', errno.EPERM),
        (error(code=errno.EINVAL), 'no ipset support', errno.EINVAL),
        (error(code=errno.EOPNOTSUPP), 'no ipset support', errno.EOPNOTSUPP),
        (error(code=4097), 'ipset protocol error', 4097),
        (error(code=5000), 'invalid error code', None),
        (message(u8(1, 5), command=1, flags=0) + error(), 'protocols 5 to 5', None),
        (message(u8(1, 9) + u8(10, 8), command=1, flags=0) + error(), 'protocols 8 to 9', None),
        (error(), '0 replies instead of one', None),
        (message(b'', command=1, flags=0)[:19], 'netlink message of length', None),
        (struct.pack('=IHHII', 16, 4, 0, 7, 0), 'overrun', None),
    ],
)
def test_refusals_and_nonsense(reply: bytes, match: str, code: Optional[int]) -> None:
    with pytest.raises(ipset.IpsetError, match=match) as raised:
        FedReader([reply]).sets()
    assert raised.value.errno == code


def test_a_protocol_8_kernel_is_spoken_to_in_7(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = FedReader([message(u8(1, 8) + u8(10, 6), command=1, flags=0) + error(), message(header('a', 'hash:ip')) + done()])
    assert reader.sets().protocol == 7
    # GET_BYINDEX/BYNAME accept only the kernel's own version: names are asked by SO_IP_SET
    monkeypatch.setattr(ipset, 'sockopt_name_of_index', lambda index: 'a')
    assert reader.name_of_index(0) == 'a' and len(reader.sent) == 2


def test_a_failed_dump_and_an_interrupted_one() -> None:
    with pytest.raises(ipset.IpsetError, match='listing the ipsets: .*EMSGSIZE'):
        FedReader([PROTOCOL_7, DUMP, done(code=errno.EMSGSIZE)]).sets()
    with pytest.raises(ipset.IpsetError, match='no more replies'):
        FedReader([PROTOCOL_7, DUMP]).sets()


def test_deadline_and_byte_budget() -> None:
    reader = FedReader([PROTOCOL_7], timeout=0.0)
    with pytest.raises(ipset.IpsetError, match='took longer than 0 s'):
        reader.protocol()
    with pytest.raises(ipset.IpsetError, match='larger than the limit of 40 bytes'):
        FedReader([PROTOCOL_7, DUMP, done()], max_bytes=40).sets()


def test_late_replies_to_other_requests_are_skipped() -> None:
    stale = message(header('old', 'hash:ip'), seq=STALE)
    reader = FedReader([PROTOCOL_7, stale + message(header('a', 'hash:ip')), stale + done()])
    assert [s.name for s in reader.sets().sets] == ['a']


def test_read_sets_around_retries_until_the_sets_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    dumps = [DUMP, message(header('a', 'hash:ip', index=0)), message(header('a', 'hash:ip', index=0))]
    monkeypatch.setattr(ipset, 'IpsetReader', lambda timeout, max_bytes: FedReader([PROTOCOL_7] + [d + done() for d in dumps]))
    reads: List[int] = []
    value, snapshot = ipset.read_sets_around(lambda: reads.append(1) or len(reads))
    assert value == 2 and snapshot.names() == {0: 'a'} and snapshot.sets[0].members == ()
    monkeypatch.setattr(ipset, 'IpsetReader', lambda timeout, max_bytes: FedReader([PROTOCOL_7] + [DUMP + done(), message(header('b', 'hash:ip')) + done()] * 3))
    with pytest.raises(ipset.SetsKeptChanging, match='changed 2 times'):
        ipset.read_sets_around(lambda: None, attempts=2)


# --------------------------------------------------------------------------- malformed input


BUILT = [
    PROTOCOL_7,
    DUMP + done(),
    message(header('m', 'hash:ip', data=[u8(20, 24), address(12, '255.0.255.0')]) + members([address(1, '1.2.3.0')])),
    message(header('npn', 'hash:net,port,net') + members([address(1, '10.0.0.0'), u8(3, 8), address(20, 'fd00::'), u8(21, 200), be(4, 80, 2), u8(7, 6), be(8, 4, 4)])),
    message(header('ni', 'hash:net,iface') + members([address(1, '10.0.0.0'), u8(3, 8), text(23, 'eth'), be(8, 130, 4), nla(17, bytes(6))])),
    message(header('bp', 'bitmap:port', family=0, data=[be(4, 1, 2), be(5, 9, 2), address(1, '1.0.0.0'), address(2, '::')]) + members([be(4, 8, 2)])),
    message(u8(1, 7) + text(2, 'a') + members([address(1, '1.1.1.1')])),
    message(u8(1, 7) + text(2, 'nn'), command=15, flags=0) + error(),
    error(code=1),
    done(),
]


def mutations(seeds: List[bytes]) -> st.SearchStrategy[bytes]:
    seed = st.sampled_from(seeds)
    truncated = st.tuples(seed, st.integers(0, 1 << 16)).map(lambda pair: pair[0][: pair[1] % (len(pair[0]) + 1)])
    flipped = st.tuples(seed, st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)), min_size=1, max_size=8)).map(lambda pair: _flip(*pair))
    overwritten = st.tuples(seed, st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)).map(lambda triple: _overwrite(*triple))
    return st.one_of(st.binary(max_size=512), truncated, flipped, overwritten)


def _flip(data: bytes, flips: List[Tuple[int, int]]) -> bytes:
    if not data:
        return data
    mutable = bytearray(data)
    for position, bit in flips:
        mutable[position % len(mutable)] ^= 1 << bit
    return bytes(mutable)


def _overwrite(data: bytes, position: int, value: bytes) -> bytes:
    if not data:
        return value
    position %= len(data)
    return data[:position] + value + data[position + len(value) :]


def survives(data: bytes) -> None:
    started = time.monotonic()
    for parse in (lambda d: ipset.parse_dump([d, d[20:]]), ipset.parse_protocol, ipset.parse_name_reply):
        try:
            parse(data)
        except ipset.IpsetError:
            pass
    for call in (lambda r: r.sets(), lambda r: r.headers(), lambda r: r.name_of_index(3), lambda r: r.index_of_name('a')):
        try:
            call(FedReader([PROTOCOL_7, data]))
        except ipset.IpsetError:
            pass
        try:
            call(FedReader([data, data]))
        except ipset.IpsetError:
            pass
    snapshot = None
    try:
        snapshot = ipset.IpsetSnapshot(ipset.parse_dump([data[20:]]))
    except ipset.IpsetError:
        pass
    if snapshot is not None:  # what parsed is usable
        for found in snapshot.sets:
            found.networks()
            found.dimensions
        snapshot.same_as(snapshot)
    assert time.monotonic() - started < 2


@settings(max_examples=800, deadline=None)
@given(mutations(BUILT + [b''.join(BUILT)]))
def test_malformed_messages_raise_only_ipset_error(data: bytes) -> None:
    survives(data)


# --------------------------------------------------------------------------- in a namespace

#: Run inside the namespace: ``python3 -c SCRIPT COMMAND [ARGS]``; prints JSON.
SCRIPT = r'''
import json, sys
sys.path.insert(0, {root!r})
from tests.netlink_dump import PACKAGE, load
load()
import importlib, subprocess
ipset = importlib.import_module(PACKAGE + '.ipset')
command, args = sys.argv[1], sys.argv[2:]

def member(m):
    return {{k: (None if getattr(m, k) is None else getattr(m, k) if isinstance(getattr(m, k), (bool, int)) else str(getattr(m, k)))
            for k in ('address', 'address2', 'port', 'proto', 'interface', 'physdev', 'interface_wildcard', 'mark', 'mac', 'set_name',
                      'nomatch', 'comment', 'timeout')}}

def dump(snapshot):
    return {{'protocol': snapshot.protocol, 'sets': [
        {{'name': s.name, 'type': s.type, 'family': s.family, 'index': s.index, 'netmask': s.netmask, 'references': s.references,
          'range': None if s.address_range is None else [str(a) for a in s.address_range], 'port_range': s.port_range,
          'networks': None if s.networks() is None else [str(n) for n in s.networks()], 'members': [member(m) for m in s.members]}}
        for s in snapshot.sets]}}

try:
    if command == 'sets':
        result = dump(ipset.read_sets())
    elif command == 'names':
        result = {{str(k): v for k, v in ipset.read_set_names().items()}}
    elif command == 'indexes':
        with ipset.IpsetReader() as reader:
            result = {{'netlink': [reader.name_of_index(int(i)) for i in args], 'sockopt': [ipset.sockopt_name_of_index(int(i)) for i in args],
                      'by_name': [reader.index_of_name(n) for n in ('a', 'nothere')], 'sockopt_by_name': ipset.sockopt_index_of_name('a')}}
    elif command == 'raw':
        received = []

        class Recording(ipset.IpsetReader):
            def _recv_datagram(self, timeout):
                data = super()._recv_datagram(timeout)
                received.append(data.hex())
                return data

        with Recording() as reader:
            snapshot = reader.sets()
        result = {{'datagrams': received, 'names': {{str(k): v for k, v in snapshot.names().items()}}, 'members': sum(len(s.members) for s in snapshot.sets)}}
    elif command == 'around':
        changes = [['ipset', 'add', 'a', '10.9.9.9']]
        def read():
            if changes:
                subprocess.run(changes.pop(), check=True)
            return 'rules'
        value, snapshot = ipset.read_sets_around(read)
        result = {{'value': value, 'snapshot': dump(snapshot)}}
    else:
        with ipset.IpsetReader(timeout=float(args[0]) if args else 10.0) as reader:
            reader.sets()
        result = {{}}
except ipset.IpsetError as exc:
    result = {{'error': str(exc), 'errno': exc.errno, 'type': type(exc).__name__}}
print(json.dumps(result))
'''.format(root=ROOT)


def run(ns: Netns, *args: str, drop_capabilities: bool = False) -> Any:
    argv = [sys.executable, '-c', SCRIPT, *args]
    if drop_capabilities:
        argv = ['setpriv', '--inh-caps=-all', '--bounding-set=-all', *argv]
    return json.loads(ns.run(argv, timeout=120, check=True).stdout)


def ipset_tool(ns: Netns, *commands: str) -> None:
    ns.run(['ipset', 'restore'], input=''.join(c + '\n' for c in commands), check=True)


SETS = (
    'create a hash:ip',
    'add a 10.0.0.1',
    'add a 10.0.0.2',
    'create six hash:net family inet6',
    'add six fd00::/64',
    'add six ::1',
    'create nets hash:net',
    'add nets 10.0.0.0/8',
    'add nets 10.1.0.0/16 nomatch',
    'add nets 127.0.0.1',
    'create ports hash:ip,port',
    'add ports 127.0.0.1,tcp:22',
    'add ports 127.0.0.1,udp:53',
    'create ipi hash:ip,port,ip',
    'add ipi 1.2.3.4,udp:53,5.6.7.8',
    'create ipn hash:ip,port,net',
    'add ipn 1.2.3.4,tcp:80,10.0.0.0/8 nomatch',
    'create netport hash:net,port',
    'add netport 10.0.0.0/8,tcp:80',
    'create ifaces hash:net,iface',
    'add ifaces 10.0.0.0/8,lo',
    'add ifaces 10.0.0.0/8,physdev:eth0',
    'add ifaces 192.168.0.0/16,veth wildcard',
    'create masked hash:ip netmask 24',
    'add masked 172.16.3.4',
    'create bits hash:ip bitmask 255.0.255.0',
    'add bits 9.8.7.6',
    'create bm bitmap:ip range 192.168.0.0/16 netmask 24',
    'add bm 192.168.7.9',
    'create b bitmap:ip range 192.168.0.0/24',
    'add b 192.168.0.5',
    'add b 192.168.0.6',
    'create bim bitmap:ip,mac range 192.168.0.0/24',
    'add bim 192.168.0.1,aa:bb:cc:dd:ee:ff',
    'create bp bitmap:port range 1-1024',
    'add bp 80',
    'create timed hash:ip timeout 600 comment',
    'add timed 5.5.5.5 comment "hi there"',
    'create l list:set',
    'add l a',
    'add l nets',
)

_PROTO_NAMES = {6: 'tcp', 17: 'udp'}


def render(set_type: str, member: Dict[str, Any]) -> str:
    """A member as ``ipset save`` writes it (without timeout and counters)."""
    parts: List[str] = []
    addresses = iter([member['address'], member['address2']])
    for dimension in set_type.split(':')[1].split(','):
        if dimension in ('ip', 'net'):
            network = ipaddress.ip_network(next(addresses))
            host = dimension == 'ip' or network.prefixlen == network.max_prefixlen
            parts.append(str(network.network_address) if host else str(network))
        elif dimension == 'port':
            proto = member['proto']
            parts.append(str(member['port']) if proto is None else '{}:{}'.format(_PROTO_NAMES[proto], member['port']))
        elif dimension == 'iface':
            parts.append(('physdev:' if member['physdev'] else '') + member['interface'])
        elif dimension == 'mac' and member['mac'] is not None:
            parts.append(member['mac'].upper())
        elif dimension == 'set':
            parts.append(member['set_name'])
    line = ','.join(parts)
    if member['nomatch']:
        line += ' nomatch'
    if member['comment'] is not None:
        line += ' comment "{}"'.format(member['comment'])
    if member['interface_wildcard']:
        line += ' wildcard'
    return line


def saved(ns: Netns) -> Dict[str, Dict[str, Any]]:
    """``ipset save``: per set its type, header words and member lines (extensions of state cut)."""
    found: Dict[str, Dict[str, Any]] = {}
    for line in ns.run(['ipset', 'save'], check=True).stdout.splitlines():
        words = line.split()
        if words[0] == 'create':
            found[words[1]] = {'type': words[2], 'header': words[3:], 'members': set()}
        elif words[0] == 'add':
            member = re.sub(r' (timeout|packets|bytes) \d+', '', line.split(' ', 2)[2])
            found[words[1]]['members'].add(member)
    return found


def list_header(ns: Netns, name: str, field: str) -> str:
    for line in ns.run(['ipset', 'list', '-t', name], check=True).stdout.splitlines():
        if line.startswith(field + ':'):
            return line.split(':', 1)[1].strip()
    raise AssertionError('no {} in ipset list -t {}'.format(field, name))


@pytest.fixture
def with_sets(netns: Netns) -> Netns:
    require_tools('ipset')
    ipset_tool(netns, *SETS)
    return netns


def test_reader_agrees_with_ipset_save(with_sets: Netns) -> None:
    ours = run(with_sets, 'sets')
    assert ours['protocol'] in (6, 7)
    theirs = saved(with_sets)
    sets = {s['name']: s for s in ours['sets']}
    assert list(sets) == list(theirs) and list(sets)[-1] == 'l'  # list:set sets last
    for name, listed in theirs.items():
        mine = sets[name]
        assert mine['type'] == listed['type'], name
        assert {render(mine['type'], m) for m in mine['members']} == listed['members'], name
        if 'family' in listed['header']:
            assert mine['family'] == listed['header'][listed['header'].index('family') + 1], name
        assert str(mine['references']) == list_header(with_sets, name, 'References'), name
    assert sets['bits']['members'][0]['address'] == '9.0.7.0/32' and sets['bits']['networks'] is None
    assert sets['masked']['netmask'] == 24 and sets['masked']['networks'] == ['172.16.3.0/24']
    assert sets['bm']['range'] == ['192.168.0.0', '192.168.255.255'] and sets['bm']['networks'] == ['192.168.7.0/24']
    assert sets['bp']['port_range'] == [1, 1024]
    assert sets['timed']['members'][0]['timeout'] > 590 and sets['a']['members'][0]['timeout'] is None
    assert '10.1.0.1/32' not in sets['nets']['networks'] and '127.0.0.1/32' in sets['nets']['networks']


def test_names_and_indexes_agree_with_the_kernel(with_sets: Netns) -> None:
    names = run(with_sets, 'names')
    dumped = {str(s['index']): s['name'] for s in run(with_sets, 'sets')['sets']}
    assert names == dumped and len(names) == sum(1 for line in SETS if line.startswith('create'))
    indexes = sorted(int(i) for i in names)
    asked = run(with_sets, 'indexes', *(str(i) for i in indexes + [200, 400, 65535]))
    expected = [names[str(i)] for i in indexes] + [None, None, None]
    assert asked['netlink'] == expected and asked['sockopt'] == expected
    index_of_a = next(int(i) for i, n in names.items() if n == 'a')
    assert asked['by_name'] == [index_of_a, None] and asked['sockopt_by_name'] == index_of_a


def test_index_in_an_iptables_nft_rule_names_the_set(with_sets: Netns) -> None:
    require_tools('iptables-nft')
    with_sets.run(['iptables-nft', '-A', 'INPUT', '-m', 'set', '--match-set', 'nets', 'src', '-j', 'DROP'], check=True)
    with_sets.run(['iptables-nft', '-A', 'INPUT', '-m', 'set', '!', '--match-set', 'ports', 'src,dst', '-j', 'ACCEPT'], check=True)
    options = json.loads(with_sets.run([sys.executable, '-c', RULE_SCRIPT], check=True).stdout)
    assert [(values[1], negated) for values, negated in options] == [('src', False), ('src,dst', True)]
    names = run(with_sets, 'names')
    assert [names[values[0].lstrip('#')] for values, _ in options] == ['nets', 'ports']
    assert list_header(with_sets, 'nets', 'References') == '2'  # the rule and the list:set


#: The ``--match-set`` options of the rules of iptables-nft's ip filter table, as nft_decode.py decodes
#: them from the kernel's compat ``set`` match (which holds the set's index), read inside the namespace.
RULE_SCRIPT = r'''
import importlib, json, sys
sys.path.insert(0, {root!r})
from tests.netlink_dump import PACKAGE, load
netlink, _ = load()
nft_decode = importlib.import_module(PACKAGE + '.nft_decode')
found = []
for rule in netlink.read_ruleset(families=['ip']).rules[('ip', 'filter', 'INPUT')]:
    decoded = nft_decode.decode_rule(rule, {{}}, 'ip', iptables=True)
    for one in decoded if isinstance(decoded, tuple) else (decoded,):
        found.extend([list(o.values), o.negated] for m in one.matches if m.module == 'set' for o in m.options)
print(json.dumps(found))
'''.format(root=ROOT)


def test_index_in_an_iptables_legacy_rule(with_sets: Netns) -> None:
    """iptables-legacy keeps the index in the rule, taken from SO_IP_SET: the set there is the one
    the rule names, and the kernel counts the rule as a reference of that set (renaming it is then refused)."""
    require_tools('iptables-legacy', 'iptables-legacy-save')
    before = {s['name']: s for s in run(with_sets, 'sets')['sets']}
    with_sets.run(['iptables-legacy', '-A', 'INPUT', '-m', 'set', '--match-set', 'b', 'dst', '-j', 'DROP'], check=True)
    assert '--match-set b dst' in with_sets.run(['iptables-legacy-save'], check=True).stdout
    after = {s['name']: s for s in run(with_sets, 'sets')['sets']}
    assert (before['b']['references'], after['b']['references']) == (0, 1)
    assert run(with_sets, 'indexes', str(after['b']['index']))['sockopt'] == ['b']
    assert with_sets.run(['ipset', 'rename', 'b', 'b2']).returncode != 0


def test_swap_keeps_names_at_their_indexes(with_sets: Netns) -> None:
    before = {s['name']: s for s in run(with_sets, 'sets')['sets']}
    with_sets.run(['ipset', 'create', 'other', 'hash:ip'], check=True)
    with_sets.run(['ipset', 'add', 'other', '8.8.8.8'], check=True)
    with_sets.run(['ipset', 'swap', 'a', 'other'], check=True)
    after = {s['name']: s for s in run(with_sets, 'sets')['sets']}
    assert after['a']['index'] == before['a']['index'] and [m['address'] for m in after['a']['members']] == ['8.8.8.8/32']


def test_read_sets_around_sees_a_change_during_the_read(with_sets: Netns) -> None:
    result = run(with_sets, 'around')
    assert result['value'] == 'rules'
    a = next(s for s in result['snapshot']['sets'] if s['name'] == 'a')
    assert '10.9.9.9/32' in [m['address'] for m in a['members']]


def test_no_sets_at_all(netns: Netns) -> None:
    assert run(netns, 'sets')['sets'] == [] and run(netns, 'names') == {}


def test_without_cap_net_admin(with_sets: Netns) -> None:
    require_tools('setpriv')
    result = run(with_sets, 'error', drop_capabilities=True)
    assert result['type'] == 'IpsetError' and result['errno'] == errno.EPERM and 'CAP_NET_ADMIN' in result['error']


def test_deadline_on_a_real_socket(with_sets: Netns) -> None:
    result = run(with_sets, 'error', '0.000001')
    assert result['type'] == 'IpsetError' and 'took longer than' in result['error']


class Captured(List[bytes]):
    def __repr__(self) -> str:  # hypothesis prints the fixture with a falsifying example
        return '<{} captured datagrams>'.format(len(self))


@pytest.fixture(scope='module')
def captured() -> Iterator[Tuple[Captured, Dict[str, Any]]]:
    """The real replies to a protocol request and a dump of :data:`SETS` (plus a big set, so that
    the dump spans datagrams), captured once."""
    require_netns()
    require_tools('ipset')
    with Netns() as ns:
        ipset_tool(ns, *SETS, 'create big hash:net', *('add big 10.{}.{}.0/24'.format(i >> 8, i & 255) for i in range(3000)))
        raw = run(ns, 'raw')
    yield Captured(bytes.fromhex(d) for d in raw['datagrams']), raw


def test_captured_replies_are_read_again(captured: Tuple[Captured, Dict[str, Any]]) -> None:
    datagrams, raw = captured
    assert len(datagrams) > 3  # the protocol reply, and a dump over several datagrams
    snapshot = FedReader(list(datagrams)).sets()
    assert {str(k): v for k, v in snapshot.names().items()} == raw['names'] and sum(len(s.members) for s in snapshot.sets) == raw['members']
    assert len(snapshot.by_name('big').members) == 3000


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_captured_replies_raise_only_ipset_error(captured: Tuple[Captured, Dict[str, Any]], data: st.DataObject) -> None:
    survives(data.draw(mutations(list(captured[0]))))
