"""One evaluation of one compliance rule, family by family: applicability -> collect -> parse ->
evaluate -> the fixes in the language of the rule's firewall manager.

Never raises for anything the host does: every failure becomes a result with status UNKNOWN and a
message that says what happened and how to fix it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from .applicability import Applicability, ApplicabilityChecker, ApplicabilityError
from .collect import KERNEL, Collected, CollectionError, KernelCache, collect
from .config import LEGACY, NFT, Options
from .evaluator import Source, evaluate, table_name
from .model import Ruleset
from .nf_tables import KernelRuleset
from .ipset_contents import with_sets
from .nft_decode import DecodeCache, current_handle, decode_tables
from .parser import EVALUATED_TABLES, ParseError, parse_ruleset
from .remedies import in_manager_language
from .requirements import IPV4, ComplianceRule, RuleDefinition
from .saves import iptables_command
from .results import Position, RuleResult, Status, with_positions


@dataclass(frozen=True)
class Outcome:
    rule: ComplianceRule
    applicability: Applicability
    result: Optional[RuleResult]  # None when the rule is not applicable
    duration: float  # seconds to collect, parse and evaluate
    origins: Tuple[str, ...] = ()  # where the rulesets came from


@dataclass(frozen=True)
class RuleOutcome:
    """A compliance rule's outcome: one :class:`Outcome` per family it covers that was evaluated."""

    definition: RuleDefinition
    parts: Tuple[Outcome, ...]

    @property
    def applicable(self) -> Tuple[Outcome, ...]:
        return tuple(part for part in self.parts if part.result is not None)

    @property
    def duration(self) -> float:
        return sum(part.duration for part in self.parts)


# The nf_tables families whose tables see each IP family's packets.
_KERNEL_FAMILIES = {IPV4: ('ip', 'inet', 'netdev'), 'ipv6': ('ip6', 'inet', 'netdev')}


@dataclass
class InstanceState:
    """What one check instance keeps between runs (never shared with another instance): the last
    nf_tables ruleset read (reused while its generation is unchanged), and per family the last
    rulesets evaluated with their result. Evaluation is a pure function of them, so an unchanged
    ruleset (the common case every 15 s) reuses the result."""

    kernel: KernelCache = field(default_factory=KernelCache)
    decoded: DecodeCache = field(default_factory=DecodeCache)
    evaluated: Dict[Tuple[str, str], Tuple[Tuple[object, ...], RuleResult]] = field(default_factory=dict)

    def evaluate(self, options: Options, family: str, rule: ComplianceRule, collected: Tuple[Collected, ...]) -> RuleResult:
        identity = tuple(piece.identity for piece in collected)
        key = (rule.name, family)
        previous = self.evaluated.get(key)
        if previous is not None and previous[0] == identity and previous[1].mode == options.mode:
            return previous[1]
        result = _evaluate(options, family, rule, collected, self.decoded)
        self.evaluated[key] = (identity, result)
        return result

    def walk(self, options: Options, family: str, rule: ComplianceRule) -> Callable[[KernelRuleset, Tuple[Collected, ...]], RuleResult]:
        """The evaluation of ``family`` on the kernel's ruleset and the legacy rulesets beside it, run
        while the kernel is read (it reads the chains its walks enter, with the ipsets they use): the
        result. Each legacy ruleset is parsed once, however often the kernel is read."""
        parsed: Dict[int, Source] = {}

        def evaluate_kernel(kernel: KernelRuleset, beside: Tuple[Collected, ...]) -> RuleResult:
            return _evaluated(rule, walked_sources(kernel, beside, family, self.decoded, parsed), options.mode)

        return evaluate_kernel


def walked_sources(kernel: KernelRuleset, beside: Tuple[Collected, ...], family: str, decoded: DecodeCache, parsed: Dict[int, Source]) -> List[Source]:
    """The sources of a walk run while the kernel is read: its nf_tables families, then the rulesets
    beside it (parsed once into ``parsed``)."""
    sources = _kernel_sources(kernel, family, decoded)
    for piece in beside:
        if id(piece) not in parsed:
            parsed[id(piece)] = text_source(family, piece)
        sources.append(parsed[id(piece)])
    return sources or [_empty(family)]


def _empty(family: str) -> Source:
    return Source(Ruleset({}), iptables_command(family, NFT))


def _evaluate(options: Options, family: str, rule: ComplianceRule, collected: Tuple[Collected, ...], decoded: DecodeCache) -> RuleResult:
    if collected and isinstance(collected[0].walked, RuleResult):
        return collected[0].walked  # the kernel's ruleset with the rulesets beside it, evaluated while it was read
    sources: List[Source] = []
    for piece in collected:
        if piece.kernel is not None:
            sources.extend(_kernel_sources(piece.kernel, family, decoded))
        else:
            sources.append(text_source(family, piece))
    return _evaluated(rule, sources or [_empty(family)], options.mode)


def _evaluated(rule: ComplianceRule, sources: List[Source], mode: str) -> RuleResult:
    """The evaluation, its positions with the handles the kernel gives their rules now (what a walk
    kept from a chain rewritten as it was still names the old ones)."""
    result = evaluate(rule, sources, mode)
    tables = {(source.label, table_name(table)): table for source in sources for table in source.ruleset.tables.values()}

    def now(position: Position) -> Position:
        table = tables.get((position.ruleset, position.table)) if position.handle and position.index is not None else None
        handle = current_handle(table, position.chain, position.index) if table is not None and position.index is not None else None
        return position if handle is None or handle == position.handle else replace(position, handle=handle)

    return with_positions(result, now)


def text_source(family: str, piece: Collected) -> Source:
    return Source(_parse(piece), iptables_command(family, piece.backend), LEGACY if piece.backend == LEGACY else '')


def _kernel_sources(kernel: KernelRuleset, family: str, decoded: DecodeCache) -> List[Source]:
    """One source per nf_tables family whose tables see the family's packets (names are unique
    within a family only)."""
    sources = []
    for nf_family in _KERNEL_FAMILIES[family]:
        tables = decode_tables(kernel, nf_family, decoded)
        if tables:
            sources.append(Source(Ruleset({table.name: table for table in tables}), iptables_command(family, KERNEL)))
    return sources


def _unknown(rule: ComplianceRule, options: Options, error: str) -> RuleResult:
    return RuleResult(rule, Status.UNKNOWN, error=error, mode=options.mode)


def _parse(collected: Collected) -> Ruleset:
    try:
        parsed = parse_ruleset(collected.text, tables=EVALUATED_TABLES)
        return with_sets(parsed, collected.sets) if collected.sets is not None else parsed
    except ParseError as error:
        raise CollectionError('unparseable output of {}: {}'.format(collected.origin, error))


def run_rule(
    options: Options,
    rule: ComplianceRule,
    checker: ApplicabilityChecker,
    given: Optional[Collected] = None,
    state: Optional[InstanceState] = None,
) -> Outcome:
    """One family of a compliance rule (``rule`` is that family's part)."""
    family = rule.family
    started = time.monotonic()
    try:
        applicability = checker.check(rule)
    except ApplicabilityError as error:
        applicability = Applicability(True, 'applicability could not be decided')
        return Outcome(rule, applicability, _unknown(rule, options, str(error)), time.monotonic() - started)
    if not applicability.applicable:
        return Outcome(rule, applicability, None, time.monotonic() - started)
    if given is not None or options.ruleset_files:
        # A saved ruleset shows what the manager loaded; whether it is on now says nothing about it.
        applicability = replace(applicability, disabled_by='')
    origins: Tuple[str, ...] = ()
    try:
        state = state if state is not None else InstanceState()
        walk = state.walk(options, family, rule)
        collected = tuple(collect(options, family, given, state.kernel, walk, walk_key=(rule.name, options.mode)))
        origins = tuple(piece.origin for piece in collected)
        result = in_manager_language(state.evaluate(options, family, rule, collected), applicability.disabled_by)
    except CollectionError as error:
        result = _unknown(rule, options, str(error))
    return Outcome(rule, applicability, result, time.monotonic() - started, origins)


def families_to_evaluate(options: Options, definition: RuleDefinition) -> Tuple[str, ...]:
    return tuple(family for family in definition.families if family in options.families)


def run_definition(
    options: Options,
    definition: RuleDefinition,
    checker: ApplicabilityChecker,
    given: Optional[Mapping[str, Collected]] = None,
    state: Optional[InstanceState] = None,
    states: Optional[Mapping[str, InstanceState]] = None,
) -> RuleOutcome:
    """Every family of ``definition`` the options ask for (``states``: one per family, e.g. to explain
    the walks; else ``state`` for all)."""
    parts = []
    for family in families_to_evaluate(options, definition):
        part_state = states.get(family) if states is not None else state
        parts.append(run_rule(options, definition.part(family), checker, (given or {}).get(family), part_state))
    return RuleOutcome(definition, tuple(parts))
