"""What the evaluator returns: per compliance rule, per requirement, with the rules that decided.

Pure data: no I/O.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Tuple

from .requirements import ComplianceRule


class Status(enum.IntEnum):
    """Ordered like Datadog service check statuses."""

    PASS = 0
    PARTIAL = 1
    FAIL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class Position:
    """A rule (``index`` is its 1-based position in its chain) or a chain's policy (``index`` None)."""

    table: str
    chain: str
    index: Optional[int]
    text: str
    ruleset: str = ''  # which ruleset, when several are evaluated ('legacy'); '' for the main one
    line: int = field(default=0, compare=False)  # where in the collected text; not part of the position
    handle: int = field(default=0, compare=False)  # the nf_tables rule handle, where the kernel was read
    # Why the rule's match is only known to hold for part of the class: ipsets whose contents are not known.
    uncertain: Tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_policy(self) -> bool:
        return self.index is None


@dataclass(frozen=True)
class Deviation:
    """A rule (or policy) that gives part of the packet class a verdict other than the required one."""

    where: Position
    verdict: str
    # Which part, when the target (not the match) makes it a part: SYNPROXY_PART.
    part: str = ''


# The part of the class a SYNPROXY target denies: it answers TCP SYNs (and the ACKs that follow) itself.
SYNPROXY_PART = 'tcp syn'


@dataclass(frozen=True)
class Insertion:
    """One rule to insert: with ``tool`` (``iptables``, ``ip6tables-legacy``, ``nft``) into ``table``
    (``filter``, ``raw``...; ``inet hostfw`` for a native table) and ``chain``, at ``position``
    (1-based; None: at the top, nft's ``insert``), the rule's criteria and verdict in the tool's
    language (``-i lo -j ACCEPT``, ``iif lo accept``)."""

    tool: str
    table: str
    chain: str
    position: Optional[int]
    rule: str

    @property
    def native(self) -> bool:
        return self.tool == 'nft'

    @property
    def command(self) -> str:
        if self.native:
            return 'nft insert rule {} {} {}'.format(self.table, self.chain, self.rule)
        table = '' if self.table == 'filter' else '-t {} '.format(self.table)
        return '{} {}-I {} {} {}'.format(self.tool, table, self.chain, self.position or 1, self.rule)


@dataclass(frozen=True)
class Fix:
    """A fix: insertions made in order (the literal mode's lo ACCEPT then its DROP)."""

    steps: Tuple[Insertion, ...]

    @property
    def command(self) -> str:
        return ' && '.join(step.command for step in self.steps)


# What a requirement's result rests on (the report words each): the walk's deciding rule (effective
# mode), or, in literal mode, the literal rule found first, found below a rule that drops its
# traffic, or not found.
DECIDED = 'decided'
PRESENT = 'present'
NOT_FIRST = 'not_first'
ABSENT = 'absent'


@dataclass(frozen=True)
class RequirementResult:
    requirement: str
    status: Status
    finding: str = DECIDED
    deciding: Optional[Position] = None
    verdict: Optional[str] = None
    deviations: Tuple[Deviation, ...] = ()
    remediation: Tuple[str, ...] = ()  # the commands of ``fixes``
    fixes: Tuple[Fix, ...] = ()
    # Why rules on the walk were taken to match only part of the class: ipsets whose contents are not known.
    uncertain: Tuple[str, ...] = ()
    literal: str = ''  # literal mode: the rule looked for (``-i lo -j ACCEPT``)


@dataclass(frozen=True)
class RuleResult:
    rule: ComplianceRule
    status: Status
    requirements: Tuple[RequirementResult, ...] = ()
    rules_on_path: int = 0
    error: Optional[str] = None  # why the ruleset could not be evaluated (status UNKNOWN)
    mode: str = 'effective'

    def requirement(self, name: str) -> RequirementResult:
        for result in self.requirements:
            if result.requirement == name:
                return result
        raise KeyError(name)


def with_positions(result: RuleResult, update: Callable[[Position], Position]) -> RuleResult:
    """``result`` with each rule position (deciding rules, deviations) replaced by ``update``'s; the
    same object where ``update`` changes none."""
    requirements = []
    for found in result.requirements:
        deciding = update(found.deciding) if found.deciding is not None else None
        deviations = tuple(_moved(deviation, update(deviation.where)) for deviation in found.deviations)
        if deciding is found.deciding and all(new is old for new, old in zip(deviations, found.deviations)):
            requirements.append(found)
        else:
            requirements.append(replace(found, deciding=deciding, deviations=deviations))
    if all(new is old for new, old in zip(requirements, result.requirements)):
        return result
    return replace(result, requirements=tuple(requirements))


def _moved(deviation: Deviation, where: Position) -> Deviation:
    return deviation if where is deviation.where else replace(deviation, where=where)
