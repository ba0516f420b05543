"""What changed in nf_tables between two generations, told by the kernel's change notifications.

Every committed nf_tables transaction is announced to the NFNLGRP_NFTABLES multicast group: one
message per table, chain, rule, set, element, object or flowtable added or deleted, then
NFT_MSG_NEWGEN carrying the transaction's generation id. Generation ids go up by one per
transaction (an empty or aborted batch has none). A socket subscribed before a read therefore tells,
at the next run, which chains' rules changed since the generation that read saw: the others need
not be dumped again.

Two layers, as in :mod:`.netlink`:

* :class:`ChangeLog` (pure): the notifications received, grouped by transaction, and
  :meth:`ChangeLog.between`, which answers only when it can prove the answer: every generation
  between the two is present, in order, and nothing was lost;
* :class:`ChangeWatch`: the subscribed socket, drained without blocking.

Anything the log cannot vouch for (the socket's buffer overflowed, a generation is missing, a
message it cannot read, a message type it does not know) makes the answer "unknown", and the
caller reads everything again, as it would without notifications.

A rule notification carries the whole rule, as a dump gives it. For the chains the caller holds
(``follow``), the log keeps them: where a transaction rewrote such a chain whole and the positions
the kernel gave prove the new rules' order (:class:`Rewrite`), the rules told are the chain's, and
it need not be dumped (kube-proxy rewrites its big chains so at every sync).
"""
from __future__ import annotations

import errno as errno_codes
import select
import socket
import struct
import time
from dataclasses import dataclass, field, replace
from typing import AbstractSet, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .netlink import (
    NETLINK_NETFILTER,
    NFNL_SUBSYS_NFTABLES,
    NFT_CHAIN_BINDING,
    NFT_MSG_NEWRULE,
    NFTA_CHAIN_FLAGS,
    NFTA_RULE_CHAIN,
    NFTA_RULE_EXPRESSIONS,
    NFTA_RULE_HANDLE,
    NFTA_RULE_POSITION,
    NFTA_RULE_TABLE,
    SO_RCVBUFFORCE,
    SOL_NETLINK,
    NetlinkError,
    RuleFields,
    family_name,
    name_cache,
    rule_fields,
)
from .nf_tables import ChainKey, ChainNames, MalformedAttributes, attributes, be32, string

NFNLGRP_NFTABLES = 7
NETLINK_ADD_MEMBERSHIP = 1

# Notification types (NFT_MSG_*) and what each one changes.
_TABLE_MESSAGES = frozenset({0, 2, 26})  # NEWTABLE, DELTABLE, DESTROYTABLE
_CHAIN_MESSAGES = frozenset({3, 5, 27})  # NEWCHAIN, DELCHAIN, DESTROYCHAIN
_RULE_MESSAGES = frozenset({6, 8, 28})  # NEWRULE, DELRULE, DESTROYRULE
# NEWSET, DELSET, NEWSETELEM, DELSETELEM, NEWOBJ, DELOBJ, NEWFLOWTABLE, DELFLOWTABLE and their DESTROY forms.
_OTHER_STRUCTURE = frozenset({9, 11, 12, 14, 18, 20, 22, 24, 29, 30, 31, 32})
NFT_MSG_NEWCHAIN = 3
NFT_MSG_NEWGEN = 15
NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_HANDLE = 2
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_HOOK = 4
NFTA_GEN_ID = 1

_GENERATION_MASK = 0xFFFFFFFF
_HEADER = struct.Struct('=IHHII')
_NLA = struct.Struct('=HH')
# The socket's receive buffer (the kernel doubles the value for its own overhead). A rewrite of a
# chain announces each rule twice (deleted, added), about 1.7 kB of notifications per rule, and
# kube-proxy rewrites its biggest chains at every sync: the buffer follows the number of rules the
# check holds, within these bounds. Notifications beyond it are lost, and the next read is a full one.
WATCH_RCVBUF_PER_RULE = 1200
SMALLEST_WATCH_RCVBUF = 8 * 1024 * 1024
LARGEST_WATCH_RCVBUF = 64 * 1024 * 1024
_RECV_SIZE = 1 << 17


def next_generation(generation: int) -> int:
    """The id the kernel gives the next transaction (its 32-bit counter skips 0 when it wraps)."""
    following = (generation + 1) & _GENERATION_MASK
    return following or 1


def is_after(generation: int, other: int) -> bool:
    """``generation`` came after ``other``, in serial-number arithmetic (ids wrap at 2**32)."""
    distance = (generation - other) & _GENERATION_MASK
    return 0 < distance < 1 << 31


@dataclass(frozen=True)
class Rewrite:
    """One transaction's rule notifications about one chain, where they prove its rules in order:
    the handles of the rules deleted, and the rules added, which are then the chain's rules (as
    ``iptables-restore --noflush`` rewrites a chain, and kube-proxy its big chains at every sync).

    Why the order is proven: the kernel links a transaction's new rules into the chain when each is
    asked for and unlinks its deleted ones as it commits, in order, announcing each rule as it goes
    with the handle of the rule then before it (NFTA_RULE_POSITION), or none for the first and the
    last. So where each rule told after the first names the one told before it, the rules told are
    next to one another in that order; where the first names none, it is the first (it is not the
    last: the second follows it), and the last, where it names none, is the last. The chain holds
    them, and only them, once every rule it had is deleted. Anything else (an insertion, a rule
    deleted in the middle, two rules that both name none) is left to a dump."""

    deleted: FrozenSet[int]
    added: FrozenSet[int]  # the handles of ``rules``
    # As told (:func:`.netlink.rule_fields`: handle [2], position [3]); None once a later transaction
    # rewrote the chain again (only the handles are needed to follow it then).
    rules: Optional[Tuple[RuleFields, ...]]

    def superseded(self) -> Rewrite:
        return Rewrite(self.deleted, self.added, None) if self.rules is not None else self


class _Told:
    """One chain's rule notifications in the transaction being received."""

    __slots__ = ('table', 'chain', 'deleted', 'rules', 'handles', 'broken')

    def __init__(self, table: str, chain: str) -> None:
        self.table, self.chain = table, chain
        self.deleted: Set[int] = set()
        self.rules: List[RuleFields] = []
        self.handles: Set[int] = set()
        self.broken = False  # a handle told twice, or a rule deleted after it was told added

    def delete(self, handle: int) -> None:
        self.broken = self.broken or handle in self.handles or handle in self.deleted
        self.deleted.add(handle)

    def add(self, rule: RuleFields) -> None:
        handle = rule[2]
        self.broken = self.broken or handle in self.handles
        self.handles.add(handle)
        self.rules.append(rule)

    def rewrite(self) -> Optional[Rewrite]:
        rules = self.rules
        if self.broken or (rules and rules[0][3] != 0):
            return None
        last = len(rules) - 1
        for index in range(1, len(rules)):
            position = rules[index][3]
            # The last may name none only where a rule between names the first: of two rules told
            # with no position, either may be the first.
            if position != rules[index - 1][2] and not (index == last and position == 0 and last >= 2):
                return None
        return Rewrite(frozenset(self.deleted), frozenset(self.handles), tuple(rules))


@dataclass(frozen=True)
class Changes:
    """What one or more transactions changed: the chains whose rules changed, the tables added or
    deleted (all their chains count as changed), whether regular chains were added or deleted, and
    whether anything else changed (base chains, tables, sets and their elements, objects, flowtables)."""

    chains: FrozenSet[ChainKey] = frozenset()
    tables: FrozenSet[Tuple[str, str]] = frozenset()
    structure: bool = False
    chain_set: bool = False  # regular chains added or deleted (or renamed)
    deleted: FrozenSet[ChainKey] = frozenset()  # chains deleted (a name gone without this was renamed)
    made: FrozenSet[Tuple[str, str, int]] = frozenset()  # (family, table, handle) of each regular chain's NEWCHAIN
    added: FrozenSet[ChainKey] = frozenset()  # the regular chains of those NEWCHAINs
    bound: bool = False  # one of them is bound to a rule (it goes with the rule, unannounced)
    # (family, table, handle, name) of each regular chain's NEWCHAIN: a handle under two names was renamed.
    made_names: FrozenSet[Tuple[str, str, int, str]] = field(default=frozenset(), compare=False)
    # Chains followed (:class:`ChangeLog`'s ``follow``) -> each transaction's :class:`Rewrite` of it,
    # where every transaction that changed it rewrote it so.
    rewrites: Mapping[ChainKey, Tuple[Rewrite, ...]] = field(default_factory=dict, compare=False, hash=False)

    @property
    def rules_only(self) -> bool:
        """Only rules changed: every table and chain is as it was."""
        return not self.structure and not self.chain_set

    def touches(self, key: ChainKey) -> bool:
        """Whether the rules of chain ``key`` may differ from what they were."""
        return key in self.chains or (key[0], key[1]) in self.tables

    def merged(self, other: Changes) -> Changes:
        return Changes(
            self.chains | other.chains,
            self.tables | other.tables,
            self.structure or other.structure,
            self.chain_set or other.chain_set,
            self.deleted | other.deleted,
            self.made | other.made,
            self.added | other.added,
            self.bound or other.bound,
            self.made_names | other.made_names,
            self._merged_rewrites(other),
        )

    def _merged_rewrites(self, other: Changes) -> Mapping[ChainKey, Tuple[Rewrite, ...]]:
        """The rewrites of the chains that each of the two changed only by rewriting them."""
        if not self.rewrites and not other.rewrites:
            return self.rewrites
        merged = {key: told for key, told in self.rewrites.items() if key not in other.chains}
        for key, told in other.rewrites.items():
            if key not in self.chains:
                merged[key] = told
            elif key in self.rewrites:
                merged[key] = self.rewrites[key] + told
        return merged

    def rewrite_of(self, key: ChainKey, handles: Sequence[int]) -> Optional[Tuple[RuleFields, ...]]:
        """The rules of chain ``key`` once these changes are made, where the notifications told them
        in full: each transaction that changed it rewrote it (:class:`Rewrite`), deleting every rule
        it had, starting from the rules of ``handles``. None where they do not prove it: its table or
        the chain itself made or deleted; a rule changed another way; a chain made under two names
        (a rule told jumping to it under the first prints the second) or bound to a rule."""
        told = self.rewrites.get(key)
        if told is None or (key[0], key[1]) in self.tables or key in self.added or key in self.deleted:
            return None
        if self.bound or len({made[:3] for made in self.made_names}) != len(self.made_names):
            return None
        had = frozenset(handles)
        for rewrite in told:
            if rewrite.deleted != had:
                return None
            had = rewrite.added
        return told[-1].rules

    def superseded_by(self, rewrites: Mapping[ChainKey, Tuple[Rewrite, ...]]) -> Changes:
        """These changes, the rules told of the chains that ``rewrites`` rewrite again dropped."""
        if not any(key in rewrites for key in self.rewrites):
            return self
        return replace(self, rewrites={key: tuple(r.superseded() for r in told) if key in rewrites else told for key, told in self.rewrites.items()})

    def chain_index_after(
        self, names: ChainNames, newest: Mapping[Tuple[str, str], int], tables: AbstractSet[Tuple[str, str]]
    ) -> Optional[Tuple[ChainNames, Dict[Tuple[str, str], int]]]:
        """The chain names of ``tables`` and each one's newest chain handle once these changes are
        made, from what they were before (``names``, ``newest``), as reading the chains again would
        give them: for changes to regular chains only (:attr:`rules_only` aside), none of them a
        rename (:meth:`may_rename`). None where a chain was both added and deleted (which came last
        cannot be told from the changes), or where a chain made since was renamed (one handle, two
        names: the first is gone)."""
        if self.bound or self.added & self.deleted or len(self.added) != len(self.made):
            return None
        after = dict(newest)
        for family, table, handle in self.made:
            if (family, table) in tables and handle > after.get((family, table), 0):
                after[(family, table)] = handle
        return names.changed(self.deleted, (key for key in self.added if (key[0], key[1]) in tables)), after

    def may_rename(self, newest: Mapping[Tuple[str, str], int]) -> bool:
        """Whether a NEWCHAIN was about a chain that already existed when ``newest`` (each table's
        newest chain handle) was read: a chain is renamed that way, and the rules jumping to it then
        print its new name, unannounced. A chain made later has a larger handle."""
        return any(handle <= newest.get((family, table), 0) for family, table, handle in self.made)

    def explains_gone(self, gone: Iterable[ChainKey]) -> bool:
        """Whether every chain in ``gone`` was deleted (or its table was). A chain renamed is not
        announced under its old name, and the rules that jump to it print its new name, unchanged
        themselves: such a change cannot be followed chain by chain."""
        return all(key in self.deleted or (key[0], key[1]) in self.tables for key in gone)


NOTHING_CHANGED = Changes()


class _Unreadable(Exception):
    """A notification the log cannot vouch for."""


class _Transaction:
    """The notifications received since the last NFT_MSG_NEWGEN."""

    def __init__(self) -> None:
        self.chains: Set[ChainKey] = set()
        self.tables: Set[Tuple[str, str]] = set()
        self._rule_chains: Set[Tuple[int, Tuple[bytes, bytes]]] = set()  # (nfgenmsg family, raw table and chain names)
        self.told: Dict[ChainKey, _Told] = {}  # the rule notifications of the chains followed
        self.deleted: Set[ChainKey] = set()
        self.made: Set[Tuple[str, str, int]] = set()
        self.made_names: Set[Tuple[str, str, int, str]] = set()
        self.added: Set[ChainKey] = set()
        self.bound = False
        self.structure = False
        self.chain_set = False

    def add_rule_chain(self, family: int, raw: Tuple[bytes, bytes]) -> None:
        """A rule of a chain (its raw table and chain names) was added or deleted."""
        self._rule_chains.add((family, raw))

    def told_about(self, family: int, raw: Tuple[bytes, bytes], follow: Callable[[ChainKey], bool]) -> Optional[_Told]:
        """Where the rule notifications of the chain named ``raw`` go, if it is followed."""
        key = (family_name(family), string(raw[0]), string(raw[1]))
        if not follow(key):
            return None
        found = self.told.get(key)
        if found is None:
            found = self.told[key] = _Told(key[1], key[2])
        return found

    def add(self, kind: int, family: str, attrs: bytes) -> None:
        if kind in _CHAIN_MESSAGES:
            found = attributes(attrs)
            key = (family, _name(found, NFTA_CHAIN_TABLE), _name(found, NFTA_CHAIN_NAME))
            self.chains.add(key)
            if kind != NFT_MSG_NEWCHAIN:
                self.deleted.add(key)
            if NFTA_CHAIN_HOOK in found:
                self.structure = True  # a base chain: its hook, priority or policy
            else:
                self.chain_set = True
                if kind == NFT_MSG_NEWCHAIN:
                    handle = found.get(NFTA_CHAIN_HANDLE)
                    if handle is None or len(handle) != 8:
                        raise _Unreadable('a chain notification without its handle')
                    self.made.add((family, key[1], int.from_bytes(handle, 'big')))
                    self.made_names.add((family, key[1], int.from_bytes(handle, 'big'), key[2]))
                    self.added.add(key)
                    flags = found.get(NFTA_CHAIN_FLAGS, b'')
                    self.bound = self.bound or (len(flags) == 4 and bool(int.from_bytes(flags, 'big') & NFT_CHAIN_BINDING))
        elif kind in _TABLE_MESSAGES:
            self.tables.add((family, _name(attributes(attrs), NFTA_TABLE_NAME)))
            self.structure = True
        elif kind in _OTHER_STRUCTURE:
            self.structure = True
        else:
            raise _Unreadable('notification type {}'.format(kind))

    def changes(self) -> Changes:
        for family, (table, chain) in self._rule_chains:
            self.chains.add((family_name(family), string(table), string(chain)))
        return Changes(
            frozenset(self.chains),
            frozenset(self.tables),
            self.structure,
            self.chain_set,
            frozenset(self.deleted),
            frozenset(self.made),
            frozenset(self.added),
            self.bound,
            frozenset(self.made_names),
            {key: (rewrite,) for key, rewrite in ((key, told.rewrite()) for key, told in self.told.items()) if rewrite is not None},
        )


def _follow_none(key: ChainKey) -> bool:
    return False


def _name(found: dict, kind: int) -> str:  # type: ignore[type-arg]
    value = found.get(kind)
    if value is None:
        raise _Unreadable('a notification without attribute {}'.format(kind))
    return string(value)


# Why the log could not answer.
NOT_YET = 'not yet'  # the last transaction's notifications have not all arrived
UNKNOWN = 'unknown'  # lost, missing or unreadable: read everything again


class ChangeLog:
    """The transactions announced since the log was started (or last could not vouch for them), by
    generation id, in the order the kernel committed them."""

    def __init__(self, follow: Callable[[ChainKey], bool] = _follow_none) -> None:
        self._committed: List[Tuple[int, Changes]] = []
        self._open = _Transaction()
        # The nfgenmsg family and the first two attributes (table, chain) of the last rule notification
        # read into the open transaction, and where that chain's rule notifications go (None: it is not followed).
        self._same_chain: Optional[Tuple[int, bytes]] = None
        self._told: Optional[_Told] = None
        # The chains whose rule notifications are kept, to tell their rules (:meth:`Changes.rewrite_of`).
        self.follow = follow
        self._names = name_cache()
        self._trusted_after: Optional[int] = None  # after a loss: only transactions after this count
        self.lost = False
        self.losses = 0  # how many times notifications were lost: a read counts from the number it started at

    def feed(self, data: bytes) -> None:
        """One received datagram of notifications."""
        try:
            self._feed(data)
        except (_Unreadable, MalformedAttributes, NetlinkError, KeyError, struct.error):
            self.overflowed()

    def _feed(self, data: bytes) -> None:
        # A kube-proxy sync announces every rule of the chains it rewrites: rule messages take the
        # short way (their table and chain, the first attributes), once per distinct chain.
        offset, size = 0, len(data)
        unpack_header = _HEADER.unpack_from
        while offset < size:
            if size - offset < 16:
                raise _Unreadable('a truncated message header')
            length, kind, _flags, _seq, _pid = unpack_header(data, offset)
            if length < 20 or offset + length > size:
                raise _Unreadable('a message of length {}'.format(length))
            if kind >> 8 != NFNL_SUBSYS_NFTABLES:
                raise _Unreadable('message type {:#x}'.format(kind))
            kind &= 0xFF
            start, end = offset + 20, offset + length
            if kind in _RULE_MESSAGES:
                family = data[offset + 16]
                same = self._same_chain
                if same is None or same[0] != family or not data.startswith(same[1], start, end):
                    raw, after = _rule_chain(data, start, end)
                    self._open.add_rule_chain(family, raw)
                    self._same_chain = (family, data[start:after]) if after else None
                    self._told = self._open.told_about(family, raw, self.follow)
                    at = after
                else:
                    at = start + len(same[1])
                told = self._told
                if told is not None:
                    if kind == NFT_MSG_NEWRULE:
                        told.add(_told_rule(told, data, at, start, end, self._names))
                    else:
                        told.delete(_told_handle(data, at, start, end, self._names))
            elif kind == NFT_MSG_NEWGEN:
                self._commit(be32(attributes(data[start:end])[NFTA_GEN_ID]))
            else:
                self._open.add(kind, family_name(data[offset + 16]), data[start:end])
            offset += (length + 3) & ~3

    def overflowed(self) -> None:
        """Notifications were lost (the socket said ENOBUFS) or could not be read: nothing received
        so far, or still open, can be vouched for."""
        self.lost = True
        self.losses += 1
        self._committed.clear()
        self._open = _Transaction()
        self._same_chain = None
        self._told = None
        self._names = name_cache()

    def restart(self, generation: int, losses_before: int) -> None:
        """A read consistent at ``generation`` began when :attr:`losses` was ``losses_before``:
        transactions up to ``generation`` are known from it. If nothing was lost since it began,
        any earlier loss hid transactions up to ``generation`` only (a later one would have made
        the read inconsistent), so the transactions after it count again."""
        if self.lost and self.losses == losses_before:
            self.lost = False
            self._trusted_after = generation
        self.forget_through(generation)

    def forget_through(self, generation: int) -> None:
        """Transactions up to ``generation`` are no longer needed (the last read saw them)."""
        self._committed = [entry for entry in self._committed if is_after(entry[0], generation)]

    def between(self, since: int, until: int) -> Union[Changes, str]:
        """What changed after generation ``since`` up to ``until``: :class:`Changes`, or
        :data:`NOT_YET` (wait for more notifications) or :data:`UNKNOWN`."""
        if until == since:
            return NOTHING_CHANGED
        if self.lost or not is_after(until, since):
            return UNKNOWN
        if self._trusted_after is not None and is_after(self._trusted_after, since):
            return UNKNOWN  # the loss may have hidden a transaction after ``since``
        expected = next_generation(since)
        merged = NOTHING_CHANGED
        for generation, changes in self._committed:
            if generation == expected:
                merged = merged.merged(changes)
                if generation == until:
                    return merged
                expected = next_generation(generation)
            elif is_after(generation, since):
                return UNKNOWN  # a missing generation, or one out of order
        return NOT_YET

    def _commit(self, generation: int) -> None:
        changes = self._open.changes()
        if changes.rewrites:  # what earlier transactions told of those chains is not needed any more
            self._committed = [(number, earlier.superseded_by(changes.rewrites)) for number, earlier in self._committed]
        self._committed.append((generation, changes))
        self._open = _Transaction()
        self._same_chain = None
        self._told = None
        self._names = name_cache()  # per transaction: kube-proxy names new chains at every sync


_HANDLE_NEXT = struct.pack('=HH', 12, NFTA_RULE_HANDLE)
_POSITION_NEXT = struct.pack('=HH', 12, NFTA_RULE_POSITION)
_unpack_be64 = struct.Struct('>Q').unpack_from


def _told_handle(data: bytes, at: int, start: int, end: int, names: Dict[bytes, str]) -> int:
    """The handle of the rule notification ``data[start:end]``, whose table and chain end at ``at``
    (0: not known): the kernel puts the handle next."""
    if at and at + 12 <= end and data.startswith(_HANDLE_NEXT, at):
        return int(_unpack_be64(data, at + 4)[0])
    return rule_fields(data, start, end, names)[2]


def _told_rule(told: _Told, data: bytes, at: int, start: int, end: int, names: Dict[bytes, str]) -> RuleFields:
    """:func:`.netlink.rule_fields` of the rule notification ``data[start:end]``, whose table and
    chain end at ``at`` (0: not known), the short way where it is laid out as the kernel writes a
    rule of ``iptables-restore``: the handle, the position where there is one, the expressions last."""
    if at and at + 12 <= end and data.startswith(_HANDLE_NEXT, at):
        handle = int(_unpack_be64(data, at + 4)[0])
        position = 0
        at += 12
        if at + 12 <= end and data.startswith(_POSITION_NEXT, at):
            position = int(_unpack_be64(data, at + 4)[0])
            at += 12
        if at + 4 <= end:
            length, kind = _NLA.unpack_from(data, at)
            if kind & 0x3FFF == NFTA_RULE_EXPRESSIONS and length >= 4 and at + ((length + 3) & ~3) == end:
                return (told.table, told.chain, handle, position, data[at + 4 : at + length], b'')
    return rule_fields(data, start, end, names)


def _rule_chain(data: bytes, start: int, end: int) -> Tuple[Tuple[bytes, bytes], int]:
    """The raw table and chain attributes of a rule notification (NFTA_RULE_TABLE and
    NFTA_RULE_CHAIN, which the kernel puts first), and where the first two attributes end if they
    are those two (else 0): a message that starts with the same bytes is about the same chain."""
    offset, table, chain, seen = start, b'', b'', 0
    while offset + 4 <= end and not (table and chain):
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            raise _Unreadable('an attribute of length {}'.format(length))
        kind &= 0x3FFF
        if kind == NFTA_RULE_TABLE:
            table = data[offset + 4 : offset + length]
        elif kind == NFTA_RULE_CHAIN:
            chain = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
        seen += 1
    if not (table and chain):
        raise _Unreadable('a rule notification without its table or chain')
    return (table, chain), (offset if seen == 2 and offset <= end else 0)


class ChangeWatch:
    """A NETLINK_NETFILTER socket subscribed to nf_tables' notifications, kept between runs. It is
    opened in the namespace whose ruleset it watches, before the first read; where it cannot be
    opened (no CAP_NET_ADMIN, no netlink), every answer is "unknown"."""

    def __init__(
        self, smallest: int = SMALLEST_WATCH_RCVBUF, largest: int = LARGEST_WATCH_RCVBUF, wait: float = 0.2, follow: Callable[[ChainKey], bool] = _follow_none
    ) -> None:
        self.smallest, self.largest = smallest, largest
        self.rcvbuf = smallest
        self.wait = wait  # how long to wait for a transaction whose id was read before its notifications arrived
        self.follow = follow  # the chains whose rules the log keeps (:class:`ChangeLog`)
        self.log = ChangeLog(follow)
        self._sock: Optional[socket.socket] = None

    @property
    def watching(self) -> bool:
        return self._sock is not None

    def open(self) -> None:
        """Subscribe, if not done yet. Never raises: a watch that cannot be had answers "unknown"."""
        if self._sock is not None:
            return
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except (OSError, AttributeError):
            return
        try:
            sock.bind((0, 0))
            _set_rcvbuf(sock, self.rcvbuf)
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self._sock = sock
        self.log = ChangeLog(self.follow)
        self.log.overflowed()  # nothing before the first full read is vouched for

    def size_for(self, rules: int) -> None:
        """Room for the notifications of a rewrite of ``rules`` rules (the rules the check holds)."""
        wanted = min(max(rules * WATCH_RCVBUF_PER_RULE, self.smallest), self.largest)
        if self._sock is not None and wanted != self.rcvbuf:
            try:
                _set_rcvbuf(self._sock, wanted)
            except OSError:
                return
            self.rcvbuf = wanted

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def changes(self, since: int, until: int) -> Optional[Changes]:
        """What changed after generation ``since`` up to ``until``, or None where the notifications
        cannot prove it."""
        if self._sock is None:
            return None
        deadline = time.monotonic() + self.wait
        while True:
            self.drain()
            found = self.log.between(since, until)
            if isinstance(found, Changes):
                return found
            remaining = deadline - time.monotonic()
            sock = self._sock
            if found == UNKNOWN or remaining <= 0 or sock is None:
                return None
            try:
                select.select([sock], [], [], remaining)
            except (OSError, ValueError):  # closed meanwhile (the Agent cancelled the check)
                return None

    def losses(self) -> int:
        """How many losses were seen, the queue drained first: taken when a read begins."""
        self.drain()
        return self.log.losses

    def read_done(self, generation: int, losses_before: int) -> None:
        """A read that began at ``losses_before`` saw the ruleset at ``generation``."""
        if self._sock is not None:
            self.drain()
            self.log.restart(generation, losses_before)

    def drain(self) -> None:
        """Every notification queued on the socket, without blocking."""
        sock = self._sock
        while sock is not None:
            try:
                data, (sender, _groups) = sock.recvfrom(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno == errno_codes.ENOBUFS:
                    self.log.overflowed()
                    continue
                self.close()
                return
            if sender != 0:  # not from the kernel (another process with CAP_NET_ADMIN may send here)
                continue
            if not data:
                return
            self.log.feed(data)


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # CAP_NET_ADMIN: beyond net.core.rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


__all__ = ['Changes', 'ChangeLog', 'Rewrite', 'ChangeWatch', 'NOTHING_CHANGED', 'NOT_YET', 'UNKNOWN', 'is_after', 'next_generation']
