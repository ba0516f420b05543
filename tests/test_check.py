"""The Agent check through the Agent API: statuses, metrics with exact tags and values, status-change
events and log lines, waivers, options, errors."""
import datetime
import logging

import pytest

from datadog_checks.base import AgentCheck, ConfigurationError
from datadog_checks.dev.utils import get_metadata_metrics, get_service_checks
from datadog_checks.loopback_traffic import LoopbackTrafficCheck
from datadog_checks.loopback_traffic.requirements import COMPLIANCE_RULES

from .netns import netns  # noqa: F401
from .rulesets import CIS_V4, CIS_V6, filter_table

INSTANCE_TAGS = ['team:network', 'tier:web']
V4_TAGS = INSTANCE_TAGS + ['rule:set_loopback_traffic', 'family:ipv4', 'rule_id:def-000-byk']
V6_TAGS = INSTANCE_TAGS + ['rule:set_ipv6_loopback_traffic', 'family:ipv6', 'rule_id:def-000-mkc']
REQUIREMENTS = ['input_accept_lo', 'output_accept_lo', 'input_drop_loopback_source']
SERVICE_CHECK = 'loopback_traffic.compliance'

MISORDERED = filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
CONNTRACK_FIRST = filter_table(
    '-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT', '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A OUTPUT -o lo -j ACCEPT'
)


@pytest.fixture
def saved(tmp_path):
    def write(name, text):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def iptables_rules(families=('ipv4', 'ipv6')):
    """The iptables rules of ``families``: what most tests here judge (the others have tests of their own)."""
    return [rule.name for rule in COMPLIANCE_RULES if rule.family in families]


def make_check(**options):
    instance = {'tags': list(INSTANCE_TAGS), 'applicability': 'always'}
    instance.update(options)
    if iptables_rules(instance.get('families') or ('ipv4', 'ipv6')):
        instance.setdefault('rules', iptables_rules(instance.get('families') or ('ipv4', 'ipv6')))
    check = LoopbackTrafficCheck('loopback_traffic', {}, [instance])
    check.check_id = 'loopback_traffic:test'
    return check


def files_instance(saved, ipv4=CIS_V4, ipv6=CIS_V6, **options):
    options['ruleset_files'] = {'ipv4': saved('rules.v4', ipv4), 'ipv6': saved('rules.v6', ipv6)}
    return options


def assert_requirement_statuses(aggregator, tags, expected):
    for requirement, value in zip(REQUIREMENTS, expected):
        aggregator.assert_metric('loopback_traffic.requirement.status', value=value, tags=tags + ['requirement:' + requirement], count=1)


def test_ok_emits_every_metric_with_exact_tags_and_values(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved)))
    for tags, rules in ((V4_TAGS, 3), (V6_TAGS, 3)):
        aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.OK, tags=tags, count=1)
        aggregator.assert_metric('loopback_traffic.applicable', value=1, tags=tags, count=1)
        aggregator.assert_metric('loopback_traffic.compliant', value=1, tags=tags, count=1)
        aggregator.assert_metric('loopback_traffic.ruleset.rules', value=rules, tags=tags, count=1)
        aggregator.assert_metric('loopback_traffic.collection.duration', tags=tags, count=1)
        aggregator.assert_metric('loopback_traffic.evaluated', value=1, tags=tags, count=1)
        assert_requirement_statuses(aggregator, tags, [0, 0, 0])
        assert_waived(aggregator, tags, [0, 0, 0])
    (ok,) = aggregator.service_checks(SERVICE_CHECK)[:1]
    assert not ok.message
    durations = [m.value for m in aggregator.metrics('loopback_traffic.collection.duration')]
    assert all(0 < value < 60 for value in durations)
    aggregator.assert_all_metrics_covered()
    aggregator.assert_no_duplicate_all()


def assert_waived(aggregator, tags, expected):
    for requirement, value in zip(REQUIREMENTS, expected):
        aggregator.assert_metric('loopback_traffic.waived', value=value, tags=tags + ['requirement:' + requirement], count=1)


def test_emitted_metrics_and_service_checks_match_the_metadata(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved, ipv4=MISORDERED)))
    aggregator.assert_metrics_using_metadata(get_metadata_metrics(), check_submission_type=True, check_symmetric_inclusion=True)
    aggregator.assert_service_checks(get_service_checks())


def test_critical_names_the_deciding_rule_and_the_fix(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved, ipv4=MISORDERED)))
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.CRITICAL, tags=V4_TAGS, count=1)
    (critical,) = [sc for sc in aggregator.service_checks(SERVICE_CHECK) if sc.status == AgentCheck.CRITICAL]
    first, second = critical.message.split('\n')
    assert first == 'set_loopback_traffic input_accept_lo (fail): dropped by filter INPUT rule 1: -A INPUT -s 127.0.0.0/8 -j DROP'
    assert second == 'Fix: iptables -I INPUT 1 -i lo -j ACCEPT'
    aggregator.assert_metric('loopback_traffic.compliant', value=0, tags=V4_TAGS, count=1)
    assert_requirement_statuses(aggregator, V4_TAGS, [2, 0, 0])
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.OK, tags=V6_TAGS, count=1)


def test_warning_for_a_partial_result(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved, ipv4=CONNTRACK_FIRST)))
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.WARNING, tags=V4_TAGS, count=1)
    (warning,) = [sc for sc in aggregator.service_checks(SERVICE_CHECK) if sc.status == AgentCheck.WARNING]
    assert warning.message.startswith('set_loopback_traffic input_drop_loopback_source (partial): dropped by filter INPUT rule 3')
    assert 'accepted by filter INPUT rule 1: -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT' in warning.message
    assert warning.message.endswith('Fix: iptables -I INPUT 1 -s 127.0.0.0/8 ! -i lo -j DROP')
    aggregator.assert_metric('loopback_traffic.compliant', value=0, tags=V4_TAGS, count=1)
    assert_requirement_statuses(aggregator, V4_TAGS, [0, 0, 1])


@pytest.mark.parametrize('partial, status, compliant', [('critical', AgentCheck.CRITICAL, 0), ('ok', AgentCheck.OK, 1), ('warning', AgentCheck.WARNING, 0)])
def test_partial_option_changes_the_service_check_not_the_requirement_status(aggregator, dd_run_check, saved, partial, status, compliant):
    dd_run_check(make_check(**files_instance(saved, ipv4=CONNTRACK_FIRST, partial=partial)))
    aggregator.assert_service_check(SERVICE_CHECK, status, tags=V4_TAGS, count=1)
    aggregator.assert_metric('loopback_traffic.compliant', value=compliant, tags=V4_TAGS, count=1)
    assert_requirement_statuses(aggregator, V4_TAGS, [0, 0, 1])


def test_literal_mode(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved, ipv4=CONNTRACK_FIRST, mode='literal')))
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.OK, tags=V4_TAGS, count=1)
    assert_requirement_statuses(aggregator, V4_TAGS, [0, 0, 0])


def test_unknown_sends_no_compliance_gauges(aggregator, dd_run_check, saved):
    instance = files_instance(saved)
    instance['ruleset_files']['ipv4'] = '/nonexistent/rules.v4'
    dd_run_check(make_check(**instance))
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.UNKNOWN, tags=V4_TAGS, count=1)
    (unknown,) = [sc for sc in aggregator.service_checks(SERVICE_CHECK) if sc.status == AgentCheck.UNKNOWN]
    assert unknown.message == 'set_loopback_traffic could not be evaluated: saved ruleset /nonexistent/rules.v4 does not exist (option `ruleset_files`)'
    aggregator.assert_metric('loopback_traffic.compliant', tags=V4_TAGS, count=0)
    aggregator.assert_metric('loopback_traffic.requirement.status', tags=V4_TAGS + ['requirement:input_accept_lo'], count=0)
    aggregator.assert_metric('loopback_traffic.waived', tags=V4_TAGS + ['requirement:input_accept_lo'], count=0)
    aggregator.assert_metric('loopback_traffic.evaluated', value=0, tags=V4_TAGS, count=1)
    aggregator.assert_metric('loopback_traffic.evaluated', value=1, tags=V6_TAGS, count=1)
    aggregator.assert_metric('loopback_traffic.applicable', value=1, tags=V4_TAGS, count=1)
    aggregator.assert_metric('loopback_traffic.compliant', value=1, tags=V6_TAGS, count=1)


def test_unparseable_output_is_unknown_with_the_line(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved, ipv4='*filter\n:INPUT ACCEPT [0:0]\nrubbish\nCOMMIT\n', families=['ipv4'])))
    (unknown,) = aggregator.service_checks(SERVICE_CHECK)
    assert unknown.status == AgentCheck.UNKNOWN
    assert 'line 3: unexpected line in table filter' in unknown.message


def test_families_option(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved, families=['ipv6'])))
    assert [sc.tags for sc in aggregator.service_checks(SERVICE_CHECK)] == [V6_TAGS]


def test_a_lasting_problem_is_logged_once_and_recovery_is_automatic(aggregator, dd_run_check, saved, caplog, tmp_path):
    instance = files_instance(saved, families=['ipv4'])
    path = instance['ruleset_files']['ipv4']
    (tmp_path / 'rules.v4').unlink()
    check = make_check(**instance)
    caplog.set_level(logging.INFO)
    for _ in range(3):
        dd_run_check(check)
    assert len([r for r in caplog.records if 'does not exist' in r.getMessage()]) == 1
    saved('rules.v4', CIS_V4)
    aggregator.reset()
    dd_run_check(check)
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.OK, tags=V4_TAGS, count=1)
    assert path in [r for r in caplog.records if 'does not exist' in r.getMessage()][0].getMessage()
    assert any('can be evaluated again' in r.getMessage() for r in caplog.records)


def test_configured_commands_are_checked_at_start(aggregator, dd_run_check, caplog, tmp_path):
    not_executable = tmp_path / 'ip6tables-save'
    not_executable.write_text('#!/bin/sh\n')
    check = make_check(iptables_save_command=['/nonexistent/iptables-save'], ip6tables_save_command=[str(not_executable)], collection='save')
    caplog.set_level(logging.INFO)
    for _ in range(2):
        dd_run_check(check)
    warnings = [r.getMessage() for r in caplog.records if 'is not an existing executable' in r.getMessage()]
    assert len([w for w in warnings if '/nonexistent/iptables-save is not an existing executable;' in w]) == 1
    assert len([w for w in warnings if str(not_executable) + ' is not an existing executable;' in w]) == 1
    # Not a configuration error: each run says UNKNOWN with the fix, and recovers once the tool is there.
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.UNKNOWN, tags=V4_TAGS, count=2)
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.UNKNOWN, tags=V6_TAGS, count=2)


def test_commands_that_exist_give_no_warning_at_start(dd_run_check, caplog, saved):
    caplog.set_level(logging.INFO)
    dd_run_check(make_check(iptables_save_command=['true'], ip6tables_save_command=['true']))
    assert not [r for r in caplog.records if 'is not an existing executable' in r.getMessage()]


@pytest.mark.parametrize(
    'options, complaint',
    [
        ({'mode': 'exact'}, '`mode` must be one of effective, literal'),
        ({'partial': 'maybe'}, '`partial` must be one of warning, critical, ok'),
        ({'applicability': 'never'}, '`applicability` must be one of auto, always'),
        ({'families': 'ipv4'}, '`families` must be a non-empty list'),
        ({'families': ['ipv5']}, "not 'ipv5'"),
        ({'timeout': 0}, '`timeout` must be a number greater than 0'),
        ({'timeout': 'soon'}, '`timeout` must be a number greater than 0'),
        ({'iptables_save_command': 'iptables-save -t filter'}, '`iptables_save_command` must be a list of arguments'),
        ({'ip6tables_save_command': []}, '`ip6tables_save_command` must be a non-empty list'),
        ({'use_sudo': 'yes'}, '`use_sudo` must be true or false'),
        ({'ruleset_files': {'ipv5': '/x'}}, '`ruleset_files` keys must be ipv4 or ipv6'),
        ({'tags': 'team:net'}, '`tags` must be a list of strings'),
        ({'collection': 'listings'}, '`collection` must be one of auto, save'),
        ({'use_sudoo': True}, 'unknown option `use_sudoo`: did you mean `use_sudo`?'),
        ({'familes': ['ipv4']}, 'unknown option `familes`: did you mean `families`?'),
        ({'waiver': []}, 'unknown option `waiver`: did you mean `waivers`?'),
        ({'iptables_save_comand': ['iptables-save']}, 'did you mean `iptables_save_command`?'),
        ({'network_namspace': '/host/proc/1/ns/net'}, 'did you mean `network_namespace`?'),
        ({'proc_pth': '/host/proc'}, 'did you mean `proc_path`?'),
    ],
)
def test_configuration_errors_say_what_is_wrong(options, complaint):
    with pytest.raises(ConfigurationError) as error:
        make_check(**options)
    assert complaint in str(error.value)


def test_config_model_is_loaded(dd_run_check, saved):
    check = make_check(**files_instance(saved, timeout=5))
    dd_run_check(check)
    assert check.config.timeout == 5
    assert check.config.ruleset_files.ipv4.endswith('rules.v4')


def test_an_unknown_key_that_resembles_no_option_is_logged_not_refused(dd_run_check, saved, caplog):
    caplog.set_level(logging.INFO)
    check = make_check(**files_instance(saved, families=['ipv4'], frobnicate=1))
    dd_run_check(check)
    assert any('unknown option `frobnicate` is ignored' in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_the_agents_procfs_path_is_the_default_proc_path(datadog_agent):
    assert make_check().options.proc_path == '/proc'
    datadog_agent._config['procfs_path'] = '/host/proc/'
    assert make_check().options.proc_path == '/host/proc'
    assert make_check(proc_path='/mnt/proc').options.proc_path == '/mnt/proc'


# --- status changes: one event and one log line per change ------------------------------------------------

KUBE_NODEPORT_RULE = (
    '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "default/web:http has no local endpoints" '
    '-m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP'
)
KUBE_NODE = filter_table(
    '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
    '-A INPUT -i lo -j ACCEPT',
    '-A INPUT -s 127.0.0.0/8 -j DROP',
    '-A OUTPUT -o lo -j ACCEPT',
    KUBE_NODEPORT_RULE,
    input_policy='DROP',
    chains=['KUBE-EXTERNAL-SERVICES'],
)
NODEPORT_WAIVER = {
    'requirement': 'input_accept_lo',
    'chain': 'KUBE-EXTERNAL-SERVICES',
    'justification': 'kube-proxy drops NodePorts of services without local endpoints by design',
    'expires': datetime.date(2099, 12, 31),
}


def events_of(aggregator, rule='set_loopback_traffic'):
    return [e for e in aggregator.events if 'rule:' + rule in e['tags']]


def test_the_first_run_sends_one_event_per_rule_with_the_full_explanation(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved, ipv4=MISORDERED)))
    (event,) = events_of(aggregator)
    assert isinstance(event.pop('timestamp'), int)
    assert event == {
        'event_type': 'loopback_traffic.status_change',
        'source_type_name': 'loopback_traffic',
        'msg_title': 'set_loopback_traffic is CRITICAL: input_accept_lo fails',
        'msg_text': '\n'.join(
            [
                'set_loopback_traffic (ipv4, def-000-byk) on stubbed.hostname is CRITICAL (first evaluation).',
                'Evaluated: {} (effective mode).'.format(saved('rules.v4', MISORDERED)),
                '',
                'To fix (each command inserts its rule where it takes effect):',
                '  iptables -I INPUT 1 -i lo -j ACCEPT',
                '',
                'input_accept_lo: FAIL - traffic arriving on lo from and to the loopback network is accepted',
                '  decided: dropped by filter INPUT rule 1: -A INPUT -s 127.0.0.0/8 -j DROP',
                '  fix: iptables -I INPUT 1 -i lo -j ACCEPT',
                '',
                'input_drop_loopback_source: PASS - traffic with a loopback source arriving on any interface other than lo is dropped',
                '  decided: dropped by filter INPUT rule 1: -A INPUT -s 127.0.0.0/8 -j DROP',
                '',
                'output_accept_lo: PASS - traffic leaving through lo within the loopback network is accepted',
                '  decided: accepted by filter OUTPUT rule 1: -A OUTPUT -o lo -j ACCEPT',
            ]
        ),
        'aggregation_key': 'loopback_traffic:stubbed.hostname:set_loopback_traffic',
        'alert_type': 'error',
        'priority': 'normal',
        'tags': V4_TAGS,
    }
    (ipv6,) = events_of(aggregator, 'set_ipv6_loopback_traffic')
    assert ipv6['alert_type'] == 'success' and ipv6['msg_title'] == 'set_ipv6_loopback_traffic is OK'
    assert ipv6['aggregation_key'] == 'loopback_traffic:stubbed.hostname:set_ipv6_loopback_traffic'


def test_each_status_change_is_one_event_and_one_log_line_and_nothing_while_it_stays(aggregator, dd_run_check, saved, caplog, tmp_path):
    instance = files_instance(saved, families=['ipv4'])
    check = make_check(**instance)
    caplog.set_level(logging.INFO)
    steps = [
        (CIS_V4, 'success', logging.INFO, 'set_loopback_traffic is OK (first evaluation)'),
        (CIS_V4, None, None, None),
        (MISORDERED, 'error', logging.WARNING, 'set_loopback_traffic is CRITICAL (was OK): input_accept_lo (fail): dropped by'),
        (MISORDERED, None, None, None),
        (CONNTRACK_FIRST, 'warning', logging.INFO, 'set_loopback_traffic is WARNING (was CRITICAL): input_drop_loopback_source (partial)'),
        (None, 'info', logging.INFO, 'set_loopback_traffic is UNKNOWN (was WARNING): could not be evaluated: saved ruleset'),
        (None, None, None, None),
        (CIS_V4, 'success', logging.INFO, 'set_loopback_traffic can be evaluated again: OK'),
        (MISORDERED, 'error', logging.WARNING, 'set_loopback_traffic is CRITICAL (was OK)'),
        (None, 'info', logging.INFO, 'set_loopback_traffic is UNKNOWN (was CRITICAL)'),
        (MISORDERED, 'error', logging.WARNING, 'set_loopback_traffic can be evaluated again: CRITICAL'),
    ]
    for ruleset, alert_type, level, log in steps:
        if ruleset is None:
            (tmp_path / 'rules.v4').unlink(missing_ok=True)
        else:
            saved('rules.v4', ruleset)
        aggregator.reset()
        caplog.clear()
        dd_run_check(check)
        events = aggregator.events
        lines = [r for r in caplog.records if r.getMessage().startswith('set_loopback_traffic ')]
        if alert_type is None:
            assert events == [] and lines == [], (ruleset, events, lines)
            continue
        (event,) = events
        assert event['alert_type'] == alert_type
        (line,) = lines
        assert line.levelno == level and line.getMessage().startswith(log), line.getMessage()
        # The event's text holds the message's explanation (its first line), the log line the message.
        (service_check,) = aggregator.service_checks(SERVICE_CHECK)
        if service_check.message:
            assert service_check.message.replace('\n', ' | ').split(' ', 1)[1] in line.getMessage()


def test_a_change_of_message_within_one_status_sends_no_event(aggregator, dd_run_check, saved):
    instance = files_instance(saved, families=['ipv4'], ipv4=MISORDERED)
    check = make_check(**instance)
    dd_run_check(check)
    saved('rules.v4', filter_table('-A INPUT -i lo -j DROP', '-A OUTPUT -o lo -j ACCEPT'))
    aggregator.reset()
    dd_run_check(check)
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.CRITICAL, tags=V4_TAGS, count=1)
    assert aggregator.events == []


def test_an_unknown_event_says_why(aggregator, dd_run_check, saved):
    instance = files_instance(saved, families=['ipv4'])
    instance['ruleset_files']['ipv4'] = '/nonexistent/rules.v4'
    dd_run_check(make_check(**instance))
    (event,) = aggregator.events
    assert event['alert_type'] == 'info'
    assert event['msg_title'] == 'set_loopback_traffic is UNKNOWN: cannot be evaluated'
    assert 'Could not evaluate: saved ruleset /nonexistent/rules.v4 does not exist' in event['msg_text']


LONG_COMMENT = 'reviewed by the platform team, ticket NET-4711: ' + 'keep this rule in place until the migration is done ' * 5
LONG_COMMENTED = filter_table(
    '-A INPUT -s 127.0.0.0/8 -m comment --comment "{}" -j DROP'.format(LONG_COMMENT),
    '-A INPUT -i lo -j ACCEPT',
    '-A OUTPUT -m comment --comment "{}" -j DROP'.format(LONG_COMMENT),
    '-A OUTPUT -o lo -j ACCEPT',
)


def test_the_message_fits_in_500_characters_with_every_fix_after_the_first_line(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved, ipv4=LONG_COMMENTED, families=['ipv4'])))
    (critical,) = aggregator.service_checks(SERVICE_CHECK)
    message = critical.message
    assert len(message) <= 500
    first, fix, *rest = message.split('\n')
    assert first.startswith('set_loopback_traffic input_accept_lo (fail): dropped by filter INPUT rule 1: -A INPUT -s 127.0.0.0/8 -m comment')
    assert first.endswith('-j DROP') and '...' in first  # the long comment shortened in the middle
    assert fix == 'Fix: iptables -I INPUT 1 -i lo -j ACCEPT; iptables -I OUTPUT 1 -o lo -j ACCEPT'
    assert rest == ['Also: output_accept_lo fail']
    # The event has it all.
    (event,) = aggregator.events
    assert LONG_COMMENT in event['msg_text'] and len(event['msg_text']) <= 4000
    assert event['msg_text'].count('iptables -I OUTPUT 1 -o lo -j ACCEPT') == 2  # in "To fix" and under its requirement


def test_what_does_not_fit_is_counted(aggregator, dd_run_check, saved):
    filler = 'x' * 150
    ruleset = filter_table(
        '-A INPUT -m conntrack --ctstate NEW -j KUBE-EXTERNAL-SERVICES',
        '-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
        '-A INPUT -i lo -j ACCEPT',
        '-A INPUT -s 127.0.0.0/8 -j DROP',
        '-A OUTPUT -m comment --comment "{}" -j DROP'.format(filler),
        '-A OUTPUT -o lo -j ACCEPT',
        '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "{}" -m tcp --dport 30080 -j DROP'.format(filler),
        input_policy='DROP',
        chains=['KUBE-EXTERNAL-SERVICES'],
    )
    expired = dict(NODEPORT_WAIVER, chain='KUBE-*', expires='2020-01-01')
    dd_run_check(make_check(**files_instance(saved, ipv4=ruleset, families=['ipv4'], waivers=[expired])))
    (critical,) = aggregator.service_checks(SERVICE_CHECK)
    assert len(critical.message) <= 500
    first, *lines = critical.message.split('\n')
    assert first.startswith('set_loopback_traffic output_accept_lo (fail): dropped by filter OUTPUT rule 1: -A OUTPUT -m comment')
    assert first.endswith('-j DROP')
    assert lines == [
        'Fix: iptables -I OUTPUT 1 -o lo -j ACCEPT; iptables -I INPUT 1 -i lo -j ACCEPT; iptables -I INPUT 1 -s 127.0.0.0/8 ! -i lo -j DROP',
        'Also: input_accept_lo partial, input_drop_loopback_source partial',
        'Expired waiver ignored: waivers[0] (input_accept_lo chain KUBE-*, until 2020-01-01)',
        'and 1 more, in the loopback_traffic event',  # the kube-proxy note
    ]
    (event,) = aggregator.events
    assert "KUBE-EXTERNAL-SERVICES is kube-proxy's chain" in event['msg_text']


def test_a_deviation_in_kube_proxys_chain_says_whose_chain_it_is_and_why(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved, ipv4=KUBE_NODE, families=['ipv4'])))
    (warning,) = aggregator.service_checks(SERVICE_CHECK)
    assert warning.status == AgentCheck.WARNING
    first, fix, note = warning.message.split('\n')
    assert first.startswith('set_loopback_traffic input_accept_lo (partial): accepted by filter INPUT rule 2')
    assert fix == 'Fix: iptables -I INPUT 1 -i lo -j ACCEPT'
    assert note == (
        "KUBE-EXTERNAL-SERVICES is kube-proxy's chain: it drops NodePort and external-IP traffic for services "
        'without local endpoints, and rejects it for services without any endpoint'
    )
    (event,) = aggregator.events
    assert 'kube-proxy rewrites it on every sync: change the Service, or accept the deviation with a waiver' in event['msg_text']


# --- waivers ----------------------------------------------------------------------------------------------


def test_a_waived_deviation_does_not_make_the_requirement_partial(aggregator, dd_run_check, saved):
    dd_run_check(make_check(**files_instance(saved, ipv4=KUBE_NODE, waivers=[NODEPORT_WAIVER])))
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.OK, tags=V4_TAGS, count=1)
    (ok,) = [sc for sc in aggregator.service_checks(SERVICE_CHECK) if 'rule:set_loopback_traffic' in sc.tags]
    assert not ok.message
    aggregator.assert_metric('loopback_traffic.compliant', value=1, tags=V4_TAGS, count=1)
    assert_requirement_statuses(aggregator, V4_TAGS, [0, 0, 0])
    assert_waived(aggregator, V4_TAGS, [1, 0, 0])
    assert_waived(aggregator, V6_TAGS, [0, 0, 0])
    aggregator.assert_metrics_using_metadata(get_metadata_metrics(), check_submission_type=True)
    (event,) = events_of(aggregator)
    assert event['alert_type'] == 'success'
    assert (
        '  waived by waivers[0] (input_accept_lo chain KUBE-EXTERNAL-SERVICES, until 2099-12-31): dropped by filter '
        'KUBE-EXTERNAL-SERVICES rule 1: {} ("kube-proxy drops NodePorts of services without local endpoints by design")'.format(KUBE_NODEPORT_RULE)
    ) in event['msg_text'].split('\n')


def test_the_message_names_the_waiver_when_other_deviations_remain(aggregator, dd_run_check, saved):
    ruleset = KUBE_NODE.replace('-A INPUT -i lo -j ACCEPT\n', '-A INPUT -p udp -j DROP\n-A INPUT -i lo -j ACCEPT\n')
    dd_run_check(make_check(**files_instance(saved, ipv4=ruleset, families=['ipv4'], waivers=[NODEPORT_WAIVER])))
    (warning,) = aggregator.service_checks(SERVICE_CHECK)
    assert warning.status == AgentCheck.WARNING
    lines = warning.message.split('\n')
    assert lines[0] == (
        'set_loopback_traffic input_accept_lo (partial): accepted by filter INPUT rule 3: -A INPUT -i lo -j ACCEPT; '
        'but part of it is dropped by filter INPUT rule 2: -A INPUT -p udp -j DROP'
    )
    assert lines[1] == 'Fix: iptables -I INPUT 1 -i lo -j ACCEPT'
    assert 'Waived: 1 deviation of input_accept_lo (waivers[0])' in lines
    assert_waived(aggregator, V4_TAGS, [1, 0, 0])


def test_a_waiver_never_turns_a_failing_bulk_into_a_pass(aggregator, dd_run_check, saved):
    # The bulk of input_accept_lo is dropped: waiving its deciding rule, or the deviation before it,
    # leaves it failed.
    ruleset = KUBE_NODE.replace('-A INPUT -i lo -j ACCEPT\n', '-A INPUT -i lo -j DROP\n')
    waivers = [NODEPORT_WAIVER, dict(NODEPORT_WAIVER, chain=None, rule='-A INPUT -i lo -j DROP')]
    del waivers[1]['chain']
    dd_run_check(make_check(**files_instance(saved, ipv4=ruleset, families=['ipv4'], waivers=waivers)))
    (critical,) = aggregator.service_checks(SERVICE_CHECK)
    assert critical.status == AgentCheck.CRITICAL
    assert critical.message.startswith('set_loopback_traffic input_accept_lo (fail): dropped by filter INPUT rule 2: -A INPUT -i lo -j DROP\n')
    assert 'waivers[1] cannot waive the rule that decides input_accept_lo for most of its packets' in critical.message
    assert_requirement_statuses(aggregator, V4_TAGS, [2, 0, 0])
    assert_waived(aggregator, V4_TAGS, [1, 0, 0])  # the NodePort deviation is waived, the requirement still fails
    (event,) = aggregator.events
    assert 'waivers[1] (input_accept_lo rule -A INPUT -i lo -j DROP, until 2099-12-31) matches the rule that decides' in event['msg_text']


def test_an_expired_waiver_is_ignored_with_a_warning(aggregator, dd_run_check, saved, caplog):
    caplog.set_level(logging.INFO)
    expired = dict(NODEPORT_WAIVER, expires='2020-01-31')
    check = make_check(**files_instance(saved, ipv4=KUBE_NODE, families=['ipv4'], waivers=[expired]))
    dd_run_check(check)
    dd_run_check(check)
    (warning, _) = aggregator.service_checks(SERVICE_CHECK)
    assert warning.status == AgentCheck.WARNING
    assert 'Expired waiver ignored: waivers[0] (input_accept_lo chain KUBE-EXTERNAL-SERVICES, until 2020-01-31)' in warning.message.split('\n')
    aggregator.assert_metric('loopback_traffic.waived', value=0, tags=V4_TAGS + ['requirement:input_accept_lo'], count=2)
    logged = [r for r in caplog.records if 'expired on 2020-01-31 and is ignored' in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    (event,) = aggregator.events
    assert 'not waived, waivers[0] (input_accept_lo chain KUBE-EXTERNAL-SERVICES, until 2020-01-31) has expired' in event['msg_text']


def test_a_waiver_expires_at_the_end_of_its_day(aggregator, dd_run_check, saved, monkeypatch):
    check = make_check(**files_instance(saved, ipv4=KUBE_NODE, families=['ipv4'], waivers=[dict(NODEPORT_WAIVER, expires='2027-06-30')]))
    monkeypatch.setattr(check, 'today', lambda: datetime.date(2027, 6, 30))
    dd_run_check(check)
    monkeypatch.setattr(check, 'today', lambda: datetime.date(2027, 7, 1))
    dd_run_check(check)
    assert [sc.status for sc in aggregator.service_checks(SERVICE_CHECK)] == [AgentCheck.OK, AgentCheck.WARNING]
    assert [e['alert_type'] for e in aggregator.events] == ['success', 'warning']


@pytest.mark.parametrize(
    'waivers, complaint',
    [
        ({'requirement': 'input_accept_lo'}, '`waivers` must be a list of waivers'),
        (['KUBE-*'], '`waivers[0]` must be a mapping'),
        ([dict(NODEPORT_WAIVER, justification=None)], '`waivers[0]` (chain KUBE-EXTERNAL-SERVICES): `justification` is required'),
        ([dict(NODEPORT_WAIVER, justification='  ')], '`waivers[0]` (chain KUBE-EXTERNAL-SERVICES): `justification` must be a non-empty string'),
        ([NODEPORT_WAIVER, dict(NODEPORT_WAIVER, expires=None)], '`waivers[1]` (chain KUBE-EXTERNAL-SERVICES): `expires` is required'),
        ([dict(NODEPORT_WAIVER, expires='next year')], "`expires` must be an ISO 8601 date such as 2027-06-30, not 'next year'"),
        ([dict(NODEPORT_WAIVER, expires='2027-02-30')], "not '2027-02-30'"),
        ([dict(NODEPORT_WAIVER, expires=20270630)], 'not 20270630'),
        ([dict(NODEPORT_WAIVER, requirement='input_accept')], '`requirement` must be one of input_accept_lo, output_accept_lo, input_drop_loopback_source'),
        ([dict(NODEPORT_WAIVER, rule='-A INPUT -j DROP')], 'give exactly one of `chain`'),
        ([{k: v for k, v in NODEPORT_WAIVER.items() if k != 'chain'}], '`waivers[0]`: give exactly one of `chain`'),
        ([dict(NODEPORT_WAIVER, justfication='x')], 'unknown key `justfication` (did you mean `justification`?)'),
    ],
)
def test_an_invalid_waiver_is_a_configuration_error_naming_the_entry(waivers, complaint):
    with pytest.raises(ConfigurationError) as error:
        make_check(waivers=waivers)
    assert complaint in str(error.value)


def test_waivers_take_dates_as_yaml_writes_them(saved):
    for expires in ('2027-06-30', datetime.date(2027, 6, 30), datetime.datetime(2027, 6, 30, 12, 0), '2027-06-30T00:00:00Z'):
        (waiver,) = make_check(waivers=[dict(NODEPORT_WAIVER, expires=expires)]).options.waivers
        assert waiver.expires == datetime.date(2027, 6, 30)


# --- end to end in namespaces, the save commands pointed into them ------------------------------------


def namespace_instance(ns, **options):
    options.setdefault('applicability', 'always')
    prefix = ns.argv_prefix()
    return dict(
        iptables_save_command=prefix + ['iptables-save'],
        ip6tables_save_command=prefix + ['ip6tables-save'],
        iptables_legacy_save_command=prefix + ['iptables-legacy-save'],
        ip6tables_legacy_save_command=prefix + ['ip6tables-legacy-save'],
        **options
    )


def test_e2e_exact_remediation_is_ok_for_both_rules(aggregator, dd_run_check, netns):
    netns.restore(CIS_V4, 'ipv4')
    netns.restore(CIS_V6, 'ipv6')
    dd_run_check(make_check(**namespace_instance(netns)))
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.OK, tags=V4_TAGS, count=1)
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.OK, tags=V6_TAGS, count=1)
    aggregator.assert_metric('loopback_traffic.ruleset.rules', value=3, tags=V4_TAGS, count=1)


def test_e2e_misordered_is_critical_naming_the_rule(aggregator, dd_run_check, netns):
    netns.restore(MISORDERED, 'ipv4')
    dd_run_check(make_check(**namespace_instance(netns, families=['ipv4'])))
    (critical,) = aggregator.service_checks(SERVICE_CHECK)
    assert critical.status == AgentCheck.CRITICAL
    assert 'filter INPUT rule 1: -A INPUT -s 127.0.0.0/8 -j DROP' in critical.message
    assert 'iptables -I INPUT 1 -i lo -j ACCEPT' in critical.message


def test_e2e_both_backends(aggregator, dd_run_check, netns):
    netns.restore(CIS_V4, 'ipv4', 'nft')
    netns.restore(filter_table('-A INPUT -i lo -j DROP'), 'ipv4', 'legacy')
    dd_run_check(make_check(**namespace_instance(netns, families=['ipv4'])))
    (critical,) = aggregator.service_checks(SERVICE_CHECK)
    assert critical.status == AgentCheck.CRITICAL
    assert 'filter INPUT (legacy ruleset) rule 1: -A INPUT -i lo -j DROP' in critical.message
    assert 'iptables-legacy -I INPUT 1 -i lo -j ACCEPT' in critical.message
    aggregator.assert_metric('loopback_traffic.ruleset.rules', value=4, tags=V4_TAGS, count=1)


def test_e2e_empty_namespace(aggregator, dd_run_check, netns):
    dd_run_check(make_check(**namespace_instance(netns)))
    aggregator.assert_service_check(SERVICE_CHECK, AgentCheck.CRITICAL, tags=V4_TAGS, count=1)
    assert_requirement_statuses(aggregator, V4_TAGS, [0, 0, 2])


def test_options_of_replaced_mechanisms_still_load_with_a_warning(dd_run_check, caplog, saved):
    caplog.set_level(logging.INFO)
    check = make_check(collection='listing', table_listing_interval=600)
    assert check.options.collection == 'auto'
    dd_run_check(check)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any('`collection: listing` is deprecated' in w for w in warnings), warnings
    assert any('`table_listing_interval` is deprecated and ignored' in w for w in warnings), warnings
