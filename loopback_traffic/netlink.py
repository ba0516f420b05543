"""Read the kernel's nf_tables ruleset over netlink (``NETLINK_NETFILTER``), standard library only.

Two layers:

* pure parsers (no I/O) that turn received bytes into the types of :mod:`.nf_tables`; malformed or
  truncated input raises :class:`NetlinkError` and nothing else;
* :class:`NetlinkReader`, which sends the dump requests and collects the replies, within one
  deadline and one byte budget for the reader's whole life (see :meth:`NetlinkReader.restart_budget`).

:func:`read_consistent` makes a read span a single ruleset generation; :func:`read_ruleset` reads
everything that way.

Rules are the bulk of a big ruleset (a Kubernetes node may have hundreds of thousands), so their
parser reads only the top-level attributes and keeps the expressions as one bytes slice.
"""
from __future__ import annotations

import errno as errno_codes
import hashlib
import os
import socket
import struct
import time
from dataclasses import replace
from typing import Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, TypeVar

from .nf_tables import (
    FAMILY_NAMES,
    INET_HOOK_NAMES,
    NETDEV_HOOK_NAMES,
    NFPROTO_ARP,
    NFPROTO_NETDEV,
    NFPROTO_UNSPEC,
    ChainNames,
    KernelChain,
    KernelRule,
    KernelRuleset,
    KernelSet,
    KernelTable,
    MalformedAttributes,
    SetElement,
    attribute_list,
    attributes,
    be32,
    be32_signed,
    be64,
    compact_comments,
    same_but_counts,
    same_compacted_but_counts,
    string,
    without_statistics,
)

__all__ = [
    'NetlinkError',
    'Vanished',
    'RulesetKeptChanging',
    'Message',
    'iter_messages',
    'split_messages',
    'parse_error',
    'parse_done',
    'parse_generation',
    'parse_table',
    'parse_chain',
    'parse_rule',
    'rule_fields',
    'RuleFields',
    'name_cache',
    'parse_set',
    'parse_set_elements',
    'hook_name',
    'family_name',
    'family_number',
    'NetlinkReader',
    'KnownRules',
    'told_rules',
    'ChainIndex',
    'read_consistent',
    'read_ruleset',
]

# --------------------------------------------------------------------------- constants

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_RCVBUFFORCE = 33

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100  # in NLMSG_ERROR: the request was not echoed
NLM_F_ACK_TLVS = 0x200  # in NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

NFNL_SUBSYS_NFTABLES = 10
NFNETLINK_V0 = 0

NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFT_MSG_NEWSET = 9
NFT_MSG_GETSET = 10
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16

NFTA_TABLE_NAME = 1
NFTA_TABLE_FLAGS = 2
NFTA_TABLE_HANDLE = 4

NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_HANDLE = 2
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_HOOK = 4
NFTA_CHAIN_POLICY = 5
NFTA_CHAIN_TYPE = 7
NFTA_CHAIN_FLAGS = 10
NFT_CHAIN_BINDING = 0x4  # enum nft_chain_flags: a chain bound to the rule that jumps to it

NFTA_HOOK_HOOKNUM = 1
NFTA_HOOK_PRIORITY = 2
NFTA_HOOK_DEV = 3
NFTA_HOOK_DEVS = 4
NFTA_DEVICE_NAME = 1
NFTA_DEVICE_PREFIX = 2  # kernels >= 6.16: a wildcard interface name (nft prints it with a trailing '*')

NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_HANDLE = 3
NFTA_RULE_EXPRESSIONS = 4
NFTA_RULE_POSITION = 6
NFTA_RULE_USERDATA = 7

NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2
NFTA_SET_FLAGS = 3
NFTA_SET_KEY_TYPE = 4
NFTA_SET_KEY_LEN = 5
NFTA_SET_DATA_TYPE = 6
NFTA_SET_DATA_LEN = 7

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_FLAGS = 3
NFTA_SET_ELEM_KEY_END = 10
NFTA_DATA_VALUE = 1

NFTA_GEN_ID = 1

#: NF_ARP_* hook numbers (the arp family numbers its hooks on its own).
ARP_HOOK_NAMES: Mapping[int, str] = {0: 'input', 1: 'output', 2: 'forward'}
POLICY_NAMES: Mapping[int, str] = {0: 'drop', 1: 'accept'}

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_RCVBUF = 4 * 1024 * 1024
_RECV_SIZE = 1 << 17  # a dump skb is at most 32 KiB; non-dump replies are small

_NLMSGHDR = struct.Struct('=IHHII')
_NLA = struct.Struct('=HH')
_INT = struct.Struct('=i')
_BE32 = struct.Struct('>I')
_BE64 = struct.Struct('>Q')

_MSG_TRUNC = int(socket.MSG_TRUNC)  # the flag enum's operators cost more than the datagram's parsing
_FAMILY_NUMBERS: Mapping[str, int] = {name: number for number, name in FAMILY_NAMES.items()}


# --------------------------------------------------------------------------- errors


class NetlinkError(Exception):
    """The ruleset could not be read over netlink. ``errno`` is the kernel's (positive) error code
    when the kernel refused a request, else ``None``."""

    def __init__(self, message: str, errno: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno = errno


class Vanished(NetlinkError):
    """A table, chain or set named in a request does not exist (any more): the ruleset changed
    between two requests, or the name was never there."""


class RulesetKeptChanging(NetlinkError):
    def __init__(self, times: int) -> None:
        super().__init__('the ruleset changed {} times while being read'.format(times))
        self.times = times


def _malformed(what: str, exc: Exception) -> NetlinkError:
    return NetlinkError('malformed netlink {}: {}'.format(what, exc))


_NLA_HEADER = struct.Struct('=HH')

# --------------------------------------------------------------------------- names


def family_name(number: int) -> str:
    return FAMILY_NAMES.get(number, 'family-{}'.format(number))


def family_number(name: str) -> int:
    try:
        return _FAMILY_NUMBERS[name]
    except KeyError:
        raise ValueError('unknown nf_tables family {!r}'.format(name)) from None


def hook_name(family: int, number: int) -> str:
    if family == NFPROTO_NETDEV:
        names = NETDEV_HOOK_NAMES
    elif family == NFPROTO_ARP:
        names = ARP_HOOK_NAMES
    else:
        names = INET_HOOK_NAMES  # ip, ip6, inet, and bridge (NF_BR_* share the numbering)
    return names.get(number, 'hook-{}'.format(number))


# --------------------------------------------------------------------------- messages


class Message(NamedTuple):
    """One netlink message: its header and its payload (what follows the 16-byte nlmsghdr)."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


def iter_messages(data: bytes) -> Iterator[Tuple[int, int, int, int, int, int]]:
    """The messages of one received datagram as ``(type, flags, seq, pid, start, end)``, where
    ``data[start:end]`` is the payload. Raises :class:`NetlinkError` on a truncated message."""
    offset, size = 0, len(data)
    while offset < size:
        if size - offset < 16:
            raise NetlinkError('truncated netlink message header at offset {} of {}'.format(offset, size))
        length, kind, flags, seq, pid = _NLMSGHDR.unpack_from(data, offset)
        if length < 16 or offset + length > size:
            raise NetlinkError('netlink message of length {} at offset {} of {}'.format(length, offset, size))
        yield kind, flags, seq, pid, offset + 16, offset + length
        offset += (length + 3) & ~3


def split_messages(data: bytes) -> List[Message]:
    return [Message(kind, flags, seq, pid, data[start:end]) for kind, flags, seq, pid, start, end in iter_messages(data)]


def parse_error(payload: bytes, flags: int = 0) -> Tuple[int, str]:
    """An NLMSG_ERROR payload -> (positive errno, 0 for an ack; the kernel's extended-ack text or '')."""
    if len(payload) < 4:
        raise NetlinkError('truncated NLMSG_ERROR message')
    code = -_INT.unpack_from(payload, 0)[0]
    text = ''
    if flags & NLM_F_ACK_TLVS and len(payload) >= 20:
        echoed = 16 if flags & NLM_F_CAPPED else _NLMSGHDR.unpack_from(payload, 4)[0]
        offset = 4 + ((echoed + 3) & ~3)
        try:
            text = string(attributes(payload[offset:]).get(NLMSGERR_ATTR_MSG, b''))
        except MalformedAttributes:
            text = ''
    return code, text


def parse_done(payload: bytes) -> int:
    """An NLMSG_DONE payload -> positive errno of a dump that failed half-way, 0 when it completed."""
    if len(payload) < 4:
        return 0
    return -int(_INT.unpack_from(payload, 0)[0])


def _nfgen_family(payload: bytes) -> Tuple[int, bytes]:
    if len(payload) < 4:
        raise NetlinkError('truncated nfgenmsg header')
    return payload[0], payload[4:]


def parse_generation(attrs: bytes) -> int:
    """The attribute stream of NFT_MSG_NEWGEN (after the nfgenmsg header) -> the generation id."""
    try:
        found = attributes(attrs)
        if NFTA_GEN_ID not in found:
            raise NetlinkError('NFT_MSG_NEWGEN without a generation id')
        return be32(found[NFTA_GEN_ID])
    except MalformedAttributes as exc:
        raise _malformed('generation message', exc) from exc


def parse_table(family: int, attrs: bytes) -> KernelTable:
    try:
        found = attributes(attrs)
        return KernelTable(
            family=family_name(family),
            name=string(found.get(NFTA_TABLE_NAME, b'')),
            flags=be32(found[NFTA_TABLE_FLAGS]) if NFTA_TABLE_FLAGS in found else 0,
            handle=be64(found[NFTA_TABLE_HANDLE]) if NFTA_TABLE_HANDLE in found else 0,
        )
    except MalformedAttributes as exc:
        raise _malformed('table message', exc) from exc


def _devices(hook: Dict[int, bytes]) -> Tuple[str, ...]:
    if NFTA_HOOK_DEV in hook:
        return (string(hook[NFTA_HOOK_DEV]),)
    if NFTA_HOOK_DEVS not in hook:
        return ()
    names = []
    for kind, value in attribute_list(hook[NFTA_HOOK_DEVS]):
        if kind == NFTA_DEVICE_NAME:
            names.append(string(value))
        elif kind == NFTA_DEVICE_PREFIX:
            names.append(string(value) + '*')
    return tuple(names)


def parse_chain(family: int, attrs: bytes) -> KernelChain:
    try:
        found = attributes(attrs)
        hook: Optional[str] = None
        priority: Optional[int] = None
        devices: Tuple[str, ...] = ()
        if NFTA_CHAIN_HOOK in found:
            nested = attributes(found[NFTA_CHAIN_HOOK])
            if NFTA_HOOK_HOOKNUM in nested:
                hook = hook_name(family, be32(nested[NFTA_HOOK_HOOKNUM]))
            if NFTA_HOOK_PRIORITY in nested:
                priority = be32_signed(nested[NFTA_HOOK_PRIORITY])
            devices = _devices(nested)
        policy = None
        if NFTA_CHAIN_POLICY in found:
            verdict = be32(found[NFTA_CHAIN_POLICY])
            policy = POLICY_NAMES.get(verdict, 'verdict-{}'.format(verdict))
        return KernelChain(
            family=family_name(family),
            table=string(found.get(NFTA_CHAIN_TABLE, b'')),
            name=string(found.get(NFTA_CHAIN_NAME, b'')),
            handle=be64(found[NFTA_CHAIN_HANDLE]) if NFTA_CHAIN_HANDLE in found else 0,
            hook=hook,
            priority=priority,
            type=string(found[NFTA_CHAIN_TYPE]) if NFTA_CHAIN_TYPE in found else None,
            policy=policy,
            devices=devices,
            flags=be32(found[NFTA_CHAIN_FLAGS]) if NFTA_CHAIN_FLAGS in found else 0,
        )
    except MalformedAttributes as exc:
        raise _malformed('chain message', exc) from exc


def _chain_identity(data: bytes, start: int, end: int, strings: Dict[bytes, str]) -> Tuple[str, str, int, bool, bool]:
    """(table, name, handle, whether it is a base chain, whether it is bound to a rule) of a chain
    message, without decoding the rest."""
    table = name = ''
    handle = 0
    is_base = is_bound = False
    offset = start
    try:
        while offset + 4 <= end:
            length, kind = _NLA_HEADER.unpack_from(data, offset)
            if length < 4 or offset + length > end:
                raise NetlinkError('malformed chain message: attribute of length {} at offset {}'.format(length, offset - start))
            kind &= 0x3FFF
            if kind == NFTA_CHAIN_TABLE:
                table = strings[data[offset + 4 : offset + length]]
            elif kind == NFTA_CHAIN_NAME:
                name = strings[data[offset + 4 : offset + length]]
            elif kind == NFTA_CHAIN_HANDLE and length == 12:
                handle = _unpack_be64(data, offset + 4)[0]
            elif kind == NFTA_CHAIN_HOOK:
                is_base = True
            elif kind == NFTA_CHAIN_FLAGS and length == 8:
                is_bound = bool(_unpack_be32(data, offset + 4)[0] & NFT_CHAIN_BINDING)
            offset += (length + 3) & ~3
    except struct.error as exc:
        raise _malformed('chain message', exc) from exc
    return table, name, handle, is_base, is_bound


class _Names(dict):  # type: ignore[type-arg]
    """Raw NUL-terminated name -> str, decoded once per distinct name (rules repeat their table and chain)."""

    def __missing__(self, raw: bytes) -> str:
        value = self[raw] = string(raw)
        return value


_new_object = object.__new__
_unpack_nla = _NLA.unpack_from
_unpack_be64 = _BE64.unpack_from
_unpack_be32 = _BE32.unpack_from


# KernelRule is a frozen dataclass with slots: setting its slots directly skips the frozen __init__
# (one object.__setattr__ per field), which was a third of the cost of a rule.
_set_family, _set_table, _set_chain, _set_handle, _set_position, _set_expressions, _set_userdata, _set_offsets = (
    getattr(KernelRule, name).__set__ for name in ('family', 'table', 'chain', 'handle', 'position', 'raw_expressions', 'userdata', '_offsets')
)


def _rule_from(family: str, data: bytes, start: int, end: int, names: Dict[bytes, str]) -> KernelRule:
    """The hot loop of a rule dump: the top-level attributes of one NFT_MSG_NEWRULE only."""
    return _kernel_rule(family, *rule_fields(data, start, end, names))


def _kernel_rule(family: str, table: str, chain: str, handle: int, position: int, expressions: bytes, userdata: bytes) -> KernelRule:
    rule: KernelRule = _new_object(KernelRule)
    _set_family(rule, family)
    _set_table(rule, table)
    _set_chain(rule, chain)
    _set_handle(rule, handle)
    _set_position(rule, position)
    _set_expressions(rule, without_statistics(compact_comments(expressions)))
    _set_userdata(rule, userdata)
    _set_offsets(rule, None)
    return rule


class _Messages(NamedTuple):
    """The reply messages of one chain's dump, in four lists: no tuple per message (kube-proxy's big
    chains give tens of thousands, alive while they are read, which Python's collections follow)."""

    families: List[int]
    datas: List[bytes]
    starts: List[int]
    ends: List[int]


def _take_new_handles(messages: _Messages, rules: Tuple[KernelRule, ...], names: Dict[bytes, str]) -> bool:
    """Whether a chain's messages are ``rules`` again, in order, under new handles (kube-proxy
    rewrites its big chains so at every sync); if so, the rules (the reader's own objects, kept by
    the caller) take the new handles and positions, and nothing is built again."""
    if len(messages.datas) != len(rules):
        return False
    handles: List[int] = []
    positions: List[int] = []
    for number, data, start, end, rule in zip(*messages, rules):
        _, _, handle, position, expressions, userdata = rule_fields(data, start, end, names)
        if not _same_but_counts(expressions, rule) or userdata != rule.userdata or family_name(number) != rule.family:
            return False
        handles.append(handle)
        positions.append(position)
    for rule, handle, position in zip(rules, handles, positions):
        _set_handle(rule, handle)
        _set_position(rule, position)
    _share_positions(rules)
    return True


def _share_positions(rules: Sequence[KernelRule]) -> None:
    """A dump gives each rule the position of the handle before it: the same number, held once
    (two int objects per rule of a Kubernetes node's big chains otherwise)."""
    before: Optional[KernelRule] = None
    for rule in rules:
        if before is not None and rule.position == before.handle:
            _set_position(rule, before.handle)
        before = rule


def _same_but_counts(expressions: bytes, rule: KernelRule) -> bool:
    """Whether a rule's expressions as read are ``rule``'s (kept as :func:`_rule_from` keeps them:
    comments compacted, counters zeroed), counts aside."""
    kept = rule.raw_expressions
    if expressions == kept:
        return True
    at, cut = rule.offsets
    same = same_compacted_but_counts(expressions, kept, at, cut)
    if same is not None:
        return same
    expressions = compact_comments(expressions)
    return same_but_counts(expressions, kept, at) if at >= 0 else without_statistics(expressions) == kept


# (table, chain, handle, position, expressions, userdata) of one NFT_MSG_NEWRULE, as the kernel sent them.
RuleFields = Tuple[str, str, int, int, bytes, bytes]


def rule_fields(data: bytes, start: int, end: int, names: Dict[bytes, str]) -> RuleFields:
    """(table, chain, handle, position, expressions, userdata) of the rule message ``data[start:end]``
    (its attributes, after nfgenmsg); ``names`` (:func:`name_cache`) caches decoded table and chain
    names across messages."""
    table = chain = ''
    handle = position = 0
    expressions = userdata = b''
    offset = start
    while offset + 4 <= end:
        length, kind = _unpack_nla(data, offset)
        after = offset + length
        if length < 4 or after > end:
            raise NetlinkError('malformed netlink rule message: attribute of length {} at offset {}'.format(length, offset))
        kind &= 0x3FFF
        if kind == NFTA_RULE_TABLE:
            table = names[data[offset + 4 : after]]
        elif kind == NFTA_RULE_CHAIN:
            chain = names[data[offset + 4 : after]]
        elif kind == NFTA_RULE_EXPRESSIONS:
            expressions = data[offset + 4 : after]
        elif kind == NFTA_RULE_HANDLE or kind == NFTA_RULE_POSITION:
            if length != 12:
                raise NetlinkError('malformed netlink rule message: 64-bit attribute of length {}'.format(length))
            if kind == NFTA_RULE_HANDLE:
                handle = _unpack_be64(data, offset + 4)[0]
            else:
                position = _unpack_be64(data, offset + 4)[0]
        elif kind == NFTA_RULE_USERDATA:
            userdata = data[offset + 4 : after]
        offset += (length + 3) & ~3
    if end - offset >= 4:
        raise NetlinkError('malformed netlink rule message: trailing bytes')
    return table, chain, handle, position, expressions, userdata


def parse_rule(
    family: int, data: bytes, start: int = 0, end: Optional[int] = None, names: Optional[Dict[bytes, str]] = None
) -> KernelRule:
    """The attribute stream ``data[start:end]`` of an NFT_MSG_NEWRULE message (after nfgenmsg).
    ``names`` caches decoded table and chain names across the rules of one dump."""
    return _rule_from(family_name(family), data, start, len(data) if end is None else end, _Names() if names is None else names)


def name_cache() -> Dict[bytes, str]:
    """A cache of decoded table and chain names for :func:`parse_rule` and :func:`rule_fields`."""
    return _Names()


def told_rules(family: str, told: Sequence[RuleFields], known: Optional[KnownRules]) -> KnownRules:
    """A chain's rules as the change notifications told them, in order (``Changes.rewrite_of``):
    ``known``'s rule objects, which take the new handles, where these are the same rules again
    (kube-proxy rewrites its big chains so at every sync), else rules made of what was told. Each
    takes the position a dump gives it, the handle of the rule before it (0 for the first). No
    digest: the next dump is compared rule by rule."""
    rules: Tuple[KernelRule, ...]
    if known is not None and len(known.rules) == len(told) and all(
        old.family == family and userdata == old.userdata and _same_but_counts(expressions, old)
        for (_, _, _, _, expressions, userdata), old in zip(told, known.rules)
    ):
        for old, (_, _, handle, _, _, _) in zip(known.rules, told):
            _set_handle(old, handle)
        rules = known.rules
    else:
        rules = tuple(_kernel_rule(family, *fields) for fields in told)
    before = 0
    for rule in rules:
        _set_position(rule, before)
        before = rule.handle
    return KnownRules(b'', rules)


def parse_set(family: int, attrs: bytes) -> KernelSet:
    try:
        found = attributes(attrs)
        return KernelSet(
            family=family_name(family),
            table=string(found.get(NFTA_SET_TABLE, b'')),
            name=string(found.get(NFTA_SET_NAME, b'')),
            flags=be32(found[NFTA_SET_FLAGS]) if NFTA_SET_FLAGS in found else 0,
            key_type=be32(found[NFTA_SET_KEY_TYPE]) if NFTA_SET_KEY_TYPE in found else 0,
            key_length=be32(found[NFTA_SET_KEY_LEN]) if NFTA_SET_KEY_LEN in found else 0,
            data_type=be32(found[NFTA_SET_DATA_TYPE]) if NFTA_SET_DATA_TYPE in found else None,
            data_length=be32(found[NFTA_SET_DATA_LEN]) if NFTA_SET_DATA_LEN in found else None,
        )
    except MalformedAttributes as exc:
        raise _malformed('set message', exc) from exc


def _data_value(nested: bytes) -> bytes:
    value = attributes(nested).get(NFTA_DATA_VALUE)
    if value is None:
        raise MalformedAttributes('set element key without NFTA_DATA_VALUE')
    return value


def _set_element(attrs: bytes) -> SetElement:
    found = attributes(attrs)
    return SetElement(
        key=_data_value(found[NFTA_SET_ELEM_KEY]) if NFTA_SET_ELEM_KEY in found else b'',
        key_end=_data_value(found[NFTA_SET_ELEM_KEY_END]) if NFTA_SET_ELEM_KEY_END in found else None,
        data=found.get(NFTA_SET_ELEM_DATA),
        flags=be32(found[NFTA_SET_ELEM_FLAGS]) if NFTA_SET_ELEM_FLAGS in found else 0,
    )


def parse_set_elements(attrs: bytes) -> Tuple[str, str, List[SetElement]]:
    """An NFT_MSG_NEWSETELEM attribute stream -> (table, set name, its elements in this message)."""
    try:
        found = attributes(attrs)
        elements = [
            _set_element(value)
            for kind, value in attribute_list(found.get(NFTA_SET_ELEM_LIST_ELEMENTS, b''))
            if kind == NFTA_LIST_ELEM
        ]
        return string(found.get(NFTA_SET_ELEM_LIST_TABLE, b'')), string(found.get(NFTA_SET_ELEM_LIST_SET, b'')), elements
    except MalformedAttributes as exc:
        raise _malformed('set element message', exc) from exc


# --------------------------------------------------------------------------- requests


def _attr(kind: int, value: bytes) -> bytes:
    padding = b'\0' * (-(4 + len(value)) % 4)
    return _NLA.pack(4 + len(value), kind) + value + padding


def _attr_string(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode('utf-8') + b'\0')


def encode_request(msg_type: int, flags: int, seq: int, family: int = NFPROTO_UNSPEC, attrs: bytes = b'') -> bytes:
    """An nfnetlink nf_tables request: nlmsghdr, nfgenmsg, attributes."""
    body = struct.pack('=BBH', family, NFNETLINK_V0, 0) + attrs
    kind = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
    return _NLMSGHDR.pack(16 + len(body), kind, flags, seq, 0) + body


_ERRNO_HINTS: Mapping[int, str] = {
    errno_codes.EPERM: 'reading the nf_tables ruleset needs CAP_NET_ADMIN: run the Agent as root or give it CAP_NET_ADMIN',
    errno_codes.EACCES: 'reading the nf_tables ruleset needs CAP_NET_ADMIN: run the Agent as root or give it CAP_NET_ADMIN',
    errno_codes.EPROTONOSUPPORT: 'this kernel has no nf_tables netlink interface (NETLINK_NETFILTER is not supported)',
    errno_codes.EAFNOSUPPORT: 'this kernel has no netlink sockets (AF_NETLINK is not supported)',
    errno_codes.EINVAL: 'the kernel rejected the request (is the nf_tables module available?)',
}


def _kernel_error(code: int, text: str, what: str) -> NetlinkError:
    if not 0 < code < 4096:  # not an errno: a corrupted reply
        return NetlinkError('{}: the kernel answered with the invalid error code {}'.format(what, -code))
    reason = _ERRNO_HINTS.get(code) or os.strerror(code)
    message = '{}: {} (errno {} {})'.format(what, reason, code, errno_codes.errorcode.get(code, '?'))
    if text:
        message += ': ' + text
    if code == errno_codes.ENOENT:
        return Vanished(message, code)
    return NetlinkError(message, code)


# The callback of a request: (nfgenmsg family, data, start, end) for one reply message, where
# data[start:end] is the attribute stream after the nfgenmsg header.
Handler = Callable[[int, bytes, int, int], None]


class ChainIndex(NamedTuple):
    """What the full chain dump tells: the base chains, every chain's (family, table, name), and per
    (family, table) the handle of its newest chain (handles only grow within a table: a chain
    created later has a larger one)."""

    base: List[KernelChain]
    names: ChainNames
    newest: Dict[Tuple[str, str], int]
    # The chains bound to a rule (``jump { ... }``): they go with their rule, and no notification says so.
    bound: Set[Tuple[str, str, str]]


class KnownRules(NamedTuple):
    """A chain's rules as read, and the digest of the messages they were read from."""

    digest: bytes
    rules: Tuple[KernelRule, ...]


class NetlinkReader:
    """One NETLINK_NETFILTER socket and the nf_tables requests made through it.

    ``timeout`` (seconds) and ``max_bytes`` bound the reader's whole life, not each request: every
    reply counts against them until :meth:`restart_budget`. ``interrupted`` becomes true when a dump
    reply says the ruleset changed during the dump (NLM_F_DUMP_INTR); :func:`read_consistent`
    clears it.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES, rcvbuf: int = DEFAULT_RCVBUF) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.rcvbuf = rcvbuf
        self.interrupted = False
        self.bytes_received = 0
        self.requests = 0
        self._deadline = time.monotonic() + timeout
        self._sock: Optional[socket.socket] = None
        self._seq = int(time.time()) & 0x3FFFFFFF

    # -- lifecycle

    def __enter__(self) -> NetlinkReader:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        if self._sock is None:
            self._sock = open_socket(self.rcvbuf)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def restart_budget(self, timeout: Optional[float] = None, max_bytes: Optional[int] = None) -> None:
        if timeout is not None:
            self.timeout = timeout
        if max_bytes is not None:
            self.max_bytes = max_bytes
        self._deadline = time.monotonic() + self.timeout
        self.bytes_received = 0

    def renew_deadline(self) -> None:
        """The time budget starts again (the byte budget does not): for reads spread over a walk
        whose own work is not the kernel's."""
        self._deadline = time.monotonic() + self.timeout

    # -- the nf_tables requests

    def generation(self) -> int:
        found: List[int] = []

        def handle(family: int, data: bytes, start: int, end: int) -> None:
            found.append(parse_generation(data[start:end]))

        self.request(NFT_MSG_GETGEN, NFT_MSG_NEWGEN, handle, dump=False, what='reading the ruleset generation')
        if len(found) != 1:
            raise NetlinkError('the kernel sent {} generation messages instead of one'.format(len(found)))
        return found[0]

    def tables(self, family: Optional[str] = None) -> List[KernelTable]:
        found: List[KernelTable] = []

        def handle(number: int, data: bytes, start: int, end: int) -> None:
            found.append(parse_table(number, data[start:end]))

        self.request(NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE, handle, family=_family(family), what='listing the tables')
        return found

    def chains(self, family: Optional[str] = None, table: Optional[str] = None) -> List[KernelChain]:
        """The chains of a family (every family by default); a table filter is applied here, as the
        kernel's chain dump filters by family only."""
        found: List[KernelChain] = []

        def handle(number: int, data: bytes, start: int, end: int) -> None:
            chain = parse_chain(number, data[start:end])
            if table is None or chain.table == table:
                found.append(chain)

        self.request(NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, handle, family=_family(family), what='listing the chains')
        return found

    def chain_index(self) -> ChainIndex:
        """Every chain's (family, table, name), the base chains in full, and per table the newest
        chain's handle: on a Kubernetes node the tens of thousands of service chains cost a name
        each (between runs, the change notifications keep the index: it is read again only after
        what they cannot follow)."""
        base: List[KernelChain] = []
        names: Dict[Tuple[str, str], Set[str]] = {}
        newest: Dict[Tuple[str, str], int] = {}
        bound: Set[Tuple[str, str, str]] = set()
        strings = _Names()

        def handle(number: int, data: bytes, start: int, end: int) -> None:
            table, name, chain_handle, is_base, is_bound = _chain_identity(data, start, end, strings)
            key = (family_name(number), table)
            if is_base:
                base.append(parse_chain(number, data[start:end]))
            elif is_bound:
                bound.add((key[0], table, name))
            found = names.get(key)
            if found is None:
                found = names[key] = set()
            found.add(name)
            if chain_handle > newest.get(key, 0):
                newest[key] = chain_handle

        self.request(NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, handle, what='listing the chains')
        return ChainIndex(base, ChainNames(names), newest, bound)

    def rules(self, family: str, table: str, chain: Optional[str] = None) -> List[KernelRule]:
        """The rules of one table (or one chain of it), in order; the kernel does the filtering.
        A table or chain that does not exist gives no rules (the kernel does not say ENOENT)."""
        attrs = _attr_string(NFTA_RULE_TABLE, table)
        if chain is not None:
            attrs += _attr_string(NFTA_RULE_CHAIN, chain)
        return self._rules(family_number(family), attrs, 'listing the rules of {} {}'.format(family, table))

    def chain_rules(self, family: str, table: str, chain: str, known: Optional[KnownRules] = None) -> KnownRules:
        """The rules of one chain with a digest of what the kernel sent for them; ``known`` (an
        earlier read's) when the digest is the same: the same bytes are the same rules, handles
        included, so an unchanged chain costs its dump and no parsing. Where only the handles
        changed, ``known``'s rules, which take the new handles."""
        number = family_number(family)
        attrs = _attr_string(NFTA_RULE_TABLE, table) + _attr_string(NFTA_RULE_CHAIN, chain)
        messages = _Messages([], [], [], [])
        digest = hashlib.blake2b(digest_size=16)
        update = digest.update
        add_family, add_data, add_start, add_end = messages.families.append, messages.datas.append, messages.starts.append, messages.ends.append

        def handle(got: int, data: bytes, start: int, end: int) -> None:
            if got != number:
                update(bytes((0xFF, got)))  # a family other than the one asked for (not res_id: the generation)
            update(memoryview(data)[start:end])
            add_family(got)
            add_data(data)
            add_start(start)
            add_end(end)

        self.request(NFT_MSG_GETRULE, NFT_MSG_NEWRULE, handle, family=number, attrs=attrs, what='listing the rules of {} {}'.format(family, table))
        found = digest.digest()
        if known is not None and known.digest == found:
            return known
        names = _Names()
        # The kernel sends back the table and chain asked for: the rules hold the caller's strings
        # (on a Kubernetes node, the jump targets the walk read), not one more copy of each.
        names[table.encode() + b'\0'] = table
        names[chain.encode() + b'\0'] = chain
        if known is not None and _take_new_handles(messages, known.rules, names):
            return KnownRules(found, known.rules)
        families: Dict[int, str] = {}
        rules: List[KernelRule] = []
        for number, data, start, end in zip(*messages):
            name = families.get(number)
            if name is None:
                name = families[number] = family_name(number)
            rules.append(_rule_from(name, data, start, end, names))
        _share_positions(rules)
        return KnownRules(found, tuple(rules))

    def all_rules(self, family: Optional[str] = None) -> List[KernelRule]:
        return self._rules(_family(family), b'', 'listing the rules')

    def _rules(self, family: int, attrs: bytes, what: str) -> List[KernelRule]:
        found: List[KernelRule] = []
        append = found.append
        names = _Names()
        families: Dict[int, str] = {}

        def handle(number: int, data: bytes, start: int, end: int) -> None:
            name = families.get(number)
            if name is None:
                name = families[number] = family_name(number)
            append(_rule_from(name, data, start, end, names))

        self.request(NFT_MSG_GETRULE, NFT_MSG_NEWRULE, handle, family=family, attrs=attrs, what=what)
        return found

    def sets(self, family: Optional[str] = None, table: Optional[str] = None) -> List[KernelSet]:
        """The sets (anonymous ones included) of a table, or of every table of a family or of all
        families. Raises :class:`Vanished` when the table does not exist."""
        if table is not None and family is None:
            raise ValueError('a table filter needs a family')
        attrs = _attr_string(NFTA_SET_TABLE, table) if table is not None else b''
        found: List[KernelSet] = []

        def handle(number: int, data: bytes, start: int, end: int) -> None:
            found.append(parse_set(number, data[start:end]))

        what = 'listing the sets' + (' of {} {}'.format(family, table) if table is not None else '')
        self.request(NFT_MSG_GETSET, NFT_MSG_NEWSET, handle, family=_family(family), attrs=attrs, what=what)
        return found

    def set_elements(self, family: str, table: str, set_name: str) -> List[SetElement]:
        """The elements of one set, in the kernel's order. Raises :class:`Vanished` when the table
        or set does not exist."""
        attrs = _attr_string(NFTA_SET_ELEM_LIST_TABLE, table) + _attr_string(NFTA_SET_ELEM_LIST_SET, set_name)
        found: List[SetElement] = []

        def handle(number: int, data: bytes, start: int, end: int) -> None:
            found.extend(parse_set_elements(data[start:end])[2])

        what = 'listing the elements of set {} in {} {}'.format(set_name, family, table)
        self.request(NFT_MSG_GETSETELEM, NFT_MSG_NEWSETELEM, handle, family=family_number(family), attrs=attrs, what=what)
        return found

    # -- the wire

    def request(
        self,
        msg_type: int,
        reply_type: int,
        handle: Handler,
        family: int = NFPROTO_UNSPEC,
        attrs: bytes = b'',
        dump: bool = True,
        what: str = 'reading nf_tables',
    ) -> None:
        """Send one request and feed each reply message of ``reply_type`` to ``handle``, until the
        dump's NLMSG_DONE (``dump``) or the kernel's ack. On any failure but a refusal by the kernel
        the socket is closed (a half-read dump would stay queued on it) and reopened by the next
        request."""
        self.open()
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        message = encode_request(msg_type, flags, self._seq, family, attrs)
        self.requests += 1
        try:
            self._send(message)
            refusal = self._collect(self._seq, (NFNL_SUBSYS_NFTABLES << 8) | reply_type, handle, dump, what)
        except BaseException:
            self.close()
            raise
        if refusal is not None:
            raise refusal

    def _collect(self, seq: int, reply_type: int, handle: Handler, dump: bool, what: str) -> Optional[NetlinkError]:
        """Read the replies to request ``seq`` until it ends; returns the kernel's refusal, if any
        (the last message of a request, so the socket stays usable)."""
        unpack_header = _NLMSGHDR.unpack_from
        while True:
            data = self._receive()
            offset, size = 0, len(data)
            while offset < size:  # iter_messages, inlined: this loop runs once per rule
                if size - offset < 16:
                    raise NetlinkError('truncated netlink message header at offset {} of {}'.format(offset, size))
                length, kind, flags, mseq, _pid = unpack_header(data, offset)
                start, end = offset + 16, offset + length
                if length < 16 or end > size:
                    raise NetlinkError('netlink message of length {} at offset {} of {}'.format(length, offset, size))
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # a late reply to an earlier request
                if kind == reply_type:
                    if length < 20:
                        raise NetlinkError('truncated nfgenmsg header')
                    if flags & NLM_F_DUMP_INTR:
                        self.interrupted = True
                    handle(data[start], data, start + 4, end)
                elif kind == NLMSG_ERROR:
                    code, text = parse_error(data[start:end], flags)
                    if code:
                        return _kernel_error(code, text, what)
                    if not dump:
                        return None
                elif kind == NLMSG_DONE:
                    if flags & NLM_F_DUMP_INTR:
                        self.interrupted = True
                    code = parse_done(data[start:end])
                    return _kernel_error(code, '', what) if code else None
                elif kind == NLMSG_OVERRUN:
                    raise NetlinkError('{}: the kernel reported a netlink overrun'.format(what))

    def _send(self, message: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(message, (0, 0))
        except OSError as exc:
            raise _os_error(exc, 'sending a netlink request') from exc

    def _receive(self) -> bytes:
        """One datagram, within the deadline and the byte budget."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise NetlinkError('reading the nf_tables ruleset took longer than {:g} s'.format(self.timeout))
        data = self._recv_datagram(remaining)
        self.bytes_received += len(data)
        if self.bytes_received > self.max_bytes:
            raise NetlinkError('the nf_tables ruleset is larger than the limit of {} bytes'.format(self.max_bytes))
        return data

    def _recv_datagram(self, timeout: float) -> bytes:
        sock = self._sock
        assert sock is not None
        sock.settimeout(timeout)
        try:
            data, _ancillary, msg_flags, _address = sock.recvmsg(_RECV_SIZE)
        except socket.timeout:
            raise NetlinkError('reading the nf_tables ruleset took longer than {:g} s'.format(self.timeout)) from None
        except OSError as exc:
            if exc.errno == errno_codes.ENOBUFS:
                raise NetlinkError('the netlink receive buffer overflowed while reading the ruleset', exc.errno) from exc
            raise _os_error(exc, 'receiving netlink replies') from exc
        if msg_flags & _MSG_TRUNC:
            raise NetlinkError('a netlink reply was larger than {} bytes'.format(_RECV_SIZE))
        return data


def _family(name: Optional[str]) -> int:
    return NFPROTO_UNSPEC if name is None else family_number(name)


def _os_error(exc: OSError, what: str) -> NetlinkError:
    code = exc.errno or 0
    reason = _ERRNO_HINTS.get(code) or exc.strerror or str(exc)
    return NetlinkError('{}: {}'.format(what, reason), code or None)


def open_socket(rcvbuf: int) -> socket.socket:
    """A bound NETLINK_NETFILTER socket (nf_tables and ipset alike); :class:`NetlinkError` when it cannot be had."""
    family = getattr(socket, 'AF_NETLINK', None)
    if family is None:
        raise NetlinkError('netlink sockets are not available on this platform (Linux only)')
    try:
        sock = socket.socket(family, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as exc:
        raise _os_error(exc, 'opening a NETLINK_NETFILTER socket') from exc
    try:
        sock.bind((0, 0))
    except OSError as exc:
        sock.close()
        raise _os_error(exc, 'binding a NETLINK_NETFILTER socket') from exc
    _set_options(sock, rcvbuf)
    return sock


def _set_options(sock: socket.socket, rcvbuf: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # root: beyond net.core.rmem_max
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # else capped at rmem_max
        except OSError:
            pass
    for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):  # errors: no echo of the request; the kernel's explanation
        try:
            sock.setsockopt(SOL_NETLINK, option, 1)
        except OSError:
            pass


# --------------------------------------------------------------------------- one generation

T = TypeVar('T')


def read_consistent(reader: NetlinkReader, read: Callable[[NetlinkReader], T], attempts: int = 5) -> Tuple[int, T]:
    """``(generation, read(reader))`` where nothing changed during the read: the generation before
    equals the one after and no dump was interrupted. A :class:`Vanished` raised by ``read`` counts
    as a change when the generation moved, and propagates when it did not (then the name was never
    there in this generation). Raises :class:`RulesetKeptChanging` after ``attempts`` changes."""
    for _ in range(attempts):
        before = reader.generation()
        reader.interrupted = False
        try:
            value = read(reader)
        except Vanished:
            if reader.generation() == before:
                raise
            continue
        after = reader.generation()
        if after == before and not reader.interrupted:
            return before, value
    raise RulesetKeptChanging(attempts)


def _read_everything(reader: NetlinkReader, families: Optional[Sequence[str]]) -> KernelRuleset:
    wanted = None if families is None else frozenset(families)
    tables = tuple(t for t in reader.tables() if wanted is None or t.family in wanted)
    chains = tuple(c for c in reader.chains() if wanted is None or c.family in wanted)
    rules: Dict[Tuple[str, str, str], List[KernelRule]] = {(c.family, c.table, c.name): [] for c in chains}
    for rule in _rules_of(reader, wanted):
        rules.setdefault((rule.family, rule.table, rule.chain), []).append(rule)
    sets: Dict[Tuple[str, str, str], KernelSet] = {}
    for table in tables:
        for found in reader.sets(table.family, table.name):
            elements = tuple(reader.set_elements(table.family, table.name, found.name))
            sets[(found.family, found.table, found.name)] = replace(found, elements=elements)
    return KernelRuleset(
        generation=0,
        tables=tables,
        chains=chains,
        rules={key: tuple(value) for key, value in rules.items()},
        sets=sets,
    )


def _rules_of(reader: NetlinkReader, wanted: Optional[frozenset]) -> List[KernelRule]:  # type: ignore[type-arg]
    if wanted is None:
        return reader.all_rules()
    found: List[KernelRule] = []
    for name in sorted(wanted):
        found.extend(reader.all_rules(name))
    return found


def read_ruleset(
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    families: Optional[Sequence[str]] = None,
    attempts: int = 5,
) -> KernelRuleset:
    """Every table, chain, rule and set (with its elements) of the given families (all by
    default), read in one generation."""
    with NetlinkReader(timeout=timeout, max_bytes=max_bytes) as reader:
        generation, ruleset = read_consistent(reader, lambda r: _read_everything(r, families), attempts)
    return replace(ruleset, generation=generation)
