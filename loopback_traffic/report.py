"""Outcome -> what the check submits (spec section 5) and every word a person reads: the service check
message, the status-change event and log line, the CLI's reports. Pure: no I/O."""
from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import waivers as waiver_rules
from .pipeline import Outcome
from .requirements import ACCEPT, DENY, QUEUE, REQUIREMENTS
from .results import Deviation, Position, RequirementResult, RuleResult, Status
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


def _deviation_words(deviation: Deviation) -> str:
    part = getattr(deviation, 'part', '')
    what = 'the {} part '.format(part) if part else ''
    return '{}{} by {}'.format(what, _verdict(deviation.verdict), deviation.where.describe())


def explain_requirement(requirement: RequirementResult, remaining: Tuple[Deviation, ...]) -> str:
    """The explanation of a requirement whose deviations waivers took out: as the evaluator words it,
    with the deviations that are left."""
    if requirement.deciding is None:
        return requirement.explanation
    text = '{} by {}'.format(_verdict(requirement.verdict), requirement.deciding.describe())
    if requirement.status is not Status.PASS and remaining:
        more = ' (and {} more)'.format(len(remaining) - 1) if len(remaining) > 1 else ''
        text += '; but part of it is {}{}'.format(_deviation_words(remaining[0]), more)
    return text


def apply_waivers(result: Optional[RuleResult], waivers: Sequence[Waiver], today: datetime.date) -> Applied:
    """``result`` with the instance's waivers applied (see :mod:`.waivers`)."""
    return waiver_rules.apply(result, waivers, today, explain_requirement)


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


def message(result: RuleResult, applied: Optional[Applied] = None, limit: int = MESSAGE_LIMIT) -> str:
    return _message(result, applied, limit)


def _message(result: RuleResult, applied: Optional[Applied], limit: int) -> str:
    """For the person on call, in ``limit`` characters: what fails and where (one line), then the fix,
    then what else there is; what does not fit is counted ("and N more")."""
    if result.status is Status.UNKNOWN:
        return _elide(printable('{} could not be evaluated: {}'.format(result.rule.name, result.error)), limit)
    problems = _noteworthy(result)
    if not problems:
        return ''
    worst = problems[0]
    head = printable('{} {} ({}): {}'.format(result.rule.name, worst.requirement, _REQUIREMENT_WORDS[worst.status], worst.explanation))
    fixes = [printable(fix) for fix in _fixes(problems)]
    extras = []
    if len(problems) > 1:
        extras.append('Also: ' + ', '.join('{} {}'.format(r.requirement, _REQUIREMENT_WORDS[r.status]) for r in problems[1:]))
    if applied is not None:
        for waiver in applied.expired_waivers:
            extras.append('Expired waiver ignored: {}'.format(describe_waiver(waiver)))
        for match in applied.refused:
            extras.append('{} cannot waive the rule that decides {} for most of its packets'.format(match.waiver.name, match.requirement))
        for r in result.requirements:
            waived = applied.waived_in(r.requirement)
            if waived:
                names = ', '.join(dict.fromkeys(m.waiver.name for m in waived))
                extras.append('Waived: {} deviation{} of {} ({})'.format(len(waived), 's' if len(waived) > 1 else '', r.requirement, names))
    extras += _manager_notes([p for r in problems for p in _positions(r)], short=True)
    extras = [printable(extra) for extra in extras]
    return _fit(head, _positions(worst), fixes, extras, limit)


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


def submissions(outcome: Outcome, partial: str, instance_tags: Sequence[str], applied: Optional[Applied] = None) -> Submissions:
    tags = tuple(instance_tags) + outcome.rule.tags
    result = applied.result if applied is not None else outcome.result
    if result is None:
        return Submissions((Gauge('applicable', 0, tags),), ())
    status = service_check_status(result, partial)
    gauges = [Gauge('applicable', 1, tags), Gauge('collection.duration', outcome.duration, tags), Gauge('evaluated', 0 if status == UNKNOWN else 1, tags)]
    if status != UNKNOWN:
        gauges.append(Gauge('compliant', 1 if status == OK else 0, tags))
        gauges.append(Gauge('ruleset.rules', result.rules_on_path, tags))
        for r in result.requirements:
            requirement_tags = tags + ('requirement:' + r.requirement,)
            gauges.append(Gauge('requirement.status', int(r.status), requirement_tags))
            gauges.append(Gauge('waived', applied.waived_count(r.requirement) if applied is not None else 0, requirement_tags))
    check = ServiceCheck(SERVICE_CHECK, status, tags, None if status == OK else message(result, applied))
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


def state_of(outcome: Outcome, partial: str, applied: Optional[Applied] = None) -> RuleState:
    result = applied.result if applied is not None else outcome.result
    if result is None:
        return RuleState(None, outcome.applicability.reason)
    status = service_check_status(result, partial)
    return RuleState(status, (result.error or '') if status == UNKNOWN else '')


def change(
    outcome: Outcome,
    partial: str,
    applied: Optional[Applied],
    previous: Optional[RuleState],
    last_event_status: Optional[int],
    hostname: str,
    instance_tags: Sequence[str],
) -> Change:
    """Compare this run with the last: ``previous`` is the last state (None on the instance's first run),
    ``last_event_status`` the status of the last event sent for the rule (None: none yet). An event goes
    out when the status differs from the last event's (the first run included); a log line whenever the
    state changes (INFO; WARNING for a change to CRITICAL or UNKNOWN)."""
    rule = outcome.rule.name
    state = state_of(outcome, partial, applied)
    if state == previous:
        return Change(state)
    if state.status is None:
        return Change(state, None, logging.INFO, printable('{} is not applicable: {}'.format(rule, state.detail)))
    result = applied.result if applied is not None else outcome.result
    assert result is not None
    # A change to CRITICAL, and the check unable to do its job (UNKNOWN), are warnings; the rest is news.
    level = logging.WARNING if state.status in (CRITICAL, UNKNOWN) else logging.INFO
    name = STATUS_NAMES[state.status]
    # The log line says what the service check message says (cut to the same size).
    summary = message(result, applied).replace('\n', ' | ')
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
        event = _event(outcome, partial, applied, result, state.status, last_event_status, hostname, instance_tags)
    return Change(state, event, level, printable(log))


def _was(status: Optional[int], first: bool = False) -> str:
    if status is None:
        return ' (first evaluation)' if first else ' (was not applicable)'
    return ' (was {})'.format(STATUS_NAMES[status])


def aggregation_key(hostname: str, rule: str) -> str:
    return '{}:{}:{}'.format(NAMESPACE, hostname, rule)


def _event(
    outcome: Outcome,
    partial: str,
    applied: Optional[Applied],
    result: RuleResult,
    status: int,
    previous: Optional[int],
    hostname: str,
    instance_tags: Sequence[str],
) -> Event:
    rule = outcome.rule
    was = _was(previous) if previous is not None else ''
    problems = _noteworthy(result)
    headline = ''
    if status == UNKNOWN:
        headline = ': cannot be evaluated'
    elif problems:
        headline = ': {} {}'.format(problems[0].requirement, {Status.FAIL: 'fails', Status.PARTIAL: 'partly met'}.get(problems[0].status, ''))
    title = _elide(printable('{} is {}{}{}'.format(rule.name, STATUS_NAMES[status], was, headline)), EVENT_TITLE_LIMIT)
    text = event_text(outcome, partial, applied, status, previous, hostname)
    tags = tuple(instance_tags) + rule.tags
    return Event(title, text, ALERT_TYPES[status], aggregation_key(hostname, rule.name), tags)


def event_text(outcome: Outcome, partial: str, applied: Optional[Applied], status: int, previous: Optional[int], hostname: str = '') -> str:
    """The full explanation: every failing or partial requirement with its deciding rule, every deviation
    (up to EVENT_DEVIATIONS a requirement), every fix, the waivers, in at most EVENT_TEXT_LIMIT
    characters (the fixes come first, so that they are never cut)."""
    rule = outcome.rule
    result = applied.result if applied is not None else outcome.result
    assert result is not None
    where = ' on {}'.format(hostname) if hostname else ''
    lines = ['{} ({}, {}){} is {}{}.'.format(rule.name, rule.family, rule.rule_id, where, STATUS_NAMES[status], _was(previous, first=previous is None))]
    if outcome.origins:
        lines.append('Evaluated: {} ({} mode).'.format(', '.join(outcome.origins), result.mode))
    if result.status is Status.UNKNOWN:
        lines += ['', 'Could not evaluate: {}'.format(result.error)]
        return _cut(lines)
    problems = _noteworthy(result)
    fixes = _fixes(problems)
    if fixes:
        lines += ['', 'To fix (each command inserts its rule where it takes effect):'] + ['  ' + fix for fix in fixes]
    if result.status is not Status.PASS and status == OK:
        lines += ['', 'Partly met requirements are reported as OK (option `partial: ok`).']
    for requirement in sorted(result.requirements, key=lambda r: (-r.status, r.requirement)):
        lines += [''] + _requirement_lines(requirement, applied)
    if applied is not None and applied.lapsed:
        lines += ['', 'Expired waivers, ignored (the deviations they match count again):']
        lines += ['  {}: "{}"'.format(describe_waiver(w), w.justification) for w in applied.lapsed]
    return _cut(lines)


def _requirement_lines(requirement: RequirementResult, applied: Optional[Applied]) -> List[str]:
    name = requirement.requirement
    lines = ['{}: {} - {}'.format(name, _REQUIREMENT_WORDS[requirement.status].upper(), _DESCRIPTIONS.get(name, ''))]
    if requirement.deciding is not None:
        lines.append('  decided: {} by {}'.format(_verdict(requirement.verdict), requirement.deciding.describe()))
    else:
        lines.append('  ' + requirement.explanation)
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
    }


def to_json(outcome: Outcome, partial: str, applied: Optional[Applied] = None) -> Dict[str, Any]:
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
    result = applied.result if applied is not None else outcome.result
    if result is None:
        return document
    status = service_check_status(result, partial)
    document.update(
        {
            'status': STATUS_NAMES[status],
            'status_code': status,
            'mode': result.mode,
            'message': message(result, applied) or None,
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
                    'waived': [
                        dict(_position(m.deviation.where) or {}, verdict=m.deviation.verdict, waiver=m.waiver.name, justification=m.waiver.justification)
                        for m in (applied.waived_in(r.requirement) if applied is not None else ())
                    ],
                    'remediation': list(r.remediation),
                }
                for r in result.requirements
            ],
        }
    )
    if applied is not None and applied.expired_waivers:
        document['expired_waivers'] = [describe_waiver(w) for w in applied.expired_waivers]
    return document


def to_text(outcome: Outcome, partial: str, applied: Optional[Applied] = None) -> str:
    """The CLI's human report for one rule."""
    rule = outcome.rule
    header = '{} ({}, {})'.format(rule.name, rule.family, rule.rule_id)
    result = applied.result if applied is not None else outcome.result
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
        if applied is not None:
            for match in applied.waived_in(requirement.requirement):
                lines.append('      waived by {}: part {} by {}'.format(describe_waiver(match.waiver), match.deviation.verdict, match.deviation.where.describe()))
        if requirement.status is not Status.PASS:
            for note in _manager_notes(_positions(requirement)):
                lines.append('      ' + note)
        for fix in requirement.remediation:
            lines.append('      fix: {}'.format(fix))
    if applied is not None:
        for waiver in applied.expired_waivers:
            lines.append('  expired waiver ignored: {}'.format(describe_waiver(waiver)))
    return printable('\n'.join(lines) + '\n')

