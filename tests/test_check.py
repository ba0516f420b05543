"""The Agent check through the Agent API: statuses, metrics with exact tags and values, options, errors."""
import logging

import pytest

from datadog_checks.base import AgentCheck, ConfigurationError
from datadog_checks.dev.utils import get_metadata_metrics, get_service_checks
from datadog_checks.loopback_traffic import LoopbackTrafficCheck

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


def make_check(**options):
    instance = {'tags': list(INSTANCE_TAGS), 'applicability': 'always'}
    instance.update(options)
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
        assert_requirement_statuses(aggregator, tags, [0, 0, 0])
    (ok,) = aggregator.service_checks(SERVICE_CHECK)[:1]
    assert not ok.message
    durations = [m.value for m in aggregator.metrics('loopback_traffic.collection.duration')]
    assert all(0 < value < 60 for value in durations)
    aggregator.assert_all_metrics_covered()
    aggregator.assert_no_duplicate_all()


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
