"""What people read (report.py, pure): the 500-character message, the status-change event and log line,
the catalogue of the chains known managers write, the CLI's reports with waivers."""
import datetime
import logging

import pytest

from datadog_checks.loopback_traffic.applicability import Applicability
from datadog_checks.loopback_traffic.pipeline import Outcome
from datadog_checks.loopback_traffic.report import (
    CRITICAL,
    EVENT_TEXT_LIMIT,
    MESSAGE_LIMIT,
    OK,
    UNKNOWN,
    WARNING,
    RuleState,
    apply_waivers,
    change,
    describe_position,
    event_text,
    explanation,
    manager_of,
    message,
    to_json,
    to_text,
)
from datadog_checks.loopback_traffic.requirements import rule_for_family
from datadog_checks.loopback_traffic.results import DECIDED, Deviation, Position, RequirementResult, RuleResult, Status
from datadog_checks.loopback_traffic.waivers import Waiver

from .rulesets import CIS_V4, evaluate_text, filter_table

RULE = rule_for_family('ipv4')
TODAY = datetime.date(2026, 12, 1)
KUBE_NODE = filter_table(
    '-A INPUT -m conntrack --ctstate NEW -j KUBE-EXTERNAL-SERVICES',
    '-A INPUT -i lo -j ACCEPT',
    '-A INPUT -s 127.0.0.0/8 -j DROP',
    '-A OUTPUT -o lo -j ACCEPT',
    '-A KUBE-EXTERNAL-SERVICES -p tcp -m tcp --dport 30080 -j DROP',
    input_policy='DROP',
    chains=['KUBE-EXTERNAL-SERVICES'],
)
NODEPORT_WAIVER = Waiver(0, 'input_accept_lo', 'KUBE-EXTERNAL-SERVICES', None, 'by design', datetime.date(2027, 6, 30))


def outcome_of(result, applicable=True):
    return Outcome(RULE, Applicability(applicable, 'evaluated regardless (applicability: always)'), result, 0.01, ('rules.v4',))


def at(chain, table='filter', text='-A X -j DROP', index=1):
    return Position(table, chain, index, text)


# --- whose chain ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'table, chain, manager, why',
    [
        ('filter', 'KUBE-EXTERNAL-SERVICES', 'kube-proxy', 'drops NodePort and external-IP traffic for services without local endpoints'),
        ('filter', 'KUBE-FIREWALL', 'kube-proxy', 'route_localnet'),
        ('filter', 'KUBE-SERVICES', 'kube-proxy', 'services without endpoints'),
        ('nat', 'KUBE-SVC-ABCDEF', 'kube-proxy', "balances one service's traffic"),
        ('filter', 'KUBE-PROXY-CANARY', 'kube-proxy', 'flushed'),
        ('nat', 'KUBE-SEP-ABCDEF', 'kube-proxy', 'to one of its endpoints'),
        ('filter', 'KUBE-SOMETHING-NEW', 'kube-proxy', 'is written by kube-proxy'),
        ('ip kube-proxy', 'external-services', 'kube-proxy', 'without local endpoints'),
        ('ip6 kube-proxy', 'filter-input', 'kube-proxy', 'written by kube-proxy'),
        ('filter', 'DOCKER-USER', 'Docker', "administrator's own rules"),
        ('filter', 'DOCKER', 'Docker', 'publishes container ports'),
        ('filter', 'DOCKER-ISOLATION-STAGE-2', 'Docker', 'between separate Docker networks'),
        ('filter', 'DOCKER-FORWARD', 'Docker', 'forwarding rules'),
        ('filter', 'ufw-before-input', 'ufw', '/etc/ufw/before.rules'),
        ('filter', 'ufw6-before-input', 'ufw', '/etc/ufw/before6.rules'),
        ('filter', 'ufw-user-input', 'ufw', '`ufw allow`'),
        ('filter', 'ufw6-not-local', 'ufw', 'not local'),
        ('filter', 'ufw-skip-to-policy-input', 'ufw', 'default policy'),
        ('filter', 'INPUT_direct', 'firewalld', 'direct rules'),
        ('filter', 'IN_public_allow', 'firewalld', 'one firewalld zone'),
        ('filter', 'INPUT_ZONES', 'firewalld', 'zone of its interface'),
        ('inet firewalld', 'filter_IN_public_deny', 'firewalld', 'one firewalld zone'),
        ('inet firewalld', 'filter_INPUT', 'firewalld', 'from its zones'),
    ],
)
def test_the_catalogue_names_the_manager_and_why_the_chain_is_there(table, chain, manager, why):
    found = manager_of(at(chain, table))
    assert found is not None
    assert found[0].name == manager and why in found[1]


@pytest.mark.parametrize('table, chain', [('filter', 'INPUT'), ('filter', 'MY-KUBE-CHAIN'), ('inet filter', 'KUBE-X'), ('filter', 'docker'), ('inet hostfw', 'input')])
def test_chains_of_no_known_manager(table, chain):
    assert manager_of(at(chain, table)) is None


# --- the message ------------------------------------------------------------------------------------------


def requirement(name, status, deciding_text, fixes=(), deviations=()):
    deciding = Position('filter', 'INPUT', 1, deciding_text)
    return RequirementResult(name, status, DECIDED, deciding, 'deny', deviations, tuple(fixes))


@pytest.mark.parametrize('comment', [0, 100, 300, 1000, 5000])
@pytest.mark.parametrize('fixes', [1, 3, 12])
def test_the_message_never_exceeds_the_limit_and_keeps_the_first_fix_whole(comment, fixes):
    text = '-A INPUT -s 127.0.0.0/8 -m comment --comment "{}" -j DROP'.format('c' * comment)
    commands = ['iptables -I INPUT {} -i lo{} -j ACCEPT'.format(i + 1, ' -m comment --comment step{}'.format(i)) for i in range(fixes)]
    requirements = (
        requirement('input_accept_lo', Status.FAIL, text, commands),
        requirement('output_accept_lo', Status.FAIL, text, ['iptables -I OUTPUT 1 -o lo -j ACCEPT']),
        requirement('input_drop_loopback_source', Status.PARTIAL, text, [], (Deviation(at('KUBE-FIREWALL'), 'accept'),)),
    )
    text_of = message(RuleResult(RULE, Status.FAIL, requirements, 3))
    assert len(text_of) <= MESSAGE_LIMIT
    lines = text_of.split('\n')
    assert lines[0].startswith('set_loopback_traffic input_accept_lo (fail): dropped by filter INPUT rule 1: -A INPUT -s 127.0.0.0/8')
    assert lines[1].startswith('Fix: ' + commands[0])
    shown = lines[1][len('Fix: ') :].split('; ')
    everything = commands + ['iptables -I OUTPUT 1 -o lo -j ACCEPT']
    assert shown == everything[: len(shown)]  # whole commands, in order
    whole = len(shown) == len(everything) and 'Also: output_accept_lo fail, input_drop_loopback_source partial' in lines
    if not (whole and "KUBE-FIREWALL is kube-proxy's chain: it drops traffic to 127.0.0.0/8" in text_of):
        assert lines[-1].startswith('and ') and lines[-1].endswith(' more, in the loopback_traffic event')


def test_a_short_message_is_whole():
    result = evaluate_text(filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j DROP'))
    assert message(result).split('\n') == [
        'set_loopback_traffic input_accept_lo (fail): dropped by filter INPUT rule 1: -A INPUT -s 127.0.0.0/8 -j DROP',
        'Fix: iptables -I INPUT 1 -i lo -j ACCEPT; iptables -I OUTPUT 1 -o lo -j ACCEPT',
        'Also: output_accept_lo fail',
    ]


def test_an_unknown_message_fits_too():
    result = RuleResult(RULE, Status.UNKNOWN, error='unparseable output of iptables-save: ' + 'x' * 2000)
    text = message(result)
    assert len(text) <= MESSAGE_LIMIT and text.startswith('set_loopback_traffic could not be evaluated: unparseable output')


def test_bytes_that_are_not_utf8_are_escaped():
    text = '-A INPUT -m comment --comment "caf\udce9" -j DROP'
    result = RuleResult(RULE, Status.FAIL, (requirement('input_accept_lo', Status.FAIL, text, ['iptables -I INPUT 1 -i lo -j ACCEPT']),), 1)
    assert '"caf\\xe9"' in message(result)
    message(result).encode('utf-8')
    # Escaping lengthens the text: the limit holds for what is sent.
    noisy = '-A INPUT -m comment --comment "{}" -j DROP'.format('\udcff' * 400)
    result = RuleResult(RULE, Status.FAIL, (requirement('input_accept_lo', Status.FAIL, noisy, ['iptables -I INPUT 1 -i lo -j ACCEPT']),), 1)
    assert len(message(result)) <= MESSAGE_LIMIT and message(result).split('\n')[1] == 'Fix: iptables -I INPUT 1 -i lo -j ACCEPT'
    unknown = RuleResult(RULE, Status.UNKNOWN, error='\udcff' * 400)
    assert len(message(unknown)) <= MESSAGE_LIMIT


# --- status changes ---------------------------------------------------------------------------------------


def test_the_first_run_sends_an_event_and_logs():
    outcome = outcome_of(evaluate_text(KUBE_NODE))
    found = change(outcome, 'warning', None, None, None, 'web-1', ('team:net',))
    assert found.state == RuleState(WARNING)
    assert found.event.alert_type == 'warning' and found.event.aggregation_key == 'loopback_traffic:web-1:set_loopback_traffic'
    assert found.event.tags == ('team:net', 'rule:set_loopback_traffic', 'family:ipv4', 'rule_id:def-000-byk')
    assert found.event.title == 'set_loopback_traffic is WARNING: input_accept_lo partly met'
    assert found.log_level == logging.INFO and found.log.startswith('set_loopback_traffic is WARNING (first evaluation): input_accept_lo (partial)')
    payload = found.event.payload(1700000000.5)
    assert payload['timestamp'] == 1700000000 and payload['source_type_name'] == 'loopback_traffic'


def test_nothing_while_the_state_stays():
    outcome = outcome_of(evaluate_text(KUBE_NODE))
    found = change(outcome, 'warning', None, RuleState(WARNING), WARNING, 'web-1', ())
    assert found.event is None and found.log is None


def test_the_partial_option_decides_the_status_of_the_event():
    outcome = outcome_of(evaluate_text(KUBE_NODE))
    found = change(outcome, 'ok', None, RuleState(CRITICAL), CRITICAL, 'web-1', ())
    assert found.state == RuleState(OK) and found.event.alert_type == 'success'
    assert 'Partly met requirements are reported as OK (option `partial: ok`).' in found.event.text
    assert change(outcome, 'critical', None, RuleState(CRITICAL), CRITICAL, 'web-1', ()).event is None


def test_not_applicable_is_logged_and_sends_no_event():
    outcome = outcome_of(None, applicable=False)
    found = change(outcome, 'warning', None, RuleState(OK), OK, 'web-1', ())
    assert found.event is None and found.state.status is None
    assert found.log == 'set_loopback_traffic is not applicable: evaluated regardless (applicability: always)'
    # Applicable again with the status of the last event: logged, no event.
    back = change(outcome_of(evaluate_text(CIS_V4)), 'warning', None, found.state, OK, 'web-1', ())
    assert back.event is None and back.log == 'set_loopback_traffic is OK (was not applicable)'
    # ... and with another status: an event.
    other = change(outcome_of(evaluate_text(filter_table())), 'warning', None, found.state, OK, 'web-1', ())
    assert other.event.title == 'set_loopback_traffic is CRITICAL (was OK): input_drop_loopback_source fails'
    assert other.log.startswith('set_loopback_traffic is CRITICAL (was not applicable): input_drop_loopback_source (fail)')


def test_a_new_reason_to_be_unknown_is_logged_without_an_event():
    first = RuleResult(RULE, Status.UNKNOWN, error='permission denied')
    second = RuleResult(RULE, Status.UNKNOWN, error='timed out after 10 s')
    state = change(outcome_of(first), 'warning', None, None, None, 'h', ()).state
    found = change(outcome_of(second), 'warning', None, state, UNKNOWN, 'h', ())
    assert found.event is None and found.log == 'set_loopback_traffic still cannot be evaluated: timed out after 10 s'
    assert found.log_level == logging.INFO  # spec section 5: INFO, WARNING only for a change to CRITICAL


def test_a_change_to_critical_is_logged_as_a_warning():
    result = evaluate_text(filter_table('-A INPUT -i lo -j DROP'))
    found = change(outcome_of(result), 'warning', None, RuleState(OK), OK, 'h', ())
    assert found.log_level == logging.WARNING and found.event.alert_type == 'error'
    assert found.event.title == 'set_loopback_traffic is CRITICAL (was OK): input_accept_lo fails'


def test_the_event_lists_every_deviation_up_to_a_limit_and_stays_within_4000_characters():
    deviations = tuple(Deviation(Position('filter', 'INPUT', i + 1, '-A INPUT -p tcp --dport {} -j DROP'.format(1000 + i)), 'deny') for i in range(60))
    partial = RequirementResult(
        'input_accept_lo', Status.PARTIAL, DECIDED, Position('filter', 'INPUT', 61, '-A INPUT -i lo -j ACCEPT'), 'accept', deviations, ('iptables -I INPUT 1 -i lo -j ACCEPT',)
    )
    text = event_text(outcome_of(RuleResult(RULE, Status.PARTIAL, (partial,), 61)), 'warning', None, WARNING, OK)
    assert len(text) <= EVENT_TEXT_LIMIT
    assert '  deviation: dropped by filter INPUT rule 20: -A INPUT -p tcp --dport 1019 -j DROP' in text
    assert 'rule 21:' not in text
    assert '  ... and 40 more deviations (run loopback-traffic on the host to see them all)' in text
    assert text.index('iptables -I INPUT 1 -i lo -j ACCEPT') < text.index('deviation:')  # the fix first


def test_a_huge_event_is_cut_with_the_fixes_kept():
    long = 'x' * 3000
    requirements = tuple(
        RequirementResult(name, Status.FAIL, DECIDED, Position('filter', 'INPUT', 1, long), 'deny', (), ('iptables -I INPUT 1 -i lo -j ACCEPT # {}'.format(name),))
        for name in ('input_accept_lo', 'output_accept_lo', 'input_drop_loopback_source')
    )
    text = event_text(outcome_of(RuleResult(RULE, Status.FAIL, requirements, 1)), 'warning', None, CRITICAL, None)
    assert len(text) == EVENT_TEXT_LIMIT and text.endswith('run loopback-traffic on the host to see everything)')
    for r in requirements:
        assert r.remediation[0] in text


# --- the CLI's reports ------------------------------------------------------------------------------------


def test_the_cli_reports_show_waived_deviations():
    result = evaluate_text(KUBE_NODE)
    applied = apply_waivers(result, (NODEPORT_WAIVER,), TODAY)
    outcome = outcome_of(result)
    document = to_json(outcome, 'warning', applied)
    assert document['status'] == 'OK'
    (accept,) = [r for r in document['requirements'] if r['requirement'] == 'input_accept_lo']
    assert accept['status'] == 'pass' and accept['deviations'] == []
    (waived,) = accept['waived']
    assert waived['chain'] == 'KUBE-EXTERNAL-SERVICES' and waived['waiver'] == 'waivers[0]' and waived['justification'] == 'by design'
    text = to_text(outcome, 'warning', applied)
    assert 'waived by waivers[0] (input_accept_lo chain KUBE-EXTERNAL-SERVICES, until 2027-06-30): part deny by filter KUBE-EXTERNAL-SERVICES rule 1' in text
    # Without waivers the reports are as before.
    assert to_json(outcome, 'warning')['status'] == 'WARNING'
    assert "KUBE-EXTERNAL-SERVICES is kube-proxy's chain" in to_text(outcome, 'warning')


# --- the words of a requirement's result: written here, from the evaluator's structure ----------------


@pytest.mark.parametrize(
    'rules, requirement_name, finding, words',
    [
        (('-A INPUT -i lo -j ACCEPT',), 'input_accept_lo', 'present', 'present: filter INPUT rule 1: -A INPUT -i lo -j ACCEPT'),
        (
            ('-A INPUT -j DROP', '-A INPUT -i lo -j ACCEPT'),
            'input_accept_lo',
            'not_first',
            '-A INPUT -i lo -j ACCEPT is not before every rule that drops its traffic: filter INPUT rule 1: -A INPUT -j DROP',
        ),
        ((), 'output_accept_lo', 'absent', 'no rule -A OUTPUT -o lo -j ACCEPT in table filter'),
    ],
)
def test_literal_findings_are_worded_from_what_the_evaluator_found(rules, requirement_name, finding, words):
    from datadog_checks.loopback_traffic.evaluator import LITERAL

    from .rulesets import evaluate_text, filter_table

    found = evaluate_text(filter_table(*rules), mode=LITERAL).requirement(requirement_name)
    assert found.finding == finding
    assert explanation(found) == words


def test_the_evaluator_returns_structure_and_the_report_words_it():
    from .rulesets import evaluate_text, filter_table

    result = evaluate_text(filter_table('-A INPUT -p udp --dport 53 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT'))
    accept = result.requirement('input_accept_lo')
    assert not any(isinstance(getattr(accept, name), str) and ' ' in getattr(accept, name) for name in accept.__dataclass_fields__)
    assert (accept.status, accept.deciding.index, [d.where.index for d in accept.deviations]) == (Status.PARTIAL, 2, [1])
    assert explanation(accept) == (
        'accepted by filter INPUT rule 2: -A INPUT -i lo -j ACCEPT; '
        'but part of it is dropped by filter INPUT rule 1: -A INPUT -p udp --dport 53 -j DROP'
    )
    assert message(result).startswith('set_loopback_traffic input_drop_loopback_source (fail): ' + explanation(result.requirement('input_drop_loopback_source')))
