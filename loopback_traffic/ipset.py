"""Read the kernel's ipsets over netlink (``NETLINK_NETFILTER``, subsystem ``NFNL_SUBSYS_IPSET``),
standard library only; and map a set's kernel index to its name.

Rules refer to ipsets in two ways: the text of ``iptables-save`` names the set (``--match-set NAME``),
while the kernel's xtables ``set`` match (iptables-legacy, and iptables-nft's compat ``match``
expression) holds only the set's index (``ip_set_id_t``). :meth:`IpsetSnapshot.by_index` answers
that from a dump (protocol 7 lists each set's index); :meth:`IpsetReader.name_of_index` asks the
kernel (``IPSET_CMD_GET_BYINDEX``, or the ``SO_IP_SET`` getsockopt that iptables uses on kernels
that only speak protocol 6).

Two layers, as in :mod:`.netlink`: pure parsers (:func:`parse_protocol`, :func:`parse_dump`) where
malformed or truncated input raises :class:`IpsetError` and nothing else, and :class:`IpsetReader`,
which makes the requests within one deadline and one byte budget.

What cannot be guaranteed about reading the sets "at the same moment" as the nf_tables rules:

* ipset shares no generation id with nf_tables, and has none of its own: there is no way to ask
  the kernel whether a set changed between two reads. :func:`read_sets_around` reads the sets
  before and after the rules and accepts the read when both set dumps agree; a change that is
  undone between the two dumps (or an add and a delete of the same member) goes unseen.
* One dump is not atomic either. The kernel lists one set after the other (``list:set`` sets last)
  and a big hash set bucket by bucket over several messages, without a lock between messages: a
  member added or deleted during the dump may or may not be listed, and the kernel does not flag
  such a dump as interrupted (ipset never sets ``NLM_F_DUMP_INTR``).
* Members with a timeout expire on their own (the kernel skips expired members when listing):
  what was read may already be gone when a packet arrives. :attr:`Member.timeout` says which.
* ``ipset swap`` exchanges the contents of two sets and keeps each name at its index; ``ipset
  rename`` changes the name at an index (the kernel refuses it for a set a rule uses). Both can
  happen between the rules' read and the sets' read. The index of each set comes in the dump with
  its members (protocol 7), so index, name and members are of one moment; an index asked on its own
  (:meth:`IpsetReader.name_of_index`, and on protocol 6 kernels every index) is of another.
* Counters and the seconds left of a member are not compared: they change all the time.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_codes
import functools
import ipaddress
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Set, Tuple, TypeVar, Union

from .netlink import DEFAULT_RCVBUF, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, NetlinkError, iter_messages, open_socket, parse_done, parse_error

__all__ = [
    'IpsetError',
    'SetsKeptChanging',
    'Member',
    'IpSet',
    'IpsetSnapshot',
    'IpsetReader',
    'parse_protocol',
    'parse_dump',
    'parse_name_reply',
    'encode_request',
    'read_sets',
    'read_set_names',
    'read_sets_around',
]

# --------------------------------------------------------------------------- constants (ip_set.h)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_IPSET = 6
NFNETLINK_V0 = 0
NFPROTO_UNSPEC = 0

IPSET_PROTOCOL = 7
IPSET_PROTOCOL_MIN = 6
IPSET_MAXNAMELEN = 32
IPSET_INVALID_ID = 65535

IPSET_CMD_PROTOCOL = 1
IPSET_CMD_LIST = 7
IPSET_CMD_GET_BYNAME = 14
IPSET_CMD_GET_BYINDEX = 15

# command level
IPSET_ATTR_PROTOCOL = 1
IPSET_ATTR_SETNAME = 2
IPSET_ATTR_TYPENAME = 3
IPSET_ATTR_REVISION = 4
IPSET_ATTR_FAMILY = 5
IPSET_ATTR_FLAGS = 6
IPSET_ATTR_DATA = 7
IPSET_ATTR_ADT = 8
IPSET_ATTR_PROTOCOL_MIN = 10
IPSET_ATTR_INDEX = 11

# inside IPSET_ATTR_DATA: shared by headers and members
IPSET_ATTR_IP = 1
IPSET_ATTR_IP_TO = 2
IPSET_ATTR_CIDR = 3
IPSET_ATTR_PORT = 4
IPSET_ATTR_PORT_TO = 5
IPSET_ATTR_TIMEOUT = 6
IPSET_ATTR_PROTO = 7
IPSET_ATTR_CADT_FLAGS = 8
IPSET_ATTR_MARK = 10
IPSET_ATTR_MARKMASK = 11
IPSET_ATTR_BITMASK = 12
# headers only (the create attributes)
IPSET_ATTR_NETMASK = 20
IPSET_ATTR_SIZE = 23
IPSET_ATTR_ELEMENTS = 24
IPSET_ATTR_REFERENCES = 25
# members only (the add/del/test attributes): the same numbers as some header attributes
IPSET_ATTR_ETHER = 17
IPSET_ATTR_NAME = 18
IPSET_ATTR_IP2 = 20
IPSET_ATTR_CIDR2 = 21
IPSET_ATTR_IFACE = 23
IPSET_ATTR_COMMENT = 26

IPSET_ATTR_IPADDR_IPV4 = 1
IPSET_ATTR_IPADDR_IPV6 = 2

IPSET_FLAG_LIST_HEADER = 1 << 2
IPSET_FLAG_PHYSDEV = 1 << 1
IPSET_FLAG_NOMATCH = 1 << 2
IPSET_FLAG_IFACE_WILDCARD = 1 << 7

# SO_IP_SET getsockopt on an AF_INET raw socket (struct ip_set_req_get_set)
SOL_IP = 0
SO_IP_SET = 83
IP_SET_OP_GET_BYNAME = 6
IP_SET_OP_GET_BYINDEX = 7

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000

FAMILY_NAMES: Mapping[int, str] = {0: 'unspec', 2: 'inet', 10: 'inet6'}

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_RECV_SIZE = 1 << 17

_NLMSGHDR = struct.Struct('=IHHII')
_NLA = struct.Struct('=HH')
_GET_SET = struct.Struct('=II32s')  # op, version, union ip_set_name_index
_GET_SET_INDEX = struct.Struct('=H')

#: The kernel's own ipset error codes (above 4096, so not errnos), enum ipset_errno.
IPSET_ERRORS: Mapping[int, str] = {
    4097: 'protocol error (the kernel does not accept this request or protocol version)',
    4098: 'set type not supported',
    4099: 'the maximal number of sets is reached',
    4100: 'the set is in use',
    4101: 'the second set does not exist',
    4102: 'the sets have different types',
    4103: 'the element already exists',
    4104: 'invalid CIDR',
    4105: 'invalid netmask',
    4106: 'invalid family',
    4107: 'timeout support is not enabled',
    4108: 'the set is referenced',
    4109: 'invalid IPv4 address',
    4110: 'invalid IPv6 address',
    4111: 'counters are not enabled',
    4112: 'comments are not enabled',
    4113: 'invalid markmask',
    4114: 'skbinfo is not enabled',
    4115: 'bitmask and netmask are mutually exclusive',
}

_CAP_NET_ADMIN = 'reading the ipsets needs CAP_NET_ADMIN: run the Agent as root or give it CAP_NET_ADMIN'
_NO_IPSET = 'this kernel has no ipset support (the ip_set module is neither built in nor loadable), so no ipset exists'
_ERRNO_HINTS: Mapping[int, str] = {
    errno_codes.EPERM: _CAP_NET_ADMIN,
    errno_codes.EACCES: _CAP_NET_ADMIN,
    errno_codes.EPROTONOSUPPORT: 'this kernel has no NETLINK_NETFILTER sockets',
    errno_codes.EAFNOSUPPORT: 'this kernel has no netlink sockets (AF_NETLINK is not supported)',
}

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# --------------------------------------------------------------------------- errors


class IpsetError(Exception):
    """The ipsets could not be read. ``errno`` is the kernel's error code (an errno, or an ipset
    code above 4096) when the kernel refused a request, else ``None``."""

    def __init__(self, message: str, errno: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno = errno


class SetsKeptChanging(IpsetError):
    def __init__(self, times: int) -> None:
        super().__init__('the ipsets changed {} times while the rules were read'.format(times))
        self.times = times


def _malformed(what: str, detail: str) -> IpsetError:
    return IpsetError('malformed ipset {}: {}'.format(what, detail))


# --------------------------------------------------------------------------- the data


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a set, with the dimensions its type has (the others are ``None``).

    ``address`` is the first address dimension as a network: a host for ``hash:ip``, the member's
    CIDR for ``hash:net``, the set's netmask for ``hash:ip``/``bitmap:ip`` created with one.
    ``address2`` is the second (``hash:ip,port,ip``, ``hash:net,net``...). ``port`` is for ICMP the
    type and code (``type << 8 | code``). ``nomatch``: the member is an exception, a packet whose most
    specific matching member has it does not match the set. ``set_name``: a member of a ``list:set``.
    ``timeout``: the seconds left for a member of a set with timeouts (0: it stays), left out of
    comparisons.
    """

    address: Optional[IPNetwork] = None
    address2: Optional[IPNetwork] = None
    port: Optional[int] = None
    proto: Optional[int] = None
    interface: Optional[str] = None
    physdev: bool = False
    interface_wildcard: bool = False
    mark: Optional[int] = None
    mac: Optional[str] = None
    set_name: Optional[str] = None
    nomatch: bool = False
    comment: Optional[str] = None
    timeout: Optional[int] = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class IpSet:
    """One set: its header and its members in the kernel's order.

    ``index`` is the kernel's ``ip_set_id_t`` (``None`` when unknown). ``address_range`` is the
    range of a ``bitmap:ip``/``bitmap:ip,mac`` set, ``port_range`` that of a ``bitmap:port``.
    ``bitmask`` is set only when the set masks addresses with a mask that is not a prefix
    (``hash:ip`` created with ``bitmask``); a prefix mask is ``netmask``. ``references`` (rules and
    list:sets using the set) is left out of comparisons.
    """

    name: str
    type: str
    family: str
    revision: int = 0
    index: Optional[int] = None
    members: Tuple[Member, ...] = ()
    netmask: Optional[int] = None
    bitmask: Optional[IPAddress] = None
    markmask: Optional[int] = None
    address_range: Optional[Tuple[IPAddress, IPAddress]] = None
    port_range: Optional[Tuple[int, int]] = None
    timeout: Optional[int] = None
    size: Optional[int] = None
    references: Optional[int] = field(default=None, compare=False)

    @property
    def dimensions(self) -> Tuple[str, ...]:
        """The type's dimensions in order, e.g. ``('ip', 'port')`` for ``hash:ip,port``: the
        set match's ``src,dst`` flags apply to them in this order."""
        return tuple(self.type.split(':', 1)[1].split(',')) if ':' in self.type else ()

    def networks(self) -> Optional[Tuple[IPNetwork, ...]]:
        """The addresses the set matches, collapsed, for a set whose only dimension is an address
        (``hash:ip``, ``hash:net``, ``bitmap:ip``): the most specific member containing an address
        decides, so ``nomatch`` members cut holes. ``None`` for other types, for a non-prefix bitmask,
        and for members of mixed families."""
        if self.dimensions not in (('ip',), ('net',)) or self.bitmask is not None:
            return None
        addresses = [(m.address, m.nomatch) for m in self.members if m.address is not None]
        if len({address.version for address, _ in addresses}) > 1:
            return None
        return _effective_networks(addresses)


def _effective_networks(entries: List[Tuple[IPNetwork, bool]]) -> Tuple[IPNetwork, ...]:
    """The networks (of one IP version) matched by entries with longest-prefix semantics. Networks
    nest or are disjoint, so one sweep in address order with a stack of the enclosing entries finds
    each entry's own part (what no more specific entry covers): O(n log n) for big hash:net sets."""
    ranges: List[Tuple[int, int]] = []
    stack: List[List[int]] = []  # [last address, matches (0/1), first address not yet decided]

    def close(entry: List[int]) -> None:
        if entry[1] and entry[2] <= entry[0]:
            ranges.append((entry[2], entry[0]))
        if stack:
            stack[-1][2] = entry[0] + 1

    seen: Set[Tuple[int, int]] = set()
    for network, nomatch in sorted(entries, key=lambda e: (int(e[0].network_address), e[0].prefixlen)):
        first, last = int(network.network_address), int(network.broadcast_address)
        if (first, last) in seen:
            continue
        seen.add((first, last))
        while stack and stack[-1][0] < first:
            close(stack.pop())
        if stack:
            parent = stack[-1]
            if parent[1] and parent[2] < first:
                ranges.append((parent[2], first - 1))
            parent[2] = first
        stack.append([last, 0 if nomatch else 1, first])
    while stack:
        close(stack.pop())
    return _collapse(ranges, entries[0][0].version if entries else 4)


def _collapse(ranges: List[Tuple[int, int]], version: int) -> Tuple[IPNetwork, ...]:
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    networks = [n for first, last in ranges for n in ipaddress.summarize_address_range(make(first), make(last))]
    return tuple(ipaddress.collapse_addresses(networks))  # type: ignore[type-var]


@dataclass(frozen=True, slots=True)
class IpsetSnapshot:
    """Every set of one dump, in the kernel's order, and the protocol version the dump used."""

    sets: Tuple[IpSet, ...] = ()
    protocol: int = IPSET_PROTOCOL

    def by_name(self, name: str) -> Optional[IpSet]:
        return next((s for s in self.sets if s.name == name), None)

    def by_index(self, index: int) -> Optional[IpSet]:
        return next((s for s in self.sets if s.index == index), None)

    def names(self) -> Dict[int, str]:
        """Index -> name, for the sets whose index is known."""
        return {s.index: s.name for s in self.sets if s.index is not None}

    def same_as(self, other: IpsetSnapshot) -> bool:
        """The same sets with the same headers and members, in any order (a hash set that was
        resized lists its members in another order)."""
        return _contents(self) == _contents(other)


def _contents(snapshot: IpsetSnapshot) -> Dict[str, Tuple[IpSet, FrozenSet[Member]]]:
    return {s.name: (replace(s, members=()), frozenset(s.members)) for s in snapshot.sets}


# --------------------------------------------------------------------------- attributes


def _attribute_list(data: bytes, what: str) -> List[Tuple[int, bytes]]:
    """(type with its flags, payload) of each attribute, in order."""
    found: List[Tuple[int, bytes]] = []
    offset, end = 0, len(data)
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            raise _malformed(what, 'attribute of length {} at offset {} of {}'.format(length, offset, end))
        found.append((kind, data[offset + 4 : offset + length]))
        offset += (length + 3) & ~3
    return found


class _Attrs:
    """The attributes of one attribute stream: type -> (type with its flags, payload), the last one
    of a type. Integers are in network byte order when the kernel flags them so (``nla_put_net32``),
    else in host order."""

    __slots__ = ('found', 'what')

    def __init__(self, data: bytes, what: str) -> None:
        self.what = what
        self.found: Dict[int, Tuple[int, bytes]] = {kind & 0x3FFF: (kind, value) for kind, value in _attribute_list(data, what)}

    def __contains__(self, kind: int) -> bool:
        return kind in self.found

    def raw(self, kind: int) -> Optional[bytes]:
        entry = self.found.get(kind)
        return None if entry is None else entry[1]

    def integer(self, kind: int, size: int) -> Optional[int]:
        entry = self.found.get(kind)
        if entry is None:
            return None
        flags, value = entry
        if len(value) != size:
            raise _malformed(self.what, 'attribute {} of {} bytes instead of {}'.format(kind, len(value), size))
        return int.from_bytes(value, 'big' if flags & NLA_F_NET_BYTEORDER else sys.byteorder)

    def text(self, kind: int) -> Optional[str]:
        value = self.raw(kind)
        return None if value is None else value.split(b'\0', 1)[0].decode('utf-8', 'replace')

    def nested(self, kind: int) -> Optional[_Attrs]:
        value = self.raw(kind)
        return None if value is None else _Attrs(value, self.what)

    def address(self, kind: int) -> Optional[IPAddress]:
        nested = self.nested(kind)
        if nested is None:
            return None
        v4, v6 = nested.raw(IPSET_ATTR_IPADDR_IPV4), nested.raw(IPSET_ATTR_IPADDR_IPV6)
        if v4 is not None and len(v4) == 4:
            return ipaddress.IPv4Address(v4)
        if v6 is not None and len(v6) == 16:
            return ipaddress.IPv6Address(v6)
        raise _malformed(self.what, 'address attribute {} without a 4-byte IPv4 or 16-byte IPv6 address'.format(kind))


# --------------------------------------------------------------------------- parsers


def parse_protocol(attrs: bytes) -> Tuple[int, int]:
    """The attribute stream of an IPSET_CMD_PROTOCOL reply -> (the kernel's protocol version, the
    oldest it accepts)."""
    found = _Attrs(attrs, 'protocol reply')
    high = found.integer(IPSET_ATTR_PROTOCOL, 1)
    if high is None:
        raise _malformed('protocol reply', 'no protocol version')
    low = found.integer(IPSET_ATTR_PROTOCOL_MIN, 1)
    return high, high if low is None else low


def parse_name_reply(attrs: bytes) -> Tuple[Optional[str], Optional[int]]:
    """An IPSET_CMD_GET_BYINDEX or IPSET_CMD_GET_BYNAME reply -> (set name, index), as present."""
    found = _Attrs(attrs, 'set name reply')
    return found.text(IPSET_ATTR_SETNAME), found.integer(IPSET_ATTR_INDEX, 2)


@dataclass
class _Building:
    header: IpSet
    members: List[Member]


def parse_dump(payloads: Iterable[bytes]) -> Tuple[IpSet, ...]:
    """The attribute streams (after nfgenmsg) of an IPSET_CMD_LIST dump, in order -> the sets. A
    set's first message holds its header; a big set continues in messages that repeat its name."""
    done: List[IpSet] = []
    current: Optional[_Building] = None
    for attrs in payloads:
        found = _Attrs(attrs, 'list message')
        name = found.text(IPSET_ATTR_SETNAME)
        if name is None:
            raise _malformed('list message', 'no set name')
        if IPSET_ATTR_TYPENAME in found:
            if current is not None:
                done.append(_finish(current))
            current = _Building(_header(name, found), [])
        elif current is None or current.header.name != name:
            raise _malformed('list message', 'members of set {!r} without its header'.format(name))
        adt = found.raw(IPSET_ATTR_ADT)
        if adt is not None:
            current.members.extend(_members(current.header, adt))
    if current is not None:
        done.append(_finish(current))
    return tuple(done)


def _finish(building: _Building) -> IpSet:
    return replace(building.header, members=tuple(building.members))


def _header(name: str, found: _Attrs) -> IpSet:
    data = found.nested(IPSET_ATTR_DATA) or _Attrs(b'', 'set header')
    netmask = data.integer(IPSET_ATTR_NETMASK, 1)
    bitmask = data.address(IPSET_ATTR_BITMASK)
    prefix = None if bitmask is None else _prefix_of(bitmask)
    if prefix is not None:
        netmask, bitmask = prefix, None
    first, last = data.address(IPSET_ATTR_IP), data.address(IPSET_ATTR_IP_TO)
    low_port, high_port = data.integer(IPSET_ATTR_PORT, 2), data.integer(IPSET_ATTR_PORT_TO, 2)
    family = found.integer(IPSET_ATTR_FAMILY, 1)
    return IpSet(
        name=name,
        type=found.text(IPSET_ATTR_TYPENAME) or '',
        family=FAMILY_NAMES.get(family or 0, 'family-{}'.format(family)),
        revision=found.integer(IPSET_ATTR_REVISION, 1) or 0,
        index=found.integer(IPSET_ATTR_INDEX, 2),
        netmask=netmask,
        bitmask=bitmask,
        markmask=data.integer(IPSET_ATTR_MARKMASK, 4),
        address_range=(first, last) if first is not None and last is not None else None,
        port_range=(low_port, high_port) if low_port is not None and high_port is not None else None,
        timeout=data.integer(IPSET_ATTR_TIMEOUT, 4),
        size=data.integer(IPSET_ATTR_SIZE, 4),
        references=data.integer(IPSET_ATTR_REFERENCES, 4),
    )


def _prefix_of(mask: IPAddress) -> Optional[int]:
    """The prefix length of a mask made of leading ones, else ``None``."""
    bits, width = int(mask), mask.max_prefixlen
    inverted = ~bits & ((1 << width) - 1)
    if inverted & (inverted + 1):
        return None
    return width - inverted.bit_length()


def _members(header: IpSet, adt: bytes) -> List[Member]:
    return [
        _member(header, _Attrs(value, 'set member'))
        for kind, value in _attribute_list(adt, 'member list')
        if kind & 0x3FFF == IPSET_ATTR_DATA
    ]


def _member(header: IpSet, found: _Attrs) -> Member:
    flags = found.integer(IPSET_ATTR_CADT_FLAGS, 4) or 0
    return Member(
        address=_network(found.address(IPSET_ATTR_IP), found.integer(IPSET_ATTR_CIDR, 1), header.netmask),
        address2=_network(found.address(IPSET_ATTR_IP2), found.integer(IPSET_ATTR_CIDR2, 1), header.netmask),
        port=found.integer(IPSET_ATTR_PORT, 2),
        proto=found.integer(IPSET_ATTR_PROTO, 1),
        interface=found.text(IPSET_ATTR_IFACE),
        physdev=bool(flags & IPSET_FLAG_PHYSDEV),
        interface_wildcard=bool(flags & IPSET_FLAG_IFACE_WILDCARD),
        mark=found.integer(IPSET_ATTR_MARK, 4),
        mac=_mac(found.raw(IPSET_ATTR_ETHER)),
        set_name=found.text(IPSET_ATTR_NAME),
        nomatch=bool(flags & IPSET_FLAG_NOMATCH),
        comment=found.text(IPSET_ATTR_COMMENT),
        timeout=found.integer(IPSET_ATTR_TIMEOUT, 4),
    )


def _network(address: Optional[IPAddress], cidr: Optional[int], netmask: Optional[int]) -> Optional[IPNetwork]:
    if address is None:
        return None
    prefix = min(p for p in (cidr, netmask, address.max_prefixlen) if p is not None)
    # From the integer: about three times faster than from the address object (sets hold thousands).
    network = ipaddress.IPv4Network if address.version == 4 else ipaddress.IPv6Network
    return network((int(address), prefix), strict=False)


def _mac(value: Optional[bytes]) -> Optional[str]:
    if value is None:
        return None
    if len(value) != 6:
        raise _malformed('set member', 'a MAC address of {} bytes'.format(len(value)))
    return ':'.join('{:02x}'.format(byte) for byte in value)


# --------------------------------------------------------------------------- requests


def _attr(kind: int, value: bytes) -> bytes:
    return _NLA.pack(4 + len(value), kind) + value + b'\0' * (-len(value) % 4)


def _attr_u8(kind: int, value: int) -> bytes:
    return _attr(kind, bytes((value,)))


def encode_request(command: int, flags: int, seq: int, attrs: bytes = b'') -> bytes:
    """An nfnetlink ipset request: nlmsghdr, nfgenmsg, attributes."""
    body = struct.pack('=BBH', NFPROTO_UNSPEC, NFNETLINK_V0, 0) + attrs
    return _NLMSGHDR.pack(16 + len(body), (NFNL_SUBSYS_IPSET << 8) | command, flags, seq, 0) + body


def _kernel_error(code: int, text: str, what: str, command: int) -> IpsetError:
    if command == IPSET_CMD_PROTOCOL and code in (errno_codes.EINVAL, errno_codes.EOPNOTSUPP):
        reason = _NO_IPSET  # nfnetlink has no subsystem 6
    elif code in IPSET_ERRORS:
        reason = 'ipset ' + IPSET_ERRORS[code]
    elif 0 < code < 4096:
        reason = _ERRNO_HINTS.get(code) or os.strerror(code)
    else:
        return IpsetError('{}: the kernel answered with the invalid error code {}'.format(what, -code))
    message = '{}: {} (error {} {})'.format(what, reason, code, errno_codes.errorcode.get(code, 'IPSET_ERR'))
    return IpsetError(message + (': ' + text if text else ''), code)


def _os_error(exc: OSError, what: str) -> IpsetError:
    code = exc.errno or 0
    return IpsetError('{}: {}'.format(what, _ERRNO_HINTS.get(code) or exc.strerror or str(exc)), code or None)


class IpsetReader:
    """One NETLINK_NETFILTER socket and the ipset requests made through it. ``timeout`` (seconds)
    and ``max_bytes`` bound the reader's whole life, until :meth:`restart_budget`."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.bytes_received = 0
        self._deadline = time.monotonic() + timeout
        self._sock: Optional[socket.socket] = None
        self._seq = int(time.time()) & 0x3FFFFFFF
        self._protocol: Optional[int] = None
        self._kernel_protocol = 0

    def __enter__(self) -> IpsetReader:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        if self._sock is None:
            self._sock = _open_socket()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def restart_budget(self) -> None:
        self._deadline = time.monotonic() + self.timeout
        self.bytes_received = 0

    # -- the ipset requests

    def protocol(self) -> int:
        """The protocol version both sides speak (7, or 6 on old kernels), asked once."""
        if self._protocol is None:
            what = "asking the kernel for its ipset protocol"
            replies = self.request(IPSET_CMD_PROTOCOL, _attr_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL), False, what)
            if len(replies) != 1:
                raise IpsetError('{}: {} replies instead of one'.format(what, len(replies)))
            high, low = parse_protocol(replies[0])
            if high < IPSET_PROTOCOL_MIN or low > IPSET_PROTOCOL:
                raise IpsetError('the kernel speaks ipset protocols {} to {}; this check speaks {} to {}'.format(
                    low, high, IPSET_PROTOCOL_MIN, IPSET_PROTOCOL))
            self._protocol, self._kernel_protocol = min(high, IPSET_PROTOCOL), high
        return self._protocol

    def sets(self) -> IpsetSnapshot:
        """Every set with its members (one dump)."""
        return self._dump(0)

    def headers(self) -> IpsetSnapshot:
        """Every set's header, without members: the names and indexes."""
        return self._dump(IPSET_FLAG_LIST_HEADER)

    def _dump(self, flags: int) -> IpsetSnapshot:
        protocol = self.protocol()
        attrs = _attr_u8(IPSET_ATTR_PROTOCOL, protocol)
        if flags:
            attrs += _attr(IPSET_ATTR_FLAGS | NLA_F_NET_BYTEORDER, struct.pack('>I', flags))
        sets = parse_dump(self.request(IPSET_CMD_LIST, attrs, True, 'listing the ipsets'))
        if protocol < IPSET_PROTOCOL:  # protocol 6 dumps carry no index
            sets = tuple(replace(found, index=self.index_of_name(found.name)) for found in sets)
        return IpsetSnapshot(sets, protocol)

    def name_of_index(self, index: int) -> Optional[str]:
        """The name of the set at a kernel index (``None``: no set there)."""
        if not 0 <= index < IPSET_INVALID_ID:
            return None
        if self._names_over_netlink():
            attrs = _attr_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL) + _attr(IPSET_ATTR_INDEX | NLA_F_NET_BYTEORDER, struct.pack('>H', index))
            name, _ = self._by(IPSET_CMD_GET_BYINDEX, attrs, 'asking the name of ipset index {}'.format(index))
            return name or None
        return sockopt_name_of_index(index)

    def index_of_name(self, name: str) -> Optional[int]:
        """The kernel index of a set (``None``: no such set)."""
        if self._names_over_netlink():
            attrs = _attr_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL) + _attr(IPSET_ATTR_SETNAME, _name_bytes(name))
            _, index = self._by(IPSET_CMD_GET_BYNAME, attrs, 'asking the index of ipset {}'.format(name))
            return index
        return sockopt_index_of_name(name)

    def _names_over_netlink(self) -> bool:
        """IPSET_CMD_GET_BYNAME/BYINDEX want the kernel's own protocol version, which must be ours."""
        self.protocol()
        return self._kernel_protocol == IPSET_PROTOCOL

    def _by(self, command: int, attrs: bytes, what: str) -> Tuple[Optional[str], Optional[int]]:
        try:
            replies = self.request(command, attrs, False, what)
        except IpsetError as exc:
            if exc.errno == errno_codes.ENOENT:
                return None, None
            raise
        if len(replies) != 1:
            raise IpsetError('{}: {} replies instead of one'.format(what, len(replies)))
        return parse_name_reply(replies[0])

    # -- the wire

    def request(self, command: int, attrs: bytes, dump: bool, what: str) -> List[bytes]:
        """Send one request; the attribute streams of its replies, until the dump's NLMSG_DONE or
        the kernel's ack. On any failure but a refusal the socket is closed (a half-read dump would
        stay queued on it)."""
        self.open()
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        try:
            self._send(encode_request(command, flags, self._seq, attrs))
            replies, refusal = self._collect(self._seq, command, dump, what)
        except BaseException:
            self.close()
            raise
        if refusal is not None:
            raise refusal
        return replies

    def _collect(self, seq: int, command: int, dump: bool, what: str) -> Tuple[List[bytes], Optional[IpsetError]]:
        replies: List[bytes] = []
        reply_type = (NFNL_SUBSYS_IPSET << 8) | command
        while True:
            data = self._receive(what)
            try:
                messages = list(iter_messages(data))
            except NetlinkError as exc:
                raise IpsetError('{}: {}'.format(what, exc)) from exc
            for kind, flags, mseq, _pid, start, end in messages:
                if mseq != seq:
                    continue  # a late reply to an earlier request
                if kind == reply_type:
                    if end - start < 4:
                        raise IpsetError('{}: truncated nfgenmsg header'.format(what))
                    replies.append(data[start + 4 : end])
                elif kind == NLMSG_ERROR:
                    code, text = _error_of(data[start:end], flags, what)
                    if code:
                        return replies, _kernel_error(code, text, what, command)
                    if not dump:
                        return replies, None
                elif kind == NLMSG_DONE:
                    code = parse_done(data[start:end])
                    return replies, _kernel_error(code, '', what, command) if code else None
                elif kind == NLMSG_OVERRUN:
                    raise IpsetError('{}: the kernel reported a netlink overrun'.format(what))

    def _send(self, message: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(message, (0, 0))
        except OSError as exc:
            raise _os_error(exc, 'sending an ipset request') from exc

    def _receive(self, what: str) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise IpsetError('{}: took longer than {:g} s'.format(what, self.timeout))
        data = self._recv_datagram(remaining)
        self.bytes_received += len(data)
        if self.bytes_received > self.max_bytes:
            raise IpsetError('{}: the ipsets are larger than the limit of {} bytes'.format(what, self.max_bytes))
        return data

    def _recv_datagram(self, timeout: float) -> bytes:
        sock = self._sock
        assert sock is not None
        sock.settimeout(timeout)
        try:
            data, _ancillary, msg_flags, _address = sock.recvmsg(_RECV_SIZE)
        except socket.timeout:
            raise IpsetError('reading the ipsets took longer than {:g} s'.format(self.timeout)) from None
        except OSError as exc:
            raise _os_error(exc, 'receiving ipset replies') from exc
        if msg_flags & socket.MSG_TRUNC:
            raise IpsetError('an ipset reply was larger than {} bytes'.format(_RECV_SIZE))
        return bytes(data)


def _error_of(payload: bytes, flags: int, what: str) -> Tuple[int, str]:
    try:
        return parse_error(payload, flags)
    except NetlinkError as exc:
        raise IpsetError('{}: {}'.format(what, exc)) from exc


def _name_bytes(name: str) -> bytes:
    raw = name.encode('utf-8')
    if len(raw) >= IPSET_MAXNAMELEN or b'\0' in raw:
        raise IpsetError('{!r} is not an ipset name (at most {} bytes)'.format(name, IPSET_MAXNAMELEN - 1))
    return raw + b'\0'


def _open_socket() -> socket.socket:
    try:
        return open_socket(DEFAULT_RCVBUF)
    except NetlinkError as error:
        raise IpsetError(str(error), error.errno) from error


# --------------------------------------------------------------------------- SO_IP_SET


def sockopt_name_of_index(index: int) -> Optional[str]:
    """``IP_SET_OP_GET_BYINDEX``, as iptables asks: the name of the set at ``index``, ``None`` when
    there is none (the kernel answers an empty name, or EINVAL beyond its maximal number of sets)."""
    union = _GET_SET_INDEX.pack(index).ljust(IPSET_MAXNAMELEN, b'\0')
    try:
        reply = _getsockopt(IP_SET_OP_GET_BYINDEX, union, 'asking the name of ipset index {}'.format(index))
    except IpsetError as exc:
        if exc.errno == errno_codes.EINVAL:
            return None
        raise
    return reply.split(b'\0', 1)[0].decode('utf-8', 'replace') or None


def sockopt_index_of_name(name: str) -> Optional[int]:
    """``IP_SET_OP_GET_BYNAME``: the index of the set called ``name``, ``None`` when there is none."""
    union = _name_bytes(name).ljust(IPSET_MAXNAMELEN, b'\0')
    index: int = _GET_SET_INDEX.unpack_from(_getsockopt(IP_SET_OP_GET_BYNAME, union, 'asking the index of ipset {}'.format(name)))[0]
    return None if index == IPSET_INVALID_ID else index


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)


def _getsockopt(op: int, union: bytes, what: str) -> bytes:
    """The union of ``struct ip_set_req_get_set`` after the kernel filled it in. Python's
    ``getsockopt`` cannot pass a request in, so libc's is called through ctypes."""
    buffer = ctypes.create_string_buffer(_GET_SET.pack(op, IPSET_PROTOCOL_MIN, union), _GET_SET.size)
    length = ctypes.c_uint32(_GET_SET.size)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as exc:
        raise IpsetError('{}: cannot open a raw socket for SO_IP_SET (needs CAP_NET_RAW): {}'.format(what, exc.strerror), exc.errno) from exc
    with sock:
        if _libc().getsockopt(sock.fileno(), SOL_IP, SO_IP_SET, buffer, ctypes.byref(length)) != 0:
            code = ctypes.get_errno()
            if code == errno_codes.ENOPROTOOPT:
                raise IpsetError('{}: {}'.format(what, _NO_IPSET), code)
            raise IpsetError('{}: {}'.format(what, _ERRNO_HINTS.get(code) or os.strerror(code)), code)
    return buffer.raw[8 : 8 + IPSET_MAXNAMELEN]


# --------------------------------------------------------------------------- reading

T = TypeVar('T')


def read_sets(timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> IpsetSnapshot:
    """Every set of this network namespace with its members, in one dump."""
    with IpsetReader(timeout, max_bytes) as reader:
        return reader.sets()


def read_set_names(timeout: float = DEFAULT_TIMEOUT) -> Dict[int, str]:
    """Which sets there are: index -> name (a dump of the headers only)."""
    with IpsetReader(timeout) as reader:
        return reader.headers().names()


def read_sets_around(read: Callable[[], T], attempts: int = 3, timeout: float = DEFAULT_TIMEOUT,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> Tuple[T, IpsetSnapshot]:
    """``(read(), the sets)``, where the sets read just before and just after ``read()`` (the
    nf_tables rules) agree: as near to one moment as ipset allows (see the module docstring). Raises
    :class:`SetsKeptChanging` after ``attempts`` reads during which they changed. Each set dump has
    its own time and byte budget."""
    with IpsetReader(timeout, max_bytes) as reader:
        before = reader.sets()
        for _ in range(attempts):
            value = read()
            reader.restart_budget()
            after = reader.sets()
            if after.same_as(before):
                return value, after
            before = after
    raise SetsKeptChanging(attempts)
