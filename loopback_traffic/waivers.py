"""Waivers (spec section 5, "Waivers"): deviations a fleet accepts on purpose, and how they change a result.

Applied after evaluation, never inside it: :func:`apply` is a pure function of a :class:`RuleResult`, the
instance's waivers and today's date. A waiver waives deviations (the rules that give part of a packet
class another verdict), never a requirement: a requirement whose bulk fails stays failed. Pure: no I/O.
"""
from __future__ import annotations

import datetime
import difflib
import re
from dataclasses import dataclass, replace
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from .requirements import REQUIREMENTS
from .results import Deviation, Position, RequirementResult, RuleResult, Status

OPTION = 'waivers'
KEYS = ('requirement', 'chain', 'rule', 'justification', 'expires')
REQUIREMENT_NAMES = tuple(requirement.name for requirement in REQUIREMENTS)


class InvalidWaiver(ValueError):
    """A waiver the check cannot use; the message names the entry (``waivers[N]``) and what is wrong."""


@dataclass(frozen=True)
class Waiver:
    index: int  # its position in the `waivers` list, 0-based: it is named `waivers[index]`
    requirement: str
    chain: Optional[str]  # a chain name, `*` matching any run of characters
    rule: Optional[str]  # the exact text of one rule, as the check shows it
    justification: str
    expires: datetime.date  # the last day it applies

    @property
    def name(self) -> str:
        return '{}[{}]'.format(OPTION, self.index)

    def expired(self, today: datetime.date) -> bool:
        return today > self.expires

    def matches(self, requirement: str, where: Position) -> bool:
        if requirement != self.requirement:
            return False
        if self.rule is not None:
            return where.text.strip() == self.rule
        return self.chain is not None and _pattern(self.chain).fullmatch(where.chain) is not None


def _pattern(chain: str) -> 're.Pattern[str]':
    return re.compile('.*'.join(re.escape(part) for part in chain.split('*')), re.S)


@dataclass(frozen=True)
class Match:
    """A deviation of a requirement and the waiver that matched it."""

    requirement: str
    deviation: Deviation
    waiver: Waiver


@dataclass(frozen=True)
class Applied:
    """A result with the waivers applied, and what they did.

    ``result``: the adjusted result (the waived deviations taken out of each requirement; a partial
    requirement left without deviations passes and needs no fix). ``waived``: the deviations a valid
    waiver matched. ``expired``: the deviations only an expired waiver matched (they count as before).
    ``refused``: waivers that match the rule that decides a failing requirement for the bulk of its
    packets, which a waiver cannot waive. ``lapsed``: every expired waiver."""

    result: Optional[RuleResult]
    original: Optional[RuleResult] = None
    waived: Tuple[Match, ...] = ()
    expired: Tuple[Match, ...] = ()
    refused: Tuple[Match, ...] = ()
    lapsed: Tuple[Waiver, ...] = ()  # every expired waiver, whether it matches anything or not

    def waived_count(self, requirement: str) -> int:
        return sum(1 for match in self.waived if match.requirement == requirement)

    def waived_in(self, requirement: str) -> Tuple[Match, ...]:
        return tuple(match for match in self.waived if match.requirement == requirement)

    def expired_in(self, requirement: str) -> Tuple[Match, ...]:
        return tuple(match for match in self.expired if match.requirement == requirement)

    def refused_in(self, requirement: str) -> Tuple[Match, ...]:
        return tuple(match for match in self.refused if match.requirement == requirement)

    @property
    def expired_waivers(self) -> Tuple[Waiver, ...]:
        return tuple(dict.fromkeys(match.waiver for match in self.expired))


def apply(result: Optional[RuleResult], waivers: Sequence[Waiver], today: datetime.date) -> Applied:
    """``result`` with ``waivers`` applied on ``today``. A result that could not be evaluated (UNKNOWN) or
    that is absent (not applicable) is returned as it is."""
    if result is None or result.status is Status.UNKNOWN or not waivers:
        return Applied(result, result)
    active = [waiver for waiver in waivers if not waiver.expired(today)]
    expired = [waiver for waiver in waivers if waiver.expired(today)]
    waived: List[Match] = []
    ignored: List[Match] = []
    refused: List[Match] = []
    requirements = []
    for requirement in result.requirements:
        kept = []
        for deviation in requirement.deviations:
            waiver = _first(active, requirement.requirement, deviation.where)
            if waiver is not None:
                waived.append(Match(requirement.requirement, deviation, waiver))
                continue
            old = _first(expired, requirement.requirement, deviation.where)
            if old is not None:
                ignored.append(Match(requirement.requirement, deviation, old))
            kept.append(deviation)
        if requirement.status is Status.FAIL and requirement.deciding is not None:
            for waiver in active:
                if waiver.matches(requirement.requirement, requirement.deciding):
                    refused.append(Match(requirement.requirement, Deviation(requirement.deciding, requirement.verdict or ''), waiver))
        requirements.append(_adjusted(requirement, tuple(kept)))
    if waived:
        result_after = replace(result, requirements=tuple(requirements), status=max((r.status for r in requirements), default=Status.PASS))
    else:
        result_after = result
    return Applied(result_after, result, tuple(waived), tuple(ignored), tuple(refused), tuple(expired))


def _first(waivers: Sequence[Waiver], requirement: str, where: Position) -> Optional[Waiver]:
    return next((waiver for waiver in waivers if waiver.matches(requirement, where)), None)


def _adjusted(requirement: RequirementResult, kept: Tuple[Deviation, ...]) -> RequirementResult:
    if len(kept) == len(requirement.deviations):
        return requirement
    if requirement.status is Status.PARTIAL and not kept:
        # The bulk got the required verdict and every deviation is waived: nothing left to fix.
        return replace(requirement, status=Status.PASS, deviations=kept, remediation=(), fixes=(), uncertain=())
    return replace(requirement, deviations=kept)


# --- the option --------------------------------------------------------------------------------------


def parse(value: Any) -> Tuple[Waiver, ...]:
    """The ``waivers`` option -> waivers. Raises :class:`InvalidWaiver` naming the entry."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InvalidWaiver('`{}` must be a list of waivers (requirement, chain or rule, justification, expires), not {!r}'.format(OPTION, value))
    return tuple(_waiver(index, entry) for index, entry in enumerate(value))


def _waiver(index: int, entry: Any) -> Waiver:
    name = '{}[{}]'.format(OPTION, index)
    if not isinstance(entry, Mapping):
        raise InvalidWaiver('`{}` must be a mapping with requirement, chain or rule, justification and expires, not {!r}'.format(name, entry))
    label = _label(name, entry)
    for key in entry:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = ' (did you mean `{}`?)'.format(close[0]) if close else ''
            raise InvalidWaiver('{}: unknown key `{}`{}; a waiver has {}'.format(label, key, hint, ', '.join(KEYS)))
    requirement = _text(entry, 'requirement', label) or ''
    if requirement not in REQUIREMENT_NAMES:
        raise InvalidWaiver('{}: `requirement` must be one of {}, not {!r}'.format(label, ', '.join(REQUIREMENT_NAMES), requirement))
    chain = _text(entry, 'chain', label, required=False)
    rule = _text(entry, 'rule', label, required=False)
    if (chain is None) == (rule is None):
        raise InvalidWaiver(
            '{}: give exactly one of `chain` (a chain name, `*` as a wildcard, e.g. KUBE-EXTERNAL-SERVICES) or `rule` '
            '(the exact text of one rule)'.format(label)
        )
    justification = _text(entry, 'justification', label, what='why the deviation is accepted') or ''
    return Waiver(index, requirement, chain, rule, justification, _date(entry, label))


def _label(name: str, entry: Mapping[Any, Any]) -> str:
    what = entry.get('chain') or entry.get('rule')
    if isinstance(what, str) and what.strip():
        return '`{}` ({} {})'.format(name, 'chain' if entry.get('chain') else 'rule', what.strip())
    return '`{}`'.format(name)


def _text(entry: Mapping[Any, Any], key: str, label: str, required: bool = True, what: str = '') -> Optional[str]:
    value = entry.get(key)
    if value is None:
        if required:
            raise InvalidWaiver('{}: `{}` is required{}'.format(label, key, ' ({})'.format(what) if what else ''))
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidWaiver('{}: `{}` must be a non-empty string, not {!r}'.format(label, key, value))
    return value.strip()


def _date(entry: Mapping[Any, Any], label: str) -> datetime.date:
    value = entry.get('expires')
    if value is None:
        raise InvalidWaiver('{}: `expires` is required (an ISO 8601 date such as 2027-06-30, the last day the waiver applies)'.format(label))
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str) and _ISO.fullmatch(value.strip()):
        try:
            return datetime.date.fromisoformat(value.strip()[:10])
        except ValueError:  # 2027-02-30
            pass
    raise InvalidWaiver('{}: `expires` must be an ISO 8601 date such as 2027-06-30, not {!r}'.format(label, value))


_ISO = re.compile(r'\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?')
