"""Outcome -> what the check submits (spec section 5) and every word a person reads: the service check
message, the status-change event and log line, the CLI's reports. Pure: no I/O."""
from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import waivers as waiver_rules
from .applicability import Applicability
from .pipeline import Outcome, RuleOutcome
from .requirements import ACCEPT, DENY, QUEUE, REQUIREMENTS, ComplianceRule, RuleDefinition
from .results import ABSENT, NOT_FIRST, PRESENT, Deviation, Position, RequirementResult, RuleResult, Status
from .waivers import Applied, Waiver

NAMESPACE = 'loopback_traffic'
SERVICE_CHECK = 'compliance'
EVENT_TYPE = 'loopback_traffic.status_change'

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: 'OK', WARNING: 'WARNING', CRITICAL: 'CRITICAL', UNKNOWN: 'UNKNOWN'}
ALERT_TYPES = {OK: 'success', WARNING: 'warning', CRITICAL: 'error', UNKNOWN: 'info'}
_PARTIAL_STATUS = {'warning': WARNING, 'critical': CRITICAL, 'ok': OK}
_REQUIREMENT_WORDS = {Status.PASS: 'pass', Status.PARTIAL: 'partial', Status.FAIL: 'fail', Status.UNKNOWN: 'unknown'}
VERDICT_WORDS = {ACCEPT: 'accepted', DENY: 'dropped', QUEUE: 'queued to user space'}
_DESCRIPTIONS = {requirement.name: requirement.description for requirement in REQUIREMENTS}

# What the Datadog UI and notifications show of a service check message, and of an event's text.
MESSAGE_LIMIT = 500
EVENT_TITLE_LIMIT = 100
EVENT_TEXT_LIMIT = 4000
EVENT_DEVIATIONS = 20  # per requirement; the others are counted
HEAD_MIN = 160  # the shortest the what-and-where line of a message is made
_ELSEWHERE = 'in the loopback_traffic event'
_APPLICABLE = Applicability(True, '')


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


def status_code(status: Status, partial: str) -> int:
    """A rule's or requirement's status as a service check status (a partial one as ``partial`` says)."""
    if status is Status.UNKNOWN:
        return UNKNOWN
    if status is Status.FAIL:
        return CRITICAL
    if status is Status.PARTIAL:
        return _PARTIAL_STATUS[partial]
    return OK


def service_check_status(result: RuleResult, partial: str) -> int:
    return status_code(result.status, partial)


def printable(text: str) -> str:
    """Rule text may hold bytes that are not UTF-8 (kept as surrogates): show them escaped, so that the
    message can be encoded and sent."""
    return text.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


# --- waivers ------------------------------------------------------------------------------------------


def _verdict(verdict: Optional[str]) -> str:
    return VERDICT_WORDS.get(verdict or '', verdict or 'decided')


def describe_position(position: Position) -> str:
    """``filter INPUT rule 3 (handle 12): -A INPUT ...``, ``filter INPUT policy DROP``."""
    where = '{} {}'.format(position.table, position.chain)
    if position.ruleset:
        where = '{} ({} ruleset)'.format(where, position.ruleset)
    if position.index is None:
        return '{} {}'.format(where, position.text)
    handle = ' (handle {})'.format(position.handle) if position.handle else ''
    uncertain = ' ({})'.format('; '.join(position.uncertain)) if position.uncertain else ''
    return '{} rule {}{}: {}{}'.format(where, position.index, handle, position.text, uncertain)


def _deviation_words(deviation: Deviation) -> str:
    part = deviation.part
    what = 'the {} part '.format(part) if part else ''
    return '{}{} by {}'.format(what, _verdict(deviation.verdict), describe_position(deviation.where))


def explanation(requirement: RequirementResult) -> str:
    """What a requirement's result rests on, in one sentence: the verdict and the rule that decided
    it, the first deviation of a partial result, and the ipsets whose contents were not known; in
    literal mode, where the literal rule was found, or that it was not."""
    deciding = requirement.deciding
    if requirement.finding == PRESENT and deciding is not None:
        return 'present: {}'.format(describe_position(deciding))
    if requirement.finding == NOT_FIRST and deciding is not None:
        return '{} is not before every rule that drops its traffic: {}'.format(requirement.literal, describe_position(deciding))
    if requirement.finding == ABSENT or deciding is None:
        return 'no rule {} in table filter'.format(requirement.literal)
    text = '{} by {}'.format(_verdict(requirement.verdict), describe_position(deciding))
    deviations = requirement.deviations
    if requirement.status is Status.PARTIAL and deviations:
        more = ' (and {} more)'.format(len(deviations) - 1) if len(deviations) > 1 else ''
        text += '; but part of it is {}{}'.format(_deviation_words(deviations[0]), more)
    if requirement.uncertain:
        text += '; rules whose ipsets are not known were taken to match part of the packets ({})'.format('; '.join(requirement.uncertain))
    return text


def apply_waivers(result: Optional[RuleResult], waivers: Sequence[Waiver], today: datetime.date) -> Applied:
    """``result`` with the instance's waivers applied (see :mod:`.waivers`)."""
    return waiver_rules.apply(result, waivers, today)


def describe_waiver(waiver: Waiver) -> str:
    what = 'rule {}'.format(waiver.rule) if waiver.rule is not None else 'chain {}'.format(waiver.chain)
    return '{} ({} {}, until {})'.format(waiver.name, waiver.requirement, what, waiver.expires.isoformat())


def expired_waiver_log(waiver: Waiver) -> str:
    return '{} expired on {} and is ignored: the deviations it matches count again; renew it (a later `expires`) or remove it'.format(
        describe_waiver(waiver), waiver.expires.isoformat()
    )


# --- who manages a chain (one catalogue) -------------------------------------------------------------


@dataclass(frozen=True)
class Manager:
    name: str
    chains: Tuple[str, ...]  # chain name patterns (`*`: any run of characters) of the chains it writes
    tables: Tuple[str, ...]  # native nf_tables tables it owns (every chain in them is its)
    reasons: Tuple[Tuple[str, str], ...]  # (chain pattern, why that chain is there), most specific first
    general: str  # why a chain of it is there, when no reason names the chain
    advice: str  # what to do about a deviation in it


MANAGERS: Tuple[Manager, ...] = (
    Manager(
        'kube-proxy',
        ('KUBE-*',),
        ('kube-proxy',),
        (
            ('KUBE-EXTERNAL-SERVICES', 'drops NodePort and external-IP traffic for services without local endpoints, and rejects it for services without any endpoint'),
            ('external-services', 'drops NodePort and external-IP traffic for services without local endpoints, and rejects it for services without any endpoint'),
            ('KUBE-SERVICES', 'rejects traffic to the cluster IPs of services without endpoints (filter), or sends service traffic to the service chains (nat)'),
            ('service-endpoints-check', 'rejects traffic to services without endpoints'),
            ('KUBE-NODEPORTS', 'accepts health-check NodePort traffic (filter), or sends NodePort traffic to the service chains (nat)'),
            ('nodeports', 'sends NodePort traffic to the service chains'),
            ('KUBE-FIREWALL', 'drops traffic to 127.0.0.0/8 that comes from elsewhere and was not DNATed, because kube-proxy turns on route_localnet for localhost NodePorts'),
            ('KUBE-PROXY-FIREWALL', 'enforces the loadBalancerSourceRanges of LoadBalancer services'),
            ('firewall-*', 'enforces the loadBalancerSourceRanges of LoadBalancer services'),
            ('KUBE-FORWARD', 'accepts forwarded pod traffic and drops invalid packets'),
            ('KUBE-*-CANARY', 'is an empty chain kube-proxy or the kubelet watches to notice that the rules were flushed'),
            ('KUBE-MARK-*', 'marks packets to be masqueraded or dropped'),
            ('KUBE-POSTROUTING', 'masquerades the packets marked for it'),
            ('KUBE-SVC-*', "balances one service's traffic over its endpoints"),
            ('KUBE-SVL-*', "balances one service's traffic over its local endpoints"),
            ('KUBE-SEP-*', "sends a service's traffic to one of its endpoints (DNAT)"),
            ('KUBE-EXT-*', "balances one service's external traffic over its endpoints (DNAT)"),
            ('KUBE-FW-*', "filters one LoadBalancer service's traffic"),
        ),
        'is written by kube-proxy (or the kubelet) for Kubernetes Services',
        'kube-proxy rewrites it on every sync: change the Service, or accept the deviation with a waiver, rather than edit the chain',
    ),
    Manager(
        'Docker',
        ('DOCKER*',),
        (),
        (
            ('DOCKER-USER', "is where Docker expects the administrator's own rules; Docker runs it before its own"),
            ('DOCKER-ISOLATION-STAGE-*', 'drops traffic between separate Docker networks'),
            ('DOCKER-INGRESS', "is Swarm's routing mesh for published ports"),
            ('DOCKER-*', "holds Docker's forwarding rules for container networks"),
            ('DOCKER', 'publishes container ports (DNAT in nat, ACCEPT of the forwarded traffic in filter)'),
        ),
        'is written by the Docker daemon for container networking',
        "Docker rewrites it when the daemon or a container starts: put your own rules in DOCKER-USER or change the container's published ports, rather than edit the chain",
    ),
    Manager(
        'ufw',
        ('ufw-*', 'ufw6-*'),
        (),
        (
            ('ufw-before-*', "holds the rules of /etc/ufw/before.rules, ufw's own loopback ACCEPT among them"),
            ('ufw6-before-*', "holds the rules of /etc/ufw/before6.rules, ufw's own loopback ACCEPT among them"),
            ('ufw*-user-*', 'holds the rules added with `ufw allow` and `ufw deny`'),
            ('ufw*-after-*', 'holds the rules of /etc/ufw/after.rules (after6.rules for IPv6)'),
            ('ufw*-not-local', 'drops traffic to addresses that are not local (from before.rules)'),
            ('ufw*-reject-*', "applies ufw's default policy (`ufw default`)"),
            ('ufw*-skip-to-policy-*', "applies ufw's default policy (`ufw default`)"),
            ('ufw*-logging-*', "logs what ufw's policy blocks or allows"),
            ('ufw*-track-*', 'tracks the connections ufw lets through'),
        ),
        'is written by ufw',
        'ufw rewrites it from /etc/ufw/*.rules and its commands when it reloads: change it there (for example `ufw allow in on lo`), not with iptables',
    ),
    Manager(
        'firewalld',
        ('*_direct', '*INPUT_ZONES*', '*OUTPUT_ZONES*', 'IN_*', 'FWDI_*', 'FWDO_*', 'FWD_*', 'PRE_*', 'POST_*', '*PREROUTING_ZONES*', '*POSTROUTING_ZONES*'),
        ('firewalld',),
        (
            ('*_direct', 'holds firewalld direct rules (`firewall-cmd --direct`)'),
            ('*ZONES*', 'sends traffic to the firewalld zone of its interface or source'),
            ('*IN_*', 'holds the rules of one firewalld zone for incoming traffic (its services, ports and rich rules)'),
            ('*FWD*', 'holds the rules of one firewalld zone for forwarded traffic'),
        ),
        'is written by firewalld from its zones',
        'firewalld rewrites it when it reloads: change the zone with firewall-cmd (for example put lo in the trusted zone), not with iptables or nft',
    ),
)


def _matches(pattern: str, name: str) -> bool:
    return re.fullmatch('.*'.join(re.escape(part) for part in pattern.split('*')), name, re.S) is not None


def manager_of(where: Position) -> Optional[Tuple[Manager, str]]:
    """Which known manager writes the chain of ``where``, and why that chain is there."""
    table = where.table.rsplit(' ', 1)[-1]
    native = ' ' in where.table
    for manager in MANAGERS:
        owned = (native and table in manager.tables) or (not native and any(_matches(p, where.chain) for p in manager.chains))
        if owned:
            reason = next((why for pattern, why in manager.reasons if _matches(pattern, where.chain)), manager.general)
            return manager, reason
    return None


def _manager_note(where: Position, short: bool = False) -> Optional[str]:
    found = manager_of(where)
    if found is None:
        return None
    manager, reason = found
    note = "{} is {}'s chain: it {}".format(where.chain, manager.name, reason)
    return note if short else '{}; {}'.format(note, manager.advice)


def _manager_notes(positions: Sequence[Position], short: bool = False) -> List[str]:
    notes: Dict[str, str] = {}
    for where in positions:
        if where.chain not in notes:
            note = _manager_note(where, short)
            if note is not None:
                notes[where.chain] = note
    return list(notes.values())


# --- a rule's families --------------------------------------------------------------------------------

# A rule's outcome: all its families (RuleOutcome) or one (Outcome); with the waivers applied to each
# family's result (an Applied, or family -> Applied).
Reportable = Union[Outcome, RuleOutcome]
AppliedWaivers = Union[None, Applied, Mapping[str, Applied]]


@dataclass(frozen=True)
class _Part:
    outcome: Outcome
    applied: Optional[Applied]
    label: str  # the family, where the rule covers several; '' otherwise

    @property
    def result(self) -> Optional[RuleResult]:
        return self.applied.result if self.applied is not None else self.outcome.result

    @property
    def family(self) -> str:
        return self.outcome.rule.family


def definition_of(rule: ComplianceRule) -> RuleDefinition:
    return RuleDefinition(rule.name, rule.rule_id, rule.manager, (rule,))


def _rule_outcome(outcome: Reportable) -> RuleOutcome:
    return outcome if isinstance(outcome, RuleOutcome) else RuleOutcome(definition_of(outcome.rule), (outcome,))


def _parts(outcome: Reportable, applied: AppliedWaivers) -> Tuple[RuleDefinition, List[_Part]]:
    whole = _rule_outcome(outcome)
    several = len(whole.definition.families) > 1
    parts = []
    for part in whole.parts:
        if isinstance(applied, Applied):
            found: Optional[Applied] = applied
        else:
            found = applied.get(part.rule.family) if applied is not None else None
        parts.append(_Part(part, found, part.rule.family if several else ''))
    return whole.definition, parts


def _known(parts: Sequence[_Part]) -> List[Tuple[_Part, RuleResult]]:
    return [(part, part.result) for part in parts if part.result is not None]


def _combined_status(codes: Sequence[int]) -> int:
    """The worse family decides; a proven failure is worse than a family that could not be judged."""
    if CRITICAL in codes:
        return CRITICAL
    return max(codes)


def _status(parts: Sequence[_Part], partial: str) -> Optional[int]:
    codes = [service_check_status(result, partial) for _, result in _known(parts)]
    return _combined_status(codes) if codes else None


def rule_status(outcome: Reportable, partial: str, applied: AppliedWaivers = None) -> Optional[int]:
    """The rule's service check status (its worse family decides); None when it is not applicable."""
    return _status(_parts(outcome, applied)[1], partial)


def _labelled(label: str, text: str) -> str:
    return '{} {}'.format(label, text) if label else text


# --- the service check message ------------------------------------------------------------------------


def _noteworthy(result: RuleResult) -> List[RequirementResult]:
    return sorted((r for r in result.requirements if r.status is not Status.PASS), key=lambda r: -r.status)


def _fixes(requirements: Sequence[RequirementResult]) -> List[str]:
    return list(dict.fromkeys(fix for r in requirements for fix in r.remediation))


def _elide(text: str, room: int) -> str:
    """``text`` in at most ``room`` characters: its start and its end (where a rule's target is)."""
    if len(text) <= room:
        return text
    if room < 12:
        return text[:room]
    tail = max(room // 3, 4)
    return text[: room - tail - 3] + '...' + text[-tail:]


def _shorten(line: str, positions: Sequence[Position], room: int, cut: bool = True) -> str:
    """``line`` in at most ``room`` characters: the longest rule texts it quotes shortened first (to no
    less than 40 characters each), then, with ``cut``, the line itself ('' when that is not allowed and
    would be needed)."""
    texts = sorted({printable(p.text) for p in positions if p.text and printable(p.text) in line}, key=len, reverse=True)
    for text in texts:
        if len(line) <= room:
            break
        excess = len(line) - room
        line = line.replace(text, _elide(text, max(len(text) - excess, 40)))
    if len(line) <= room:
        return line
    return _elide(line, room) if cut else ''


def _positions(requirement: RequirementResult) -> List[Position]:
    found = [requirement.deciding] if requirement.deciding is not None else []
    return found + [d.where for d in requirement.deviations]


def message(result: Union[RuleResult, Reportable], applied: AppliedWaivers = None, limit: int = MESSAGE_LIMIT) -> str:
    """The service check message of a rule (all its families) or of one family's result."""
    if isinstance(result, RuleResult):
        return _message(definition_of(result.rule), [_Part(Outcome(result.rule, _APPLICABLE, result, 0.0), _single(applied), '')], limit)
    definition, parts = _parts(result, applied)
    return _message(definition, parts, limit)


def _single(applied: AppliedWaivers) -> Optional[Applied]:
    return applied if isinstance(applied, Applied) or applied is None else next(iter(applied.values()), None)


def _unknown_words(definition: RuleDefinition, unknown: Sequence[Tuple[_Part, RuleResult]]) -> str:
    errors = list(dict.fromkeys(result.error or 'unknown' for _, result in unknown))
    if len(errors) == 1:
        labels = ', '.join(part.label for part, _ in unknown if part.label)
        return '{}{} could not be evaluated: {}'.format(definition.name, ' ({})'.format(labels) if labels else '', errors[0])
    return '{} could not be evaluated: {}'.format(definition.name, '; '.join('{}: {}'.format(part.label, result.error) for part, result in unknown))


def _message(definition: RuleDefinition, parts: Sequence[_Part], limit: int) -> str:
    """For the person on call, in ``limit`` characters: what fails and where (one line), then the fix,
    then what else there is; what does not fit is counted ("and N more")."""
    known = _known(parts)
    unknown = [(part, result) for part, result in known if result.status is Status.UNKNOWN]
    judged = [(part, result) for part, result in known if result.status is not Status.UNKNOWN]
    if unknown and not judged:
        return _elide(printable(_unknown_words(definition, unknown)), limit)
    problems = sorted(((part, r) for part, result in judged for r in _noteworthy(result)), key=lambda found: -found[1].status)
    if not problems and not unknown:
        return ''
    extras = []
    if problems:
        part, worst = problems[0]
        head = printable('{} {} ({}): {}'.format(definition.name, _labelled(part.label, worst.requirement), _REQUIREMENT_WORDS[worst.status], explanation(worst)))
        positions = _positions(worst)
        if unknown:
            extras.append(_unknown_words(definition, unknown))
    else:
        head, positions = printable(_unknown_words(definition, unknown)), []
    fixes = [printable(fix) for fix in dict.fromkeys(fix for _, r in problems for fix in r.remediation)]
    extras += [_disabled_words(part.outcome) for part in parts if part.outcome.applicability.disabled_by][:1]
    if len(problems) > 1:
        extras.append('Also: ' + ', '.join('{} {}'.format(_labelled(part.label, r.requirement), _REQUIREMENT_WORDS[r.status]) for part, r in problems[1:]))
    for part, result in judged:
        extras += _waiver_extras(part, result)
    extras += _manager_notes([p for _, r in problems for p in _positions(r)], short=True)
    extras = [printable(extra) for extra in dict.fromkeys(extras)]
    return _fit(head, positions, fixes, extras, limit)


def _disabled_words(outcome: Outcome) -> str:
    return '{} is installed but not enabled (ENABLED=no in {})'.format(outcome.rule.manager, outcome.applicability.disabled_by)


def _waiver_extras(part: _Part, result: RuleResult) -> List[str]:
    applied = part.applied
    if applied is None:
        return []
    extras = []
    for waiver in applied.expired_waivers:
        extras.append('Expired waiver ignored: {}'.format(describe_waiver(waiver)))
    for match in applied.refused:
        extras.append('{} cannot waive the rule that decides {} for most of its packets'.format(match.waiver.name, _labelled(part.label, match.requirement)))
    for r in result.requirements:
        waived = applied.waived_in(r.requirement)
        if waived:
            names = ', '.join(dict.fromkeys(m.waiver.name for m in waived))
            extras.append('Waived: {} deviation{} of {} ({})'.format(len(waived), 's' if len(waived) > 1 else '', _labelled(part.label, r.requirement), names))
    return extras


def _fit(head: str, positions: Sequence[Position], fixes: Sequence[str], extras: Sequence[str], limit: int) -> str:
    """The head (what and where), the fix line, then the extras, in ``limit`` characters. The head gives
    way first (its rule texts shortened, down to HEAD_MIN characters), then the extras from the last,
    then the fixes from the last; whatever is left out is counted ("and N more")."""

    def joined(lines: Sequence[str]) -> int:
        return sum(len(line) for line in lines) + len(lines) - 1

    def more(omitted: int) -> List[str]:
        return ['and {} more, {}'.format(omitted, _ELSEWHERE)] if omitted else []

    fix_lines = [('Fix: ' + '; '.join(fixes[:n])) for n in range(len(fixes), 0, -1)] or ['']
    for fix_index, fix_line in enumerate(fix_lines):
        for shown in range(len(extras), -1, -1):
            rest = ([fix_line] if fix_line else []) + list(extras[:shown]) + more(len(extras) - shown + fix_index)
            room = limit - (joined(rest) + 1 if rest else 0)
            if len(head) <= room:
                return '\n'.join([head] + rest)
            short = _shorten(head, positions, room, cut=False) if room >= HEAD_MIN else ''
            if short:
                return '\n'.join([short] + rest)
    # Not even the first fix fits next to a shortened head: cut the head.
    rest = ([fix_lines[-1]] if fix_lines[-1] else []) + more(len(extras) + len(fix_lines) - 1)
    room = max(limit - (joined(rest) + 1 if rest else 0), HEAD_MIN)
    return '\n'.join([_shorten(head, positions, room)] + rest)[:limit]


# --- what the check submits every run -----------------------------------------------------------------


def submissions(outcome: Reportable, partial: str, instance_tags: Sequence[str], applied: AppliedWaivers = None) -> Submissions:
    """One service check per rule (all its families), its gauges, and the requirement gauges per family."""
    definition, parts = _parts(outcome, applied)
    known = _known(parts)
    if not known:
        return Submissions((Gauge('applicable', 0, tuple(instance_tags) + definition.tags(tuple(p.family for p in parts) or None)),), ())
    tags = tuple(instance_tags) + definition.tags(tuple(part.family for part, _ in known))
    status = _status(parts, partial)
    assert status is not None
    duration = sum(part.outcome.duration for part in parts)
    gauges = [Gauge('applicable', 1, tags), Gauge('collection.duration', duration, tags), Gauge('evaluated', 0 if status == UNKNOWN else 1, tags)]
    if status != UNKNOWN:
        gauges.append(Gauge('compliant', 1 if status == OK else 0, tags))
        judged = [(part, result) for part, result in known if result.status is not Status.UNKNOWN]
        gauges.append(Gauge('ruleset.rules', sum(result.rules_on_path for _, result in judged), tags))
        for part, result in judged:
            part_tags = tuple(instance_tags) + part.outcome.rule.tags
            for r in result.requirements:
                requirement_tags = part_tags + ('requirement:' + r.requirement,)
                gauges.append(Gauge('requirement.status', int(r.status), requirement_tags))
                gauges.append(Gauge('waived', part.applied.waived_count(r.requirement) if part.applied is not None else 0, requirement_tags))
    check = ServiceCheck(SERVICE_CHECK, status, tags, None if status == OK else _message(definition, parts, MESSAGE_LIMIT))
    return Submissions(tuple(gauges), (check,))


# --- status changes: an event and a log line -----------------------------------------------------------


@dataclass(frozen=True)
class RuleState:
    """What was last reported of a rule: its service check status (None: not applicable) and the
    reason that goes with it (why not applicable, why UNKNOWN; '' otherwise)."""

    status: Optional[int]
    detail: str = ''


@dataclass(frozen=True)
class Event:
    title: str
    text: str
    alert_type: str
    aggregation_key: str
    tags: Tuple[str, ...]

    def payload(self, timestamp: float) -> Dict[str, Any]:
        """The dictionary ``AgentCheck.event`` takes."""
        return {
            'timestamp': int(timestamp),
            'event_type': EVENT_TYPE,
            'source_type_name': NAMESPACE,
            'msg_title': self.title,
            'msg_text': self.text,
            'aggregation_key': self.aggregation_key,
            'alert_type': self.alert_type,
            'priority': 'normal',
            'tags': list(self.tags),
        }


@dataclass(frozen=True)
class Change:
    """What one run has to tell besides its submissions: the rule's new state, the event to send (a
    status change) and the line to log (any change of state), each None when there is nothing."""

    state: RuleState
    event: Optional[Event] = None
    log_level: int = logging.INFO
    log: Optional[str] = None


def state_of(outcome: Reportable, partial: str, applied: AppliedWaivers = None) -> RuleState:
    _, parts = _parts(outcome, applied)
    status = _status(parts, partial)
    if status is None:
        return RuleState(None, _not_applicable_words(parts))
    errors = [result.error or '' for _, result in _known(parts) if result.status is Status.UNKNOWN]
    return RuleState(status, '; '.join(errors) if status == UNKNOWN else '')


def _not_applicable_words(parts: Sequence[_Part]) -> str:
    reasons = list(dict.fromkeys(part.outcome.applicability.reason for part in parts))
    if len(reasons) == 1:
        return reasons[0]
    return '; '.join('{}: {}'.format(part.label or part.family, part.outcome.applicability.reason) for part in parts)


def left_out(outcome: Reportable) -> List[str]:
    """The families of a rule that were left out where the rest of it is evaluated, with why."""
    _, parts = _parts(outcome, None)
    if not _known(parts):
        return []
    return ['{} left out: {}'.format(part.family, part.outcome.applicability.reason) for part in parts if part.result is None]


def change(
    outcome: Reportable,
    partial: str,
    applied: AppliedWaivers,
    previous: Optional[RuleState],
    last_event_status: Optional[int],
    hostname: str,
    instance_tags: Sequence[str],
) -> Change:
    """Compare this run with the last: ``previous`` is the last state (None on the instance's first run),
    ``last_event_status`` the status of the last event sent for the rule (None: none yet). An event goes
    out when the status differs from the last event's (the first run included); a log line whenever the
    state changes (INFO; WARNING for a change to CRITICAL, spec section 5)."""
    definition, parts = _parts(outcome, applied)
    rule = definition.name
    state = state_of(outcome, partial, applied)
    if state == previous:
        return Change(state)
    if state.status is None:
        return Change(state, None, logging.INFO, printable('{} is not applicable: {}'.format(rule, state.detail)))
    # A change to CRITICAL is a warning; the rest is news (the event of an UNKNOWN says why, at info).
    level = logging.WARNING if state.status == CRITICAL else logging.INFO
    name = STATUS_NAMES[state.status]
    # The log line says what the service check message says (cut to the same size).
    summary = _message(definition, parts, MESSAGE_LIMIT).replace('\n', ' | ')
    if summary.startswith(rule + ' '):
        summary = summary[len(rule) + 1 :]
    if previous is not None and previous.status == state.status:  # still UNKNOWN, for another reason
        return Change(state, None, level, '{} still cannot be evaluated: {}'.format(rule, summary.split(': ', 1)[-1]))
    if previous is not None and previous.status == UNKNOWN:
        log = '{} can be evaluated again: {}'.format(rule, name)
    else:
        log = '{} is {}{}'.format(rule, name, _was(previous.status if previous is not None else None, first=previous is None))
    if summary:
        log += ': ' + summary
    event = None
    if state.status != last_event_status:
        event = _event(definition, parts, partial, state.status, last_event_status, hostname, instance_tags)
    return Change(state, event, level, printable(log))


def _was(status: Optional[int], first: bool = False) -> str:
    if status is None:
        return ' (first evaluation)' if first else ' (was not applicable)'
    return ' (was {})'.format(STATUS_NAMES[status])


def aggregation_key(hostname: str, rule: str) -> str:
    return '{}:{}:{}'.format(NAMESPACE, hostname, rule)


def _event(
    definition: RuleDefinition,
    parts: Sequence[_Part],
    partial: str,
    status: int,
    previous: Optional[int],
    hostname: str,
    instance_tags: Sequence[str],
) -> Event:
    was = _was(previous) if previous is not None else ''
    problems = sorted(((part, r) for part, result in _known(parts) for r in _noteworthy(result) if r.status is not Status.UNKNOWN), key=lambda found: -found[1].status)
    headline = ''
    if status == UNKNOWN:
        headline = ': cannot be evaluated'
    elif problems:
        part, worst = problems[0]
        headline = ': {} {}'.format(_labelled(part.label, worst.requirement), {Status.FAIL: 'fails', Status.PARTIAL: 'partly met'}.get(worst.status, ''))
    title = _elide(printable('{} is {}{}{}'.format(definition.name, STATUS_NAMES[status], was, headline)), EVENT_TITLE_LIMIT)
    text = _event_text(definition, parts, partial, status, previous, hostname)
    tags = tuple(instance_tags) + definition.tags(tuple(part.family for part, _ in _known(parts)))
    return Event(title, text, ALERT_TYPES[status], aggregation_key(hostname, definition.name), tags)


def event_text(outcome: Reportable, partial: str, applied: AppliedWaivers, status: int, previous: Optional[int], hostname: str = '') -> str:
    definition, parts = _parts(outcome, applied)
    return _event_text(definition, parts, partial, status, previous, hostname)


def _event_text(definition: RuleDefinition, parts: Sequence[_Part], partial: str, status: int, previous: Optional[int], hostname: str) -> str:
    """The full explanation: every failing or partial requirement with its deciding rule, every deviation
    (up to EVENT_DEVIATIONS a requirement), every fix, the waivers, in at most EVENT_TEXT_LIMIT
    characters (the fixes come first, so that they are never cut)."""
    known = _known(parts)
    where = ' on {}'.format(hostname) if hostname else ''
    families = ', '.join(part.family for part, _ in known)
    lines = ['{} ({}, {}){} is {}{}.'.format(definition.name, families, definition.rule_id, where, STATUS_NAMES[status], _was(previous, first=previous is None))]
    for part, result in known:
        if part.outcome.origins:
            lines.append('{}: {} ({} mode).'.format(_labelled(part.label, 'Evaluated'), ', '.join(part.outcome.origins), result.mode))
    lines += left_out(RuleOutcome(definition, tuple(part.outcome for part in parts)))
    for part, result in known:
        if result.status is Status.UNKNOWN:
            lines += ['', '{}: {}'.format(_labelled(part.label, 'Could not evaluate'), result.error)]
    judged = [(part, result) for part, result in known if result.status is not Status.UNKNOWN]
    fixes = list(dict.fromkeys(fix for _, result in judged for r in _noteworthy(result) for fix in r.remediation))
    if fixes:
        lines += ['', 'To fix (each command inserts its rule where it takes effect):'] + ['  ' + fix for fix in fixes]
    disabled = [_disabled_words(part.outcome) for part in parts if part.outcome.applicability.disabled_by][:1]
    if disabled:
        lines += [''] + disabled
    if any(result.status is not Status.PASS for _, result in judged) and status == OK:
        lines += ['', 'Partly met requirements are reported as OK (option `partial: ok`).']
    for part, result in judged:
        for requirement in sorted(result.requirements, key=lambda r: (-r.status, r.requirement)):
            lines += [''] + _requirement_lines(requirement, part.applied, part.label)
    lapsed = list(dict.fromkeys(w for part, _ in judged if part.applied is not None for w in part.applied.lapsed))
    if lapsed:
        lines += ['', 'Expired waivers, ignored (the deviations they match count again):']
        lines += ['  {}: "{}"'.format(describe_waiver(w), w.justification) for w in lapsed]
    return _cut(lines)


def _requirement_lines(requirement: RequirementResult, applied: Optional[Applied], label: str = '') -> List[str]:
    name = requirement.requirement
    lines = ['{}: {} - {}'.format(_labelled(label, name), _REQUIREMENT_WORDS[requirement.status].upper(), _DESCRIPTIONS.get(name, ''))]
    if requirement.deciding is not None:
        lines.append('  decided: {} by {}'.format(_verdict(requirement.verdict), describe_position(requirement.deciding)))
    else:
        lines.append('  ' + explanation(requirement))
    positions = _positions(requirement) if requirement.status is not Status.PASS else []
    deviations = requirement.deviations
    for deviation in deviations[:EVENT_DEVIATIONS]:
        lines.append('  deviation: ' + _deviation_words(deviation))
    if len(deviations) > EVENT_DEVIATIONS:
        lines.append('  ... and {} more deviations (run loopback-traffic on the host to see them all)'.format(len(deviations) - EVENT_DEVIATIONS))
    if applied is not None:
        waived = applied.waived_in(name)
        for match in waived[:EVENT_DEVIATIONS]:
            lines.append('  waived by {}: {} ("{}")'.format(describe_waiver(match.waiver), _deviation_words(match.deviation), match.waiver.justification))
        if len(waived) > EVENT_DEVIATIONS:
            lines.append('  ... and {} more waived deviations'.format(len(waived) - EVENT_DEVIATIONS))
        for match in applied.expired_in(name)[:EVENT_DEVIATIONS]:
            lines.append('  not waived, {} has expired: {}'.format(describe_waiver(match.waiver), _deviation_words(match.deviation)))
        for match in applied.refused_in(name):
            lines.append(
                '  {} matches the rule that decides this requirement for the bulk of its packets: a waiver waives deviations, '
                'not a failing requirement'.format(describe_waiver(match.waiver))
            )
        positions += [m.deviation.where for m in waived]
    lines += ['  ' + note for note in _manager_notes(positions)]
    lines += ['  fix: ' + fix for fix in requirement.remediation]
    return lines


def _cut(lines: Sequence[str]) -> str:
    text = printable('\n'.join(lines))
    if len(text) <= EVENT_TEXT_LIMIT:
        return text
    note = '\n... (cut at {} characters: run loopback-traffic on the host to see everything)'.format(EVENT_TEXT_LIMIT)
    return text[: EVENT_TEXT_LIMIT - len(note)] + note


# --- the CLI ------------------------------------------------------------------------------------------


def _position(position: Optional[Position]) -> Optional[Dict[str, Any]]:
    if position is None:
        return None
    return {
        'ruleset': position.ruleset or 'main',
        'table': position.table,
        'chain': position.chain,
        'position': position.index,
        'text': position.text,
        'line': position.line or None,
        'unknown_sets': list(position.uncertain),
    }


def to_json(outcome: Reportable, partial: str, applied: AppliedWaivers = None) -> Dict[str, Any]:
    """The CLI's JSON for one rule: the rule, then per requirement (with its family) what decided."""
    definition, parts = _parts(outcome, applied)
    known = _known(parts)
    several = len(definition.families) > 1
    document: Dict[str, Any] = {
        'rule': definition.name,
        'rule_id': definition.rule_id,
        'manager': definition.manager,
        'family': None if several else parts[0].family if parts else None,
        'families': [part.family for part, _ in known] if known else [part.family for part in parts],
        'applicable': bool(known),
        'applicability': _not_applicable_words(parts),
        'sources': [origin for part in parts for origin in part.outcome.origins],
        'duration_seconds': round(sum(part.outcome.duration for part in parts), 6),
    }
    status = _status(parts, partial)
    if status is None:
        return document
    judged = [(part, result) for part, result in known if result.status is not Status.UNKNOWN]
    errors = ['{}{}'.format(part.label + ': ' if part.label else '', result.error) for part, result in known if result.error]
    document.update(
        {
            'status': STATUS_NAMES[status],
            'status_code': status,
            'mode': known[0][1].mode,
            'message': _message(definition, parts, MESSAGE_LIMIT) or None,
            'error': '; '.join(errors) or None,
            'rules_on_path': sum(result.rules_on_path for _, result in judged) if judged else None,
            'left_out': left_out(RuleOutcome(definition, tuple(part.outcome for part in parts))),
            'requirements': [_requirement_json(part, r) for part, result in judged for r in result.requirements],
        }
    )
    expired = list(dict.fromkeys(describe_waiver(w) for part, _ in known if part.applied is not None for w in part.applied.expired_waivers))
    if expired:
        document['expired_waivers'] = expired
    return document


def _requirement_json(part: _Part, r: RequirementResult) -> Dict[str, Any]:
    applied = part.applied
    return {
        'requirement': r.requirement,
        'family': part.family,
        'status': _REQUIREMENT_WORDS[r.status],
        'status_code': int(r.status),
        'explanation': explanation(r),
        'deciding': _position(r.deciding),
        'deviations': [dict(_position(d.where) or {}, verdict=d.verdict) for d in r.deviations],
        'waived': [
            dict(_position(m.deviation.where) or {}, verdict=m.deviation.verdict, waiver=m.waiver.name, justification=m.waiver.justification)
            for m in (applied.waived_in(r.requirement) if applied is not None else ())
        ],
        'remediation': list(r.remediation),
        'unknown_sets': list(r.uncertain),
    }


def to_text(outcome: Reportable, partial: str, applied: AppliedWaivers = None) -> str:
    """The CLI's human report for one rule."""
    definition, parts = _parts(outcome, applied)
    known = _known(parts)
    families = ', '.join(part.family for part, _ in known) or ', '.join(part.family for part in parts)
    header = '{} ({}, {})'.format(definition.name, families, definition.rule_id)
    status = _status(parts, partial)
    if status is None:
        return '{}: NOT APPLICABLE - {}\n'.format(header, _not_applicable_words(parts))
    lines = ['{}: {}'.format(header, STATUS_NAMES[status])]
    lines += ['  ' + line for line in left_out(RuleOutcome(definition, tuple(part.outcome for part in parts)))]
    for part in parts:
        if part.outcome.applicability.disabled_by:
            lines.append('  ' + _disabled_words(part.outcome))
            break
    for part, result in known:
        lines += _text_lines(part, result)
    expired = list(dict.fromkeys(describe_waiver(w) for part, _ in known if part.applied is not None for w in part.applied.expired_waivers))
    lines += ['  expired waiver ignored: {}'.format(waiver) for waiver in expired]
    return printable('\n'.join(lines) + '\n')


def _text_lines(part: _Part, result: RuleResult) -> List[str]:
    lines = []
    if part.outcome.origins:
        lines.append('  {}: {} ({} mode)'.format(_labelled(part.label, 'evaluated'), ', '.join(part.outcome.origins), result.mode))
    if result.status is Status.UNKNOWN:
        lines.append('  {}: {}'.format(_labelled(part.label, 'could not evaluate'), result.error))
        return lines
    applied = part.applied
    for requirement in result.requirements:
        lines.append('  [{}] {}: {}'.format(_REQUIREMENT_WORDS[requirement.status].upper(), _labelled(part.label, requirement.requirement), explanation(requirement)))
        for deviation in requirement.deviations[:10]:
            lines.append('      part {} by {}'.format(deviation.verdict, describe_position(deviation.where)))
        if len(requirement.deviations) > 10:
            lines.append('      ... and {} more'.format(len(requirement.deviations) - 10))
        if applied is not None:
            for match in applied.waived_in(requirement.requirement):
                lines.append('      waived by {}: part {} by {}'.format(describe_waiver(match.waiver), match.deviation.verdict, describe_position(match.deviation.where)))
        if requirement.status is not Status.PASS:
            for note in _manager_notes(_positions(requirement)):
                lines.append('      ' + note)
        for fix in requirement.remediation:
            lines.append('      fix: {}'.format(fix))
    return lines
