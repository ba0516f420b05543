"""The kernel's own representation of an nf_tables ruleset, as read over netlink. Pure data: no I/O.

Filled by :mod:`.netlink` (the wire reader) and turned into the evaluator's model by
:mod:`.nft_decode`. Values are kept as the kernel sends them: attribute payloads are raw bytes
(netfilter's integers are big-endian), rule expressions are decoded only when asked for, so that
the rules of a Kubernetes node's service chains cost one slice of the reply each.
"""
from __future__ import annotations

import bisect
import functools
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AbstractSet, Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union, overload

from .model import RulesUnavailable

if TYPE_CHECKING:
    from .ipset_contents import SetsRead

# nfgenmsg families (NFPROTO_*), and their names as nft writes them.
NFPROTO_UNSPEC = 0
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_ARP = 3
NFPROTO_NETDEV = 5
NFPROTO_BRIDGE = 7
NFPROTO_IPV6 = 10
FAMILY_NAMES: Mapping[int, str] = {
    NFPROTO_INET: 'inet',
    NFPROTO_IPV4: 'ip',
    NFPROTO_ARP: 'arp',
    NFPROTO_NETDEV: 'netdev',
    NFPROTO_BRIDGE: 'bridge',
    NFPROTO_IPV6: 'ip6',
}

# Hook numbers (NF_INET_*; netdev's ingress/egress have their own numbering) -> nft's names.
INET_HOOK_NAMES: Mapping[int, str] = {0: 'prerouting', 1: 'input', 2: 'forward', 3: 'output', 4: 'postrouting', 5: 'ingress'}
NETDEV_HOOK_NAMES: Mapping[int, str] = {0: 'ingress', 1: 'egress'}

NFT_TABLE_F_DORMANT = 0x1
NFT_TABLE_F_OWNER = 0x2

# Set flags (NFT_SET_*).
NFT_SET_ANONYMOUS = 0x1
NFT_SET_CONSTANT = 0x2
NFT_SET_INTERVAL = 0x4
NFT_SET_MAP = 0x8
NFT_SET_TIMEOUT = 0x10
NFT_SET_EVAL = 0x20
NFT_SET_OBJECT = 0x40
NFT_SET_CONCAT = 0x80

# Set element flags (NFT_SET_ELEM_*).
NFT_SET_ELEM_INTERVAL_END = 0x1

# Verdict codes (NF_* and NFT_*), as signed 32-bit integers.
NF_DROP = 0
NF_ACCEPT = 1
NF_STOLEN = 2
NF_QUEUE = 3
NF_REPEAT = 4
NFT_CONTINUE = -1
NFT_BREAK = -2
NFT_JUMP = -3
NFT_GOTO = -4
NFT_RETURN = -5


class MalformedAttributes(ValueError):
    """A netlink attribute stream that does not follow the TLV layout (truncated, bad length)."""


def attribute_list(data: bytes) -> List[Tuple[int, bytes]]:
    """The attributes of a netlink attribute stream, in order: (type without the NLA_F_NESTED and
    NLA_F_NET_BYTEORDER bits, payload). Raises :class:`MalformedAttributes`."""
    found: List[Tuple[int, bytes]] = []
    offset, end = 0, len(data)
    while offset + 4 <= end:
        length, kind = struct.unpack_from('=HH', data, offset)
        if length < 4 or offset + length > end:
            raise MalformedAttributes('attribute of length {} at offset {} of {}'.format(length, offset, end))
        found.append((kind & 0x3FFF, data[offset + 4 : offset + length]))
        offset += (length + 3) & ~3
    if offset < end and end - offset >= 4:
        raise MalformedAttributes('trailing bytes at offset {}'.format(offset))
    return found


def attributes(data: bytes) -> Dict[int, bytes]:
    """Attribute type -> payload (the last one wins when a type repeats)."""
    return dict(attribute_list(data))


# Rules repeat the same expressions (the same register load, the same port comparison...): their
# bytes parse to the same attributes, kept here. The dictionaries are shared: never change one.
# The caches are small: what repeats is a few hundred expressions, which stay in them; what does not
# (an address, a comment: most of a Kubernetes node's) would only be held between runs.
@functools.lru_cache(maxsize=1 << 9)
def shared_attributes(data: bytes) -> Dict[int, bytes]:
    return attributes(data)


@functools.lru_cache(maxsize=1 << 9)
def _expression(element: bytes) -> 'Expression':
    attrs = attributes(element)
    return Expression(string(attrs.get(1, b'')), attrs.get(2, b''))  # NFTA_EXPR_NAME, NFTA_EXPR_DATA


def expressions_of(raw: bytes) -> Tuple['Expression', ...]:
    """The expressions of an NFTA_RULE_EXPRESSIONS payload. Raises :class:`MalformedAttributes`."""
    return tuple(_expression(element) for kind, element in attribute_list(raw) if kind == 1)  # NFTA_LIST_ELEM


# Expressions whose data is statistics the kernel updates with every packet the rule sees
# (counter: packets and bytes; last: when it last matched). Nothing here reads them.
_COUNTER_NAME = b'\x0c\x00\x01\x00counter\x00'  # NFTA_EXPR_NAME "counter", as the kernel writes it
_UNCOUNTED = bytes(8)  # NFTA_COUNTER_BYTES and _PACKETS start 20 and 32 bytes after that name
_two_headers = struct.Struct('=HHHH').unpack_from


def without_statistics(raw: bytes) -> bytes:
    """An NFTA_RULE_EXPRESSIONS payload with what its counter and last expressions hold set to zero:
    the same rule keeps the same bytes while traffic flows (a counter kube-proxy's rules carry
    changes with every packet), so what was read, decoded and walked of it is found again. Only
    top-level expressions laid out as the kernel writes them are touched; anything else is left as
    it is (it then reads as another rule: slower, never wrong)."""
    at = raw.find(_COUNTER_NAME)
    if at >= 0 and raw[at + 20 : at + 28] == _UNCOUNTED and raw[at + 32 : at + 40] == _UNCOUNTED and raw.find(_COUNTER_NAME, at + 40) < 0:
        at = -1  # one counter, nothing counted yet (where it is laid out otherwise, it is read below)
    if at < 0 and b'last\0' not in raw:
        return raw
    zeroed = bytearray(raw)
    offset, end = 0, len(raw)
    starts = raw.startswith
    while offset + 8 <= end:
        length, kind, name_length, name_kind = _two_headers(raw, offset)
        if length < 8 or offset + length > end or name_length < 4:
            return raw
        if (name_length == 12 and starts(b'counter\0', offset + 8) or name_length == 9 and starts(b'last\0', offset + 8)) and kind & 0x3FFF == 1 and name_kind & 0x3FFF == 1:
            data_at = offset + 4 + ((name_length + 3) & ~3)
            if data_at + 4 > offset + length or not _zero_values(raw, zeroed, data_at, offset + length):
                return raw  # a name with no data after it, or data not laid out as attributes
        offset += (length + 3) & ~3
    return raw if offset < end or zeroed == raw else bytes(zeroed)


# An xt comment match as the kernel writes it: the element's header, NFTA_EXPR_NAME "match", the
# header of NFTA_EXPR_DATA, NFTA_MATCH_NAME "comment", NFTA_MATCH_REV 0 and the header of
# NFTA_MATCH_INFO, whose 256 bytes follow: the comment, padded with NULs. The kernel takes no other
# size for it (the match's own), and kube-proxy's rules carry one each.
_COMMENT_MATCH = (
    struct.pack('=HH', 300, 1) + b'\x0a\x00\x01\x00match\x00\x00\x00' + struct.pack('=HH', 284, 2)
    + b'\x0c\x00\x01\x00comment\x00' + struct.pack('=HHI', 8, 2, 0) + struct.pack('=HH', 260, 3)
)
_COMMENT_INFO_AT = len(_COMMENT_MATCH)  # 44: where the info starts in the element
_COMMENT_SIZE = 256
_pack_header = struct.Struct('=HH').pack
_unpack_header = struct.Struct('=HH').unpack_from


def compact_comments(raw: bytes) -> bytes:
    """An NFTA_RULE_EXPRESSIONS payload with the padding of each top-level xt comment match laid
    out as the kernel writes it cut one NUL after the comment, the lengths around it made to agree.
    It decodes as the payload does (a comment ends at its first NUL), and two payloads are equal
    exactly when they were: the kernel's comment info is always 256 bytes, so padding it again
    gives the payload back. Kept rules hold half the bytes then. Anything else is left as it is."""
    at = raw.find(_COMMENT_MATCH)
    if at < 0:
        return raw
    parts: List[bytes] = []
    offset = done = 0
    end = len(raw)
    while at >= 0:
        while offset < at:  # the element must be one of the top level's
            length = _two_headers(raw, offset)[0] if offset + 8 <= end else 0
            if length < 8:
                return raw
            offset += (length + 3) & ~3
        if offset != at or at + 300 > end:
            return raw
        info_at = at + _COMMENT_INFO_AT
        kept = len(raw[info_at : info_at + _COMMENT_SIZE].rstrip(b'\0')) + 1  # the comment and one NUL
        size = (4 + kept + 3) & ~3  # the info attribute, padded
        if size < 4 + _COMMENT_SIZE:  # else nothing to save
            parts += (
                raw[done:at], _pack_header(40 + size, 1), raw[at + 4 : at + 16], _pack_header(24 + size, 2), raw[at + 20 : at + 40],
                _pack_header(4 + kept, 3), raw[info_at : info_at + kept], bytes(size - 4 - kept),
            )
            done = at + 300
        offset = at + 300
        at = raw.find(_COMMENT_MATCH, offset)
    if not parts:
        return raw
    parts.append(raw[done:])
    return b''.join(parts)


# The inner part of a comment match element (NFTA_MATCH_NAME "comment", NFTA_MATCH_REV 0), compacted or not.
_COMMENT_INNER = _COMMENT_MATCH[20:40]
_NAME_MATCH = _COMMENT_MATCH[4:16]


def comment_cut(kept: bytes) -> Tuple[int, int]:
    """(offset, bytes of info kept) of the one top-level comment match :func:`compact_comments` cut in
    ``kept``; (-1, 0) where it cut none or several."""
    found = (-1, 0)
    offset, end = 0, len(kept)
    while offset + 8 <= end:
        length = _two_headers(kept, offset)[0]
        if length < 8 or offset + length > end:
            return (-1, 0)
        if length < 300 and kept.startswith(_NAME_MATCH, offset + 4) and kept.startswith(_COMMENT_INNER, offset + 20) and offset + 44 <= end:
            info_length, info_kind = _unpack_header(kept, offset + 40)
            if info_kind == 3 and 44 < 40 + info_length <= length:
                if found[0] >= 0:
                    return (-1, 0)
                found = (offset, info_length - 4)
        offset += (length + 3) & ~3
    return found


def same_compacted_but_counts(raw: bytes, kept: bytes, counter_at: int, cut: Tuple[int, int]) -> Optional[bool]:
    """Whether ``raw`` (as the kernel sends it) is, compacted and its counts zeroed, ``kept`` (whose
    :func:`counter_offset` is ``counter_at`` and whose :func:`comment_cut` is ``cut``), without
    compacting it: slices compared around the comment. None where that cannot tell (the caller
    compacts then)."""
    at, info = cut
    if at < 0:
        return None
    size = (4 + info + 3) & ~3
    kept_end, raw_end = at + 40 + size, at + 300
    if (
        len(raw) != len(kept) + raw_end - kept_end
        or not raw.startswith(_COMMENT_MATCH, at)
        or raw[:at] != kept[:at]
        or raw[at + 44 : at + 44 + info] != kept[at + 44 : at + 44 + info]
        or raw.count(0, at + 44 + info, raw_end) != raw_end - at - 44 - info
    ):
        return None
    tail, kept_tail = raw[raw_end:], kept[kept_end:]
    if tail == kept_tail:
        return True
    if counter_at > kept_end:
        return same_but_counts(tail, kept_tail, counter_at - kept_end)
    return without_statistics(tail) == kept_tail


def _zero_values(raw: bytes, zeroed: bytearray, data_at: int, end: int) -> bool:
    """Zero the payload of each attribute nested in the NFTA_EXPR_DATA at ``data_at``; False where it
    is not laid out as attributes."""
    data_length, data_kind = struct.unpack_from('=HH', raw, data_at)
    data_end = data_at + data_length
    if data_kind & 0x3FFF != 2 or data_length < 4 or data_end > end:
        return False
    offset = data_at + 4
    while offset + 4 <= data_end:
        length, _ = struct.unpack_from('=HH', raw, offset)
        if length < 4 or offset + length > data_end:
            return False
        zeroed[offset + 4 : offset + length] = bytes(length - 4)
        offset += (length + 3) & ~3
    return True


def counter_offset(raw: bytes) -> int:
    """Where the NFTA_EXPR_NAME of the one statistics expression of a payload :func:`without_statistics`
    gave is, where that is a top-level counter laid out as the kernel writes it (bytes then packets,
    both zero); else -1. The payload of another rule is then the same rule but for its counts exactly
    when it is these bytes at every other offset (:func:`same_but_counts`)."""
    at = raw.find(_COUNTER_NAME)
    if at < 4 or b'last\0' in raw or raw.find(_COUNTER_NAME, at + 40) >= 0:
        return -1
    if raw[at + 12 : at + 20] != b'\x1c\x00\x02\x00\x0c\x00\x01\x00' or raw[at + 28 : at + 32] != b'\x0c\x00\x02\x00':
        return -1
    if raw[at + 20 : at + 28] != _UNCOUNTED or raw[at + 32 : at + 40] != _UNCOUNTED:
        return -1
    offset, end = 0, len(raw)
    while offset < at - 4:  # the counter's element must be one of the top level's
        length = _two_headers(raw, offset)[0] if offset + 8 <= end else 0
        if length < 8 or offset + length > end:
            return -1
        offset += (length + 3) & ~3
    return at if offset == at - 4 and _two_headers(raw, offset)[:2] in ((44, 1), (44, 0x8001)) else -1


def same_but_counts(raw: bytes, kept: bytes, at: int) -> bool:
    """Whether ``raw`` is the payload ``kept`` (whose :func:`counter_offset` is ``at``, not -1) but for
    what its counter holds."""
    return len(raw) == len(kept) and raw[: at + 20] == kept[: at + 20] and raw[at + 28 : at + 32] == kept[at + 28 : at + 32] and raw[at + 40 :] == kept[at + 40 :]


def be32(data: bytes) -> int:
    if len(data) != 4:
        raise MalformedAttributes('expected 4 bytes, got {}'.format(len(data)))
    return int.from_bytes(data, 'big')


def be32_signed(data: bytes) -> int:
    if len(data) != 4:
        raise MalformedAttributes('expected 4 bytes, got {}'.format(len(data)))
    return int.from_bytes(data, 'big', signed=True)


def be64(data: bytes) -> int:
    if len(data) != 8:
        raise MalformedAttributes('expected 8 bytes, got {}'.format(len(data)))
    return int.from_bytes(data, 'big')


def string(data: bytes) -> str:
    """A NUL-terminated netlink string."""
    return data.split(b'\0', 1)[0].decode('utf-8', 'replace')


@dataclass(frozen=True, slots=True)
class KernelTable:
    family: str  # 'ip', 'ip6', 'inet', 'netdev', 'arp', 'bridge'
    name: str
    flags: int = 0
    handle: int = 0

    @property
    def dormant(self) -> bool:
        return bool(self.flags & NFT_TABLE_F_DORMANT)


@dataclass(frozen=True, slots=True)
class KernelChain:
    family: str
    table: str
    name: str
    handle: int = 0
    hook: Optional[str] = None  # 'prerouting', 'input', ...; None for a regular (user) chain
    priority: Optional[int] = None
    type: Optional[str] = None  # 'filter', 'nat', 'route'
    policy: Optional[str] = None  # 'accept' or 'drop' (base chains)
    devices: Tuple[str, ...] = ()  # netdev/ingress chains
    flags: int = 0

    @property
    def is_base(self) -> bool:
        return self.hook is not None


@dataclass(frozen=True, slots=True)
class Expression:
    """One expression of a rule: its name (``payload``, ``cmp``, ``match``...) and the raw payload of
    its NFTA_EXPR_DATA (an attribute stream, read with :func:`attributes`)."""

    name: str
    data: bytes


RuleOffsets = Tuple[int, Tuple[int, int]]
# Rules laid out alike have the same offsets (kube-proxy's service rules: one per comment length):
# held once, not three objects per rule. Bounded, for a ruleset of ever new layouts.
_OFFSETS_SHARED: Dict[RuleOffsets, RuleOffsets] = {}
_OFFSETS_SHARED_MAX = 4096


def _shared_offsets(offsets: RuleOffsets) -> RuleOffsets:
    if len(_OFFSETS_SHARED) >= _OFFSETS_SHARED_MAX:
        return _OFFSETS_SHARED.get(offsets, offsets)
    return _OFFSETS_SHARED.setdefault(offsets, offsets)


@dataclass(frozen=True, slots=True)
class KernelRule:
    family: str
    table: str
    chain: str
    handle: int
    position: int = 0  # NFTA_RULE_POSITION where the kernel gives it, else 0
    # Payload of NFTA_RULE_EXPRESSIONS; from the reader, with comments compacted (:func:`compact_comments`)
    # and counters zeroed (:func:`without_statistics`).
    raw_expressions: bytes = field(default=b'', repr=False)
    userdata: bytes = field(default=b'', repr=False)  # NFTA_RULE_USERDATA (the comment lives there)
    # :func:`counter_offset` and :func:`comment_cut` of ``raw_expressions``, once found (a Kubernetes
    # node holds hundreds of thousands of rules: slots, no dictionary each).
    _offsets: Optional[RuleOffsets] = field(default=None, init=False, repr=False, compare=False)

    @property
    def expressions(self) -> Tuple[Expression, ...]:
        """Decoded at each use (the decoder's is not kept). Raises :class:`MalformedAttributes`."""
        return expressions_of(self.raw_expressions)

    @property
    def offsets(self) -> RuleOffsets:
        """:func:`counter_offset` and :func:`comment_cut` of ``raw_expressions``, found once."""
        found = self._offsets
        if found is None:
            found = _shared_offsets((counter_offset(self.raw_expressions), comment_cut(self.raw_expressions)))
            object.__setattr__(self, '_offsets', found)
        return found

    @property
    def comment(self) -> Optional[str]:
        """The rule's comment (libnftnl's NFTNL_UDATA_RULE_COMMENT, a type-length-value of one-byte fields)."""
        data, offset = self.userdata, 0
        while offset + 2 <= len(data):
            kind, length = data[offset], data[offset + 1]
            value = data[offset + 2 : offset + 2 + length]
            if kind == 0:
                return string(value)
            offset += 2 + length
        return None


@dataclass(frozen=True, slots=True)
class SetElement:
    key: bytes  # NFTA_DATA_VALUE payload of NFTA_SET_ELEM_KEY
    key_end: Optional[bytes] = None  # NFTA_SET_ELEM_KEY_END (ranges of concatenations)
    data: Optional[bytes] = None  # raw NFTA_SET_ELEM_DATA (a nested NFTA_DATA_* stream: value or verdict)
    flags: int = 0  # NFT_SET_ELEM_*


@dataclass(frozen=True, slots=True)
class KernelSet:
    family: str
    table: str
    name: str
    flags: int = 0
    key_type: int = 0
    key_length: int = 0
    data_type: Optional[int] = None  # maps only; NFT_DATA_VERDICT (0xffffff00) for verdict maps
    data_length: Optional[int] = None
    elements: Tuple[SetElement, ...] = ()
    # False when the elements could not be read (e.g. the set changed size while being dumped).
    complete: bool = True

    @property
    def is_map(self) -> bool:
        return bool(self.flags & NFT_SET_MAP)

    @property
    def is_interval(self) -> bool:
        return bool(self.flags & NFT_SET_INTERVAL)


NFT_DATA_VERDICT = 0xFFFFFF00


ChainKey = Tuple[str, str, str]  # (family, table, chain)
TableKey = Tuple[str, str]  # (family, table)


class _SortedNames(Tuple[str, ...]):
    """A table's chain names, sorted, each once."""

    __slots__ = ()


def _sorted_names(names: Iterable[str]) -> _SortedNames:
    return names if isinstance(names, _SortedNames) else _SortedNames(sorted(set(names)))


def _holds(names: Sequence[str], name: str) -> bool:
    at = bisect.bisect_left(names, name)
    return at < len(names) and names[at] == name


# Above this many names changed in a table, its names are sorted again rather than edited in place.
_EDITS_IN_PLACE = 64


def _edited(names: _SortedNames, gone: AbstractSet[str], new: AbstractSet[str]) -> _SortedNames:
    """``names`` less ``gone``, plus ``new``."""
    if len(gone) + len(new) > _EDITS_IN_PLACE:
        return _sorted_names((set(names) - gone) | new)
    edited = list(names)
    for name in gone:
        at = bisect.bisect_left(edited, name)
        if at < len(edited) and edited[at] == name:
            del edited[at]
    for name in new:
        at = bisect.bisect_left(edited, name)
        if at == len(edited) or edited[at] != name:
            edited.insert(at, name)
    return _SortedNames(edited)


class ChainNames(AbstractSet[ChainKey]):
    """Every chain's (family, table, name), kept as one sorted tuple of names per table: a Kubernetes
    node has tens of thousands of chains, which cost a name and a pointer each (a set's slots cost
    five times the pointer), and no tuple. What the set operators (``-``, ``|``, ``&``) give is a plain
    frozenset of keys."""

    __slots__ = ('_tables', '_size')

    def __init__(self, tables: Optional[Mapping[TableKey, Iterable[str]]] = None) -> None:
        self._tables: Dict[TableKey, _SortedNames] = {
            table: sorted_names for table, names in (tables or {}).items() for sorted_names in (_sorted_names(names),) if sorted_names
        }
        self._size = sum(len(names) for names in self._tables.values())

    @classmethod
    def _from_iterable(cls, keys: Iterable[Any]) -> FrozenSet[Any]:
        return frozenset(keys)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 3 or not isinstance(key[2], str):
            return False
        names = self._tables.get((key[0], key[1]))
        return names is not None and _holds(names, key[2])

    def __iter__(self) -> Iterator[ChainKey]:
        return ((family, table, name) for (family, table), names in self._tables.items() for name in names)

    def __len__(self) -> int:
        return self._size

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChainNames):
            return self._tables == other._tables
        return super().__eq__(other)

    def __hash__(self) -> int:
        return self._hash()

    def __repr__(self) -> str:
        return 'ChainNames({} chains in {} tables)'.format(self._size, len(self._tables))

    def of_table(self, family: str, table: str) -> Sequence[str]:
        """The names of a table's chains, sorted."""
        return self._tables.get((family, table), _SortedNames())

    def within(self, tables: AbstractSet[TableKey]) -> 'ChainNames':
        """The chains of ``tables`` only."""
        return ChainNames({table: names for table, names in self._tables.items() if table in tables})

    def changed(self, deleted: Iterable[ChainKey], added: Iterable[ChainKey]) -> 'ChainNames':
        """These names less ``deleted``, plus ``added``: the tables neither touches are shared."""
        gone: Dict[TableKey, Set[str]] = {}
        new: Dict[TableKey, Set[str]] = {}
        for family, table, name in deleted:
            gone.setdefault((family, table), set()).add(name)
        for family, table, name in added:
            new.setdefault((family, table), set()).add(name)
        tables: Dict[TableKey, Iterable[str]] = dict(self._tables)
        for key in gone.keys() | new.keys():
            tables[key] = _edited(self._tables.get(key, _SortedNames()), gone.get(key, set()), new.get(key, set()))
        return ChainNames(tables)

    def not_in(self, other: 'ChainNames') -> Iterator[ChainKey]:
        """The chains named here that ``other`` does not name."""
        for (family, table), names in self._tables.items():
            for name in set(names).difference(other.of_table(family, table)):
                yield (family, table, name)


class ChainRules(Mapping[ChainKey, Tuple[KernelRule, ...]]):
    """The rules of a ruleset's chains: those read so far and, while the reading is open, those of
    any other chain it has, read from the kernel the first time they are asked for (so that a walk
    reads exactly the chains it enters). Iterating gives the chains read."""

    def __init__(
        self,
        read: Dict[ChainKey, Tuple[KernelRule, ...]],
        fetch: Optional[Callable[[ChainKey], Sequence[KernelRule]]] = None,
        known: AbstractSet[ChainKey] = frozenset(),
    ) -> None:
        self._read = read
        self._fetch = fetch
        self._known = known

    def __getitem__(self, key: ChainKey) -> Tuple[KernelRule, ...]:
        found = self._read.get(key)
        if found is None:
            if self._fetch is None or key not in self._known:
                raise KeyError(key)
            fetched = self._fetch(key)
            found = self._read[key] = fetched if isinstance(fetched, tuple) else tuple(fetched)
        return found

    def __iter__(self) -> Iterator[ChainKey]:
        return iter(self._read)

    def __len__(self) -> int:
        return len(self._read)

    def can_give(self, key: ChainKey) -> bool:
        return key in self._read or (self._fetch is not None and key in self._known)

    def is_read(self, key: ChainKey) -> bool:
        return key in self._read

    def close(self) -> None:
        """The reading is over: what was not read stays unread."""
        self._fetch = None


class LazyRules(Sequence[KernelRule]):
    """One chain's rules, taken from its :class:`ChainRules` when first used."""

    __slots__ = ('_owner', '_key', '_rules')

    def __init__(self, owner: ChainRules, key: ChainKey) -> None:
        self._owner = owner
        self._key = key
        self._rules: Optional[Tuple[KernelRule, ...]] = None

    def rules(self) -> Tuple[KernelRule, ...]:
        """The chain's rules, as its :class:`ChainRules` holds them."""
        return self._get()

    def _get(self) -> Tuple[KernelRule, ...]:
        if self._rules is None:
            try:
                self._rules = self._owner[self._key]
            except KeyError:
                raise RulesUnavailable('chain {} {} {} was needed after the generation was read'.format(*self._key)) from None
        return self._rules

    @overload
    def __getitem__(self, index: int) -> KernelRule: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[KernelRule]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[KernelRule, Sequence[KernelRule]]:
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[KernelRule]:
        return iter(self._get())


@dataclass(frozen=True)
class KernelRuleset:
    """What was read in one generation: the tables, the chains (in full, or the base chains in full
    and every chain's name in ``chain_names``), the rules of the chains that were asked for (a chain
    whose rules were not read has no entry in ``rules``), and the sets."""

    generation: int
    tables: Tuple[KernelTable, ...] = ()
    chains: Tuple[KernelChain, ...] = ()
    rules: Mapping[Tuple[str, str, str], Tuple[KernelRule, ...]] = field(default_factory=dict)  # (family, table, chain)
    sets: Mapping[Tuple[str, str, str], KernelSet] = field(default_factory=dict)  # (family, table, set name)
    chain_names: ChainNames = field(default_factory=ChainNames)  # every chain, where ``chains`` holds the base chains only
    # (family, table) -> the handle of the newest chain known to have been made in it (it may be gone):
    # handles only grow, so a chain made later has a larger one.
    newest_chains: Mapping[Tuple[str, str], int] = field(default_factory=dict)
    bound_chains: FrozenSet[ChainKey] = frozenset()  # chains bound to a rule (they go with it, unannounced)
    # The ipsets that xtables set matches name, read when a rule first needs them (None: not read).
    ipsets: Optional[Callable[[], 'SetsRead']] = field(default=None, compare=False)

    @property
    def changes_silently(self) -> bool:
        """Whether something here may change with no notification and no new generation: a table
        that goes with its owner process (``flags owner``), a set whose elements time out or that
        packets add to."""
        return any(table.flags & NFT_TABLE_F_OWNER for table in self.tables) or any(
            found.flags & (NFT_SET_TIMEOUT | NFT_SET_EVAL) for found in self.sets.values()
        )

    def chains_of(self, family: str, table: str) -> Tuple[KernelChain, ...]:
        return tuple(chain for chain in self.chains if chain.family == family and chain.table == table)

    def has_chain(self, key: ChainKey) -> bool:
        if self.chain_names:
            return key in self.chain_names
        return any((chain.family, chain.table, chain.name) == key for chain in self.chains)
