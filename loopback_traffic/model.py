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
from typing import Callable, Mapping, Optional, Tuple

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
class Match:
    """A built-in criterion (``module`` is empty, one option) or a ``-m module`` with its options."""

    module: str
    options: Tuple[Option, ...] = ()


@dataclass(frozen=True, slots=True)
class Target:
    """``-j NAME args...`` (``goto`` False) or ``-g NAME`` (``goto`` True)."""

    name: str
    args: Tuple[str, ...] = ()
    goto: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    chain: str
    matches: Tuple[Match, ...]
    target: Optional[Target]
    counters: Optional[Counters] = None
    # Where the rule came from; not part of what the rule means.
    line: int = field(default=0, compare=False)
    text: str = field(default='', compare=False)


@dataclass(frozen=True, slots=True)
class RawRule:
    line: int
    text: str


class Chain:
    """A chain: its name, its policy (built-in chains) or None (user chains), and its rules.

    Immutable. ``rules`` is parsed on first access with the parser's rule tokeniser; a rule that does
    not parse raises :class:`.parser.ParseError` then.
    """

    def __init__(
        self,
        name: str,
        policy: Optional[str],
        raw_rules: Tuple[RawRule, ...],
        parse_rule: Callable[[RawRule], Rule],
        counters: Optional[Counters] = None,
        line: int = 0,
    ) -> None:
        object.__setattr__(self, 'name', name)
        object.__setattr__(self, 'policy', policy)
        object.__setattr__(self, 'counters', counters)
        object.__setattr__(self, 'line', line)
        object.__setattr__(self, 'raw_rules', raw_rules)
        object.__setattr__(self, '_parse_rule', parse_rule)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError('Chain is immutable')

    @cached_property
    def rules(self) -> Tuple[Rule, ...]:
        return tuple(self._parse_rule(raw) for raw in self.raw_rules)

    def __len__(self) -> int:
        return len(self.raw_rules)

    @property
    def is_builtin(self) -> bool:
        return self.policy is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chain):
            return NotImplemented
        return (self.name, self.policy, self.counters, self.rules) == (
            other.name,
            other.policy,
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

    def chain(self, name: str) -> Optional[Chain]:
        return self.chains.get(name)

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
