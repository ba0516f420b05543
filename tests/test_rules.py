"""The four compliance rules (spec sections 1, 4 and 5) on fabricated hosts and saved rulesets: where each
applies, one service check per rule covering both families, and fixes in each manager's language."""
import json
import os

import pytest

from datadog_checks.base import AgentCheck
from datadog_checks.loopback_traffic import LoopbackTrafficCheck
from datadog_checks.loopback_traffic.applicability import firewalld_enabled, ufw_disabled
from datadog_checks.loopback_traffic.config import InvalidConfiguration, parse_options
from datadog_checks.loopback_traffic.pipeline import Outcome, RuleOutcome
from datadog_checks.loopback_traffic.applicability import Applicability
from datadog_checks.loopback_traffic.remedies import in_manager_language
from datadog_checks.loopback_traffic.report import message, rule_status, submissions, to_text
from datadog_checks.loopback_traffic.requirements import RULE_NAMES, rule_named
from datadog_checks.loopback_traffic.results import DECIDED, Deviation, Fix, Insertion, Position, RequirementResult, RuleResult, Status

from .rulesets import CIS_V4, CIS_V6
from .test_applicability import INSTALLED, make_proc, write_dpkg

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'loopback_traffic', 'data', 'examples')
UFW = rule_named('set_ufw_loopback_traffic')
NFTABLES = rule_named('set_nftables_loopback_traffic')
INSTANCE_TAGS = ['team:net']


def host(tmp_path, packages, disable_ipv6='0', **options):
    """An Agent check on a fabricated host: its package database, /proc and root file system."""
    root = tmp_path / 'root'
    (root / 'etc' / 'systemd' / 'system').mkdir(parents=True, exist_ok=True)
    instance = {
        'tags': list(INSTANCE_TAGS),
        'dpkg_status_file': write_dpkg(tmp_path, packages),
        'proc_path': make_proc(tmp_path, disable_ipv6),
        'host_root': str(root),
        'ruleset_files': {'ipv4': os.path.join(EXAMPLES, 'ufw.rules'), 'ipv6': write(tmp_path, 'rules.v6', CIS_V6)},
    }
    instance.update(options)
    check = LoopbackTrafficCheck('loopback_traffic', {}, [instance])
    check.check_id = 'loopback_traffic:rules-test'
    return check


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def applicable_rules(aggregator):
    return sorted(
        next(tag[5:] for tag in metric.tags if tag.startswith('rule:'))
        for metric in aggregator.metrics('loopback_traffic.applicable')
        if metric.value == 1
    )


# --------------------------------------------------------------------------- where each rule applies


@pytest.mark.parametrize(
    'packages, expected',
    [
        pytest.param({'iptables': INSTALLED}, ['set_ipv6_loopback_traffic', 'set_loopback_traffic'], id='iptables-host'),
        pytest.param({'iptables': INSTALLED, 'ufw': INSTALLED}, ['set_ufw_loopback_traffic'], id='ubuntu-with-ufw'),
        pytest.param({'iptables': INSTALLED, 'nftables': INSTALLED}, ['set_nftables_loopback_traffic'], id='debian-with-nftables'),
        pytest.param({'nftables': INSTALLED, 'ufw': INSTALLED, 'iptables': INSTALLED}, ['set_nftables_loopback_traffic', 'set_ufw_loopback_traffic'], id='both'),
        pytest.param({'libnftables1': INSTALLED}, [], id='none'),
    ],
)
def test_by_default_a_host_gets_the_rules_of_what_manages_its_firewall(aggregator, dd_run_check, tmp_path, packages, expected):
    dd_run_check(host(tmp_path, packages))
    assert applicable_rules(aggregator) == expected
    # Every rule says whether it applies, each with all the families it covers.
    for name in RULE_NAMES:
        tags = set(rule_named(name).tags())
        assert any(tags <= set(metric.tags) for metric in aggregator.metrics('loopback_traffic.applicable')), name
    assert len(aggregator.service_checks('loopback_traffic.compliance')) == len(expected)


def systemd_link(root, directory, name, target):
    path = root / directory.lstrip('/') / name
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, str(path))


def firewalld_unit(root):
    unit = root / 'usr' / 'lib' / 'systemd' / 'system' / 'firewalld.service'
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text('[Unit]\nDescription=firewalld\n')


@pytest.mark.parametrize(
    'links, unit_file, enabled_by',
    [
        pytest.param([], True, None, id='installed-not-enabled'),
        pytest.param(
            [('/etc/systemd/system/multi-user.target.wants', 'firewalld.service', '/usr/lib/systemd/system/firewalld.service')],
            True,
            '/etc/systemd/system/multi-user.target.wants/firewalld.service',
            id='enabled',
        ),
        pytest.param(
            [('/etc/systemd/system', 'dbus-org.fedoraproject.FirewallD1.service', '/usr/lib/systemd/system/firewalld.service')],
            True,
            '/etc/systemd/system/dbus-org.fedoraproject.FirewallD1.service',
            id='enabled-by-its-alias',
        ),
        pytest.param(
            [('/run/systemd/system/multi-user.target.wants', 'firewalld.service', '/usr/lib/systemd/system/firewalld.service')],
            True,
            '/run/systemd/system/multi-user.target.wants/firewalld.service',
            id='enabled-for-this-boot',
        ),
        pytest.param(
            [
                ('/etc/systemd/system/multi-user.target.wants', 'firewalld.service', '/usr/lib/systemd/system/firewalld.service'),
                ('/etc/systemd/system', 'firewalld.service', '/dev/null'),
            ],
            True,
            None,
            id='masked',
        ),
        pytest.param(
            [('/etc/systemd/system/multi-user.target.wants', 'firewalld.service', '/usr/lib/systemd/system/firewalld.service')],
            False,
            None,
            id='link-left-by-a-removed-package',
        ),
        pytest.param(
            [('/etc/systemd/system/multi-user.target.wants', 'firewalld.service', '../../../../usr/lib/systemd/system/firewalld.service')],
            True,
            '/etc/systemd/system/multi-user.target.wants/firewalld.service',
            id='relative-link',
        ),
    ],
)
def test_firewalld_enabled_is_read_from_systemds_links(aggregator, dd_run_check, tmp_path, links, unit_file, enabled_by):
    root = tmp_path / 'root'
    (root / 'etc' / 'systemd' / 'system').mkdir(parents=True)
    if unit_file:
        firewalld_unit(root)
    for directory, name, target in links:
        systemd_link(root, directory, name, target)
    assert firewalld_enabled(str(root)) == enabled_by
    dd_run_check(host(tmp_path, {'nftables': INSTALLED, 'iptables': INSTALLED}, rules=['set_nftables_loopback_traffic']))
    [applicable] = aggregator.metrics('loopback_traffic.applicable')
    assert applicable.value == (0 if enabled_by else 1)


def test_with_firewalld_enabled_the_nftables_rule_says_why_it_does_not_apply(tmp_path, caplog):
    root = tmp_path / 'root'
    firewalld_unit(root)
    systemd_link(root, '/etc/systemd/system/multi-user.target.wants', 'firewalld.service', '/usr/lib/systemd/system/firewalld.service')
    check = host(tmp_path, {'nftables': INSTALLED}, rules=['set_nftables_loopback_traffic'])
    with caplog.at_level('INFO'):
        check.check({})
    assert (
        'set_nftables_loopback_traffic is not applicable: not applicable: firewalld is enabled '
        '(/etc/systemd/system/multi-user.target.wants/firewalld.service), and it manages the nftables ruleset'
    ) in caplog.text


@pytest.mark.parametrize(
    'text, disabled',
    [
        ('ENABLED=no\nLOGLEVEL=low\n', '/etc/ufw/ufw.conf'),
        ('# /etc/ufw/ufw.conf\nENABLED="no"\n', '/etc/ufw/ufw.conf'),
        ('ENABLED=yes\n', None),
        (None, None),  # no ufw.conf to read: the kernel's ruleset is judged all the same
    ],
)
def test_ufw_enabled_is_read_from_ufw_conf(tmp_path, text, disabled):
    if text is not None:
        (tmp_path / 'etc' / 'ufw').mkdir(parents=True)
        (tmp_path / 'etc' / 'ufw' / 'ufw.conf').write_text(text)
    assert ufw_disabled(str(tmp_path)) == disabled


def test_without_ipv6_a_two_family_rule_is_judged_on_ipv4_and_says_so(aggregator, dd_run_check, tmp_path):
    dd_run_check(host(tmp_path, {'ufw': INSTALLED}, disable_ipv6='1'))
    [check] = aggregator.service_checks('loopback_traffic.compliance')
    assert sorted(check.tags) == sorted(INSTANCE_TAGS + ['rule:set_ufw_loopback_traffic', 'family:ipv4', 'rule_id:def-000-sbg'])
    families = {tag for metric in aggregator.metrics('loopback_traffic.requirement.status') for tag in metric.tags if tag.startswith('family:')}
    assert families == {'family:ipv4'}


# --------------------------------------------------------------------------- one service check per rule


def test_the_ufw_rule_is_one_service_check_with_requirement_gauges_per_family(aggregator, dd_run_check, tmp_path):
    dd_run_check(host(tmp_path, {'ufw': INSTALLED}))
    rule_tags = INSTANCE_TAGS + ['rule:set_ufw_loopback_traffic', 'family:ipv4', 'family:ipv6', 'rule_id:def-000-sbg']
    [check] = aggregator.service_checks('loopback_traffic.compliance')
    assert sorted(check.tags) == sorted(rule_tags)
    # The bundled ufw host (IPv4) has no DROP of 127.0.0.0/8: partial; the CIS IPv6 ruleset passes.
    assert check.status == AgentCheck.WARNING
    assert check.message.startswith('set_ufw_loopback_traffic ipv4 input_drop_loopback_source (partial): ')
    aggregator.assert_metric('loopback_traffic.compliant', value=0, tags=rule_tags, count=1)
    aggregator.assert_metric('loopback_traffic.applicable', value=1, tags=rule_tags, count=1)
    for family, rule_id_tags in (('ipv4', 1), ('ipv6', 0)):
        part_tags = INSTANCE_TAGS + ['rule:set_ufw_loopback_traffic', 'family:' + family, 'rule_id:def-000-sbg']
        aggregator.assert_metric(
            'loopback_traffic.requirement.status', value=rule_id_tags, tags=part_tags + ['requirement:input_drop_loopback_source'], count=1
        )
        for name in ('input_accept_lo', 'output_accept_lo'):
            aggregator.assert_metric('loopback_traffic.requirement.status', value=0, tags=part_tags + ['requirement:' + name], count=1)


def test_the_nftables_rule_carries_the_two_input_requirements_only(aggregator, dd_run_check, tmp_path):
    dd_run_check(host(tmp_path, {'nftables': INSTALLED}))
    requirements = sorted(
        (next(t for t in m.tags if t.startswith('family:')), next(t for t in m.tags if t.startswith('requirement:')))
        for m in aggregator.metrics('loopback_traffic.requirement.status')
    )
    assert requirements == sorted(
        ('family:' + f, 'requirement:' + r) for f in ('ipv4', 'ipv6') for r in ('input_accept_lo', 'input_drop_loopback_source')
    )


def _outcome(rule, result):
    return Outcome(rule, Applicability(True, 'applicable'), result, 0.01, ('saved file',))


def test_a_proven_failure_outranks_a_family_that_could_not_be_judged():
    failing = RequirementResult('input_accept_lo', Status.FAIL, DECIDED, Position('filter', 'INPUT', 1, '-A INPUT -j DROP'), 'deny')
    v4 = RuleResult(UFW.part('ipv4'), Status.FAIL, (failing,), 3)
    v6 = RuleResult(UFW.part('ipv6'), Status.UNKNOWN, error='ip6tables-save timed out')
    outcome = RuleOutcome(UFW, (_outcome(UFW.part('ipv4'), v4), _outcome(UFW.part('ipv6'), v6)))
    assert rule_status(outcome, 'warning') == AgentCheck.CRITICAL
    lines = message(outcome).split('\n')
    assert lines[0] == 'set_ufw_loopback_traffic ipv4 input_accept_lo (fail): dropped by filter INPUT rule 1: -A INPUT -j DROP'
    assert 'set_ufw_loopback_traffic (ipv6) could not be evaluated: ip6tables-save timed out' in lines
    [check] = submissions(outcome, 'warning', ()).service_checks
    assert check.tags == ('rule:set_ufw_loopback_traffic', 'family:ipv4', 'family:ipv6', 'rule_id:def-000-sbg')
    text = to_text(outcome, 'warning')
    assert text.startswith('set_ufw_loopback_traffic (ipv4, ipv6, def-000-sbg): CRITICAL\n')
    assert '  ipv6 could not evaluate: ip6tables-save timed out' in text


# --------------------------------------------------------------------------- fixes in each manager's language


def _result(rule, requirement, deciding, deviations=(), fixes=()):
    found = RequirementResult(
        requirement,
        Status.FAIL if not deviations else Status.PARTIAL,
        DECIDED,
        deciding,
        'deny',
        tuple(Deviation(where, 'accept') for where in deviations),
        tuple(fix.command for fix in fixes),
        tuple(fixes),
    )
    return in_manager_language(RuleResult(rule, found.status, (found,), 1)).requirements[0].remediation


def _at(chain, index=1, table='filter', ruleset=''):
    return Position(table, chain, index, '-A {} -j DROP'.format(chain), ruleset)


RAW_FIX = Fix((Insertion('iptables', 'raw', 'PREROUTING', 1, '-i lo -j ACCEPT'),))


@pytest.mark.parametrize(
    'family, requirement, deciding, deviations, expected',
    [
        pytest.param('ipv4', 'input_accept_lo', Position('filter', 'INPUT', None, 'policy DROP'), (), ('ufw allow in on lo',), id='default-policy'),
        pytest.param('ipv6', 'output_accept_lo', _at('ufw6-after-output'), (), ('ufw allow out on lo',), id='after-rules'),
        pytest.param('ipv4', 'input_accept_lo', _at('ufw-user-input'), (), ('ufw prepend allow in on lo',), id='a-user-rule-decides'),
        pytest.param(
            'ipv6', 'input_drop_loopback_source', Position('filter', 'INPUT', None, 'policy ACCEPT'), (_at('ufw6-user-input'),), ('ufw prepend deny in from ::1',), id='a-user-rule-lets-part-through'
        ),
        pytest.param(
            'ipv4',
            'input_drop_loopback_source',
            _at('ufw-user-input'),
            (_at('ufw-before-input', 2),),
            ('in /etc/ufw/before.rules add `-A ufw-before-input -s 127.0.0.0/8 ! -i lo -j DROP` above its first `-A ufw-before-input` line, then run `ufw reload`',),
            id='before-rules-come-first',
        ),
        pytest.param(
            'ipv4',
            'input_accept_lo',
            Position('filter', 'ufw-user-input', 1, '-A ufw-user-input -i lo -j DROP'),
            (),
            ('ufw allow in on lo',),
            id='ufw-changes-a-user-rule-of-the-same-criteria-in-place',  # and skips a prepend of it
        ),
        pytest.param(
            'ipv6',
            'input_drop_loopback_source',
            Position('filter', 'INPUT', None, 'policy DROP'),
            (Position('filter', 'ufw6-user-input', 2, '-A ufw6-user-input -s ::1/128 -j ACCEPT'),),
            ('ufw deny in from ::1',),
            id='an-allow-of-the-same-source-is-turned-into-a-deny',
        ),
        pytest.param('ipv4', 'input_accept_lo', _at('PREROUTING', table='raw'), (), (RAW_FIX.command,), id='a-chain-ufw-does-not-write'),
        pytest.param('ipv4', 'input_accept_lo', _at('ufw-user-input', ruleset='legacy'), (), (RAW_FIX.command,), id='the-legacy-ruleset'),
    ],
)
def test_ufw_fixes_go_where_they_take_effect(family, requirement, deciding, deviations, expected):
    assert _result(UFW.part(family), requirement, deciding, deviations, (RAW_FIX,)) == expected


def test_ufw_disabled_is_fixed_by_enabling_it_first():
    found = RequirementResult('input_drop_loopback_source', Status.FAIL, DECIDED, Position('filter', 'INPUT', None, 'policy ACCEPT'), 'accept')
    translated = in_manager_language(RuleResult(UFW.part('ipv6'), Status.FAIL, (found,), 1), '/etc/ufw/ufw.conf')
    assert translated.requirements[0].remediation == ('ufw enable', 'ufw deny in from ::1')


def test_nftables_fixes_name_the_persistent_file_and_keep_iptables_tables_to_iptables():
    native = Fix((Insertion('nft', 'inet filter', 'input', None, 'iif lo accept'),))
    assert _result(NFTABLES.part('ipv4'), 'input_accept_lo', _at('input', table='inet filter'), (), (native,)) == (
        'nft insert rule inet filter input iif lo accept',
        'in /etc/nftables.conf add `iif lo accept` first in chain input of table inet filter',
    )
    iptables = Fix((Insertion('iptables', 'filter', 'INPUT', 1, '-i lo -j ACCEPT'),))
    assert _result(NFTABLES.part('ipv4'), 'input_accept_lo', _at('INPUT'), (), (iptables,)) == ('iptables -I INPUT 1 -i lo -j ACCEPT',)


def test_the_iptables_rules_keep_the_evaluators_fixes():
    part = rule_named('set_loopback_traffic').part('ipv4')
    assert _result(part, 'input_accept_lo', _at('ufw-user-input'), (), (RAW_FIX,)) == (RAW_FIX.command,)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    'instance, words',
    [
        ({'rules': ['set_ufw_loopback_trafic']}, 'did you mean set_ufw_loopback_traffic?'),
        ({'rules': 'set_loopback_traffic'}, '`rules` must be a non-empty list of rule names'),
        ({'rules': []}, '`rules` must be a non-empty list of rule names'),
        ({'rules': ['set_ipv6_loopback_traffic'], 'families': ['ipv4']}, 'leaves out every family of it'),
    ],
)
def test_bad_rule_selections_say_what_is_wrong(instance, words):
    with pytest.raises(InvalidConfiguration) as error:
        parse_options(instance)
    assert words in str(error.value)


def test_families_alone_still_selects_as_it_did():
    assert parse_options({'families': ['ipv4']}).rules == ('set_loopback_traffic', 'set_ufw_loopback_traffic', 'set_nftables_loopback_traffic')
    assert parse_options({}).rules == RULE_NAMES


def test_an_iptables_host_with_cis_rules_is_ok_on_both_iptables_rules(aggregator, dd_run_check, tmp_path):
    check = host(tmp_path, {'iptables': INSTALLED}, ruleset_files={'ipv4': write(tmp_path, 'v4', CIS_V4), 'ipv6': write(tmp_path, 'v6', CIS_V6)})
    dd_run_check(check)
    assert sorted(c.status for c in aggregator.service_checks('loopback_traffic.compliance')) == [AgentCheck.OK, AgentCheck.OK]


def test_the_ufw_host_example_is_judged_by_the_ufw_rule_on_both_families(capsys):
    from datadog_checks.loopback_traffic.cli import main

    assert main(['--example', 'ufw-host', '--json']) == 1
    [found] = json.loads(capsys.readouterr().out)['rules']
    assert (found['rule'], found['manager'], found['families'], found['status']) == ('set_ufw_loopback_traffic', 'ufw', ['ipv4', 'ipv6'], 'WARNING')
    fixes = {r['family']: r['remediation'] for r in found['requirements'] if r['requirement'] == 'input_drop_loopback_source'}
    assert fixes['ipv6'] == [
        'in /etc/ufw/before6.rules add `-A ufw6-before-input -s ::1/128 ! -i lo -j DROP` above its first `-A ufw6-before-input` line, then run `ufw reload`'
    ]
    # A saved ruleset shows what ufw loaded: this host's ufw.conf says nothing about it.
    assert 'not enabled' not in found['message']


def test_ci_reports_of_a_two_family_rule_keep_the_families_apart(capsys):
    from datadog_checks.loopback_traffic.cli import main

    main(['--example', 'ufw-host', '--format', 'sarif'])
    run = json.loads(capsys.readouterr().out)['runs'][0]
    ids = [rule['id'] for rule in run['tool']['driver']['rules']]
    assert len(ids) == len(set(ids)) == 6 and 'def-000-sbg/ipv6/input_drop_loopback_source' in ids
    assert sorted(result['ruleId'] for result in run['results']) == ['def-000-sbg/ipv4/input_drop_loopback_source', 'def-000-sbg/ipv6/input_drop_loopback_source']
    main(['--example', 'ufw-host', '--format', 'junit'])
    junit = capsys.readouterr().out
    assert 'name="set_ufw_loopback_traffic (ipv4, def-000-sbg)"' in junit and 'name="set_ufw_loopback_traffic (ipv6, def-000-sbg)"' in junit
