"""Immutable model of an iptables ruleset: ruleset -> tables -> chains -> rules.

Built by :mod:`.parser` from ``iptables-save`` or ``iptables -S`` text. Pure data: no I/O.

A chain keeps the raw text of its rules and tokenises them the first time its ``rules`` are
asked for, so that tables and chains the evaluation never reaches (a Kubernetes node's
thousands of service chains) cost a line split, not a parse.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

BUILTIN_CHAINS: Mapping[str, Tuple[str, ...]] = MappingProxyType(
    {
        'filter': ('INPUT', 'FORWARD', 'OUTPUT'),
        'nat': ('PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'),
        'mangle': ('PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'),
        'raw': ('PREROUTING', 'OUTPUT'),
        'security': ('INPUT', 'FORWARD', 'OUTPUT'),
    }
)

POLICIES = ('ACCEPT', 'DROP')


class RulesUnavailable(Exception):
    """A chain's rules could not be had when they were needed (a kernel chain read too late)."""


@dataclass(frozen=True, slots=True)
class BaseChain:
    """Where a chain is attached to the kernel's packet path: its hook (nft's names: ``prerouting``,
    ``input``, ``output``, ``postrouting``, ``ingress``...), its priority (lower runs first), its type
    (``filter``, ``nat``, ``route``) and, for ingress chains, the devices it is attached to."""

    hook: str
    priority: int
    type: str = 'filter'
    devices: Tuple[str, ...] = ()


# The hooks and priorities of iptables' built-in chains (the kernel's NF_IP_PRI_* values, which
# iptables-nft uses too): one catalogue for the text front-end.
_IPTABLES_PRIORITIES: Mapping[str, int] = {'raw': -300, 'mangle': -150, 'filter': 0, 'security': 50}
IPTABLES_BASE_CHAINS: Mapping[Tuple[str, str], BaseChain] = MappingProxyType(
    {
        **{
            (table, chain): BaseChain(chain.lower(), priority, 'route' if (table, chain) == ('mangle', 'OUTPUT') else 'filter')
            for table, priority in _IPTABLES_PRIORITIES.items()
            for chain in BUILTIN_CHAINS[table]
        },
        ('nat', 'PREROUTING'): BaseChain('prerouting', -100, 'nat'),
        ('nat', 'OUTPUT'): BaseChain('output', -100, 'nat'),
        ('nat', 'INPUT'): BaseChain('input', 100, 'nat'),
        ('nat', 'POSTROUTING'): BaseChain('postrouting', 100, 'nat'),
    }
)


@dataclass(frozen=True, slots=True)
class Counters:
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Option:
    """One option of a match: ``-s 127.0.0.0/8``, ``! --ctstate NEW``, ``--comment "a b"``."""

    name: str
    values: Tuple[str, ...] = ()
    negated: bool = False


@dataclass(frozen=True, slots=True)
class SetContents:
    """What the ipset a ``-m set`` match names held when the rules were read, as the match compares
    it with a packet: ``dimensions`` are (kind, direction) pairs, kind ``net`` (an address or
    network), ``iface``, ``port``, ``mark``, ``mac``, direction ``src`` or ``dst``; each member has one
    value per dimension (``''`` where the value cannot be compared with a packet class).
    ``exceptions`` are the ``nomatch`` members. A ``list:set`` has its member sets in ``subsets``.
    ``unknown`` says why the contents are not known (the match is then **some** of any class)."""

    name: str
    kind: str = ''  # the set's type: hash:net, list:set...
    version: int = 0  # the addresses' IP version (0: any, a list:set)
    dimensions: Tuple[Tuple[str, str], ...] = ()
    members: Tuple[Tuple[str, ...], ...] = ()
    exceptions: Tuple[Tuple[str, ...], ...] = ()
    subsets: Tuple['SetContents', ...] = ()
    unknown: str = ''


@dataclass(frozen=True, slots=True)
class Match:
    """A built-in criterion (``module`` is empty, one option) or a ``-m module`` with its options.
    A ``set`` match carries the contents of its ipset where they were read (``contents``)."""

    module: str
    options: Tuple[Option, ...] = ()
    contents: Optional[SetContents] = None


# What a target is known to be. iptables text cannot tell ``-j NAME`` for a chain from an extension
# target of that name (a chain is one where a chain NAME is declared); the kernel's representation can.
AS_WRITTEN = ''  # text front-end: a chain where one of that name is declared, else an extension
JUMP = 'jump'  # certainly a jump (or goto) to the chain NAME
STATEMENT = 'statement'  # certainly no chain: a verdict, an extension target or a native statement


@dataclass(frozen=True, slots=True)
class Target:
    """``-j NAME args...`` (``goto`` False) or ``-g NAME`` (``goto`` True)."""

    name: str
    args: Tuple[str, ...] = ()
    goto: bool = False
    kind: str = AS_WRITTEN


@dataclass(frozen=True, slots=True)
class Rule:
    chain: str
    matches: Tuple[Match, ...]
    target: Optional[Target]
    counters: Optional[Counters] = None
    # Where the rule came from; not part of what the rule means.
    line: int = field(default=0, compare=False)
    text: str = field(default='', compare=False)
    handle: int = field(default=0, compare=False)  # nf_tables rule handle (netlink front-end)
    # Statements that do not decide, besides the target (a native rule can hold several:
    # ``meta mark set 0x1 counter accept``): MARK, CONNMARK, CT, NOTRACK, LOG ... as targets.
    actions: Tuple[Target, ...] = ()
    # Set when the rule holds an expression the front-end could not decode: what it was.
    undecoded: str = ''


@dataclass(frozen=True, slots=True)
class RawRule:
    line: int
    text: str


class Chain:
    """A chain: its name, its policy (built-in chains) or None (user chains), and its rules.

    Immutable. ``rules`` is built on first access from ``raw_rules`` by ``parse_rule`` (the text
    front-end tokenises a line; the netlink front-end decodes expressions); a rule that does not
    parse raises :class:`.parser.ParseError` then. ``base`` says where a built-in (base) chain is
    attached to the packet path.
    """

    name: str
    policy: Optional[str]
    base: Optional[BaseChain]
    counters: Optional[Counters]
    line: int
    raw_rules: Sequence[Any]
    _parse_rule: Callable[[Any], Union[Rule, Tuple[Rule, ...]]]

    def __init__(
        self,
        name: str,
        policy: Optional[str],
        raw_rules: Sequence[Any],
        parse_rule: Callable[[Any], Union[Rule, Tuple[Rule, ...]]],
        counters: Optional[Counters] = None,
        line: int = 0,
        base: Optional[BaseChain] = None,
    ) -> None:
        object.__setattr__(self, 'name', name)
        object.__setattr__(self, 'base', base)
        object.__setattr__(self, 'policy', policy)
        object.__setattr__(self, 'counters', counters)
        object.__setattr__(self, 'line', line)
        object.__setattr__(self, 'raw_rules', raw_rules)
        object.__setattr__(self, '_parse_rule', parse_rule)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError('Chain is immutable')

    @cached_property
    def rules(self) -> Tuple[Rule, ...]:
        found: List[Rule] = []
        for raw in self.raw_rules:
            parsed = self._parse_rule(raw)
            # One kernel rule can stand for several (a verdict map: one rule per element).
            found.extend(parsed) if isinstance(parsed, tuple) else found.append(parsed)
        return tuple(found)

    def __len__(self) -> int:
        return len(self.raw_rules)

    @property
    def is_builtin(self) -> bool:
        return self.policy is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chain):
            return NotImplemented
        return (self.name, self.policy, self.base, self.counters, self.rules) == (
            other.name,
            other.policy,
            other.base,
            other.counters,
            other.rules,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.policy, len(self.raw_rules)))

    def __repr__(self) -> str:
        return 'Chain({!r}, policy={!r}, rules={})'.format(self.name, self.policy, len(self.raw_rules))


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    chains: Mapping[str, Chain]
    line: int = field(default=0, compare=False)
    # nf_tables family ('ip', 'ip6', 'inet', 'netdev'); '' for a table read from iptables text.
    family: str = ''
    dormant: bool = False  # a dormant nf_tables table takes no part in the packet path
    # A table nft wrote (not iptables-nft's): messages name it 'inet hostfw' and fixes use nft.
    native: bool = False

    def chain(self, name: str) -> Optional[Chain]:
        return self.chains.get(name)

    @property
    def base_chains(self) -> Tuple[Chain, ...]:
        """The chains attached to the packet path (without making the others, where they are made
        when looked up)."""
        listed = getattr(self.chains, 'base_chains', None)
        if listed is not None:
            return tuple(listed())
        return tuple(chain for chain in self.chains.values() if chain.base is not None)

    @property
    def rule_count(self) -> int:
        return sum(len(chain) for chain in self.chains.values())


@dataclass(frozen=True, slots=True)
class SaveWarning:
    """A ``#`` line of the save output that changes what the ruleset means."""

    kind: str  # LEGACY_TABLES_PRESENT or INCOMPATIBLE_TABLE
    line: int
    text: str
    table: Optional[str] = None


LEGACY_TABLES_PRESENT = 'legacy_tables_present'
INCOMPATIBLE_TABLE = 'incompatible_table'


@dataclass(frozen=True, slots=True)
class Ruleset:
    tables: Mapping[str, Table]
    warnings: Tuple[SaveWarning, ...] = ()
    # Tables present in the text but not parsed because nobody asked for them.
    skipped_tables: Tuple[str, ...] = ()

    def table(self, name: str) -> Optional[Table]:
        return self.tables.get(name)

    def chain(self, table: str, chain: str) -> Optional[Chain]:
        found = self.tables.get(table)
        return found.chain(chain) if found is not None else None

    def warnings_of(self, kind: str) -> Tuple[SaveWarning, ...]:
        return tuple(warning for warning in self.warnings if warning.kind == kind)

    @property
    def is_empty(self) -> bool:
        return not self.tables and not self.skipped_tables
