"""The ``loopback-traffic`` command: exit codes, inputs, JSON and human output, --config, the live host
(through lt- network namespaces), running without root, and the package applicability of this machine.

Most tests call ``main([...])`` in process; a few run the real command (``python -m ...`` and the
console script next to ``sys.executable``) in a subprocess.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
import yaml

from datadog_checks.loopback_traffic.cli import main

from .netns import netns, require_tools  # noqa: F401  (netns is a fixture)
from .rulesets import CIS_V4, CIS_V6, filter_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), 'loopback-traffic')
IPTABLES_RULES = ['set_loopback_traffic', 'set_ipv6_loopback_traffic']
V4_HEADER = 'set_loopback_traffic (ipv4, def-000-byk)'
V6_HEADER = 'set_ipv6_loopback_traffic (ipv6, def-000-mkc)'
REQUIREMENTS = ['input_accept_lo', 'output_accept_lo', 'input_drop_loopback_source']

MISORDERED_V6 = filter_table('-A INPUT -s ::1/128 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
MISORDERED_V4 = filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
ERROR_TEXT = 'iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n'


def run(argv, capsys):
    """main(argv) in process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_process(argv, input=None, cwd=None, command=None, timeout=120):  # noqa: A002
    command = command or [sys.executable, '-m', 'datadog_checks.loopback_traffic']
    return subprocess.run(
        command + list(argv), input=input, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def write(tmp_path):
    def write(name, text):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def write_config(write, *instances, name='conf.yaml'):
    return write(name, yaml.safe_dump({'init_config': {}, 'instances': list(instances)}))


def report_lines(out, header):
    """The lines of one rule's human report: its status line and the indented lines after it."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header + ':'))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(' '):
            break
        block.append(line)
    return block


def requirement_block(block, requirement):
    """The ``[STATUS] requirement: explanation`` line and its indented follow-up lines."""
    start = next(i for i, line in enumerate(block) if line.startswith('  [') and '] {}: '.format(requirement) in line)
    lines = [block[start]]
    for line in block[start + 1 :]:
        if not line.startswith('      '):
            break
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- exit codes and statuses


@pytest.mark.parametrize(
    'argv, code, status',
    [
        (['--example', 'compliant'], 0, 'OK'),
        (['--example', 'ufw'], 1, 'WARNING'),
        (['--example', 'misordered'], 2, 'CRITICAL'),
        (['--example', 'ufw', '--partial', 'critical'], 2, 'CRITICAL'),
        (['--example', 'ufw', '--partial', 'ok'], 0, 'OK'),
        (['--example', 'ufw', '--partial', 'warning'], 1, 'WARNING'),
        (['--example', 'compliant', '--mode', 'literal'], 0, 'OK'),
        (['--example', 'misordered', '--mode', 'literal'], 2, 'CRITICAL'),
        (['--example', 'ufw', '--mode', 'literal'], 2, 'CRITICAL'),
    ],
)
def test_exit_code_and_status_of_the_bundled_examples(capsys, argv, code, status):
    got, out, err = run(argv, capsys)
    assert got == code
    assert out.splitlines()[0] == '{}: {}'.format(V4_HEADER, status)
    assert V6_HEADER not in out  # a saved IPv4 ruleset: only the IPv4 rule
    assert err == ''
    mode = 'literal' if 'literal' in argv else 'effective'
    assert '({} mode)'.format(mode) in out.splitlines()[1]
    assert 'examples' in out.splitlines()[1] and argv[1] + '.rules' in out.splitlines()[1]


def test_partial_changes_the_exit_code_not_the_requirement_status(capsys):
    seen = {}
    for partial in ('warning', 'critical', 'ok'):
        _, out, _ = run(['--example', 'ufw', '--partial', partial, '--json'], capsys)
        [rule] = json.loads(out)['rules']
        seen[partial] = rule['status_code']
        drop = next(r for r in rule['requirements'] if r['requirement'] == 'input_drop_loopback_source')
        assert (drop['status'], drop['status_code']) == ('partial', 1)
    assert seen == {'warning': 1, 'critical': 2, 'ok': 0}


def test_literal_mode_judges_presence_not_effect(capsys):
    # ufw's rules are effective but not literal: the literal mode fails all three, the effective mode none.
    _, out, _ = run(['--example', 'ufw', '--mode', 'literal'], capsys)
    block = report_lines(out, V4_HEADER)
    for requirement in REQUIREMENTS:
        assert requirement_block(block, requirement)[0].startswith('  [FAIL] ')
    assert 'part ' not in out  # no partial results in literal mode
    _, out, _ = run(['--example', 'ufw'], capsys)
    assert not any(line.startswith('  [FAIL]') for line in out.splitlines())


def test_unparseable_file_is_unknown_with_the_line_number(capsys, write):
    path = write('error.txt', ERROR_TEXT)
    code, out, err = run(['--iptables-save', path], capsys)
    assert code == 3
    block = report_lines(out, V4_HEADER)
    assert block[0] == V4_HEADER + ': UNKNOWN'
    [reason] = [line for line in block if line.startswith('  could not evaluate: ')]
    assert path in reason and 'line 1' in reason and 'Permission denied' in reason
    assert '[PASS]' not in out and 'Traceback' not in out + err


def test_unparseable_line_inside_a_table_is_reported_with_its_number(capsys, write):
    path = write('cut.txt', '# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\nhello world\nCOMMIT\n')
    code, out, _ = run(['--iptables-save', path], capsys)
    assert code == 3
    assert 'could not evaluate' in out and 'line 4' in out and 'hello world' in out


def test_unparseable_json(capsys, write):
    code, out, _ = run(['--iptables-save', write('error.txt', ERROR_TEXT), '--json'], capsys)
    assert code == 3
    [rule] = json.loads(out)['rules']
    assert (rule['status'], rule['status_code'], rule['applicable']) == ('UNKNOWN', 3, True)
    assert 'line 1' in rule['error'] and rule['requirements'] == []
    assert rule['message'].startswith('set_loopback_traffic could not be evaluated: ')


def test_missing_file_is_a_usage_error(capsys, tmp_path):
    missing = str(tmp_path / 'no-such.rules')
    code, out, err = run(['--iptables-save', missing], capsys)
    assert code == 3
    assert out == ''
    assert err.startswith('loopback-traffic: ') and missing in err


def test_missing_file_in_a_real_process_has_no_traceback(tmp_path):
    missing = str(tmp_path / 'no-such.rules')
    done = run_process(['--ip6tables-save', missing])
    assert done.returncode == 3
    assert done.stdout == ''
    assert missing in done.stderr and 'Traceback' not in done.stderr


def test_a_directory_instead_of_a_file_is_a_usage_error(capsys, tmp_path):
    code, out, err = run(['--iptables-save', str(tmp_path)], capsys)
    assert code == 3 and out == '' and str(tmp_path) in err


# --------------------------------------------------------------------------- inputs


def test_both_saved_rulesets(capsys, write):
    code, out, _ = run(['--iptables-save', write('v4', CIS_V4), '--ip6tables-save', write('v6', CIS_V6)], capsys)
    assert code == 0
    v4 = report_lines(out, V4_HEADER)
    v6 = report_lines(out, V6_HEADER)
    assert v4[0].endswith(': OK') and v6[0].endswith(': OK')
    assert requirement_block(v6, 'input_drop_loopback_source')[0].startswith('  [PASS] ')
    assert '-A INPUT -s ::1/128 -j DROP' in requirement_block(v6, 'input_drop_loopback_source')[0]


def test_worst_rule_decides_the_exit_code(capsys, write):
    code, out, _ = run(['--iptables-save', write('v4', CIS_V4), '--ip6tables-save', write('v6', MISORDERED_V6)], capsys)
    assert code == 2
    assert report_lines(out, V4_HEADER)[0].endswith(': OK')
    v6 = report_lines(out, V6_HEADER)
    assert v6[0].endswith(': CRITICAL')
    failing = requirement_block(v6, 'input_accept_lo')
    assert failing[0].startswith('  [FAIL] input_accept_lo: ') and '-A INPUT -s ::1/128 -j DROP' in failing[0]
    assert '      fix: ip6tables -I INPUT 1 -i lo -j ACCEPT' in failing


def test_only_the_given_family_is_evaluated(capsys, write):
    code, out, _ = run(['--ip6tables-save', write('v6', CIS_V6)], capsys)
    assert code == 0
    assert V4_HEADER not in out and report_lines(out, V6_HEADER)[0].endswith(': OK')


@pytest.mark.parametrize('option, header, ruleset', [('--iptables-save', V4_HEADER, MISORDERED_V4), ('--ip6tables-save', V6_HEADER, MISORDERED_V6)])
def test_standard_input(option, header, ruleset):
    done = run_process([option, '-'], input=ruleset)
    assert done.returncode == 2, done.stderr
    block = report_lines(done.stdout, header)
    assert block[0] == header + ': CRITICAL'
    assert '<standard input>' in block[1]
    assert (V6_HEADER if header == V4_HEADER else V4_HEADER) not in done.stdout


def test_standard_input_and_a_file_together(write):
    done = run_process(['--iptables-save', write('v4', CIS_V4), '--ip6tables-save', '-'], input=CIS_V6)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report_lines(done.stdout, V6_HEADER)[1].startswith('  evaluated: <standard input>')
    assert report_lines(done.stdout, V4_HEADER)[0].endswith(': OK')


def test_standard_input_cannot_feed_both_families():
    done = run_process(['--iptables-save', '-', '--ip6tables-save', '-'], input=CIS_V4)
    assert done.returncode == 3
    assert done.stderr.startswith('loopback-traffic: ')
    assert 'CRITICAL' not in done.stdout


# --------------------------------------------------------------------------- JSON


def test_json_of_the_misordered_example(capsys):
    code, out, err = run(['--example', 'misordered', '--json'], capsys)
    assert code == 2 and err == ''
    document = json.loads(out)
    assert list(document) == ['rules']
    [rule] = document['rules']
    assert rule['rule'] == 'set_loopback_traffic'
    assert rule['rule_id'] == 'def-000-byk'
    assert rule['family'] == 'ipv4'
    assert rule['applicable'] is True
    assert (rule['status'], rule['status_code']) == ('CRITICAL', 2)
    assert rule['mode'] == 'effective'
    assert rule['error'] is None
    assert [r['requirement'] for r in rule['requirements']] == REQUIREMENTS
    for requirement in rule['requirements']:
        assert set(requirement) >= {'requirement', 'status', 'status_code', 'explanation', 'deciding', 'deviations', 'remediation'}
        assert set(requirement['deciding']) >= {'table', 'chain', 'position', 'text'}
    accept, output, drop = rule['requirements']

    assert (accept['status'], accept['status_code']) == ('fail', 2)
    assert {k: accept['deciding'][k] for k in ('table', 'chain', 'position', 'text')} == {
        'table': 'filter',
        'chain': 'INPUT',
        'position': 1,
        'text': '-A INPUT -s 127.0.0.0/8 -j DROP',
    }
    assert accept['remediation'] == ['iptables -I INPUT 1 -i lo -j ACCEPT']
    assert accept['deviations'] == []
    assert '-A INPUT -s 127.0.0.0/8 -j DROP' in accept['explanation']

    assert (output['status'], output['status_code']) == ('pass', 0)
    assert {k: output['deciding'][k] for k in ('table', 'chain', 'position', 'text')} == {
        'table': 'filter',
        'chain': 'OUTPUT',
        'position': 1,
        'text': '-A OUTPUT -o lo -j ACCEPT',
    }
    assert output['remediation'] == [] and output['deviations'] == []

    assert (drop['status'], drop['status_code']) == ('pass', 0)
    assert (drop['deciding']['chain'], drop['deciding']['position']) == ('INPUT', 1)
    assert drop['remediation'] == [] and drop['deviations'] == []

    assert 'input_accept_lo' in rule['message'] and 'iptables -I INPUT 1 -i lo -j ACCEPT' in rule['message']


def test_json_deviations_of_a_partial_result(capsys):
    _, out, _ = run(['--example', 'ufw', '--json'], capsys)
    [rule] = json.loads(out)['rules']
    assert (rule['status'], rule['status_code']) == ('WARNING', 1)
    drop = rule['requirements'][2]
    assert drop['requirement'] == 'input_drop_loopback_source'
    assert drop['deciding']['text'] == '-A ufw-not-local -j DROP'
    first = drop['deviations'][0]
    assert (first['table'], first['chain'], first['position'], first['verdict']) == ('filter', 'ufw-before-input', 2, 'accept')
    assert first['text'] == '-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT'
    assert len(drop['deviations']) >= 2
    assert drop['remediation'] and all(fix.startswith('iptables ') for fix in drop['remediation'])


def test_json_of_both_families(capsys, write):
    _, out, _ = run(['--json', '--iptables-save', write('v4', CIS_V4), '--ip6tables-save', write('v6', MISORDERED_V6)], capsys)
    rules = json.loads(out)['rules']
    assert [(r['rule'], r['family'], r['rule_id'], r['status']) for r in rules] == [
        ('set_loopback_traffic', 'ipv4', 'def-000-byk', 'OK'),
        ('set_ipv6_loopback_traffic', 'ipv6', 'def-000-mkc', 'CRITICAL'),
    ]
    assert rules[0]['message'] is None
    assert rules[1]['requirements'][0]['remediation'] == ['ip6tables -I INPUT 1 -i lo -j ACCEPT']


# --------------------------------------------------------------------------- human output


def test_human_output_of_the_misordered_example(capsys):
    _, out, _ = run(['--example', 'misordered'], capsys)
    block = report_lines(out, V4_HEADER)
    assert block + ['1 rule: 1 CRITICAL'] == out.splitlines()  # one rule and the summary, nothing else printed
    assert block[0] == V4_HEADER + ': CRITICAL'
    accept = requirement_block(block, 'input_accept_lo')
    assert accept[0].startswith('  [FAIL] input_accept_lo: ')
    assert 'filter INPUT rule 1' in accept[0] and '-A INPUT -s 127.0.0.0/8 -j DROP' in accept[0]
    assert accept[1:] == ['      fix: iptables -I INPUT 1 -i lo -j ACCEPT']
    output = requirement_block(block, 'output_accept_lo')
    assert output[0].startswith('  [PASS] output_accept_lo: ') and '-A OUTPUT -o lo -j ACCEPT' in output[0]
    assert output[1:] == []
    drop = requirement_block(block, 'input_drop_loopback_source')
    assert drop[0].startswith('  [PASS] input_drop_loopback_source: ') and drop[1:] == []


def test_human_output_of_a_partial_result(capsys):
    _, out, _ = run(['--example', 'ufw'], capsys)
    block = report_lines(out, V4_HEADER)
    drop = requirement_block(block, 'input_drop_loopback_source')
    assert drop[0].startswith('  [PARTIAL] input_drop_loopback_source: ')
    parts = [line for line in drop[1:] if line.startswith('      part ')]
    assert parts[0] == '      part accept by filter ufw-before-input rule 2: -A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT'
    fixes = [line for line in drop[1:] if line.startswith('      fix: ')]
    assert fixes and all(line.startswith('      fix: iptables ') for line in fixes)
    assert max(drop.index(line) for line in parts) < min(drop.index(line) for line in fixes)  # fixes come last
    for requirement in ('input_accept_lo', 'output_accept_lo'):
        assert requirement_block(block, requirement)[0].startswith('  [PASS] ')


def test_every_requirement_is_listed_once_per_rule(capsys, write):
    _, out, _ = run(['--iptables-save', write('v4', MISORDERED_V4), '--ip6tables-save', write('v6', MISORDERED_V6)], capsys)
    for header in (V4_HEADER, V6_HEADER):
        block = report_lines(out, header)
        listed = [line.split('] ', 1)[1].split(':', 1)[0] for line in block if line.startswith('  [')]
        assert listed == REQUIREMENTS


# --------------------------------------------------------------------------- --config


def test_config_first_instance_options_apply(capsys, write):
    path = write_config(
        write,
        {'mode': 'literal', 'families': ['ipv4'], 'applicability': 'always', 'ruleset_files': {'ipv4': write('v4', MISORDERED_V4)}},
        {'mode': 'effective', 'families': ['ipv6']},
    )
    code, out, _ = run(['--config', path, '--json'], capsys)
    assert code == 2
    [rule] = json.loads(out)['rules']
    assert rule['family'] == 'ipv4' and rule['mode'] == 'literal'
    assert rule['sources'] == [str(os.path.dirname(path)) + '/v4']
    accept = rule['requirements'][0]
    # literal: the ACCEPT is present but after a rule that drops its traffic
    assert accept['status'] == 'fail' and accept['deciding']['text'] == '-A INPUT -s 127.0.0.0/8 -j DROP'


def test_command_line_options_override_the_config(capsys, write):
    path = write_config(
        write, {'mode': 'literal', 'partial': 'critical', 'families': ['ipv4'], 'applicability': 'always', 'ruleset_files': {'ipv4': write('v4', CIS_V4)}}
    )
    _, out, _ = run(['--config', path, '--json'], capsys)
    assert json.loads(out)['rules'][0]['mode'] == 'literal'
    _, out, _ = run(['--config', path, '--json', '--mode', 'effective'], capsys)
    assert json.loads(out)['rules'][0]['mode'] == 'effective'


def test_config_ruleset_files_with_package_applicability(capsys, write, tmp_path):
    """ruleset_files from a conf.yaml are judged as they are: this host's packages (here a fabricated dpkg
    file with ufw) make them not applicable only where the instance sets `applicability: auto` itself."""
    status = write('status', 'Package: iptables\nStatus: install ok installed\n\nPackage: ufw\nStatus: install ok installed\n')
    rules = write('v4', MISORDERED_V4)
    path = write_config(write, {'families': ['ipv4'], 'dpkg_status_file': status, 'ruleset_files': {'ipv4': rules}})
    code, out, _ = run(['--config', path], capsys)
    assert code == 2 and report_lines(out, V4_HEADER)[0] == V4_HEADER + ': CRITICAL'
    assert 'NOT APPLICABLE' not in out
    auto = write_config(write, {'families': ['ipv4'], 'applicability': 'auto', 'dpkg_status_file': status, 'ruleset_files': {'ipv4': rules}}, name='auto.yaml')
    code, out, _ = run(['--config', auto], capsys)
    assert code == 0
    assert out.splitlines() == [
        '{}: NOT APPLICABLE - not applicable: ufw installed (the rule applies to hosts managed with iptables only)'.format(V4_HEADER),
        '  to evaluate it anyway: --applicability always (or `applicability: always` in conf.yaml)',
        '1 rule: 1 NOT APPLICABLE',
    ]
    code, out, _ = run(['--config', auto, '--applicability', 'always'], capsys)
    assert code == 2 and report_lines(out, V4_HEADER)[0].endswith(': CRITICAL')


@pytest.mark.parametrize(
    'options, named, shown',
    [
        ({'mode': 'exact'}, '`mode`', "'exact'"),
        ({'partial': 'sometimes'}, '`partial`', "'sometimes'"),
        ({'applicability': 'never'}, '`applicability`', "'never'"),
        ({'timeout': -1}, '`timeout`', '-1'),
        ({'families': ['ipv5']}, '`families`', "'ipv5'"),
        ({'iptables_save_command': 'iptables-save'}, '`iptables_save_command`', "'iptables-save'"),
        ({'ruleset_files': {'ipx': '/tmp/x'}}, '`ruleset_files`', "'ipx'"),
    ],
)
def test_config_with_a_bad_option_value(capsys, write, options, named, shown):
    code, out, err = run(['--config', write_config(write, options), '--example', 'compliant'], capsys)
    assert code == 3
    assert out == ''
    assert err.startswith('loopback-traffic: ') and named in err and shown in err
    assert err.count('\n') == 1  # one line, no traceback


def test_config_bad_option_in_a_real_process(write):
    done = run_process(['--config', write_config(write, {'mode': 'exact'})])
    assert done.returncode == 3
    assert "`mode` must be one of effective, literal, not 'exact'" in done.stderr
    assert 'Traceback' not in done.stderr and done.stdout == ''


def test_config_file_problems(capsys, write, tmp_path):
    missing = str(tmp_path / 'no-conf.yaml')
    code, _, err = run(['--config', missing], capsys)
    assert code == 3 and missing in err
    empty = write_config(write, name='empty.yaml')
    code, _, err = run(['--config', empty], capsys)
    assert code == 3 and 'has no list of instances' in err and empty in err


@pytest.mark.parametrize('text', ['instances: [\n', 'instances:\n  mode: literal\n', 'instances: 5\n'], ids=['invalid-yaml', 'mapping', 'number'])
def test_malformed_config_is_a_usage_error(write, text):
    path = write('conf.yaml', text)
    done = run_process(['--config', path, '--example', 'compliant'])
    assert done.returncode == 3
    assert 'Traceback' not in done.stderr
    assert path in done.stderr


@pytest.mark.parametrize('argv', [['--mode', 'exact'], ['--families', 'ipv5'], ['--timeout', 'abc']])
def test_bad_command_line_values_exit_3(argv):
    done = run_process(['--example', 'compliant'] + argv)
    assert done.returncode == 3
    assert argv[0] in done.stderr


# --------------------------------------------------------------------------- the live host, in lt- namespaces


def namespace_config(write, ns, **options):
    instance = {
        'applicability': 'always',
        'iptables_save_command': ns.argv_prefix() + ['iptables-save'],
        'ip6tables_save_command': ns.argv_prefix() + ['ip6tables-save'],
    }
    instance.update(options)
    families = instance.get('families', ['ipv4', 'ipv6'])
    instance.setdefault('rules', [name for name, family in zip(IPTABLES_RULES, ('ipv4', 'ipv6')) if family in families])
    return write_config(write, instance)


def test_live_namespace_with_the_cis_rules_is_ok(capsys, write, netns):
    require_tools('iptables-save', 'ip6tables-save')
    netns.restore(CIS_V4, 'ipv4', 'nft')
    netns.restore(CIS_V6, 'ipv6', 'nft')
    code, out, err = run(['--config', namespace_config(write, netns)], capsys)
    assert code == 0, out + err
    for header in (V4_HEADER, V6_HEADER):
        block = report_lines(out, header)
        assert block[0] == header + ': OK'
        assert netns.name in block[1]  # evaluated through `ip netns exec <ns> ...`
    assert '-A INPUT -s ::1/128 -j DROP' in out


def test_live_namespace_with_misordered_rules_is_critical(capsys, write, netns):
    require_tools('iptables-save', 'ip6tables-save')
    netns.restore(MISORDERED_V4, 'ipv4', 'nft')
    netns.restore(CIS_V6, 'ipv6', 'nft')
    code, out, _ = run(['--config', namespace_config(write, netns), '--json'], capsys)
    assert code == 2
    v4, v6 = json.loads(out)['rules']
    assert (v4['status'], v6['status']) == ('CRITICAL', 'OK')
    assert v4['requirements'][0]['deciding']['text'] == '-A INPUT -s 127.0.0.0/8 -j DROP'
    assert v4['requirements'][0]['remediation'] == ['iptables -I INPUT 1 -i lo -j ACCEPT']


def test_live_namespace_through_the_console_script(write, netns):
    require_tools('iptables-save', 'ip6tables-save')
    if not os.path.exists(SCRIPT):
        pytest.skip('no loopback-traffic script next to {}'.format(sys.executable))
    netns.restore(CIS_V4, 'ipv4', 'nft')
    done = run_process(['--config', namespace_config(write, netns, families=['ipv4'])], command=[SCRIPT])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == V4_HEADER + ': OK'


def test_missing_save_binary_is_unknown(capsys, write):
    path = write_config(write, {'applicability': 'always', 'collection': 'save', 'families': ['ipv4'], 'iptables_save_command': ['/nonexistent/iptables-save']})
    code, out, err = run(['--config', path], capsys)
    assert code == 3
    block = report_lines(out, V4_HEADER)
    assert block[0] == V4_HEADER + ': UNKNOWN'
    [reason] = [line for line in block if line.startswith('  could not evaluate: ')]
    assert '/nonexistent/iptables' in reason and 'not found' in reason
    assert 'Traceback' not in out + err


def test_missing_save_binary_in_a_real_process(write):
    path = write_config(
        write,
        {
            'applicability': 'always',
            'rules': IPTABLES_RULES,
            'collection': 'save',
            'iptables_save_command': ['/nonexistent/iptables-save'],
            'ip6tables_save_command': ['/nonexistent/ip6tables-save'],
        },
    )
    done = run_process(['--config', path, '--json'])
    assert done.returncode == 3
    rules = json.loads(done.stdout)['rules']
    assert [r['status'] for r in rules] == ['UNKNOWN', 'UNKNOWN']
    assert all('not found' in r['error'] for r in rules)
    assert 'Traceback' not in done.stderr


# --------------------------------------------------------------------------- without root


def _blocking_ancestor(path):
    """The topmost directory above ``path`` that others cannot search (e.g. /root, mode 0700), or None."""
    blocking = None
    current = os.path.dirname(os.path.realpath(path))
    while current != os.path.dirname(current):
        if not os.stat(current).st_mode & 0o001:
            blocking = current
        current = os.path.dirname(current)
    return blocking


def _as_nobody(argv, staging):
    """Run ``sys.executable argv`` as uid/gid 65534. When the interpreter lives under a directory that
    nobody cannot search (pyenv under /root), do it in a private mount namespace where that directory is
    an empty tmpfs with only the interpreter's tree bind-mounted back: nothing changes outside it."""
    drop = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--']
    prefix = os.path.realpath(sys.prefix)
    blocking = _blocking_ancestor(sys.executable) or _blocking_ancestor(prefix + '/x')
    env = dict(os.environ, HOME='/', LC_ALL='C')
    if blocking is None:
        return subprocess.run(drop + [sys.executable] + argv, capture_output=True, text=True, timeout=120, cwd='/', env=env)
    if not prefix.startswith(blocking + '/'):
        pytest.skip('the interpreter {} is not readable by nobody'.format(sys.executable))
    # The first component below the blocking directory, e.g. /root/.pyenv.
    keep = os.path.join(blocking, os.path.relpath(prefix, blocking).split(os.sep)[0])
    script = textwrap.dedent(
        """\
        set -e
        mount --bind "$1" "$2"
        mount -t tmpfs -o mode=755 loopback-traffic-test "$3"
        mkdir -p "$1"
        mount --bind "$2" "$1"
        shift 3
        exec "$@"
        """
    )
    return subprocess.run(
        ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script, 'sh', keep, staging, blocking]
        + drop
        + [sys.executable]
        + argv,
        capture_output=True,
        text=True,
        timeout=120,
        cwd='/',
        env=env,
    )


@pytest.fixture
def nobody():
    if os.geteuid() != 0:
        pytest.skip('switching to an unprivileged user needs root')
    for tool in ('setpriv', 'unshare', 'iptables-save', 'ip6tables-save'):
        if shutil.which(tool) is None:
            pytest.skip('{} is not installed'.format(tool))
    staging = tempfile.mkdtemp(prefix='lt-nobody-')
    try:
        probe = _as_nobody(['-c', 'import os, datadog_checks.loopback_traffic.cli; print(os.geteuid())'], staging)
        if probe.returncode != 0 or probe.stdout.strip() != '65534':
            pytest.skip('cannot run this Python as nobody here: {}'.format((probe.stderr or probe.stdout).strip()[-300:]))
        yield lambda argv: _as_nobody(argv, staging)
    finally:
        os.rmdir(staging)


def test_without_root_the_kernel_refuses_to_show_its_ruleset(nobody):
    done = nobody(['-m', 'datadog_checks.loopback_traffic', '--applicability', 'always', '--rules', ','.join(IPTABLES_RULES)])
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert 'Traceback' not in output
    for header in (V4_HEADER, V6_HEADER):
        block = report_lines(done.stdout, header)
        assert block[0] == header + ': UNKNOWN'
        [reason] = [line for line in block if line.startswith('  could not evaluate: ')]
        assert 'reading nf_tables over netlink was refused' in reason and 'CAP_NET_ADMIN' in reason
        assert 'use_sudo' in reason  # what to do about it
    *_, hint, last = done.stdout.splitlines()
    assert hint.startswith('hint: ') and 'root' in hint and '--example compliant' in hint
    assert last == '2 rules: 2 UNKNOWN'


def test_without_root_the_examples_still_work(nobody):
    done = nobody(['-m', 'datadog_checks.loopback_traffic', '--example', 'misordered'])
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == V4_HEADER + ': CRITICAL'
    assert 'hint:' not in done.stdout


# --------------------------------------------------------------------------- the package applicability of this host


def _dpkg_installed(path='/var/lib/dpkg/status'):
    """Packages whose dpkg state is exactly installed, read independently of the code under test."""
    installed = set()
    with open(path, encoding='utf-8', errors='replace') as status_file:
        for paragraph in status_file.read().split('\n\n'):
            fields = dict(line.split(': ', 1) for line in paragraph.splitlines() if ': ' in line and not line.startswith(' '))
            if fields.get('Status', '').split()[-1:] == ['installed']:
                installed.add(fields.get('Package'))
    return installed


def test_package_applicability_of_this_host(capsys):
    if not os.path.exists('/var/lib/dpkg/status'):
        pytest.skip('no dpkg database on this host')
    installed = _dpkg_installed()
    blockers = sorted(installed & {'nftables', 'ufw'})
    if not blockers:
        pytest.skip('neither nftables nor ufw is installed here: the rules would be evaluated on the live host')
    code, out, err = run(['--rules', ','.join(IPTABLES_RULES)], capsys)
    assert code == 0, out + err
    reason = 'not applicable: {} installed (the rule applies to hosts managed with iptables only)'.format(' and '.join(blockers))
    anyway = '  to evaluate it anyway: --applicability always (or `applicability: always` in conf.yaml)'
    assert out.splitlines() == [
        '{}: NOT APPLICABLE - {}'.format(V4_HEADER, reason),
        anyway,
        '{}: NOT APPLICABLE - {}'.format(V6_HEADER, reason),
        anyway,
        '2 rules: 2 NOT APPLICABLE',
    ]
    code, out, _ = run(['--json', '--rules', ','.join(IPTABLES_RULES)], capsys)
    assert code == 0
    for rule in json.loads(out)['rules']:
        assert rule['applicable'] is False and rule['applicability'] == reason
        assert 'status' not in rule and 'requirements' not in rule


# --------------------------------------------------------------------------- the three ways to start it


@pytest.mark.parametrize(
    'command, cwd',
    [
        pytest.param([sys.executable, '-m', 'datadog_checks.loopback_traffic'], '/', id='python-m-datadog_checks'),
        pytest.param([sys.executable, '-m', 'loopback_traffic'], ROOT, id='python-m-from-the-repo-root'),
        pytest.param([SCRIPT], '/', id='console-script'),
    ],
)
def test_the_ways_to_start_it(command, cwd):
    if not os.path.exists(command[0]):
        pytest.skip('no {} here'.format(command[0]))
    done = run_process(['--example', 'misordered', '--json'], command=command, cwd=cwd)
    assert done.returncode == 2, done.stderr
    [rule] = json.loads(done.stdout)['rules']
    assert rule['status'] == 'CRITICAL'
    assert rule['requirements'][0]['remediation'] == ['iptables -I INPUT 1 -i lo -j ACCEPT']
    done = run_process(['--example', 'ufw'], command=command, cwd=cwd)
    assert done.returncode == 1
    done = run_process(['--example', 'compliant'], command=command, cwd=cwd)
    assert done.returncode == 0 and done.stdout.startswith(V4_HEADER + ': OK\n')


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exited:
        main(['--help'])
    assert exited.value.code == 0
    assert '0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN' in capsys.readouterr().out


# --------------------------------------------------------------------------- the CLI as a CI gate: saved rulesets are judged alone

NO_ADDRESSES = filter_table('-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')


def test_a_family_asked_for_without_its_file_is_an_error_not_a_live_read(capsys, write):
    # ipv6 has no saved ruleset: the live one (here a save command that does not exist) is never read.
    path = write_config(
        write,
        {'families': ['ipv4', 'ipv6'], 'collection': 'save', 'ip6tables_save_command': ['/nonexistent/ip6tables-save'], 'ruleset_files': {'ipv4': write('v4', CIS_V4)}},
    )
    code, out, err = run(['--config', path], capsys)
    assert (code, out) == (3, '')
    assert err.startswith('loopback-traffic: ipv6 is to be evaluated (`families` in {})'.format(path))
    assert 'add --ip6tables-save FILE' in err and '--families ipv4' in err and "never completed with this host's live ruleset" in err
    assert '/nonexistent' not in err and err.count('\n') == 1


def test_a_family_asked_for_on_the_command_line_without_its_file(capsys, write):
    code, out, err = run(['--iptables-save', write('v4', CIS_V4), '--families', 'ipv4,ipv6'], capsys)
    assert (code, out) == (3, '')
    assert 'ipv6 is to be evaluated (--families)' in err and '--ip6tables-save FILE' in err
    code, out, err = run(['--example', 'compliant', '--families', 'ipv6'], capsys)
    assert (code, out) == (3, '') and 'ipv6 is to be evaluated (--families)' in err


def test_a_file_for_a_family_left_out_is_an_error(capsys, write):
    code, out, err = run(['--iptables-save', write('v4', CIS_V4), '--ip6tables-save', write('v6', CIS_V6), '--families', 'ipv4'], capsys)
    assert (code, out) == (3, '')
    assert '--ip6tables-save gives a saved IPv6 ruleset but --families leaves ipv6 out' in err


def test_without_families_the_families_with_a_file_are_judged(capsys, write):
    path = write_config(write, {'ruleset_files': {'ipv6': write('v6', MISORDERED_V6)}})
    code, out, _ = run(['--config', path, '--json'], capsys)
    assert code == 2
    [rule] = json.loads(out)['rules']
    assert rule['family'] == 'ipv6' and rule['sources'] == [os.path.join(os.path.dirname(path), 'v6')]
    assert rule['applicability'] == 'evaluated regardless (applicability: always)'


def test_command_line_files_join_and_override_the_configured_ones(capsys, write):
    path = write_config(write, {'ruleset_files': {'ipv4': write('bad-v4', MISORDERED_V4), 'ipv6': write('v6', CIS_V6)}})
    good = write('good-v4', CIS_V4)
    code, out, _ = run(['--config', path, '--iptables-save', good, '--json'], capsys)
    assert code == 0
    assert [(r['family'], r['sources'], r['status']) for r in json.loads(out)['rules']] == [
        ('ipv4', [good], 'OK'),
        ('ipv6', [os.path.join(os.path.dirname(path), 'v6')], 'OK'),
    ]


def test_a_missing_configured_file_is_a_usage_error(capsys, write, tmp_path):
    missing = str(tmp_path / 'rules.v4')
    code, out, err = run(['--config', write_config(write, {'ruleset_files': {'ipv4': missing}})], capsys)
    assert (code, out) == (3, '')
    assert 'saved ruleset {} does not exist (option `ruleset_files`)'.format(missing) in err


def test_saved_files_are_not_made_not_applicable_by_this_hosts_packages(capsys, write):
    status = write('status', 'Package: iptables\nStatus: install ok installed\n\nPackage: nftables\nStatus: install ok installed\n')
    config = write_config(write, {'dpkg_status_file': status})
    rules = write('v4', MISORDERED_V4)
    code, out, _ = run(['--config', config, '--iptables-save', rules], capsys)
    assert code == 2 and report_lines(out, V4_HEADER)[0] == V4_HEADER + ': CRITICAL'
    # Asked for explicitly, this host's packages decide, and the report says how to evaluate anyway.
    code, out, _ = run(['--config', config, '--iptables-save', rules, '--applicability', 'auto'], capsys)
    assert code == 0
    block = report_lines(out, V4_HEADER)
    assert block[0] == V4_HEADER + ': NOT APPLICABLE - not applicable: nftables installed (the rule applies to hosts managed with iptables only)'
    assert block[1] == '  to evaluate it anyway: --applicability always (or `applicability: always` in conf.yaml)'
    assert out.splitlines()[-1] == '1 rule: 1 NOT APPLICABLE'


@pytest.mark.parametrize(
    'extra, named',
    [
        (['--iptables-save', 'FILE'], '--iptables-save'),
        (['--ip6tables-save', 'FILE'], '--ip6tables-save'),
        (['--config', 'CONFIG'], '`ruleset_files` in '),
    ],
    ids=['iptables-save', 'ip6tables-save', 'ruleset_files'],
)
def test_example_with_a_file_is_refused(capsys, write, extra, named):
    rules = write('rules', CIS_V4)
    extra = [rules if word == 'FILE' else write_config(write, {'ruleset_files': {'ipv4': rules}}) if word == 'CONFIG' else word for word in extra]
    code, out, err = run(['--example', 'compliant'] + extra, capsys)
    assert (code, out) == (3, '')
    assert err.startswith('loopback-traffic: --example evaluates a bundled ruleset on its own: drop ' + named)


# --------------------------------------------------------------------------- an IPv4 file as the IPv6 ruleset, and vice versa


def test_an_ipv4_file_given_as_the_ipv6_ruleset_is_refused(capsys, write):
    path = write('rules.v4', CIS_V4)
    code, out, err = run(['--ip6tables-save', path], capsys)
    assert (code, out) == (3, '')
    assert err.startswith('loopback-traffic: {} is not an IPv6 ruleset: line '.format(path))
    assert 'has the IPv4 address 127.0.0.0/8' in err and 'iptables-save output: give it with --iptables-save instead of --ip6tables-save' in err


def test_an_ipv6_file_given_as_the_ipv4_ruleset_is_refused(capsys, write):
    path = write('rules.v6', CIS_V6)
    code, out, err = run(['--iptables-save', path], capsys)
    assert (code, out) == (3, '')
    assert '{} is not an IPv4 ruleset'.format(path) in err and 'the IPv6 address ::1/128' in err
    assert 'give it with --ip6tables-save instead of --iptables-save' in err


def test_the_bundled_ipv4_example_as_the_ipv6_ruleset_is_refused():
    example = os.path.join(ROOT, 'loopback_traffic', 'data', 'examples', 'misordered.rules')
    done = run_process(['--ip6tables-save', example])
    assert done.returncode == 3 and done.stdout == ''
    assert 'is not an IPv6 ruleset: line 6 (-A INPUT -s 127.0.0.0/8 -j DROP)' in done.stderr and 'Traceback' not in done.stderr


def test_swapped_configured_files_are_refused(capsys, write):
    v4, v6 = write('rules.v4', CIS_V4), write('rules.v6', CIS_V6)
    path = write_config(write, {'ruleset_files': {'ipv4': v6, 'ipv6': v4}})
    code, out, err = run(['--config', path], capsys)
    assert (code, out) == (3, '')
    assert '{} is not an IPv4 ruleset'.format(v6) in err
    assert 'set it as `ruleset_files.ipv6` in {} instead of `ruleset_files.ipv4` in {}'.format(path, path) in err


def test_the_family_check_reads_addresses_only(capsys, write):
    # No address in the rules: either family accepts it; a comment naming an address is not an address.
    commented = filter_table('-A INPUT -i lo -m comment --comment "not 127.0.0.1 nor ::1" -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
    code, _, err = run(['--iptables-save', write('a', NO_ADDRESSES), '--ip6tables-save', write('b', commented)], capsys)
    assert err == '' and code in (0, 1, 2)
    code, _, err = run(['--ip6tables-save', write('c', filter_table('-A INPUT -m iprange --src-range 127.0.0.1-127.0.0.9 -j DROP'))], capsys)
    assert code == 3 and 'the IPv4 address 127.0.0.1' in err


# --------------------------------------------------------------------------- --version, the summary, colour, --format, --output


def test_version(capsys):
    from datadog_checks.loopback_traffic.__about__ import __version__

    with pytest.raises(SystemExit) as exited:
        main(['--version'])
    assert exited.value.code == 0
    assert capsys.readouterr().out == 'loopback-traffic {}\n'.format(__version__)
    done = run_process(['--version'])
    assert (done.returncode, done.stdout) == (0, 'loopback-traffic {}\n'.format(__version__))


@pytest.mark.parametrize(
    'files, code, last',
    [
        ({'--iptables-save': CIS_V4, '--ip6tables-save': MISORDERED_V6}, 2, '2 rules: 1 CRITICAL, 1 OK'),
        ({'--iptables-save': MISORDERED_V4, '--ip6tables-save': MISORDERED_V6}, 2, '2 rules: 2 CRITICAL'),
        ({'--iptables-save': ERROR_TEXT, '--ip6tables-save': CIS_V6}, 3, '2 rules: 1 UNKNOWN, 1 OK'),
        ({'--ip6tables-save': CIS_V6}, 0, '1 rule: 1 OK'),
    ],
)
def test_the_human_report_ends_with_a_one_line_summary(capsys, write, files, code, last):
    argv = [word for option, text in files.items() for word in (option, write(option.strip('-'), text))]
    got, out, _ = run(argv, capsys)
    assert got == code
    assert out.splitlines()[-1] == last
    assert out.count(' rule') and not any(line.startswith(('1 rule', '2 rules')) for line in out.splitlines()[:-1])


def test_ufw_summary_with_the_partial_option(capsys):
    assert run(['--example', 'ufw'], capsys)[1].splitlines()[-1] == '1 rule: 1 WARNING'
    assert run(['--example', 'ufw', '--partial', 'ok'], capsys)[1].splitlines()[-1] == '1 rule: 1 OK'


def _in_a_terminal(argv, **environment):
    """Run the CLI with its standard output on a pseudo-terminal: (exit code, what it printed)."""
    import pty

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ('NO_COLOR', 'TERM')}
    env.update({'TERM': 'xterm', **environment})
    process = subprocess.Popen(
        [sys.executable, '-m', 'datadog_checks.loopback_traffic'] + argv, stdout=slave, stderr=subprocess.PIPE, cwd=ROOT, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return process.wait(timeout=120), b''.join(chunks).decode()


def test_colour_on_a_terminal_only():
    code, shown = _in_a_terminal(['--example', 'misordered'])
    assert code == 2
    assert '\033[1;31mCRITICAL\033[0m' in shown and '[\033[1;31mFAIL\033[0m]' in shown and '[\033[1;32mPASS\033[0m]' in shown
    assert shown.rstrip().splitlines()[-1] == '1 rule: 1 \033[1;31mCRITICAL\033[0m'
    # Rule texts are left as they are.
    assert '-A INPUT -s 127.0.0.0/8 -j DROP' in shown
    # Piped: no colour (the other tests read the plain text).
    done = run_process(['--example', 'misordered'])
    assert '\033' not in done.stdout


@pytest.mark.parametrize('environment', [{'NO_COLOR': '1'}, {'TERM': 'dumb'}])
def test_no_colour_with_no_color_or_a_dumb_terminal(environment):
    code, shown = _in_a_terminal(['--example', 'ufw'], **environment)
    assert code == 1 and 'WARNING' in shown and '\033' not in shown


def test_no_colour_in_machine_formats_on_a_terminal():
    for format_name in ('json', 'junit', 'sarif'):
        code, shown = _in_a_terminal(['--example', 'misordered', '--format', format_name])
        assert code == 2 and '\033' not in shown


def test_wants_colour():
    from datadog_checks.loopback_traffic.cli import wants_colour

    class Terminal:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    assert wants_colour(Terminal(True), {'TERM': 'xterm'})
    assert wants_colour(Terminal(True), {'NO_COLOR': ''})  # https://no-color.org: set and not empty
    assert not wants_colour(Terminal(True), {'NO_COLOR': '1'})
    assert not wants_colour(Terminal(True), {'TERM': 'dumb'})
    assert not wants_colour(Terminal(False), {})
    assert not wants_colour(object(), {})


def test_format_json_and_its_json_alias(capsys):
    _, by_format, _ = run(['--example', 'ufw', '--format', 'json'], capsys)
    _, by_alias, _ = run(['--example', 'ufw', '--json'], capsys)
    strip = lambda text: [dict(rule, duration_seconds=0) for rule in json.loads(text)['rules']]  # noqa: E731
    assert strip(by_format) == strip(by_alias)
    done = run_process(['--example', 'ufw', '--json', '--format', 'junit'])
    assert done.returncode == 3 and 'not allowed with argument' in done.stderr


def test_output_file_gets_the_format_and_standard_output_the_human_report(capsys, tmp_path):
    target = tmp_path / 'report.json'
    code, out, err = run(['--example', 'misordered', '--format', 'json', '--output', str(target)], capsys)
    assert code == 2 and err == ''
    assert json.loads(target.read_text())['rules'][0]['status'] == 'CRITICAL'
    assert out.splitlines()[0] == V4_HEADER + ': CRITICAL' and out.splitlines()[-1] == '1 rule: 1 CRITICAL'
    assert [p.name for p in tmp_path.iterdir()] == ['report.json']  # no temporary file left


def test_output_dash_is_standard_output(capsys):
    code, out, _ = run(['--example', 'compliant', '--format', 'json', '--output', '-'], capsys)
    assert code == 0 and json.loads(out)['rules'][0]['status'] == 'OK'


def test_output_file_that_cannot_be_written_is_a_usage_error(capsys, tmp_path):
    target = tmp_path / 'no-such-directory' / 'report.xml'
    code, out, err = run(['--example', 'compliant', '--format', 'junit', '--output', str(target)], capsys)
    assert (code, out) == (3, '')
    assert err.startswith('loopback-traffic: cannot write {}: '.format(target))


def test_the_configurations_waivers_apply_as_in_the_agent(capsys, write):
    rules = write('rules.v4', '*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n'
                  '-A INPUT -j KUBE-EXTERNAL-SERVICES\n-A INPUT -i lo -j ACCEPT\n-A INPUT -s 127.0.0.0/8 -j DROP\n-A OUTPUT -o lo -j ACCEPT\n'
                  '-A KUBE-EXTERNAL-SERVICES -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP\nCOMMIT\n')
    instance = {'ruleset_files': {'ipv4': rules}, 'families': ['ipv4']}
    unwaived, _, _ = run(['--config', write_config(write, instance)], capsys)
    assert unwaived == 1  # WARNING: part of the lo traffic is dropped in kube-proxy's chain
    waiver = {'requirement': 'input_accept_lo', 'chain': 'KUBE-EXTERNAL-*', 'justification': 'NodePorts without local endpoints', 'expires': '2999-12-31'}
    code, out, _ = run(['--config', write_config(write, dict(instance, waivers=[waiver]), name='waived.yaml')], capsys)
    assert code == 0, out
    assert report_lines(out, V4_HEADER)[0] == V4_HEADER + ': OK'
