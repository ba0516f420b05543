"""One evaluation of one compliance rule: applicability -> collect -> parse -> evaluate.

Never raises for anything the host does: every failure becomes a result with status UNKNOWN and a
message that says what happened and how to fix it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from .applicability import Applicability, ApplicabilityChecker, ApplicabilityError
from .collect import Collected, CollectionError, ListingHistory, collect, iptables_command
from .config import LEGACY, Options
from .evaluator import Source, evaluate
from .model import Ruleset
from .parser import EVALUATED_TABLES, ParseError, merge_rulesets, parse_ruleset
from .requirements import ComplianceRule, rule_for_family
from .results import RuleResult, Status


@dataclass(frozen=True)
class Outcome:
    rule: ComplianceRule
    applicability: Applicability
    result: Optional[RuleResult]  # None when the rule is not applicable
    duration: float  # seconds to collect, parse and evaluate
    origins: Tuple[str, ...] = ()  # where the rulesets came from


@dataclass
class InstanceState:
    """What one check instance keeps between runs (never shared with another instance): the cost of
    listing tables, and per family the last texts evaluated with their result. Evaluation is a pure
    function of the texts, so identical texts (the common case every 15 s) reuse the result."""

    listing: ListingHistory = field(default_factory=ListingHistory)
    evaluated: Dict[str, Tuple[Tuple[Collected, ...], RuleResult]] = field(default_factory=dict)

    def evaluate(self, options: Options, family: str, rule: ComplianceRule, collected: Tuple[Collected, ...]) -> RuleResult:
        previous = self.evaluated.get(family)
        if previous is not None and previous[0] == collected and previous[1].mode == options.mode:
            return previous[1]
        result = _evaluate(options, family, rule, collected)
        self.evaluated[family] = (collected, result)
        return result


def _evaluate(options: Options, family: str, rule: ComplianceRule, collected: Tuple[Collected, ...]) -> RuleResult:
    sources = [
        Source(_parse(piece), iptables_command(family, piece.backend), LEGACY if piece.backend == LEGACY else '')
        for piece in collected
    ]
    return evaluate(rule, sources, options.mode)


def _unknown(rule: ComplianceRule, options: Options, error: str) -> RuleResult:
    return RuleResult(rule, Status.UNKNOWN, error=error, mode=options.mode)


def _parse(collected: Collected) -> Ruleset:
    try:
        parts = [
            parse_ruleset(text, tables=EVALUATED_TABLES, listing_table=table or 'filter') for text, table in collected.pieces
        ]
        return parts[0] if len(parts) == 1 else merge_rulesets(parts)
    except ParseError as error:
        raise CollectionError('unparseable output of {}: {}'.format(collected.origin, error))


def run_rule(
    options: Options,
    family: str,
    checker: ApplicabilityChecker,
    given: Optional[Collected] = None,
    state: Optional[InstanceState] = None,
) -> Outcome:
    rule = rule_for_family(family)
    started = time.monotonic()
    try:
        applicability = checker.check(family)
    except ApplicabilityError as error:
        applicability = Applicability(True, 'applicability could not be decided')
        return Outcome(rule, applicability, _unknown(rule, options, str(error)), time.monotonic() - started)
    if not applicability.applicable:
        return Outcome(rule, applicability, None, time.monotonic() - started)
    origins: Tuple[str, ...] = ()
    try:
        state = state if state is not None else InstanceState()
        collected = tuple(collect(options, family, given, state.listing))
        origins = tuple(piece.origin for piece in collected)
        result = state.evaluate(options, family, rule, collected)
    except CollectionError as error:
        result = _unknown(rule, options, str(error))
    return Outcome(rule, applicability, result, time.monotonic() - started, origins)
