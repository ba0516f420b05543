"""Outcome -> what the check submits (spec section 5) and what a person reads. Pure: no I/O."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .pipeline import Outcome
from .results import RequirementResult, RuleResult, Status

NAMESPACE = 'loopback_traffic'
SERVICE_CHECK = 'compliance'

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: 'OK', WARNING: 'WARNING', CRITICAL: 'CRITICAL', UNKNOWN: 'UNKNOWN'}
_PARTIAL_STATUS = {'warning': WARNING, 'critical': CRITICAL, 'ok': OK}
_REQUIREMENT_WORDS = {Status.PASS: 'pass', Status.PARTIAL: 'partial', Status.FAIL: 'fail', Status.UNKNOWN: 'unknown'}


@dataclass(frozen=True)
class Gauge:
    name: str  # without the namespace
    value: float
    tags: Tuple[str, ...]


@dataclass(frozen=True)
class ServiceCheck:
    name: str  # without the namespace
    status: int
    tags: Tuple[str, ...]
    message: Optional[str]


@dataclass(frozen=True)
class Submissions:
    gauges: Tuple[Gauge, ...]
    service_checks: Tuple[ServiceCheck, ...]


def service_check_status(result: RuleResult, partial: str) -> int:
    if result.status is Status.UNKNOWN:
        return UNKNOWN
    if result.status is Status.FAIL:
        return CRITICAL
    if result.status is Status.PARTIAL:
        return _PARTIAL_STATUS[partial]
    return OK


def _noteworthy(result: RuleResult) -> List[RequirementResult]:
    return sorted((r for r in result.requirements if r.status is not Status.PASS), key=lambda r: -r.status)


def printable(text: str) -> str:
    """Rule text may hold bytes that are not UTF-8 (kept as surrogates): show them escaped, so that the
    message can be encoded and sent."""
    return text.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


def message(result: RuleResult) -> str:
    return printable(_message(result))


def _message(result: RuleResult) -> str:
    """One or two lines for the person on call: what fails and where, then the fix."""
    if result.status is Status.UNKNOWN:
        return '{} could not be evaluated: {}'.format(result.rule.name, result.error)
    problems = _noteworthy(result)
    if not problems:
        return ''
    worst = problems[0]
    first = '{} {} ({}): {}'.format(result.rule.name, worst.requirement, _REQUIREMENT_WORDS[worst.status], worst.explanation)
    others = ['{} {}'.format(r.requirement, _REQUIREMENT_WORDS[r.status]) for r in problems[1:]]
    if others:
        first += ' [also: {}]'.format(', '.join(others))
    fixes = [fix for r in problems for fix in r.remediation]
    fixes = list(dict.fromkeys(fixes))
    return first + ('\nFix: ' + '; '.join(fixes) if fixes else '')


def submissions(outcome: Outcome, partial: str, instance_tags: Sequence[str]) -> Submissions:
    tags = tuple(instance_tags) + outcome.rule.tags
    result = outcome.result
    if result is None:
        return Submissions((Gauge('applicable', 0, tags),), ())
    status = service_check_status(result, partial)
    gauges = [Gauge('applicable', 1, tags), Gauge('collection.duration', outcome.duration, tags)]
    if status != UNKNOWN:
        gauges.append(Gauge('compliant', 1 if status == OK else 0, tags))
        gauges.append(Gauge('ruleset.rules', result.rules_on_path, tags))
        gauges.extend(
            Gauge('requirement.status', int(r.status), tags + ('requirement:' + r.requirement,)) for r in result.requirements
        )
    check = ServiceCheck(SERVICE_CHECK, status, tags, None if status == OK else message(result))
    return Submissions(tuple(gauges), (check,))


def _position(position) -> Optional[Dict[str, Any]]:
    if position is None:
        return None
    return {
        'ruleset': position.ruleset or 'main',
        'table': position.table,
        'chain': position.chain,
        'position': position.index,
        'text': position.text,
        'line': position.line or None,
    }


def to_json(outcome: Outcome, partial: str) -> Dict[str, Any]:
    """The CLI's JSON for one rule."""
    rule = outcome.rule
    document: Dict[str, Any] = {
        'rule': rule.name,
        'rule_id': rule.rule_id,
        'family': rule.family,
        'applicable': outcome.applicability.applicable,
        'applicability': outcome.applicability.reason,
        'sources': list(outcome.origins),
        'duration_seconds': round(outcome.duration, 6),
    }
    result = outcome.result
    if result is None:
        return document
    status = service_check_status(result, partial)
    document.update(
        {
            'status': STATUS_NAMES[status],
            'status_code': status,
            'mode': result.mode,
            'message': message(result) or None,
            'error': result.error,
            'rules_on_path': result.rules_on_path if result.status is not Status.UNKNOWN else None,
            'requirements': [
                {
                    'requirement': r.requirement,
                    'status': _REQUIREMENT_WORDS[r.status],
                    'status_code': int(r.status),
                    'explanation': r.explanation,
                    'deciding': _position(r.deciding),
                    'deviations': [dict(_position(d.where) or {}, verdict=d.verdict) for d in r.deviations],
                    'remediation': list(r.remediation),
                }
                for r in result.requirements
            ],
        }
    )
    return document


def to_text(outcome: Outcome, partial: str) -> str:
    """The CLI's human report for one rule."""
    rule = outcome.rule
    header = '{} ({}, {})'.format(rule.name, rule.family, rule.rule_id)
    result = outcome.result
    if result is None:
        return '{}: NOT APPLICABLE - {}\n'.format(header, outcome.applicability.reason)
    status = service_check_status(result, partial)
    lines = ['{}: {}'.format(header, STATUS_NAMES[status])]
    if outcome.origins:
        lines.append('  evaluated: {} ({} mode)'.format(', '.join(outcome.origins), result.mode))
    if result.status is Status.UNKNOWN:
        lines.append('  could not evaluate: {}'.format(result.error))
        return printable('\n'.join(lines) + '\n')
    for requirement in result.requirements:
        lines.append('  [{}] {}: {}'.format(_REQUIREMENT_WORDS[requirement.status].upper(), requirement.requirement, requirement.explanation))
        for deviation in requirement.deviations[:10]:
            lines.append('      part {} by {}'.format(deviation.verdict, deviation.where.describe()))
        if len(requirement.deviations) > 10:
            lines.append('      ... and {} more'.format(len(requirement.deviations) - 10))
        for fix in requirement.remediation:
            lines.append('      fix: {}'.format(fix))
    return printable('\n'.join(lines) + '\n')
