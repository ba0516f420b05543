"""The kernel's nf_tables expressions -> the evaluator's model (:mod:`.model`). Pure: no I/O.

A rule is a program over registers: loads (``payload``, ``meta``, ``ct``, ``fib``...) put a packet
field into a register, ``bitwise`` masks it, ``cmp``/``range``/``lookup`` end the rule when the field
does not match, and statements (``immediate`` verdicts, ``target``, ``nat``, ``meta set``...) act.
:class:`_RuleDecoder` runs that program symbolically: each register holds a description of the
field it was loaded from, and each comparison becomes a model :class:`.model.Match` in the
vocabulary the classifier knows (``-s``, ``-i``, ``-p``, ``--nfproto``, ``-m conntrack``...).

Rules written by iptables-nft carry the xtables extensions they could not express natively as
``match``/``target`` expressions holding the extension's binary struct; those are decoded by name
(:data:`_COMPAT_MATCHES`, :data:`_COMPAT_TARGETS`). Nothing here raises: what cannot be decoded is
described in :attr:`.model.Rule.undecoded`.
"""
from __future__ import annotations

import functools
import ipaddress
import itertools
import struct
import sys
from dataclasses import dataclass, replace
from functools import cached_property
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union, overload

from . import model
from .classify import KnownCondition, known_address
from .model import JUMP, STATEMENT, BaseChain, Chain, Match, Option, Rule, Table, Target
from .nf_tables import (
    NF_ACCEPT,
    NF_DROP,
    NF_QUEUE,
    NFT_BREAK,
    NFT_CONTINUE,
    NFT_DATA_VERDICT,
    NFT_GOTO,
    NFT_JUMP,
    NFT_RETURN,
    NFT_SET_CONCAT,
    NFT_SET_ELEM_INTERVAL_END,
    ChainKey,
    ChainRules,
    KernelChain,
    KernelRule,
    KernelRuleset,
    LazyRules,
    KernelSet,
    SetElement,
    attributes,
    be32,
    expressions_of,
    shared_attributes,
    be32_signed,
    string,
)
from .ipset_contents import SetsRead, resolve_rule
from .render import rule_text

DecodedRule = Union[Rule, Tuple[Rule, ...]]

_NATIVE = sys.byteorder  # meta mark, iif, ct state... are in host byte order

# ----------------------------------------------------------------------------- tables and chains

_IPTABLES_FAMILIES = ('ip', 'ip6')


def is_iptables_table(family: str, name: str, chains: Iterable[KernelChain]) -> bool:
    """A table iptables-nft created: family ip/ip6, an iptables table name, and every base chain one
    of iptables' built-in chains of that table, on its hook, priority and type."""
    if family not in _IPTABLES_FAMILIES or name not in model.BUILTIN_CHAINS:
        return False
    for chain in chains:
        if not chain.is_base:
            continue
        expected = model.IPTABLES_BASE_CHAINS.get((name, chain.name))
        if expected is None or (expected.hook, expected.priority, expected.type) != (chain.hook, chain.priority, chain.type):
            return False
    return True


class DecodeCache:
    """The rules one check instance decoded, by what the kernel sent for them: a rule that is the
    same bytes in the same chain decodes the same (its handle aside), so that a ruleset rewritten
    around it (a kube-proxy sync re-adds whole chains) costs a look-up per unchanged rule. Rules
    that look up a set are not kept (the set's contents may change). The same for the conditions
    known before a rule is decoded (:func:`leading_conditions`). Per nf_tables family, what a
    generation did not use is forgotten at the next one that decodes that family (a family whose
    walk was kept across generations keeps what it decoded)."""

    def __init__(self) -> None:
        self._families: Dict[str, _FamilyDecodes] = {}

    def _of(self, family: str) -> '_FamilyDecodes':
        found = self._families.get(family)
        if found is None:
            found = self._families[family] = _FamilyDecodes()
        return found

    def start(self, generation: int, family: str) -> None:
        self._of(family).start(generation)

    def vouched(self, raw: Sequence[KernelRule], family: str) -> bool:
        """Whether rules that are the same bytes mean the same: none of them looks up a set."""
        return self._of(family).vouched(raw)

    def chain(self, key: Tuple[str, str, str, bool, bool], raw: Tuple[KernelRule, ...], decoding: '_Decoding') -> '_DecodedRules':
        """A chain's rules as decoded for the last generation where they are the same rule objects
        (the reader gives the same objects for the same bytes), or the same rules under new
        handles, with what walks kept of them."""
        return self._of(key[0]).chain(key, raw, decoding)

    def decode(self, rule: KernelRule, sets: Mapping[str, KernelSet], family: str, iptables: bool) -> DecodedRule:
        """The rule as the walk reads it (:func:`decode_rule` with ``walk``)."""
        if _SET_LOOKUP in rule.raw_expressions:
            return decode_rule(rule, sets, family, iptables=iptables, walk=True)
        return self._of(family).decode(rule, sets, family, iptables)

    def leading(self, rule: KernelRule, version: int, family: str) -> Optional[Tuple[KnownCondition, ...]]:
        return self._of(family).leading(rule, version)

    def first_known(self, rule: KernelRule, version: int, family: str) -> Optional[KnownCondition]:
        """The first of :meth:`leading`, where it is had without them (:class:`FirstConditions`)."""
        return self._of(family).first_conditions(version).first(rule.raw_expressions)


class _FamilyDecodes:
    """One nf_tables family's part of a :class:`DecodeCache`: this generation's and the last one's."""

    def __init__(self) -> None:
        self._current: Dict[Tuple[object, ...], DecodedRule] = {}
        self._previous: Dict[Tuple[object, ...], DecodedRule] = {}
        # Keyed by the rule's bytes alone: the IP version they are read for is the family's.
        self._leading: Dict[bytes, Optional[Tuple[KnownCondition, ...]]] = {}
        self._leading_before: Dict[bytes, Optional[Tuple[KnownCondition, ...]]] = {}
        self._version: Optional[int] = None
        self._first: Optional[FirstConditions] = None  # what layouts say, whatever the generation
        self._chains: Dict[Tuple[str, str, str, bool, bool], '_DecodedRules'] = {}
        self._chains_before: Dict[Tuple[str, str, str, bool, bool], '_DecodedRules'] = {}
        self._vouched: Dict[int, Tuple[Sequence[KernelRule], bool]] = {}  # by the rules' identity (kept alive here)
        self._vouched_before: Dict[int, Tuple[Sequence[KernelRule], bool]] = {}
        self.generation: Optional[int] = None

    def start(self, generation: int) -> None:
        if generation != self.generation:
            self.generation = generation
            self._vouched_before, self._vouched = self._vouched, {}
            self._previous, self._current = self._current, {}
            self._leading_before, self._leading = self._leading, {}
            self._chains_before, self._chains = self._chains, {}

    def vouched(self, raw: Sequence[KernelRule]) -> bool:
        known = self._vouched.get(id(raw))
        if known is None or known[0] is not raw:
            known = self._vouched_before.get(id(raw))
            if known is None or known[0] is not raw:
                known = (raw, not any(_looks_up_sets(rule.raw_expressions) for rule in raw))
            self._vouched[id(raw)] = known
        return known[1]

    def chain(self, key: Tuple[str, str, str, bool, bool], raw: Tuple[KernelRule, ...], decoding: '_Decoding') -> '_DecodedRules':
        found = self._chains.get(key) or self._chains_before.get(key)
        if found is not None and found.reusable and (found.raw is raw and found.handles_moved() or found.raw is not raw and _rewritten_as_they_were(found.raw, raw)):
            found.rehandle(raw)  # kube-proxy rewrites its big chains at every sync: the same rules, new handles
        elif found is None or found.raw is not raw or not found.reusable:
            found = _DecodedRules(raw, decoding)
        self._chains[key] = found
        return found

    def decode(self, rule: KernelRule, sets: Mapping[str, KernelSet], family: str, iptables: bool) -> DecodedRule:
        key = (rule.table, rule.chain, iptables, rule.raw_expressions, rule.userdata)
        found = self._current.get(key)
        if found is None:
            found = self._previous.get(key)
            if found is None:
                found = decode_rule(rule, sets, family, iptables=iptables, walk=True)
            self._current[key] = found
        return _with_handle(found, rule.handle)

    def leading(self, rule: KernelRule, version: int) -> Optional[Tuple[KnownCondition, ...]]:
        first = self.first_conditions(version)
        key = rule.raw_expressions
        if key in self._leading:
            return self._leading[key]
        found = self._leading_before.get(key) if key in self._leading_before else first.known(key)
        self._leading[key] = found
        return found

    def first_conditions(self, version: int) -> FirstConditions:
        if version != self._version or self._first is None:  # never for the tables of one family; kept exact if it were
            self._version, self._leading, self._leading_before = version, {}, {}
            self._first = FirstConditions(version)
        return self._first


# How a lookup expression's name appears in NFTA_RULE_EXPRESSIONS.
_SET_LOOKUP = b'lookup\x00'
# How the compat match of an ipset (xt_set) appears there: NFTA_MATCH_NAME "set".
_XT_SET = b'\x08\x00\x01\x00set\x00'


def _rewritten_as_they_were(before: Tuple[KernelRule, ...], now: Tuple[KernelRule, ...]) -> bool:
    """Whether a chain's rules are the ones it had, in the same order, handles aside."""
    return len(before) == len(now) and all(
        old.raw_expressions == new.raw_expressions and old.userdata == new.userdata for old, new in zip(before, now)
    )


def current_handle(table: Table, chain: str, index: int) -> Optional[int]:
    """The handle rule ``index`` (1-based, as positions count) of a kernel chain has now; None for a
    chain of another front-end."""
    found = table.chains.get(chain)
    if not isinstance(found, DecodedChain) or not 0 < index <= len(found.walk_rules):
        return None
    return found.walk_rules.handle_at(index - 1)


def _looks_up_sets(raw: bytes) -> bool:
    """Whether what the rule means depends on a set's contents besides its bytes."""
    return _SET_LOOKUP in raw or _XT_SET in raw


def _with_handle(decoded: DecodedRule, handle: int) -> DecodedRule:
    if isinstance(decoded, tuple):
        return tuple(replace(rule, handle=handle) if rule.handle != handle else rule for rule in decoded)
    return replace(decoded, handle=handle) if decoded.handle != handle else decoded


def decode_tables(kernel: KernelRuleset, family: str, cache: Optional[DecodeCache] = None, shortcuts: bool = True) -> Tuple[Table, ...]:
    """The model tables of one nf_tables family, in the order the kernel listed them. A chain whose
    rules were not read is left out (a jump to it is then known to lead to a chain not read).
    Without ``shortcuts`` no condition is known before a rule is decoded (the walk decodes every
    rule it reaches: what the shortcuts must agree with)."""
    if cache is not None:
        cache.start(kernel.generation, family)
    return tuple(_decode_table(kernel, table.name, family, table.dormant, cache, shortcuts) for table in kernel.tables if table.family == family)


class _Chains(Mapping[str, Chain]):
    """A table's chains: its base chains, and every other chain made when it is first looked up (a
    Kubernetes node's nat table has tens of thousands of chains; a walk enters few of them)."""

    def __init__(self, kernel: KernelRuleset, family: str, table: str, base: Dict[str, Chain], decoding: '_Decoding') -> None:
        self._kernel = kernel
        self._family = family
        self._table = table
        self._base = base
        self._decoding = decoding
        self._made: Dict[str, Optional[Chain]] = {}

    def __getitem__(self, name: str) -> Chain:
        found = self._base.get(name)
        if found is None:
            if name in self._made:
                found = self._made[name]
            else:
                found = self._made[name] = self._make(name)
        if found is None:
            raise KeyError(name)
        return found

    def _make(self, name: str) -> Optional[Chain]:
        key = (self._family, self._table, name)
        if not self._kernel.has_chain(key):
            return None
        rules = _rules_of(self._kernel, key)
        return DecodedChain(name, None, rules, self._decoding) if rules is not None else None

    def __iter__(self) -> Iterator[str]:
        names = self._kernel.chain_names.of_table(self._family, self._table) or {c.name for c in self._kernel.chains_of(self._family, self._table)}
        return iter(sorted(name for name in names if name in self))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def base_chains(self) -> Tuple[Chain, ...]:
        return tuple(self._base.values())

    def content(self, name: str) -> Optional[Sequence[KernelRule]]:
        """A chain's rules as read (the same object while the kernel sends the same bytes for them),
        without making the chain; None where they cannot be had, or where the same bytes may not
        mean the same (a rule that looks up a set, whose contents may have changed)."""
        key = (self._family, self._table, name)
        rules = self._kernel.rules
        if isinstance(rules, ChainRules) and not rules.can_give(key):
            return None
        try:
            found = rules[key]
        except KeyError:
            return None
        cache = self._decoding.cache
        vouched = cache.vouched(found, self._family) if cache is not None else not any(_looks_up_sets(rule.raw_expressions) for rule in found)
        return found if vouched else None


class _Decoding:
    """How the rules of one table are decoded, and what is known of them before."""

    def __init__(
        self,
        sets: Mapping[str, KernelSet],
        family: str,
        table: str,
        iptables: bool,
        cache: Optional[DecodeCache],
        ipsets: Optional[Callable[[], SetsRead]] = None,
    ) -> None:
        self.sets = sets
        self.ipsets = ipsets
        self.family = family
        self.table = table
        self.iptables = iptables
        self.cache = cache
        self.shortcuts = True
        self.version = _TABLE_VERSIONS.get(family)  # where leading conditions are read (None: nowhere)

    def decode(self, raw: KernelRule, whole: bool = False) -> DecodedRule:
        """The rule as the walk reads it, or ``whole`` (with its text and comments)."""
        if whole:
            decoded = decode_rule(raw, self.sets, self.family, iptables=self.iptables)
        elif self.cache is not None:
            decoded = self.cache.decode(raw, self.sets, self.family, self.iptables)
        else:
            decoded = decode_rule(raw, self.sets, self.family, iptables=self.iptables, walk=True)
        if _XT_SET not in raw.raw_expressions:
            return decoded
        # The decoded rule names the ipset by its index; what it means is the set's contents now.
        ipsets = self.ipsets() if self.ipsets is not None else None
        if isinstance(decoded, tuple):
            return tuple(resolve_rule(rule, ipsets) for rule in decoded)
        return resolve_rule(decoded, ipsets)

    def leading(self, raw: KernelRule) -> Optional[Tuple[KnownCondition, ...]]:
        if self.version is None:
            return None  # inet, netdev: the decoder infers the address family from the offsets
        if self.cache is not None:
            return self.cache.leading(raw, self.version, self.family)
        return known_conditions(raw.raw_expressions, self.version)

    def first_known(self, raw: KernelRule) -> Optional[KnownCondition]:
        """The first of :meth:`leading`, where the cache has it cheaper (None: not had that way)."""
        if self.version is None or self.cache is None:
            return None
        return self.cache.first_known(raw, self.version, self.family)


class DecodedChain(Chain):
    """A chain of kernel rules, each decoded when first used (``walk_rules``); ``rules`` decodes
    them all. A walk that knows from :meth:`known_conditions` that a rule matches none of its class
    need not decode it (most of a Kubernetes node's service rules, for a loopback class)."""

    def __init__(self, name: str, policy: Optional[str], raw_rules: Sequence[KernelRule], decoding: _Decoding, base: Optional[BaseChain] = None) -> None:
        super().__init__(name, policy, raw_rules, decoding.decode, base=base)
        self.__dict__['_decoding'] = decoding

    @cached_property
    def walk_rules(self) -> '_DecodedRules':
        decoding: _Decoding = self.__dict__['_decoding']
        raw = self.raw_rules
        rules = raw.rules() if isinstance(raw, LazyRules) else raw if isinstance(raw, tuple) else tuple(raw)
        if decoding.cache is None:
            return _DecodedRules(rules, decoding)
        return decoding.cache.chain((decoding.family, decoding.table, self.name, decoding.iptables, decoding.shortcuts), rules, decoding)

    @cached_property
    def rules(self) -> Tuple[Rule, ...]:
        """Every rule whole, with its text and comments, one for one with ``walk_rules``."""
        return self.walk_rules.whole()

    def known_conditions(self, index: int) -> Optional[Tuple[KnownCondition, ...]]:
        """Some conditions of rule ``index`` of ``walk_rules``, known without decoding it (None: none)."""
        return self.walk_rules.known_conditions(index)

    def first_known_condition(self, index: int) -> Optional[KnownCondition]:
        """The first of :meth:`known_conditions`, where it is had without them (None: not so)."""
        return self.walk_rules.first_known_condition(index)


class _DecodedRules(Sequence[Rule]):
    """A chain's rules, each decoded on first use. A rule that looks up a set is decoded at once:
    a verdict map stands for one rule per element."""

    def __init__(self, raw_rules: Tuple[KernelRule, ...], decoding: _Decoding) -> None:
        self.raw = raw_rules
        self._handles = tuple(raw.handle for raw in raw_rules)  # as the rules had them when decoded
        self._decoding = decoding
        self._items: List[Union[KernelRule, Rule]] = []
        # Where each item comes from, (raw rule, which of the rules it decodes to), where a verdict
        # map made several of one; None while the items are the raw rules one for one.
        self._origins: Optional[List[Tuple[KernelRule, int]]] = None
        self.reusable = True  # False where a rule looks up a set, whose contents may change
        # For the walk's own use, as long as these rules are unchanged (what it knows of them).
        self.walk_memo: Optional[Dict[Any, Any]] = {} if decoding.shortcuts else None
        for raw in raw_rules:
            if _looks_up_sets(raw.raw_expressions):
                self.reusable = False
            if _SET_LOOKUP in raw.raw_expressions:  # a verdict map stands for several rules: decoded now
                decoded = decoding.decode(raw)
                made = decoded if isinstance(decoded, tuple) else (decoded,)
                if self._origins is None and len(made) != 1:
                    self._origins = [(rule, 0) for rule in raw_rules[: len(self._items)]]
                self._items.extend(made)
                if self._origins is not None:
                    self._origins.extend((raw, part) for part in range(len(made)))
            else:
                self._items.append(raw)
                if self._origins is not None:
                    self._origins.append((raw, 0))

    def rehandle(self, raw_rules: Tuple[KernelRule, ...]) -> None:
        """The same rules read again under new handles (:func:`_rewritten_as_they_were`): what was
        decoded of them, and what walks kept of them, stay; each rule takes its new handle when it is
        next used (a walk found again uses none). The walks' positions keep the old ones until
        :func:`current_handle` gives them theirs."""
        items = self._items
        for index, raw in enumerate(raw_rules):
            if isinstance(items[index], KernelRule):
                items[index] = raw
        self.raw = raw_rules
        self._handles = tuple(raw.handle for raw in raw_rules)

    def handles_moved(self) -> bool:
        """Whether the reader gave these very rules new handles (:func:`.netlink.chain_rules`)."""
        return self._handles != tuple(raw.handle for raw in self.raw)

    def handle_at(self, index: int) -> int:
        # Only rules that look up no set are rehandled; their items are the raw rules', one for one.
        return self._handles[index] if self.reusable else self._items[index].handle

    def text_at(self, index: int) -> str:
        """The text of rule ``index`` (decoded for the walk without it: made again, for the rules a
        result names)."""
        raw, part = self._origin(index)
        whole = self._decoding.decode(raw, whole=True)
        return (whole[part] if isinstance(whole, tuple) else whole).text

    def whole(self) -> Tuple[Rule, ...]:
        """Every rule as :func:`decode_rule` gives it whole, one for one with the items, each with
        the handle the walk gives it."""
        found: List[Rule] = []
        last: Optional[KernelRule] = None
        whole: DecodedRule = ()
        for index in range(len(self._items)):
            raw, part = self._origin(index)
            if raw is not last:
                last, whole = raw, self._decoding.decode(raw, whole=True)
            rule = whole[part] if isinstance(whole, tuple) else whole
            handle = self.handle_at(index)
            found.append(rule if rule.handle == handle else replace(rule, handle=handle))
        return tuple(found)

    def _origin(self, index: int) -> Tuple[KernelRule, int]:
        return (self.raw[index], 0) if self._origins is None else self._origins[index]

    def known_conditions(self, index: int) -> Optional[Tuple[KnownCondition, ...]]:
        item = self._items[index]
        return self._decoding.leading(item) if isinstance(item, KernelRule) else None

    def first_known_condition(self, index: int) -> Optional[KnownCondition]:
        item = self._items[index]
        return self._decoding.first_known(item) if isinstance(item, KernelRule) else None

    def _rule(self, index: int) -> Rule:
        item = self._items[index]
        if isinstance(item, Rule):
            if self.reusable and item.handle != self._handles[index]:  # rehandled since it was decoded
                item = self._items[index] = replace(item, handle=self._handles[index])
            return item
        decoded = self._decoding.decode(item)
        assert isinstance(decoded, Rule)  # only a set lookup decodes to several rules
        self._items[index] = decoded
        return decoded

    @overload
    def __getitem__(self, index: int) -> Rule: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Rule]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[Rule, Sequence[Rule]]:
        if isinstance(index, slice):
            return tuple(self._rule(i) for i in range(len(self._items))[index])
        return self._rule(index if index >= 0 else index + len(self._items))

    def __len__(self) -> int:
        return len(self._items)


def _decode_table(kernel: KernelRuleset, name: str, family: str, dormant: bool, cache: Optional[DecodeCache], shortcuts: bool) -> Table:
    kernel_chains = kernel.chains_of(family, name)
    iptables = is_iptables_table(family, name, kernel_chains)
    sets = MappingProxyType({key[2]: found for key, found in kernel.sets.items() if key[0] == family and key[1] == name})
    decoding = _Decoding(sets, family, name, iptables, cache, kernel.ipsets)
    if not shortcuts:
        decoding.shortcuts, decoding.version = False, None
    base: Dict[str, Chain] = {}
    for chain in kernel_chains:
        if not chain.is_base:
            continue
        rules = _rules_of(kernel, (family, name, chain.name))
        if rules is None:
            continue
        policy = (chain.policy or 'accept').upper()
        hooked = BaseChain(chain.hook or '', chain.priority or 0, chain.type or 'filter', tuple(chain.devices))
        base[chain.name] = DecodedChain(chain.name, policy, rules, decoding, base=hooked)
    return Table(name, _Chains(kernel, family, name, base, decoding), family=family, dormant=dormant, native=not iptables)


def _rules_of(kernel: KernelRuleset, key: ChainKey) -> Optional[Sequence[KernelRule]]:
    """A chain's rules, or None where they cannot be had (not read; left out of the table); while
    the ruleset is being read, a chain not read yet gives rules read when first used."""
    rules = kernel.rules
    if isinstance(rules, ChainRules):
        if rules.is_read(key):
            return rules[key]
        return LazyRules(rules, key) if rules.can_give(key) else None
    return rules.get(key)


# ----------------------------------------------------------------------------- catalogues

# Verdict codes -> the model's target names (None: no verdict, the next rule runs).
_VERDICTS: Mapping[int, Optional[str]] = {
    NF_ACCEPT: 'ACCEPT',
    NF_DROP: 'DROP',
    NF_QUEUE: 'NFQUEUE',
    NFT_RETURN: 'RETURN',
    NFT_CONTINUE: None,
    NFT_BREAK: None,
}
_VERDICT_TEXT: Mapping[str, str] = {'ACCEPT': 'accept', 'DROP': 'drop', 'NFQUEUE': 'queue', 'RETURN': 'return'}

# Targets that decide the fate of the packet (or end the chain's walk); the last one is the rule's target.
_DECIDING = frozenset({'ACCEPT', 'DROP', 'RETURN', 'REJECT', 'QUEUE', 'NFQUEUE', 'DNAT', 'SNAT', 'MASQUERADE', 'REDIRECT', 'NETMAP',
                       'TPROXY', 'SYNPROXY', 'DUP-FWD'})

_PROTOCOLS: Mapping[int, str] = {1: 'icmp', 2: 'igmp', 6: 'tcp', 17: 'udp', 33: 'dccp', 41: 'ipv6', 47: 'gre', 50: 'esp', 51: 'ah',
                                 58: 'ipv6-icmp', 132: 'sctp', 136: 'udplite'}
_PORT_MODULES = frozenset({'tcp', 'udp', 'sctp', 'dccp', 'udplite'})
_NFPROTOS: Mapping[int, str] = {2: 'ipv4', 10: 'ipv6'}
_ETHERTYPES: Mapping[int, str] = {0x0800: 'ipv4', 0x86DD: 'ipv6'}

# nft's ct state bits (NF_CT_STATE_*) and xt_conntrack's (XT_CONNTRACK_STATE_*), in iptables' print order.
_NFT_CT_STATES: Tuple[Tuple[int, str], ...] = ((1, 'INVALID'), (8, 'NEW'), (4, 'RELATED'), (2, 'ESTABLISHED'), (64, 'UNTRACKED'))
_XT_CONNTRACK_STATES: Tuple[Tuple[int, str], ...] = (
    (1, 'INVALID'), (8, 'NEW'), (4, 'RELATED'), (2, 'ESTABLISHED'), (256, 'UNTRACKED'), (64, 'SNAT'), (128, 'DNAT'))
_XT_STATE_STATES: Tuple[Tuple[int, str], ...] = ((1, 'INVALID'), (8, 'NEW'), (4, 'RELATED'), (2, 'ESTABLISHED'), (64, 'UNTRACKED'))
_CT_STATUS: Tuple[Tuple[int, str], ...] = ((1, 'EXPECTED'), (2, 'SEEN_REPLY'), (4, 'ASSURED'), (8, 'CONFIRMED'))
# Route types (RTN_*), as addrtype and fib name them.
_ADDRESS_TYPES = ('UNSPEC', 'UNICAST', 'LOCAL', 'BROADCAST', 'ANYCAST', 'MULTICAST', 'BLACKHOLE', 'UNREACHABLE', 'PROHIBIT', 'THROW',
                  'NAT', 'XRESOLVE')
_PACKET_TYPES: Mapping[int, str] = {0: 'unicast', 1: 'broadcast', 2: 'multicast', 3: 'otherhost', 4: 'outgoing'}
_LIMIT_UNITS: Mapping[int, str] = {1: 'sec', 60: 'min', 3600: 'hour', 86400: 'day'}


def _flag_names(value: int, names: Sequence[Tuple[int, str]]) -> str:
    return ','.join(name for bit, name in names if value & bit)


# ----------------------------------------------------------------------------- register contents


@dataclass(frozen=True)
class _Field:
    """What a register was loaded from. ``kind`` says how comparisons on it become model matches:
    ``address`` (``option`` -s/-d), ``ifname``/``ifindex`` (-i/-o), ``l4proto``, ``nfproto``,
    ``ethertype``, ``port`` (``option`` --sport/--dport), ``ctstate``, ``ctstatus``, ``mark``,
    ``ctmark``, ``fib-oif``, ``fib-type``, ``generic`` (described by ``name`` only)."""

    kind: str
    name: str  # nft's words for it: 'ip saddr', 'iifname', 'meta mark'
    option: str = ''
    size: int = 0  # the whole field, bytes (addresses: 4 or 16)
    version: int = 0  # addresses: 4 or 6
    module: str = ''  # ports: tcp/udp/... (or '' when the protocol is not known)
    order: str = 'big'
    flags: int = 0  # fib: NFTA_FIB_F_*


@dataclass(frozen=True)
class _Value:
    """A register's content: ``field`` loaded (``length`` bytes), masked with ``mask`` (None: not masked)."""

    field: _Field
    length: int
    mask: Optional[bytes] = None


@dataclass(frozen=True)
class _Constant:
    data: bytes


_Register = Union[_Value, _Constant]


class _DecodeError(Exception):
    """An expression that cannot be decoded; the message says what and why."""


def _slots(register: int, length: int) -> range:
    """The 4-byte register slots a value of ``length`` bytes occupies from ``register`` (NFT_REG_1..4
    are 16-byte registers aliasing NFT_REG32_00..15)."""
    if 1 <= register <= 4:
        first = (register - 1) * 4
    elif 8 <= register <= 23:
        first = register - 8
    else:
        raise _DecodeError('register {} is not a data register'.format(register))
    return range(first, first + max(1, (length + 3) // 4))


# ----------------------------------------------------------------------------- value formatting


def _int(data: bytes, order: str = 'big') -> int:
    return int.from_bytes(data, 'little' if order == 'little' else 'big')


def _hex(value: int) -> str:
    return '0x{:x}'.format(value)


def _mark_text(value: int, mask: Optional[int]) -> str:
    """iptables' --mark / --set-xmark form: value, or value/mask when the mask is not all ones."""
    if mask is None or mask == 0xFFFFFFFF:
        return _hex(value)
    return '{}/{}'.format(_hex(value), _hex(mask))


def _address(data: bytes, version: int) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    return ipaddress.IPv4Address(data) if version == 4 else ipaddress.IPv6Address(data)


def _network_text(data: bytes, mask: bytes, version: int) -> str:
    """CIDR text of address/mask (full field length each); a mask that is not a prefix stays a mask."""
    value = _int(mask)
    size = len(mask) * 8
    prefix = bin(value).count('1')
    address = bytes(a & m for a, m in zip(data, mask))
    shown = '{}.{}.{}.{}'.format(*address) if version == 4 and len(address) == 4 else str(_address(address, version))
    if value == ((1 << size) - 1) ^ ((1 << (size - prefix)) - 1):
        return '{}/{}'.format(shown, prefix)
    return '{}/{}'.format(shown, _address(mask, version))


def _range_networks(low: bytes, high: bytes, version: int) -> Tuple[str, ...]:
    if _int(high) < _int(low):
        return ()
    first, last = _address(low, version), _address(high, version)
    return tuple(str(net) for net in ipaddress.summarize_address_range(first, last))


def _interface_text(data: bytes) -> str:
    """A name compared with its NUL is exact; one compared without it is a prefix (iptables' ``lo+``)."""
    if b'\0' in data:
        return data.split(b'\0', 1)[0].decode('utf-8', 'replace')
    return data.decode('utf-8', 'replace') + '+'


def _protocol_text(number: int) -> str:
    return _PROTOCOLS.get(number, str(number))


def _ports_text(low: int, high: int) -> str:
    return str(low) if low == high else '{}:{}'.format(low, high)


# ----------------------------------------------------------------------------- fields by load expression

_META_FIELDS: Mapping[int, _Field] = {
    1: _Field('ethertype', 'meta protocol', size=2),
    2: _Field('generic', 'meta priority', order=_NATIVE),
    3: _Field('mark', 'meta mark', size=4, order=_NATIVE),
    4: _Field('ifindex', 'iif', '-i', size=4, order=_NATIVE),
    5: _Field('ifindex', 'oif', '-o', size=4, order=_NATIVE),
    6: _Field('ifname', 'iifname', '-i', size=16),
    7: _Field('ifname', 'oifname', '-o', size=16),
    8: _Field('generic', 'iiftype', order=_NATIVE),
    9: _Field('generic', 'oiftype', order=_NATIVE),
    10: _Field('generic', 'meta skuid', order=_NATIVE),
    11: _Field('generic', 'meta skgid', order=_NATIVE),
    15: _Field('nfproto', 'meta nfproto', size=1),
    16: _Field('l4proto', 'meta l4proto', '-p', size=1),
    19: _Field('pkttype', 'pkttype', size=1),
    20: _Field('generic', 'meta cpu', order=_NATIVE),
    21: _Field('generic', 'iifgroup', order=_NATIVE),
    22: _Field('generic', 'oifgroup', order=_NATIVE),
    23: _Field('generic', 'meta cgroup', order=_NATIVE),
    24: _Field('generic', 'meta random'),
    26: _Field('generic', 'iifkind'),
    27: _Field('generic', 'oifkind'),
}
_META_KEY_NAMES: Mapping[int, str] = {0: 'length', 12: 'nftrace', 13: 'rtclassid', 14: 'secmark', 17: 'ibrname', 18: 'obrname',
                                      25: 'secpath', 28: 'ibrpvid', 29: 'ibrvproto', 30: 'time', 31: 'day', 32: 'hour', 33: 'sdif',
                                      34: 'sdifname'}

_CT_FIELDS: Mapping[int, _Field] = {
    0: _Field('ctstate', 'ct state', size=4, order=_NATIVE),
    1: _Field('generic', 'ct direction'),
    2: _Field('ctstatus', 'ct status', size=4, order=_NATIVE),
    3: _Field('ctmark', 'ct mark', size=4, order=_NATIVE),
    5: _Field('generic', 'ct expiration', order=_NATIVE),
    6: _Field('generic', 'ct helper'),
    7: _Field('generic', 'ct l3proto'),
    10: _Field('generic', 'ct protocol'),
    11: _Field('generic', 'ct proto-src'),
    12: _Field('generic', 'ct proto-dst'),
    17: _Field('ctzone', 'ct zone', size=2, order=_NATIVE),
}
_CT_KEY_LENGTHS: Mapping[int, int] = {6: 16, 8: 16, 9: 16, 13: 16, 14: 8, 15: 8, 16: 8, 21: 16, 22: 16}
_CT_KEY_NAMES: Mapping[int, str] = {4: 'secmark', 8: 'src', 9: 'dst', 13: 'label', 14: 'packets', 15: 'bytes', 16: 'avgpkt',
                                    18: 'event', 19: 'ip saddr', 20: 'ip daddr', 21: 'ip6 saddr', 22: 'ip6 daddr', 23: 'id'}

# Network-header fields: (IP version, offset) -> (nft name, model option, field size).
_NETWORK_FIELDS: Mapping[Tuple[int, int], Tuple[str, str, int]] = {
    (4, 12): ('ip saddr', '-s', 4),
    (4, 16): ('ip daddr', '-d', 4),
    (4, 9): ('ip protocol', '-p', 1),
    (6, 8): ('ip6 saddr', '-s', 16),
    (6, 24): ('ip6 daddr', '-d', 16),
    (6, 6): ('ip6 nexthdr', '-p', 1),
}
_TABLE_VERSIONS: Mapping[str, int] = {'ip': 4, 'ip6': 6}
_PAYLOAD_BASES = ('@ll', '@nh', '@th', '@ih')

# NFTA_FIB_F_* and NFT_FIB_RESULT_*.
_FIB_SADDR, _FIB_DADDR, _FIB_MARK, _FIB_IIF, _FIB_OIF, _FIB_PRESENT = 1, 2, 4, 8, 16, 32
_FIB_RESULTS: Mapping[int, str] = {1: 'oif', 2: 'oifname', 3: 'type'}


def _fib_name(flags: int, result: str) -> str:
    keys = [name for bit, name in ((_FIB_SADDR, 'saddr'), (_FIB_DADDR, 'daddr'), (_FIB_MARK, 'mark'), (_FIB_IIF, 'iif'),
                                   (_FIB_OIF, 'oif')) if flags & bit]
    return 'fib {} {}{}'.format(' . '.join(keys), result, ' present' if flags & _FIB_PRESENT else '')


# ----------------------------------------------------------------------------- the rule decoder

_CMP_OPS = ('==', '!=', '<', '<=', '>', '>=')


@dataclass
class _Parts:
    """What one rule decoded to so far."""

    matches: List[Match]
    words: List[str]
    actions: List[Target]
    problems: List[str]


class _RuleDecoder:
    def __init__(self, rule: KernelRule, sets: Mapping[str, KernelSet], table_family: str, iptables: bool, walk: bool = False) -> None:
        self.rule = rule
        self.sets = sets
        self.table_family = table_family
        self.iptables = iptables
        # For the walk only: no text, no comments (they match every packet), both made again for
        # the few rules a result names (:meth:`_DecodedRules.text_at`).
        self.walk = walk
        self.registers: Dict[int, _Register] = {}
        self.parts = _Parts([], [], [], [])
        self.target: Optional[Target] = None
        self.version: Optional[int] = _TABLE_VERSIONS.get(table_family)
        self.l4: str = ''
        # (criterion builder for one key, the map) of a verdict-map lookup
        self.verdict_map: Optional[Tuple[_Value, KernelSet, bool]] = None
        self.dead = False  # a condition after the deciding statement never runs

    # -- registers

    def load(self, register: int, value: _Register, length: int) -> None:
        slots = _slots(register, length)
        for slot in slots:
            self.registers.pop(slot, None)
        self.registers[slots[0]] = value
        for slot in slots[1:]:
            self.registers[slot] = _Constant(b'')  # covered by the value in the first slot

    def read(self, register: int, what: str) -> _Register:
        value = self.registers.get(_slots(register, 1)[0])
        if value is None or (isinstance(value, _Constant) and not value.data):
            raise _DecodeError('{} reads register {}, which nothing loaded'.format(what, register))
        return value

    def read_value(self, register: int, what: str) -> _Value:
        value = self.read(register, what)
        if not isinstance(value, _Value):
            raise _DecodeError('{} compares a constant'.format(what))
        return value

    # -- conditions and statements

    def decided(self) -> bool:
        return self.target is not None and (self.target.kind == JUMP or self.target.name in _DECIDING)

    def condition(self, match: Match, text: str) -> None:
        if self.dead or self.decided():
            self.dead = True  # after the verdict nothing runs
            return
        if self.parts.actions or self.target is not None:
            self.problem('a statement before a condition')
        self.parts.matches.append(match)
        self.parts.words.append(text)

    def statement(self, target: Target, text: str) -> None:
        if self.dead or self.decided():
            self.dead = True
            return
        self.parts.words.append(text)
        if self.target is not None:
            self.parts.actions.append(self.target)
        self.target = target

    def problem(self, text: str) -> None:
        if text not in self.parts.problems:
            self.parts.problems.append(text)

    def passed_comment(self) -> None:
        """A comment match decoded for the walk: a condition every packet meets, left out (what
        :meth:`condition` would find wrong with its place is still found)."""
        if self.dead or self.decided():
            self.dead = True
        elif self.parts.actions or self.target is not None:
            self.problem('a statement before a condition')

    def undescribed(self, text: str) -> None:
        """A condition the model has no words for: it matches some packets."""
        self.condition(Match('nft', (Option(text),)), text)

    # -- the whole rule

    def decode(self) -> DecodedRule:
        try:
            expressions = expressions_of(self.rule.raw_expressions)  # not kept on the rule, which outlives the decode
        except Exception as error:  # noqa: BLE001 - malformed attributes: the rule is carried, not raised
            self.problem('malformed expressions: {}'.format(error))
            expressions = ()
        for expression in expressions:
            handler = _EXPRESSIONS.get(expression.name)
            if handler is None:
                self.problem('unknown expression {!r}'.format(expression.name))
                self.undescribed('{} (not decoded)'.format(expression.name))
                continue
            try:
                handler(self, shared_attributes(expression.data))
            except _DecodeError as error:
                self.problem('{}: {}'.format(expression.name, error))
                self.undescribed('{} (not decoded)'.format(expression.name))
            except Exception as error:  # noqa: BLE001 - malformed payloads of any kind
                self.problem('{}: malformed ({}: {})'.format(expression.name, type(error).__name__, error))
                self.undescribed('{} (not decoded)'.format(expression.name))
        comment = None
        try:
            comment = self.rule.comment
        except Exception:  # noqa: BLE001
            self.problem('malformed rule userdata')
        if comment is not None and not self.walk:
            self.parts.matches.append(Match('comment', (Option('--comment', (comment,)),)))
            self.parts.words.append('comment "{}"'.format(comment))
        if self.verdict_map is not None:
            try:
                return self.expand_verdict_map(*self.verdict_map)
            except (_DecodeError, ValueError, KeyError, IndexError, struct.error) as error:
                self.problem('verdict map: {}'.format(error))
                self.undescribed('verdict map (not decoded)')
        return self.build(tuple(_merge_matches(self.parts.matches)), self.target)

    def build(self, matches: Tuple[Match, ...], target: Optional[Target]) -> Rule:
        chain = self.rule.chain
        if self.walk:
            text = ''
        else:
            text = rule_text(chain, matches, target) if self.iptables else ' '.join(word for word in self.parts.words if word)
        return Rule(chain, matches, target, text=text, handle=self.rule.handle, actions=tuple(self.parts.actions), undecoded='; '.join(self.parts.problems))

    def expand_verdict_map(self, value: _Value, kernel_set: KernelSet, inverted: bool) -> DecodedRule:
        base = tuple(_merge_matches(self.parts.matches))
        rules: List[Rule] = []
        for keys, verdict in _map_entries(kernel_set, value):
            criterion = _criterion_for_keys(value, keys, negated=False)
            if criterion is None:
                self.problem('verdict map @{} keyed by {} (not decoded)'.format(kernel_set.name, value.field.name))
                return self.build(base + (Match('nft', (Option('{} vmap @{}'.format(value.field.name, kernel_set.name)),)),), None)
            rules.append(self.build(base + (criterion,), verdict))
        return tuple(rules)


def _merge_matches(matches: Sequence[Match]) -> List[Match]:
    """iptables' form: consecutive options of one port module are one ``-m tcp`` match, and a
    ``>=``/``<=`` pair on one port is one range."""
    merged: List[Match] = []
    for match in matches:
        previous = merged[-1] if merged else None
        if previous is not None and match.module in _PORT_MODULES and previous.module == match.module:
            options = list(previous.options)
            for option in match.options:
                if options and options[-1].name == option.name and not options[-1].negated and not option.negated:
                    joined = _intersect_port_ranges(options[-1].values, option.values)
                    if joined is not None:
                        options[-1] = Option(option.name, (joined,))
                        continue
                options.append(option)
            merged[-1] = Match(match.module, tuple(options))
        else:
            merged.append(match)
    return merged


def _intersect_port_ranges(first: Tuple[str, ...], second: Tuple[str, ...]) -> Optional[str]:
    if len(first) != 1 or len(second) != 1:
        return None
    try:
        low1, high1 = _port_bounds(first[0])
        low2, high2 = _port_bounds(second[0])
    except ValueError:
        return None
    low, high = max(low1, low2), min(high1, high2)
    return _ports_text(low, high) if low <= high else None


def _port_bounds(text: str) -> Tuple[int, int]:
    low, _, high = text.partition(':')
    return int(low), int(high or low)


# ----------------------------------------------------------------------------- comparisons -> matches


def _masked(value: _Value, data: bytes) -> Tuple[bytes, bytes]:
    """(data, mask) over the compared bytes."""
    mask = (value.mask or b'\xff' * len(data))[: len(data)]
    mask = mask + b'\xff' * (len(data) - len(mask))
    return bytes(d & m for d, m in zip(data, mask)), mask


def _address_option(value: _Value, data: bytes) -> str:
    field = value.field
    if value.mask is None and len(data) == field.size:  # one address (most of a Kubernetes node's): /32, /128
        shown = '{}.{}.{}.{}'.format(*data) if field.version == 4 and len(data) == 4 else str(_address(data, field.version))
        return '{}/{}'.format(shown, len(data) * 8)
    data, mask = _masked(value, data)
    pad = field.size - len(data)
    return _network_text(data + b'\0' * pad, mask + b'\0' * pad, field.version)


def _builtin(option: str, values: Tuple[str, ...], negated: bool = False) -> Match:
    return Match('', (Option(option, values, negated),))


def _describe(value: _Value, op: str, data: bytes) -> str:
    masked = ' & {}'.format(_hex(_int(value.mask, value.field.order))) if value.mask else ''
    return '{}{} {} {}'.format(value.field.name, masked, op, _hex(_int(data, value.field.order)))


def _cmp_match(decoder: _RuleDecoder, value: _Value, op: int, data: bytes) -> Tuple[Match, str]:
    """A comparison of a field with a constant, as a model match and nft-like text."""
    field = value.field
    symbol = _CMP_OPS[op] if 0 <= op < len(_CMP_OPS) else '?{}'.format(op)
    negated = op == 1
    text_op = '!= ' if negated else ''
    kind = field.kind
    if op > 1:
        return _ordered_match(decoder, value, op, data)
    if kind == 'address' and len(data) <= field.size:
        network = _address_option(value, data)
        shown = network[: -len('/32')] if network.endswith('/32') else network[: -len('/128')] if network.endswith('/128') else network
        return _builtin(field.option, (network,), negated), '{} {}{}'.format(field.name, text_op, shown)
    if kind == 'ifname' and value.mask is None:
        name = _interface_text(data)
        shown = name[:-1] + '*' if name.endswith('+') else name
        return _builtin(field.option, (name,), negated), '{} {}"{}"'.format(field.name, text_op, shown)
    if kind == 'ifindex' and value.mask is None and len(data) == 4:
        index = _int(data, field.order)
        name = 'lo' if index == 1 else '#{}'.format(index)
        return _builtin(field.option, (name,), negated), '{} {}{}'.format(field.name, text_op, 'lo' if index == 1 else index)
    if kind in ('l4proto',) and value.mask is None and len(data) == 1:
        protocol = _protocol_text(data[0])
        if not negated:
            decoder.l4 = protocol
        return _builtin('-p', (protocol,), negated), '{} {}{}'.format(field.name, text_op, protocol)
    if kind in ('nfproto', 'ethertype') and value.mask is None:
        names = _NFPROTOS if kind == 'nfproto' else _ETHERTYPES
        family = names.get(_int(data))
        if family is not None:
            if not negated:
                decoder.version = 4 if family == 'ipv4' else 6
            return _builtin('--nfproto', (family,), negated), '{} {}{}'.format(field.name, text_op, family)
    if kind == 'port' and value.mask is None and len(data) == 2:
        port = str(_int(data))
        if field.module:
            return Match(field.module, (Option(field.option, (port,), negated),)), '{} {}{}'.format(field.name, text_op, port)
    if kind in ('ctstate', 'ctstatus') and len(data) == 4:
        found = _ct_state_match(field, value.mask, _int(data, field.order), negated)
        if found is not None:
            return found
    if kind in ('mark', 'ctmark') and len(data) == 4:
        mask = _int(value.mask, field.order) if value.mask else None
        mark = _mark_text(_int(data, field.order), mask)
        module = 'mark' if kind == 'mark' else 'connmark'
        return Match(module, (Option('--mark', (mark,), negated),)), '{} {}{}'.format(field.name, text_op, mark)
    if kind == 'ctzone' and value.mask is None and len(data) == 2:
        zone = str(_int(data, field.order))
        return Match('ctzone', (Option('--zone', (zone,), negated),)), '{} {}{}'.format(field.name, text_op, zone)
    if kind == 'pkttype' and value.mask is None and len(data) == 1:
        name = _PACKET_TYPES.get(data[0], str(data[0]))
        return Match('pkttype', (Option('--pkt-type', (name,), negated),)), 'pkttype {}{}'.format(text_op, name)
    if kind == 'fib-oif' and field.flags & _FIB_SADDR and field.flags & _FIB_IIF:
        missing = (_int(data) == 0) != negated
        options = tuple(_rpfilter_options(field.flags)) + ((Option('--invert'),) if missing else ())
        return Match('rpfilter', options), '{} {}'.format(field.name.replace(' present', ''), 'missing' if missing else 'exists')
    if kind == 'fib-type' and len(data) == 4 and not field.flags & (_FIB_IIF | _FIB_OIF | _FIB_MARK) and value.mask is None:
        index = _int(data, field.order)
        if index < len(_ADDRESS_TYPES) and field.flags & (_FIB_SADDR | _FIB_DADDR) in (_FIB_SADDR, _FIB_DADDR):
            option = '--src-type' if field.flags & _FIB_SADDR else '--dst-type'
            name = _ADDRESS_TYPES[index]
            return Match('addrtype', (Option(option, (name,), negated),)), '{} {}{}'.format(field.name, text_op, name.lower())
    text = _describe(value, symbol, data)
    return Match('nft', (Option(text),)), text


def _rpfilter_options(flags: int) -> List[Option]:
    return [Option('--validmark')] if flags & _FIB_MARK else []


def _ct_state_match(field: _Field, mask_bytes: Optional[bytes], data: int, negated: bool) -> Optional[Tuple[Match, str]]:
    """``ct state established,related`` is ``(state & 0x6) != 0``; ``ct state new`` may also be ``state == 8``."""
    names = _NFT_CT_STATES if field.kind == 'ctstate' else _CT_STATUS
    option = '--ctstate' if field.kind == 'ctstate' else '--ctstatus'
    if mask_bytes is None:
        if field.kind != 'ctstate' or bin(data).count('1') != 1:
            return None  # ct status == value: all of those bits and none other
        states = _flag_names(data, names)
        inverted = negated
    else:
        mask = _int(mask_bytes, field.order)
        if data != 0:
            if data != mask or bin(mask).count('1') != 1:
                return None
            states, inverted = _flag_names(mask, names), negated
        else:
            states, inverted = _flag_names(mask, names), not negated  # (state & mask) == 0: none of them
    if not states:
        return None
    text = '{} {}{}'.format(field.name, '!= ' if inverted else '', states.lower())
    return Match('conntrack', (Option(option, (states,), inverted),)), text


def _ordered_match(decoder: _RuleDecoder, value: _Value, op: int, data: bytes) -> Tuple[Match, str]:
    """``<``, ``<=``, ``>``, ``>=`` on a big-endian field: a range."""
    field = value.field
    size = len(data)
    number = _int(data)
    top = (1 << (8 * size)) - 1
    low, high = {2: (0, number - 1), 3: (0, number), 4: (number + 1, top), 5: (number, top)}[op]
    text = '{} {} {}'.format(field.name, _CMP_OPS[op], number if field.kind == 'port' else _hex(number))
    if value.mask is None and field.order == 'big' and low <= high:
        match = _range_criterion(value, low.to_bytes(size, 'big'), high.to_bytes(size, 'big'), False)
        if match is not None:
            return match, text
    return Match('nft', (Option(text),)), text


def _range_criterion(value: _Value, low: bytes, high: bytes, negated: bool) -> Optional[Match]:
    field = value.field
    if field.kind == 'address' and len(low) == field.size:
        return _builtin(field.option, _range_networks(low, high, field.version), negated)
    if field.kind == 'port' and field.module and len(low) == 2:
        return Match(field.module, (Option(field.option, (_ports_text(_int(low), _int(high)),), negated),))
    return None


# ----------------------------------------------------------------------------- sets


def _criterion_for_keys(value: _Value, keys: Sequence[Tuple[bytes, Optional[bytes]]], negated: bool) -> Optional[Match]:
    """The match "the field is one of these keys" (a key with an end is a closed interval)."""
    field = value.field
    if value.mask is not None:
        return None
    if field.kind == 'address':
        networks: List[str] = []
        for key, end in keys:
            if len(key) != field.size:
                return None
            networks.extend(_range_networks(key, end, field.version) if end is not None else (_network_text(key, b'\xff' * field.size, field.version),))
        return _builtin(field.option, tuple(networks), negated)
    if any(end is not None for _, end in keys):
        if field.kind == 'port' and field.module:
            return Match(field.module, (Option(field.option, tuple(_ports_text(_int(k), _int(e or k)) for k, e in keys), negated),))
        return None
    return _exact_keys_criterion(field, [key for key, _ in keys], negated)


def _exact_keys_criterion(field: _Field, keys: List[bytes], negated: bool) -> Optional[Match]:
    kind = field.kind
    if kind == 'ifname':
        return _builtin(field.option, tuple(key.split(b'\0', 1)[0].decode('utf-8', 'replace') for key in keys), negated)
    if kind == 'ifindex':
        return _builtin(field.option, tuple('lo' if _int(key, field.order) == 1 else '#{}'.format(_int(key, field.order)) for key in keys), negated)
    if kind == 'l4proto':
        return _builtin('-p', tuple(_protocol_text(key[0]) for key in keys if key), negated)
    if kind in ('nfproto',):
        return _builtin('--nfproto', tuple(_NFPROTOS.get(key[0], str(key[0])) for key in keys if key), negated)
    if kind == 'port' and field.module:
        return Match(field.module, (Option(field.option, tuple(str(_int(key)) for key in keys), negated),))
    if kind == 'ctstate':
        states = _flag_names(sum({_int(key, field.order) for key in keys}), _NFT_CT_STATES)
        return Match('conntrack', (Option('--ctstate', (states,), negated),))
    if kind == 'ctzone':
        return Match('ctzone', (Option('--zone', tuple(str(_int(key, field.order)) for key in keys), negated),))
    if kind in ('mark', 'ctmark'):
        module = 'mark' if kind == 'mark' else 'connmark'
        return Match(module, (Option('--mark', tuple(_hex(_int(key, field.order)) for key in keys), negated),))
    return None


def _set_keys(kernel_set: KernelSet) -> List[Tuple[bytes, Optional[bytes]]]:
    """The keys of a set: single keys, or (start, end) for interval sets. The kernel lists an interval
    set as start elements and INTERVAL_END elements (the first key after the interval), in any order."""
    if not kernel_set.is_interval:
        return [(element.key, element.key_end) for element in kernel_set.elements if not element.flags & NFT_SET_ELEM_INTERVAL_END]
    return [(start, end) for start, end, _ in _intervals(kernel_set)]


def _intervals(kernel_set: KernelSet) -> List[Tuple[bytes, bytes, SetElement]]:
    ordered = sorted(kernel_set.elements, key=lambda element: (element.key, not element.flags & NFT_SET_ELEM_INTERVAL_END))
    found: List[Tuple[bytes, bytes, SetElement]] = []
    open_element: Optional[SetElement] = None
    for element in ordered:
        if element.key_end is not None:  # an element that carries its own end (concatenated ranges)
            found.append((element.key, element.key_end, element))
            open_element = None
            continue
        if element.flags & NFT_SET_ELEM_INTERVAL_END:
            if open_element is not None:
                end = (_int(element.key) - 1).to_bytes(len(element.key), 'big')
                found.append((open_element.key, end, open_element))
            open_element = None
        else:
            if open_element is not None:  # two starts: the first one is a single key
                found.append((open_element.key, open_element.key, open_element))
            open_element = element
    if open_element is not None:
        found.append((open_element.key, b'\xff' * len(open_element.key), open_element))
    return found


def _map_entries(kernel_set: KernelSet, value: _Value) -> List[Tuple[List[Tuple[bytes, Optional[bytes]]], Optional[Target]]]:
    entries: List[Tuple[List[Tuple[bytes, Optional[bytes]]], Optional[Target]]] = []
    if kernel_set.is_interval:
        for start, end, element in _intervals(kernel_set):
            entries.append(([(start, end)], _element_verdict(element)))
    else:
        for element in kernel_set.elements:
            entries.append(([(element.key, element.key_end)], _element_verdict(element)))
    return entries


def _element_verdict(element: SetElement) -> Optional[Target]:
    if element.data is None:
        raise _DecodeError('a verdict map element without a verdict')
    verdict = attributes(element.data).get(2)  # NFTA_DATA_VERDICT
    if verdict is None:
        raise _DecodeError('a verdict map element without a verdict')
    return _verdict_target(verdict)[0]


def _set_unusable(kernel_set: Optional[KernelSet], value: _Value) -> bool:
    if kernel_set is None or not kernel_set.complete or kernel_set.flags & NFT_SET_CONCAT:
        return True
    return kernel_set.key_length > ((value.length + 3) // 4) * 4  # a concatenation of several fields


# ----------------------------------------------------------------------------- expression handlers

Attrs = Dict[int, bytes]


def _reg(attrs: Attrs, kind: int, what: str) -> int:
    if kind not in attrs:
        raise _DecodeError('no {}'.format(what))
    return be32(attrs[kind])


def _data_value(payload: bytes) -> bytes:
    """The value of a nested NFTA_DATA_* attribute."""
    nested = attributes(payload)
    if 1 not in nested:
        raise _DecodeError('no NFTA_DATA_VALUE')
    return nested[1]


def _payload(decoder: _RuleDecoder, attrs: Attrs) -> None:
    if 5 in attrs:  # NFTA_PAYLOAD_SREG: a payload write (mangling)
        decoder.statement(Target('PAYLOAD', ('set',), kind=STATEMENT), 'payload set')
        return
    base, offset, length = be32(attrs[2]), be32(attrs[3]), be32(attrs[4])
    field = _payload_field(decoder, base, offset, length)
    decoder.load(_reg(attrs, 1, 'destination register'), _Value(field, length), length)


def _payload_field(decoder: _RuleDecoder, base: int, offset: int, length: int) -> _Field:
    if base == 1:
        version = decoder.version
        if version is None:  # an inet/netdev table and nft wrote no nfproto check: the offset tells
            version = 4 if offset in (9, 12, 16) and length <= 4 else 6 if offset in (6, 8, 24) else None
            if version is not None:
                family = 'ipv4' if version == 4 else 'ipv6'
                decoder.condition(_builtin('--nfproto', (family,)), 'meta nfproto {}'.format(family))
                decoder.version = version
        known = _NETWORK_FIELDS.get((version or 0, offset))
        if known is not None:
            name, option, size = known
            if option == '-p' and length == 1:
                return _Field('l4proto', name, '-p', size=1)
            if option != '-p' and length <= size:
                return _Field('address', name, option, size=size, version=version or 4)
    if base == 2 and length == 2 and offset in (0, 2):
        module = decoder.l4 if decoder.l4 in _PORT_MODULES else ''
        side = 'sport' if offset == 0 else 'dport'
        return _Field('port', '{} {}'.format(module or 'th', side), '--' + side, size=2, module=module)
    base_name = _PAYLOAD_BASES[base] if 0 <= base < len(_PAYLOAD_BASES) else '@base{}'.format(base)
    return _Field('generic', '{},{},{}'.format(base_name, offset * 8, length * 8))


def _meta(decoder: _RuleDecoder, attrs: Attrs) -> None:
    key = be32(attrs[2])
    if 3 in attrs:  # NFTA_META_SREG: meta set
        _meta_set(decoder, key, decoder.read(be32(attrs[3]), 'meta set'))
        return
    field = _META_FIELDS.get(key) or _Field('generic', 'meta {}'.format(_META_KEY_NAMES.get(key, key)), order=_NATIVE)
    decoder.load(_reg(attrs, 1, 'destination register'), _Value(field, field.size or 4), field.size or 4)


def _meta_set(decoder: _RuleDecoder, key: int, source: _Register) -> None:
    if key == 3:  # mark
        if isinstance(source, _Constant):
            mark = _int(source.data[:4], _NATIVE)
            decoder.statement(Target('MARK', ('--set-xmark', '{}/0xffffffff'.format(_hex(mark))), kind=STATEMENT), 'meta mark set {}'.format(_hex(mark)))
        else:
            decoder.statement(Target('MARK', ('--set-xmark', 'from {}'.format(source.field.name)), kind=STATEMENT),
                              'meta mark set {}'.format(source.field.name))
        return
    name = _META_KEY_NAMES.get(key) or (_META_FIELDS[key].name if key in _META_FIELDS else str(key))
    decoder.statement(Target('META', ('{} set'.format(name),), kind=STATEMENT), 'meta {} set'.format(name))


def _ct(decoder: _RuleDecoder, attrs: Attrs) -> None:
    key = be32(attrs[2])
    if 4 in attrs:  # NFTA_CT_SREG: ct set
        source = decoder.read(be32(attrs[4]), 'ct set')
        number = _int(source.data, _NATIVE) if isinstance(source, _Constant) else None
        if key == 3:
            shown = '{}/0xffffffff'.format(_hex(number)) if number is not None else 'from {}'.format(getattr(source, 'field').name)
            decoder.statement(Target('CONNMARK', ('--set-xmark', shown), kind=STATEMENT), 'ct mark set {}'.format(shown.split('/')[0]))
        elif key == 17:
            shown = str(number) if number is not None else 'from {}'.format(getattr(source, 'field').name)
            decoder.statement(Target('CT', ('--zone', shown), kind=STATEMENT), 'ct zone set {}'.format(shown))
        else:
            decoder.statement(Target('CT', ('ct {} set'.format(_CT_KEY_NAMES.get(key, key)),), kind=STATEMENT), 'ct {} set'.format(key))
        return
    field = _CT_FIELDS.get(key) or _Field('generic', 'ct {}'.format(_CT_KEY_NAMES.get(key, key)))
    direction = attrs.get(3)
    if direction is not None:
        field = _Field('generic', '{} {}'.format(field.name, 'original' if direction[:1] == b'\0' else 'reply'))
    length = field.size or _CT_KEY_LENGTHS.get(key, 4)
    decoder.load(_reg(attrs, 1, 'destination register'), _Value(field, length), length)


def _fib(decoder: _RuleDecoder, attrs: Attrs) -> None:
    result, flags = be32(attrs[2]), be32(attrs[3])
    name = _fib_name(flags, _FIB_RESULTS.get(result, str(result)))
    kind = {1: 'fib-oif', 3: 'fib-type'}.get(result, 'generic')
    field = _Field(kind, name, size=4, order=_NATIVE, flags=flags)
    length = 16 if result == 2 else 4
    decoder.load(_reg(attrs, 1, 'destination register'), _Value(field, length), length)


def _socket(decoder: _RuleDecoder, attrs: Attrs) -> None:
    key = be32(attrs[1])
    names = {0: 'transparent', 1: 'mark', 2: 'wildcard', 3: 'cgroupv2'}
    decoder.load(_reg(attrs, 2, 'destination register'), _Value(_Field('generic', 'socket {}'.format(names.get(key, key))), 4), 4)


def _generic_load(name: str, dreg: int) -> Callable[[_RuleDecoder, Attrs], None]:
    def load(decoder: _RuleDecoder, attrs: Attrs) -> None:
        decoder.load(_reg(attrs, dreg, 'destination register'), _Value(_Field('generic', name), 16), 16)
        decoder.problem('{} (not decoded)'.format(name))

    return load


def _bitwise(decoder: _RuleDecoder, attrs: Attrs) -> None:
    source = decoder.read_value(_reg(attrs, 1, 'source register'), 'bitwise')
    length = be32(attrs[3])
    op = be32(attrs[6]) if 6 in attrs else 0
    if op != 0:
        raise _DecodeError('shift of {}'.format(source.field.name))
    mask, xor = _data_value(attrs[4]), _data_value(attrs[5])
    if any(xor):
        raise _DecodeError('xor on {}'.format(source.field.name))
    if source.mask is not None:
        mask = bytes(a & b for a, b in zip(mask, source.mask))
    decoder.load(_reg(attrs, 2, 'destination register'), _Value(source.field, length, mask), length)


def _byteorder(decoder: _RuleDecoder, attrs: Attrs) -> None:
    source = decoder.read_value(_reg(attrs, 1, 'source register'), 'byteorder')
    length = be32(attrs[4])
    field = _Field('generic', 'byteorder({})'.format(source.field.name))
    decoder.load(_reg(attrs, 2, 'destination register'), _Value(field, length), length)


def _cmp(decoder: _RuleDecoder, attrs: Attrs) -> None:
    value = decoder.read_value(_reg(attrs, 1, 'source register'), 'cmp')
    op, data = be32(attrs[2]), _data_value(attrs[3])
    match, text = _cmp_match(decoder, value, op, data)
    if value.field.kind == 'generic' and value.field.name.startswith('byteorder('):
        decoder.problem('a comparison after a byteorder conversion')
    decoder.condition(match, text)


def _range(decoder: _RuleDecoder, attrs: Attrs) -> None:
    value = decoder.read_value(_reg(attrs, 1, 'source register'), 'range')
    op = be32(attrs[2])
    low, high = _data_value(attrs[3]), _data_value(attrs[4])
    text = '{} {}{}-{}'.format(value.field.name, '!= ' if op else '', _hex(_int(low)), _hex(_int(high)))
    match = _range_criterion(value, low, high, op == 1) if value.mask is None else None
    decoder.condition(match or Match('nft', (Option(text),)), text)


def _lookup(decoder: _RuleDecoder, attrs: Attrs) -> None:
    name = string(attrs.get(1, b''))
    value = decoder.read_value(_reg(attrs, 2, 'source register'), 'lookup')
    inverted = bool(be32(attrs[5]) & 1) if 5 in attrs else False
    kernel_set = decoder.sets.get(name)
    shown = '@{}'.format(name) if kernel_set is None or not kernel_set.flags & 1 else '{{ @{} }}'.format(name)
    if 3 in attrs:  # a map: the lookup writes the element's data
        dreg = be32(attrs[3])
        if dreg == 0:
            _verdict_map(decoder, value, kernel_set, name)
            return
        if kernel_set is None or kernel_set.data_type == NFT_DATA_VERDICT:
            raise _DecodeError('map @{} into register {}'.format(name, dreg))
        decoder.condition(Match('nft', (Option('{} in map @{}'.format(value.field.name, name)),)), '{} map @{}'.format(value.field.name, name))
        length = kernel_set.data_length or 4
        decoder.load(dreg, _Value(_Field('generic', '{} map @{}'.format(value.field.name, name)), length), length)
        return
    text = '{} {}{}'.format(value.field.name, '!= ' if inverted else '', shown)
    if _set_unusable(kernel_set, value):
        decoder.undescribed('lookup @{} (contents not known)'.format(name))
        return
    assert kernel_set is not None
    criterion = _criterion_for_keys(value, _set_keys(kernel_set), inverted)
    if criterion is None:
        decoder.undescribed('{} {}@{}'.format(value.field.name, '!= ' if inverted else '', name))
        return
    decoder.condition(criterion, text)


def _verdict_map(decoder: _RuleDecoder, value: _Value, kernel_set: Optional[KernelSet], name: str) -> None:
    text = '{} vmap @{}'.format(value.field.name, name)
    if _set_unusable(kernel_set, value) or kernel_set is None or kernel_set.data_type != NFT_DATA_VERDICT:
        decoder.problem('verdict map @{} whose contents are not known'.format(name))
        decoder.undescribed('lookup @{} (contents not known)'.format(name))
        return
    decoder.parts.words.append(text)
    decoder.verdict_map = (value, kernel_set, False)


def _verdict_target(payload: bytes) -> Tuple[Optional[Target], str]:
    verdict = attributes(payload)
    code = be32_signed(verdict[1])
    if code in (NFT_JUMP, NFT_GOTO):
        chain = string(verdict.get(2, b''))
        goto = code == NFT_GOTO
        return Target(chain, goto=goto, kind=JUMP), '{} {}'.format('goto' if goto else 'jump', chain)
    if code not in _VERDICTS:
        raise _DecodeError('verdict code {}'.format(code))
    name = _VERDICTS[code]
    if name is None:
        return None, 'continue' if code == NFT_CONTINUE else 'break'
    return Target(name, kind=STATEMENT), _VERDICT_TEXT[name]


def _immediate(decoder: _RuleDecoder, attrs: Attrs) -> None:
    dreg = _reg(attrs, 1, 'destination register')
    nested = attributes(attrs[2])
    if dreg == 0:
        if 2 not in nested:
            raise _DecodeError('a verdict register load without a verdict')
        target, text = _verdict_target(nested[2])
        if target is None:
            if text == 'break':
                decoder.dead = True
            return
        decoder.statement(target, text)
        return
    if 1 not in nested:
        raise _DecodeError('an immediate without a value')
    decoder.load(dreg, _Constant(nested[1]), len(nested[1]))


def _ignore(decoder: _RuleDecoder, attrs: Attrs) -> None:
    """``counter``, ``last``: no effect on the verdict."""


def _objref(decoder: _RuleDecoder, attrs: Attrs) -> None:
    kinds = {1: 'counter', 2: 'quota', 3: 'ct helper', 4: 'limit', 5: 'connlimit', 7: 'ct timeout', 8: 'secmark', 9: 'ct expectation',
             10: 'synproxy'}
    if 1 not in attrs:
        decoder.undescribed('objref map (not decoded)')
        decoder.problem('an object map (not decoded)')
        return
    kind = kinds.get(be32(attrs[1]), str(be32(attrs[1])))
    name = string(attrs.get(2, b''))
    if kind == 'counter':
        return
    if kind in ('quota', 'limit', 'connlimit'):
        decoder.undescribed('{} name "{}"'.format(kind, name))
    elif kind == 'synproxy':
        decoder.statement(Target('SYNPROXY', kind=STATEMENT), 'synproxy name "{}"'.format(name))
    else:
        decoder.statement(Target('CT', ('--{}'.format(kind.split()[-1]), name), kind=STATEMENT), '{} set "{}"'.format(kind, name))


def _limit(decoder: _RuleDecoder, attrs: Attrs) -> None:
    rate = int.from_bytes(attrs[1], 'big')
    unit = int.from_bytes(attrs[2], 'big')
    burst = be32(attrs[3]) if 3 in attrs else 0
    kind = be32(attrs[4]) if 4 in attrs else 0
    inverted = bool(be32(attrs[5]) & 1) if 5 in attrs else False
    unit_name = _LIMIT_UNITS.get(unit, '{}s'.format(unit))
    if kind != 0:
        text = 'limit rate {}{} {} bytes/{}'.format('over ' if inverted else '', rate, '', unit_name)
        decoder.undescribed(text)
        return
    options = [Option('--limit', ('{}/{}'.format(rate, unit_name),), inverted)]
    if burst not in (0, 5):
        options.append(Option('--limit-burst', (str(burst),)))
    decoder.condition(Match('limit', tuple(options)), 'limit rate {}{}/{}'.format('over ' if inverted else '', rate, unit_name))


def _quota(decoder: _RuleDecoder, attrs: Attrs) -> None:
    inverted = bool(be32(attrs[2]) & 1) if 2 in attrs else False
    decoder.undescribed('quota {}{} bytes'.format('over ' if inverted else '', int.from_bytes(attrs.get(1, b''), 'big')))


def _connlimit(decoder: _RuleDecoder, attrs: Attrs) -> None:
    inverted = bool(be32(attrs[2]) & 1) if 2 in attrs else False
    decoder.undescribed('ct count {}{}'.format('over ' if inverted else '', be32(attrs[1])))


def _numgen(decoder: _RuleDecoder, attrs: Attrs) -> None:
    decoder.load(_reg(attrs, 1, 'destination register'), _Value(_Field('generic', 'numgen'), 4), 4)


def _log(decoder: _RuleDecoder, attrs: Attrs) -> None:
    prefix = string(attrs[2]) if 2 in attrs else ''
    if 1 in attrs:  # a group: nflog
        args: List[str] = []
        if prefix:
            args += ['--nflog-prefix', prefix]
        group = int.from_bytes(attrs[1], 'big')
        if group:
            args += ['--nflog-group', str(group)]
        if 3 in attrs and be32(attrs[3]):
            args += ['--nflog-size', str(be32(attrs[3]))]
        if 4 in attrs and int.from_bytes(attrs[4], 'big') > 1:
            args += ['--nflog-threshold', str(int.from_bytes(attrs[4], 'big'))]
        decoder.statement(Target('NFLOG', tuple(args), kind=STATEMENT), 'log group {}'.format(group))
        return
    args = ['--log-prefix', prefix] if prefix else []
    level = be32(attrs[5]) if 5 in attrs else 4
    if level != 4:
        args += ['--log-level', str(level)]
    decoder.statement(Target('LOG', tuple(args), kind=STATEMENT), 'log' + (' prefix "{}"'.format(prefix) if prefix else ''))


_ICMP_REJECT_CODES: Mapping[int, str] = {0: 'icmp-net-unreachable', 1: 'icmp-host-unreachable', 2: 'icmp-proto-unreachable',
                                          3: 'icmp-port-unreachable', 9: 'icmp-net-prohibited', 10: 'icmp-host-prohibited',
                                          13: 'icmp-admin-prohibited'}
_ICMP6_REJECT_CODES: Mapping[int, str] = {0: 'icmp6-no-route', 1: 'icmp6-adm-prohibited', 3: 'icmp6-addr-unreachable',
                                           4: 'icmp6-port-unreachable', 5: 'icmp6-policy-fail', 6: 'icmp6-reject-route'}
_ICMPX_REJECT_CODES: Mapping[int, str] = {0: 'icmpx-no-route', 1: 'icmpx-port-unreachable', 2: 'icmpx-host-unreachable',
                                           3: 'icmpx-admin-prohibited'}


def _reject(decoder: _RuleDecoder, attrs: Attrs) -> None:
    kind = be32(attrs[1]) if 1 in attrs else 0
    code = attrs[2][0] if 2 in attrs and attrs[2] else 0
    if kind == 1:
        with_ = 'tcp-reset'
    elif kind == 2:
        with_ = _ICMPX_REJECT_CODES.get(code, 'icmpx-{}'.format(code))
    else:
        codes = _ICMP6_REJECT_CODES if decoder.version == 6 else _ICMP_REJECT_CODES
        with_ = codes.get(code, 'icmp-code-{}'.format(code))
    decoder.statement(Target('REJECT', ('--reject-with', with_), kind=STATEMENT), 'reject with {}'.format(with_))


def _queue(decoder: _RuleDecoder, attrs: Attrs) -> None:
    number = int.from_bytes(attrs.get(1, b'\0\0'), 'big')
    total = int.from_bytes(attrs.get(2, b'\0\1'), 'big')
    flags = int.from_bytes(attrs.get(3, b'\0\0'), 'big')
    if 4 in attrs:
        args: Tuple[str, ...] = ('--queue-num', 'from register')
    elif total > 1:
        args = ('--queue-balance', '{}:{}'.format(number, number + total - 1))
    else:
        args = ('--queue-num', str(number))
    if flags & 1:
        args += ('--queue-bypass',)
    decoder.statement(Target('NFQUEUE', args, kind=STATEMENT), 'queue num {}'.format(number))


def _register_text(decoder: _RuleDecoder, attrs: Attrs, kind: int, version: int) -> str:
    if kind not in attrs:
        return ''
    value = decoder.read(be32(attrs[kind]), 'nat')
    if not isinstance(value, _Constant):
        return value.field.name
    if version and len(value.data) in (4, 16):
        return str(_address(value.data, 4 if len(value.data) == 4 else 6))
    return str(_int(value.data[:2]))


def _nat_destination(decoder: _RuleDecoder, attrs: Attrs, address: Tuple[int, int], ports: Tuple[int, int], version: int) -> str:
    low, high = (_register_text(decoder, attrs, kind, version) for kind in address)
    port_low, port_high = (_register_text(decoder, attrs, kind, 0) for kind in ports)
    text = low + ('-' + high if high and high != low else '')
    if version == 6 and text and port_low:
        text = '[{}]'.format(text)
    if port_low:
        text += ':' + port_low + ('-' + port_high if port_high and port_high != port_low else '')
    return text


def _nat(decoder: _RuleDecoder, attrs: Attrs) -> None:
    kind = be32(attrs[1])
    family = be32(attrs[2]) if 2 in attrs else 2
    name = 'DNAT' if kind == 1 else 'SNAT'
    destination = _nat_destination(decoder, attrs, (3, 4), (5, 6), 6 if family == 10 else 4)
    option = '--to-destination' if kind == 1 else '--to-source'
    args = (option, destination) if destination else ()
    decoder.statement(Target(name, args, kind=STATEMENT), '{} to {}'.format(name.lower(), destination))


def _masq_or_redirect(name: str, ports: Tuple[int, int]) -> Callable[[_RuleDecoder, Attrs], None]:
    def handle(decoder: _RuleDecoder, attrs: Attrs) -> None:
        low, high = (_register_text(decoder, attrs, kind, 0) for kind in ports)
        args = ('--to-ports', low + ('-' + high if high and high != low else '')) if low else ()
        decoder.statement(Target(name, args, kind=STATEMENT), name.lower() + (' to :{}'.format(args[1]) if args else ''))

    return handle


def _statement(name: str, text: str) -> Callable[[_RuleDecoder, Attrs], None]:
    def handle(decoder: _RuleDecoder, attrs: Attrs) -> None:
        decoder.statement(Target(name, kind=STATEMENT), text)

    return handle


def _notrack(decoder: _RuleDecoder, attrs: Attrs) -> None:
    if decoder.iptables:  # iptables-nft writes "-j CT --notrack" as a native notrack
        decoder.statement(Target('CT', ('--notrack',), kind=STATEMENT), 'notrack')
    else:
        decoder.statement(Target('NOTRACK', kind=STATEMENT), 'notrack')


def _dynset(decoder: _RuleDecoder, attrs: Attrs) -> None:
    name = string(attrs.get(1, b''))
    ops = {0: 'add', 1: 'update', 2: 'delete'}
    op = ops.get(be32(attrs[3]) if 3 in attrs else 0, 'add')
    # "update @set { key limit rate over ... }" is a condition too: the expression can end the rule.
    if 7 in attrs or 10 in attrs:
        decoder.undescribed('{} @{} with a per-element statement'.format(op, name))
    decoder.statement(Target('SET', ('--{}-set'.format(op), name), kind=STATEMENT), '{} @{}'.format(op, name))


def _compat_match(decoder: _RuleDecoder, attrs: Attrs) -> None:
    name = string(attrs.get(1, b''))
    revision = be32(attrs[2]) if 2 in attrs else 0
    info = attrs.get(3, b'')
    if name == 'comment' and decoder.walk:
        decoder.passed_comment()
        return
    decoder_function = _COMPAT_MATCHES.get(name)
    if decoder_function is None:
        decoder.condition(Match(name, ()), 'xt match "{}"'.format(name))
        return
    try:
        match = decoder_function(info, revision, decoder.version or 4)
    except (struct.error, IndexError, ValueError, KeyError) as error:
        raise _DecodeError('xt match {} revision {}: {}'.format(name, revision, error)) from None
    decoder.condition(match, 'xt match "{}"'.format(name))


def _compat_target(decoder: _RuleDecoder, attrs: Attrs) -> None:
    name = string(attrs.get(1, b''))
    revision = be32(attrs[2]) if 2 in attrs else 0
    info = attrs.get(3, b'')
    decoder_function = _COMPAT_TARGETS.get(name)
    try:
        args = decoder_function(info, revision, decoder.version or 4) if decoder_function is not None else ()
    except (struct.error, IndexError, ValueError, KeyError) as error:
        raise _DecodeError('xt target {} revision {}: {}'.format(name, revision, error)) from None
    decoder.statement(Target(name, tuple(args), kind=STATEMENT), 'xt target "{}"'.format(name))


_EXPRESSIONS: Mapping[str, Callable[[_RuleDecoder, Attrs], None]] = MappingProxyType({
    'payload': _payload,
    'meta': _meta,
    'ct': _ct,
    'fib': _fib,
    'socket': _socket,
    'rt': _generic_load('rt', 1),
    'exthdr': _generic_load('exthdr', 1),
    'osf': _generic_load('osf', 1),
    'hash': _generic_load('hash', 2),
    'numgen': _numgen,
    'bitwise': _bitwise,
    'byteorder': _byteorder,
    'cmp': _cmp,
    'range': _range,
    'lookup': _lookup,
    'immediate': _immediate,
    'counter': _ignore,
    'last': _ignore,
    'objref': _objref,
    'limit': _limit,
    'quota': _quota,
    'connlimit': _connlimit,
    'log': _log,
    'reject': _reject,
    'queue': _queue,
    'nat': _nat,
    'masq': _masq_or_redirect('MASQUERADE', (2, 3)),
    'redir': _masq_or_redirect('REDIRECT', (1, 2)),
    'tproxy': _statement('TPROXY', 'tproxy'),
    'synproxy': _statement('SYNPROXY', 'synproxy'),
    'notrack': _notrack,
    'dup': _statement('DUP', 'dup'),
    'fwd': _statement('DUP-FWD', 'fwd'),
    'dynset': _dynset,
    'match': _compat_match,
    'target': _compat_target,
})


# ----------------------------------------------------------------------------- compat (xtables) matches


def _c_string(data: bytes) -> str:
    return data.split(b'\0', 1)[0].decode('utf-8', 'replace')


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from('=H', data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from('=I', data, offset)[0])


def _u64(data: bytes, offset: int) -> int:
    return int(struct.unpack_from('=Q', data, offset)[0])


def _m_comment(info: bytes, revision: int, version: int) -> Match:
    return Match('comment', (Option('--comment', (_c_string(info[:256]),)),))


# xt_conntrack_mtinfo1..3: eight 16-byte addresses, expires (2 x u32), then:
_CONNTRACK_FLAGS_OFFSET = 128 + 8 + 2 + 8  # l4proto u16, four ports u16 -> match_flags, invert_flags
_CT_MATCH_STATE, _CT_MATCH_STATUS, _CT_MATCH_STATE_ALIAS = 1, 1 << 6, 1 << 13


def _m_conntrack(info: bytes, revision: int, version: int) -> Match:
    match_flags, invert_flags = struct.unpack_from('=HH', info, _CONNTRACK_FLAGS_OFFSET)
    if revision == 1:
        state_mask, status_mask = struct.unpack_from('=BB', info, _CONNTRACK_FLAGS_OFFSET + 4)
    else:
        state_mask, status_mask = struct.unpack_from('=HH', info, _CONNTRACK_FLAGS_OFFSET + 4)
    options: List[Option] = []
    alias = bool(match_flags & _CT_MATCH_STATE_ALIAS)
    if match_flags & _CT_MATCH_STATE:
        options.append(Option('--state' if alias else '--ctstate', (_flag_names(state_mask, _XT_CONNTRACK_STATES),),
                              bool(invert_flags & _CT_MATCH_STATE)))
    if match_flags & _CT_MATCH_STATUS:
        options.append(Option('--ctstatus', (_flag_names(status_mask, _CT_STATUS) or 'NONE',), bool(invert_flags & _CT_MATCH_STATUS)))
    other = match_flags & ~(_CT_MATCH_STATE | _CT_MATCH_STATUS | _CT_MATCH_STATE_ALIAS)
    if other:
        options.append(Option('--other-criteria', (_hex(other),)))  # addresses, ports, expiry, direction
    return Match('state' if alias else 'conntrack', tuple(options))


def _m_state(info: bytes, revision: int, version: int) -> Match:
    return Match('state', (Option('--state', (_flag_names(_u32(info, 0), _XT_STATE_STATES),)),))


def _m_mark(module: str) -> Callable[[bytes, int, int], Match]:
    def decode(info: bytes, revision: int, version: int) -> Match:
        if revision == 0:  # xt_mark_info: unsigned long mark, mask; u8 invert
            mark, mask, invert = struct.unpack_from('=QQB', info, 0)
        else:
            mark, mask, invert = struct.unpack_from('=IIB', info, 0)
        return Match(module, (Option('--mark', (_mark_text(mark, mask),), bool(invert)),))

    return decode


def _address_types(mask: int) -> str:
    return ','.join(name for bit, name in enumerate(_ADDRESS_TYPES) if mask & (1 << bit))


def _m_addrtype(info: bytes, revision: int, version: int) -> Match:
    if revision == 0:
        source, dest, invert_source, invert_dest = struct.unpack_from('=HHII', info, 0)
        flags = (1 if invert_source else 0) | (2 if invert_dest else 0)
    else:
        source, dest, flags = struct.unpack_from('=HHI', info, 0)
    options: List[Option] = []
    if source:
        options.append(Option('--src-type', (_address_types(source),), bool(flags & 1)))
    if dest:
        options.append(Option('--dst-type', (_address_types(dest),), bool(flags & 2)))
    if flags & 4:
        options.append(Option('--limit-iface-in'))
    if flags & 8:
        options.append(Option('--limit-iface-out'))
    return Match('addrtype', tuple(options))


_LIMIT_SCALE = 10000
_RATE_UNITS = (('day', 86400), ('hour', 3600), ('min', 60), ('sec', 1))


def _rate_text(average: int) -> str:
    """xt_rateinfo's average period (seconds * 10000 per packet) as N/unit: the smallest unit in
    which at least one packet is allowed."""
    if average == 0:
        return '0/sec'
    for name, seconds in reversed(_RATE_UNITS):
        if seconds * _LIMIT_SCALE >= average:
            return '{}/{}'.format(seconds * _LIMIT_SCALE // average, name)
    return '{}/day'.format(_RATE_UNITS[0][1] * _LIMIT_SCALE // average)


def _m_limit(info: bytes, revision: int, version: int) -> Match:
    average, burst = struct.unpack_from('=II', info, 0)
    options = [Option('--limit', (_rate_text(average),))]
    if burst != 5:
        options.append(Option('--limit-burst', (str(burst),)))
    return Match('limit', tuple(options))


def _m_multiport(info: bytes, revision: int, version: int) -> Match:
    flags, count = info[0], info[1]
    ports = struct.unpack_from('=15H', info, 2)[:count]
    texts: List[str] = []
    if revision >= 1:
        pflags = info[32 : 32 + 15]
        invert = bool(info[47])
        index = 0
        while index < count:
            if pflags[index] and index + 1 < count:
                texts.append('{}:{}'.format(ports[index], ports[index + 1]))
                index += 2
            else:
                texts.append(str(ports[index]))
                index += 1
    else:
        invert = False
        texts = [str(port) for port in ports]
    option = {0: '--sports', 1: '--dports', 2: '--ports'}.get(flags, '--ports')
    return Match('multiport', (Option(option, (','.join(texts),), invert),))


def _port_option(name: str, ports: Tuple[int, int], inverted: bool) -> List[Option]:
    if ports == (0, 0xFFFF):
        return []
    return [Option(name, (_ports_text(*ports),), inverted)]


_TCP_FLAGS = (('FIN', 1), ('SYN', 2), ('RST', 4), ('PSH', 8), ('ACK', 16), ('URG', 32))


def _tcp_flags_text(value: int) -> str:
    if value == 0x3F:
        return 'ALL'
    return ','.join(name for name, bit in _TCP_FLAGS if value & bit) or 'NONE'


def _m_tcp(info: bytes, revision: int, version: int) -> Match:
    sport_low, sport_high, dport_low, dport_high, option, flag_mask, flag_cmp, inverted = struct.unpack_from('=4H4B', info, 0)
    options = _port_option('--sport', (sport_low, sport_high), bool(inverted & 1))
    options += _port_option('--dport', (dport_low, dport_high), bool(inverted & 2))
    if option:
        options.append(Option('--tcp-option', (str(option),), bool(inverted & 8)))
    if flag_mask:
        options.append(Option('--tcp-flags', (_tcp_flags_text(flag_mask), _tcp_flags_text(flag_cmp)), bool(inverted & 4)))
    return Match('tcp', tuple(options))


def _m_udp(info: bytes, revision: int, version: int) -> Match:
    sport_low, sport_high, dport_low, dport_high, inverted = struct.unpack_from('=4HB', info, 0)
    options = _port_option('--sport', (sport_low, sport_high), bool(inverted & 1))
    options += _port_option('--dport', (dport_low, dport_high), bool(inverted & 2))
    return Match('udp', tuple(options))


def _m_rpfilter(info: bytes, revision: int, version: int) -> Match:
    flags = info[0]
    names = ((1, '--loose'), (2, '--validmark'), (4, '--accept-local'), (8, '--invert'))
    return Match('rpfilter', tuple(Option(name) for bit, name in names if flags & bit))


def _m_physdev(info: bytes, revision: int, version: int) -> Match:
    physindev, physoutdev = _c_string(info[0:16]), _c_string(info[32:48])
    invert, bitmask = info[64], info[65]
    options: List[Option] = []
    if bitmask & 1:
        options.append(Option('--physdev-in', (physindev,), bool(invert & 1)))
    if bitmask & 2:
        options.append(Option('--physdev-out', (physoutdev,), bool(invert & 2)))
    for bit, name in ((8, '--physdev-is-in'), (16, '--physdev-is-out'), (4, '--physdev-is-bridged')):
        if bitmask & bit:
            options.append(Option(name, (), bool(invert & bit)))
    return Match('physdev', tuple(options))


def _m_set(info: bytes, revision: int, version: int) -> Match:
    """ipset: the kernel holds the set's index, not its name."""
    more: Tuple[Option, ...] = ()
    if revision == 0:  # xt_set_info_v0: index u16, u32 flags[]: IPSET_SRC 1, IPSET_DST 2, IPSET_MATCH_INV 4
        index = _u16(info, 0)
        flags = struct.unpack_from('=6I', info, 4) if len(info) >= 28 else ()
        dimensions = tuple(itertools.takewhile(bool, flags))  # the kernel stops at the first zero
        directions = ','.join('src' if flag & 1 else 'dst' for flag in dimensions) or 'src'
        inverted = bool(dimensions and dimensions[0] & 4)
    else:
        index, dimension, flags_byte = struct.unpack_from('=HBB', info, 0)
        directions = ','.join('src' if flags_byte & (1 << bit) else 'dst' for bit in range(1, dimension + 1)) or 'src'
        inverted = bool(flags_byte & 1)  # IPSET_INV_MATCH
        if revision >= 3 and len(info) >= 44:
            more = _set_match_options(info, revision)
        elif flags_byte & 0x80:  # revisions 1 and 2: IPSET_RETURN_NOMATCH in the same byte
            more = (Option('--return-nomatch'),)
    return Match('set', (Option('--match-set', ('#{}'.format(index), directions), inverted),) + more)


# ipset's counter comparisons (IPSET_COUNTER_*): the option and whether it is negated.
_SET_COUNTER_OPS: Mapping[int, Tuple[str, bool]] = MappingProxyType({1: ('eq', False), 2: ('eq', True), 3: ('lt', False), 4: ('gt', False)})
# Flags of the match (IPSET_FLAG_*) that are options: skip counter updates, return nomatch.
_SET_MATCH_FLAGS = ((1 << 3, Option('--update-counters', (), True)), (1 << 4, Option('--update-subcounters', (), True)),
                    (1 << 7, Option('--return-nomatch')))


def _set_match_options(info: bytes, revision: int) -> Tuple[Option, ...]:
    """xt_set_info_match_v3/v4: the packets and bytes counter comparisons, then the flags. v3 puts
    each comparison's operator before its value, v4 after it (both 16 bytes from offset 8)."""
    found: List[Option] = []
    for name, start in (('packets', 8), ('bytes', 24)):
        op, value = (info[start + 8], _u64(info, start)) if revision >= 4 else (info[start], _u64(info, start + 8))
        if op in _SET_COUNTER_OPS:
            comparison, negated = _SET_COUNTER_OPS[op]
            found.append(Option('--{}-{}'.format(name, comparison), (str(value),), negated))
    flags = _u32(info, 40)
    found.extend(option for bit, option in _SET_MATCH_FLAGS if flags & bit)
    return tuple(found)


def _m_pkttype(info: bytes, revision: int, version: int) -> Match:
    kind, invert = struct.unpack_from('=ii', info, 0)
    return Match('pkttype', (Option('--pkt-type', (_PACKET_TYPES.get(kind, str(kind)),), bool(invert)),))


_COMPAT_MATCHES: Mapping[str, Callable[[bytes, int, int], Match]] = MappingProxyType({
    'comment': _m_comment,
    'conntrack': _m_conntrack,
    'state': _m_state,
    'mark': _m_mark('mark'),
    'connmark': _m_mark('connmark'),
    'addrtype': _m_addrtype,
    'limit': _m_limit,
    'multiport': _m_multiport,
    'tcp': _m_tcp,
    'udp': _m_udp,
    'rpfilter': _m_rpfilter,
    'physdev': _m_physdev,
    'set': _m_set,
    'pkttype': _m_pkttype,
})


# ----------------------------------------------------------------------------- compat (xtables) targets

_IPT_REJECT = ('icmp-net-unreachable', 'icmp-host-unreachable', 'icmp-proto-unreachable', 'icmp-port-unreachable',
               'icmp-echo-reply', 'icmp-net-prohibited', 'icmp-host-prohibited', 'tcp-reset', 'icmp-admin-prohibited')
_IP6T_REJECT = ('icmp6-no-route', 'icmp6-adm-prohibited', 'icmp6-not-neighbour', 'icmp6-addr-unreachable', 'icmp6-port-unreachable',
                'echo-reply', 'tcp-reset', 'icmp6-policy-fail', 'icmp6-reject-route')


def _t_reject(info: bytes, revision: int, version: int) -> List[str]:
    names = _IP6T_REJECT if version == 6 else _IPT_REJECT
    code = _u32(info, 0)
    return ['--reject-with', names[code] if code < len(names) else str(code)]


def _t_log(info: bytes, revision: int, version: int) -> List[str]:
    level, flags = info[0], info[1]
    prefix = _c_string(info[2:32])
    args = ['--log-prefix', prefix] if prefix else []
    if level != 4:
        args += ['--log-level', str(level)]
    for bit, name in ((1, '--log-tcp-sequence'), (2, '--log-tcp-options'), (4, '--log-ip-options'), (8, '--log-uid'),
                      (32, '--log-macdecode')):
        if flags & bit:
            args.append(name)
    return args


def _t_nflog(info: bytes, revision: int, version: int) -> List[str]:
    length, group, threshold, flags = struct.unpack_from('=IHHH', info, 0)
    prefix = _c_string(info[12:76])
    args = ['--nflog-prefix', prefix] if prefix else []
    if group:
        args += ['--nflog-group', str(group)]
    if flags & 1:
        args += ['--nflog-size', str(length)]
    if threshold > 1:
        args += ['--nflog-threshold', str(threshold)]
    return args


def _t_mark(info: bytes, revision: int, version: int) -> List[str]:
    if revision == 2:
        mark, mask = struct.unpack_from('=II', info, 0)
        return ['--set-xmark', '{}/{}'.format(_hex(mark), _hex(mask))]
    if revision == 1:  # xt_mark_target_info_v1: unsigned long mark; u8 mode
        mark, mode = struct.unpack_from('=QB', info, 0)
        return [('--set-mark', '--and-mark', '--or-mark')[mode] if mode < 3 else '--mode-{}'.format(mode), _hex(mark)]
    return ['--set-mark', _hex(struct.unpack_from('=Q', info, 0)[0])]


def _t_connmark(info: bytes, revision: int, version: int) -> List[str]:
    ctmark, ctmask, nfmask = struct.unpack_from('=III', info, 0)
    mode = info[14] if revision >= 2 else info[12]
    if mode == 0:
        return ['--set-xmark', '{}/{}'.format(_hex(ctmark), _hex(ctmask))]
    name = '--save-mark' if mode == 1 else '--restore-mark'
    return [name, '--nfmask', _hex(nfmask), '--ctmask', _hex(ctmask)]


def _t_ct(info: bytes, revision: int, version: int) -> List[str]:
    flags, zone = struct.unpack_from('=HH', info, 0)
    helper = _c_string(info[12:28])
    args: List[str] = []
    if flags & 1:
        return ['--notrack']
    if helper:
        args += ['--helper', helper]
    if revision >= 1:
        timeout = _c_string(info[28:60])
        if timeout:
            args += ['--timeout', timeout]
    if zone or flags & (4 | 8 | 16):
        direction = {4: '-orig', 8: '-reply'}.get(flags & 12, '')
        args += ['--zone' + direction, 'mark' if flags & 16 else str(zone)]
    return args


def _t_nat_ipv4(info: bytes) -> str:
    """nf_nat_ipv4_multi_range_compat: rangesize, then flags, min_ip, max_ip, min port, max port."""
    flags = _u32(info, 4)
    low, high = info[8:12], info[12:16]
    port_low, port_high = struct.unpack_from('>HH', info, 16)
    return _nat_text(flags, low, high, port_low, port_high, 4)


def _t_nat_range(info: bytes, version: int) -> str:
    """nf_nat_range(2): flags, min_addr, max_addr (16 bytes each), min port, max port."""
    flags = _u32(info, 0)
    size = 4 if version == 4 else 16
    low, high = info[4 : 4 + size], info[20 : 20 + size]
    port_low, port_high = struct.unpack_from('>HH', info, 36)
    return _nat_text(flags, low, high, port_low, port_high, version)


def _nat_text(flags: int, low: bytes, high: bytes, port_low: int, port_high: int, version: int) -> str:
    text = ''
    if flags & 1:  # NF_NAT_RANGE_MAP_IPS
        text = str(_address(low, version))
        if high != low:
            text += '-' + str(_address(high, version))
        if version == 6 and flags & 2:
            text = '[{}]'.format(text)
    if flags & 2:  # NF_NAT_RANGE_PROTO_SPECIFIED
        text += ':' + _ports_text(port_low, port_high).replace(':', '-')
    return text


def _t_nat(option: str) -> Callable[[bytes, int, int], List[str]]:
    def decode(info: bytes, revision: int, version: int) -> List[str]:
        text = _t_nat_ipv4(info) if revision == 0 and version == 4 else _t_nat_range(info, version)
        return [option, text] if text else []

    return decode


def _t_ports(info: bytes, revision: int, version: int) -> List[str]:
    if version == 4:
        flags = _u32(info, 4)
        port_low, port_high = struct.unpack_from('>HH', info, 16)
    else:
        flags = _u32(info, 0)
        port_low, port_high = struct.unpack_from('>HH', info, 36)
    return ['--to-ports', _ports_text(port_low, port_high).replace(':', '-')] if flags & 2 else []


def _t_nfqueue(info: bytes, revision: int, version: int) -> List[str]:
    number = _u16(info, 0)
    total = _u16(info, 2) if revision >= 1 else 1
    args = ['--queue-balance', '{}:{}'.format(number, number + total - 1)] if total > 1 else ['--queue-num', str(number)]
    if revision >= 2 and _u16(info, 4) & 1:
        args.append('--queue-bypass')
    return args


def _t_synproxy(info: bytes, revision: int, version: int) -> List[str]:
    options, wscale, mss = struct.unpack_from('=BBH', info, 0)
    args: List[str] = []
    if options & 1:
        args += ['--mss', str(mss)]
    if options & 2:
        args += ['--wscale', str(wscale)]
    for bit, name in ((4, '--sack-perm'), (8, '--timestamp'), (16, '--ecn')):
        if options & bit:
            args.append(name)
    return args


_COMPAT_TARGETS: Mapping[str, Callable[[bytes, int, int], List[str]]] = MappingProxyType({
    'REJECT': _t_reject,
    'LOG': _t_log,
    'NFLOG': _t_nflog,
    'MARK': _t_mark,
    'CONNMARK': _t_connmark,
    'CT': _t_ct,
    'DNAT': _t_nat('--to-destination'),
    'SNAT': _t_nat('--to-source'),
    'MASQUERADE': _t_ports,
    'REDIRECT': _t_ports,
    'NFQUEUE': _t_nfqueue,
    'SYNPROXY': _t_synproxy,
})


# ----------------------------------------------------------------------------- the API


def decode_rule(rule: KernelRule, sets: Mapping[str, KernelSet], table_family: str, *, iptables: bool = False, walk: bool = False) -> DecodedRule:
    """One kernel rule as the model's rule (a verdict map: one rule per element). Never raises:
    what could not be decoded is described in ``undecoded``. ``iptables`` renders the text as
    iptables-save does (tables iptables-nft created); else the text is nft-like. ``walk``: what
    the walk reads only, with no text and no comment (the same rule as far as any class goes)."""
    try:
        return _RuleDecoder(rule, sets, table_family, iptables, walk).decode()
    except Exception as error:  # noqa: BLE001 - the last line of defence: carry, never raise
        return Rule(chain=rule.chain, matches=(Match('nft', (Option('rule (not decoded)'),)),), target=None, handle=rule.handle,
                    text='rule handle {} (not decoded)'.format(rule.handle), undecoded='{}: {}'.format(type(error).__name__, error))


# ----------------------------------------------------------------------------- conditions known before the decode

# Expressions the decoder passes over without touching a register: a compat match is a condition of
# its own, which a subset of the rule's conditions may leave out.
_PASSED_OVER = frozenset({'counter', 'last', 'match'})
# meta keys loaded into a register that is then not followed (what it holds never says "none" here,
# and comparing it cannot change how the decoder reads later loads, as nfproto would).
_META_NOT_FOLLOWED = frozenset({4, 5, 16})  # iif, oif, l4proto
_META_INTERFACES = frozenset({6, 7})  # iifname, oifname

# What a register holds, as far as :func:`leading_conditions` follows it: a value the decoder holds
# too, or None (loaded, not followed).
_Held = Dict[int, Optional[_Value]]


def leading_conditions(raw: bytes, version: int) -> Optional[Tuple[Match, ...]]:
    """Some of the conditions of a rule of an ``ip`` (4) or ``ip6`` (6) table, read from its first
    expressions without decoding the rule: the address and interface comparisons that come before
    its first statement, as exactly the matches :func:`decode_rule` makes of them. They are a subset
    of the decoded rule's conditions, so a class they match none of is matched by none of the rule.
    None when nothing is known (or the expressions are malformed, which the decoder reads otherwise)."""
    return _leading(raw, version, _leading_match)


def known_conditions(raw: bytes, version: int) -> Optional[Tuple[KnownCondition, ...]]:
    """:func:`leading_conditions` in the form the walk reads them (:data:`.classify.KnownCondition`:
    no objects for the collector to follow, no address text to parse again)."""
    return _leading(raw, version, _leading_known)


def _leading(
    raw: bytes, version: int, make: Callable[[_Value, bytes, bool], Any], located: Optional[List[Tuple[int, _Value, bool]]] = None
) -> Optional[Tuple[Any, ...]]:
    """``located``: where the first condition found comes from (the offset of its comparison's
    element, what it compares, whether negated), when the expressions are laid out plainly."""
    offsets: Optional[List[int]] = [] if located is not None else None
    expressions = _plain_expressions(raw, offsets=offsets)
    if expressions is None:
        offsets = None
        try:
            expressions = [(expression.name, expression.data) for expression in expressions_of(raw)]
        except Exception:  # noqa: BLE001 - the decoder carries such a rule as not decoded
            return None
    held: _Held = {}
    found: List[Any] = []
    for index, (name, data) in enumerate(expressions):
        if name in _PASSED_OVER:
            continue
        try:
            if name == 'cmp':
                if any(value is not None for value in held.values()):  # else it compares nothing followed
                    compared = _follow_cmp(data, held, found, make)
                    if compared is not None and offsets is not None and located is not None and not located and len(found) == 1:
                        located.append((offsets[index], compared[0], compared[1]))
                continue
            effect = _effect(name, data, version)
            if effect is None:
                break
            if isinstance(effect, _Load):
                _hold(held, effect.slots, effect.value)
            elif not _follow_bitwise(effect, held):
                break
        except Exception:  # noqa: BLE001 - the decoder stops following this expression too
            break
    return tuple(found) or None


@dataclass(frozen=True)
class _FirstLayout:
    """Rules whose expressions begin with the same bytes up to their first known condition's compared
    value: what that value is compared as. ``ends``: where the comparison's element ends (the rule
    is that long at least); ``rest``: where the next element begins."""

    value: _Value
    negated: bool
    size: int
    ends: int
    rest: int
    address: Optional[Tuple[str, int, int]]  # a whole address, unmasked: (option, IP version, bits)


class FirstConditions:
    """The first condition :func:`known_conditions` finds in a rule, read without its parse where a
    rule seen before had the same bytes up to the value compared (kube-proxy's service rules differ
    in their address only). It is exactly the first of the known conditions (the bytes before the
    value decide how they are read, and the rest of the rule is checked to be laid out plainly too),
    so where it says a rule matches none of a class, so would they all."""

    LIMIT = 256  # layouts kept; a ruleset has a few dozen

    def __init__(self, version: int) -> None:
        self.version = version
        self._by_length: Dict[int, Dict[bytes, _FirstLayout]] = {}
        self._count = 0

    def known(self, raw: bytes) -> Optional[Tuple[KnownCondition, ...]]:
        """:func:`known_conditions`, learning the layout of the first one's comparison."""
        located: List[Tuple[int, _Value, bool]] = []
        found = _leading(raw, self.version, _leading_known, located)
        if found is not None and located and self._count < self.LIMIT:
            self._learn(raw, *located[0], found[0])
        return found

    def first(self, raw: bytes) -> Optional[KnownCondition]:
        """The first known condition of the rule, where its layout was learnt (None: not known here)."""
        for length, layouts in self._by_length.items():
            layout = layouts.get(raw[:length])
            if layout is not None:
                break
        else:
            return None
        if layout.ends > len(raw) or _plain_expressions(raw, start=layout.rest, read=False) is None:
            return None
        data = raw[length : length + layout.size]
        if layout.address is not None:
            option, version, bits = layout.address
            number = int.from_bytes(data, 'big')
            return (option, layout.negated, version, number, number, bits)
        condition: Optional[KnownCondition] = _leading_known(layout.value, data, layout.negated)
        return condition

    def _learn(self, raw: bytes, element: int, value: _Value, negated: bool, condition: KnownCondition) -> None:
        where = _compared_value(raw, element)
        if where is None:
            return
        start, end, ends, rest = where
        if _leading_known(value, raw[start:end], negated) != condition:
            return  # not where the comparison's value was read from
        field = value.field
        whole = field.kind == 'address' and value.mask is None and end - start == field.size
        address = (field.option, field.version, field.size * 8) if whole else None
        layouts = self._by_length.setdefault(start, {})
        if raw[:start] not in layouts:
            layouts[raw[:start]] = _FirstLayout(value, negated, end - start, ends, rest, address)
            self._count += 1


def _compared_value(raw: bytes, element: int) -> Optional[Tuple[int, int, int, int]]:
    """Where the value a cmp element (at ``element``, laid out plainly) compares lies, when it is the
    last thing in the element (its NFTA_CMP_DATA last, holding NFTA_DATA_VALUE alone): (start, end,
    where the element ends, where the next begins)."""
    length, _kind, name_length, _name_kind = _unpack_two_headers(raw, element)
    ends = element + length
    data_at = element + 4 + ((name_length + 3) & ~3)
    data_length, _data_kind = _unpack_header(raw, data_at)
    last = _last_attribute(raw, data_at + 4, data_at + data_length)
    if last is None or last[0] != 3:  # NFTA_CMP_DATA
        return None
    value = _last_attribute(raw, last[1] + 4, last[2])
    if value is None or value[0] != 1 or value[1] != last[1] + 4:  # NFTA_DATA_VALUE, alone
        return None
    return value[1] + 4, value[2], ends, element + ((length + 3) & ~3)


def _last_attribute(raw: bytes, start: int, end: int) -> Optional[Tuple[int, int, int]]:
    """(type, offset, end) of the last attribute of ``raw[start:end]``, when it ends exactly there."""
    found = None
    offset = start
    while offset + 4 <= end:
        length, kind = _unpack_header(raw, offset)
        if length < 4 or offset + length > end:
            return None
        found = (kind & 0x3FFF, offset, offset + length)
        offset += (length + 3) & ~3
    return found if found is not None and found[2] == end else None


_unpack_header = struct.Struct('=HH').unpack_from
_unpack_two_headers = struct.Struct('=HHHH').unpack_from  # an element's header and its first attribute's
# The names the shortcut reads, as the kernel sends them (NUL-terminated).
_PLAIN_NAMES = {(name + '\0').encode(): name for name in ('payload', 'meta', 'bitwise', 'cmp') + tuple(_PASSED_OVER)}
# Of those, the ones whose data the shortcut reads (it passes over the others).
_FOLLOWED_NAMES = frozenset(name for name in _PLAIN_NAMES.values() if name not in _PASSED_OVER)


def _plain_expressions(
    raw: bytes, start: int = 0, offsets: Optional[List[int]] = None, read: bool = True
) -> Optional[List[Tuple[str, bytes]]]:
    """(name, data) of each expression from ``start`` (an element's offset), where every element is
    laid out as the kernel writes it (a name, then the data, nothing else): what
    :func:`.nf_tables.expressions_of` gives then, without its dictionaries. A name not read by the
    shortcut is ''. None for any other layout. ``offsets`` receives where each element begins.
    Without ``read``, only whether the layout is plain: an empty list, or None."""
    found: List[Tuple[str, bytes]] = []
    append, names, followed = found.append, _PLAIN_NAMES, _FOLLOWED_NAMES
    offset, end = start, len(raw)
    while offset + 4 <= end:
        if offset + 8 <= end:
            length, kind, name_length, name_kind = _unpack_two_headers(raw, offset)
        else:
            (length, kind), name_length, name_kind = _unpack_header(raw, offset), 0, 0
        after = offset + length
        if length < 4 or after > end:
            return None
        if kind & 0x3FFF == 1:  # NFTA_LIST_ELEM
            if length < 8:  # no room for the name's header
                return None
            data_at = offset + 4 + ((name_length + 3) & ~3)
            if name_kind & 0x3FFF != 1 or name_length < 4 or data_at + 4 > after:
                return None
            data_length, data_kind = _unpack_header(raw, data_at)
            data_end = data_at + data_length
            if data_kind & 0x3FFF != 2 or data_length < 4 or data_end > after or data_at + ((data_length + 3) & ~3) + 4 <= after:
                return None
            if read:
                name = names.get(raw[offset + 8 : offset + 4 + name_length], '')
                append((name, raw[data_at + 4 : data_end] if name in followed else b''))
            if offsets is not None:
                offsets.append(offset)
        offset += (length + 3) & ~3
    return found


@dataclass(frozen=True)
class _Load:
    slots: range
    value: Optional[_Value]  # None: not followed


@dataclass(frozen=True)
class _Bitwise:
    source: int  # slot
    slots: range
    length: int
    mask: bytes
    xor: bytes
    shifts: bool


@functools.lru_cache(maxsize=1024)
def _effect(name: str, data: bytes, version: int) -> Union[_Load, _Bitwise, None]:
    """What a load (payload, meta) or a bitwise does to the registers, as the decoder's handler
    would do it (only what is followed here: addresses and interface names); None for an
    expression that is not followed (a statement, anything else). These repeat from rule to rule."""
    attrs = attributes(data)
    if name == 'payload':
        if 5 in attrs:
            return None  # a payload write: a statement
        base, offset, length = be32(attrs[2]), be32(attrs[3]), be32(attrs[4])
        known = _NETWORK_FIELDS.get((version, offset)) if base == 1 else None
        value = None
        if known is not None and known[1] != '-p' and length <= known[2]:
            value = _Value(_Field('address', known[0], known[1], size=known[2], version=version), length)
        return _Load(_slots(_reg(attrs, 1, 'destination register'), length), value)
    if name == 'meta':
        key = be32(attrs[2])
        if 3 in attrs or key not in _META_NOT_FOLLOWED | _META_INTERFACES:
            return None
        field = _META_FIELDS[key]
        value = _Value(field, field.size) if key in _META_INTERFACES else None
        return _Load(_slots(_reg(attrs, 1, 'destination register'), field.size), value)
    if name == 'bitwise':
        length = be32(attrs[3])
        source = _slots(_reg(attrs, 1, 'source register'), 1)[0]
        slots = _slots(_reg(attrs, 2, 'destination register'), length)
        shifts = (be32(attrs[6]) if 6 in attrs else 0) != 0
        mask, xor = (_data_value(attrs[4]), _data_value(attrs[5])) if not shifts else (b'', b'')
        return _Bitwise(source, slots, length, mask, xor, shifts)
    return None


def _follow_cmp(data: bytes, held: _Held, found: List[Any], make: Callable[[_Value, bytes, bool], Any]) -> Optional[Tuple[_Value, bool]]:
    """Adds what the comparison says (what it compares, and whether negated, where it says something)."""
    attrs = attributes(data)
    value = held.get(_slots(_reg(attrs, 1, 'source register'), 1)[0])
    op, compared = be32(attrs[2]), _data_value(attrs[3])
    if value is not None and op in (0, 1):
        match = make(value, compared, op == 1)
        if match is not None:
            found.append(match)
            return value, op == 1
    return None


def _follow_bitwise(bitwise: _Bitwise, held: _Held) -> bool:
    source = held.get(bitwise.source)
    if source is None:
        _hold(held, bitwise.slots, None)
        return True
    if bitwise.shifts or any(bitwise.xor):
        return False  # the decoder gives up on it: what it loads is not followed
    mask = bitwise.mask
    if source.mask is not None:
        mask = bytes(a & b for a, b in zip(mask, source.mask))
    _hold(held, bitwise.slots, _Value(source.field, bitwise.length, mask))
    return True


def _hold(held: _Held, slots: range, value: Optional[_Value]) -> None:
    for slot in slots:
        held[slot] = None
    held[slots[0]] = value


def _leading_known(value: _Value, data: bytes, negated: bool) -> Optional[KnownCondition]:
    """The known condition standing for the match :func:`_leading_match` makes."""
    field = value.field
    if field.kind == 'address' and len(data) <= field.size:
        if value.mask is None and len(data) == field.size:  # one address: its range, without writing it
            number = int.from_bytes(data, 'big')
            return (field.option, negated, field.version, number, number, field.size * 8)
        return known_address(field.option, negated, field.version, _address_option(value, data))
    if field.kind == 'ifname' and value.mask is None:
        return (field.option, negated, 0, _interface_text(data), 0, 0)
    return None


def _leading_match(value: _Value, data: bytes, negated: bool) -> Optional[Match]:
    """The match ``_cmp_match`` makes of an equality on an address or an interface name."""
    field = value.field
    if field.kind == 'address' and len(data) <= field.size:
        return _builtin(field.option, (_address_option(value, data),), negated)
    if field.kind == 'ifname' and value.mask is None:
        return _builtin(field.option, (_interface_text(data),), negated)
    return None
