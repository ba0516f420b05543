"""``--explain REQUIREMENT``: the walk of one requirement, chain by chain and rule by rule, computed
from the evaluator's own walk: its final result never disagrees with the evaluator's status."""
import os

import pytest
import yaml

from datadog_checks.loopback_traffic.cli import EXAMPLE_FILES, EXAMPLE_RULES, EXAMPLES_DIR, main
from datadog_checks.loopback_traffic.evaluator import EFFECTIVE, LITERAL, Source, evaluate
from datadog_checks.loopback_traffic.explain import explain
from datadog_checks.loopback_traffic.parser import parse_ruleset
from datadog_checks.loopback_traffic.requirements import REQUIREMENTS, rule_for_family
from datadog_checks.loopback_traffic.report import explanation

from .netns import netns, require_tools  # noqa: F401  (netns is a fixture)
from .rulesets import CIS_V4, CIS_V6, filter_table, table

NAMES = [requirement.name for requirement in REQUIREMENTS]
# The examples judged by the iptables rule (one IPv4 file each).
EXAMPLES = [name for name in EXAMPLE_FILES if name not in EXAMPLE_RULES]
V4 = rule_for_family('ipv4')


def example(name):
    with open(os.path.join(EXAMPLES_DIR, EXAMPLE_FILES[name]['ipv4']), encoding='utf-8') as saved:
        return saved.read()


def sources_of(*texts):
    return [Source(parse_ruleset(text), 'iptables', label) for text, label in zip(texts, ('', 'legacy'))]


def rule_lines(text):
    """The numbered rule lines: (depth, number, relation, rest)."""
    found = []
    for line in text.splitlines():
        stripped = line.lstrip()
        head = stripped.split(' ', 1)[0]
        if head.isdigit() and '[' in stripped:
            relation = stripped.split('[', 1)[1].split(']', 1)[0]
            found.append(((len(line) - len(stripped) - (3 - len(head))) // 2, int(head), relation, stripped.split('->', 1)[1].strip()))
    return found


# --------------------------------------------------------------------------- agreement with the evaluator

RULESETS = {
    'cis': [CIS_V4],
    'cis-v6': [CIS_V6],
    'empty-drop': [filter_table(input_policy='DROP')],
    'lo-accept-in-user-chain': [
        filter_table('-A INPUT -j ALLOW', '-A ALLOW -i lo -j ACCEPT', '-A ALLOW -s 127.0.0.0/8 -j DROP', input_policy='DROP', chains=['ALLOW'])
    ],
    'goto-and-return': [
        filter_table(
            '-A INPUT -p tcp -g TCP',
            '-A INPUT -i lo -j ACCEPT',
            '-A TCP -s 127.0.0.0/8 ! -i lo -j DROP',
            '-A TCP -j RETURN',
            input_policy='DROP',
            chains=['TCP'],
        )
    ],
    'partial-accept-before-drop': [filter_table('-A INPUT -p udp -j ACCEPT', '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP')],
    'raw-notrack-and-mangle-drop': [
        CIS_V4 + table('raw', ['-A PREROUTING -j NOTRACK']) + table('mangle', ['-A PREROUTING -s 127.0.0.0/8 ! -i lo -j DROP'])
    ],
    'nat-prerouting': [filter_table('-A INPUT -i lo -j ACCEPT') + table('nat', ['-A PREROUTING -s 127.0.0.0/8 -j DNAT --to-destination 10.0.0.1'])],
    'legacy-beside-nft': [CIS_V4, filter_table('-A INPUT -i lo -j DROP')],
    'loop': [filter_table('-A INPUT -j A', '-A A -j B', '-A B -j A', chains=['A', 'B'])],
}


def _cases():
    for name in EXAMPLES:
        yield 'example-' + name, [example(name)], 'ipv4'
    for name, texts in RULESETS.items():
        yield name, texts, 'ipv6' if name.endswith('v6') else 'ipv4'


@pytest.mark.parametrize('mode', [EFFECTIVE, LITERAL])
@pytest.mark.parametrize('requirement', NAMES)
@pytest.mark.parametrize('name, texts, family', list(_cases()))
def test_the_explained_result_is_the_evaluators(name, texts, family, requirement, mode):
    rule = rule_for_family(family)
    sources = sources_of(*texts)
    evaluated = evaluate(rule, sources, mode)
    explained = explain(rule, requirement, sources, mode)
    expected = evaluated.status if evaluated.error else evaluated.requirement(requirement).status
    assert explained.status is expected, explained.text
    last = explained.text.rstrip('\n').splitlines()[-1]
    assert last.startswith('result: {}: '.format(expected.name))
    if not evaluated.error:
        assert last == 'result: {}: {}'.format(expected.name, explanation(evaluated.requirement(requirement)))


# --------------------------------------------------------------------------- the text


def test_misordered_input_accept_lo_is_explained_rule_by_rule():
    text = explain(V4, 'input_accept_lo', sources_of(example('misordered'))).text
    lines = text.splitlines()
    assert lines[0].startswith('set_loopback_traffic (ipv4), input_accept_lo: ')
    assert 'the class: from 127.0.0.0/8 to 127.0.0.0/8 arriving on lo' in lines
    assert 'chain INPUT (table filter, hook input, priority 0, type filter, policy DROP)' in lines
    assert rule_lines(text) == [
        (1, 1, 'all', 'verdict: dropped for all of the class'),
        (1, 2, '-', 'not reached: rule 1 decided for all of the class'),
        (1, 3, '-', 'not reached: rule 1 decided for all of the class'),
        (1, 4, '-', 'not reached: rule 1 decided for all of the class'),
    ]
    assert '       => dropped by rule 1' in lines
    assert '  chain result: dropped -> FAIL' in lines
    assert lines[-1] == 'result: FAIL: dropped by filter INPUT rule 1: -A INPUT -s 127.0.0.0/8 -j DROP'


def test_ufw_deny_shows_jumps_indented_and_the_partial_deviations():
    text = explain(V4, 'input_drop_loopback_source', sources_of(example('ufw'))).text
    lines = text.splitlines()
    found = rule_lines(text)
    assert (1, 2, 'all', 'jump into ufw-before-input (all of the class):') in found
    assert (2, 1, 'none', 'no packet of the class: no effect') in found  # ufw-before-input's -i lo ACCEPT
    assert (2, 2, 'some', 'partial deviation: part of the class accepted') in found  # RELATED,ESTABLISHED
    assert (2, 4, 'some', 'part of the class dropped (as required)') in found  # INVALID DROP
    assert (3, 5, 'all', 'verdict: dropped for all of the class') in found  # ufw-not-local's DROP
    # INPUT's rules after the jump that decided for every packet are never reached.
    assert (1, 3, '-', 'not reached: rule 2 (jump into ufw-before-input) decided for all of the class') in found
    assert '  chain result: dropped -> PARTIAL' in lines
    assert lines[-1].startswith('result: PARTIAL: dropped by filter ufw-not-local rule 5')
    assert all(len(line) < 160 for line in lines[:-1])  # compact: one line per rule


def test_a_chain_only_partly_on_the_path_is_listed_and_said_why():
    texts = RULESETS['nat-prerouting']
    text = explain(V4, 'input_drop_loopback_source', sources_of(*texts)).text
    assert 'chain PREROUTING (table nat, hook prerouting, priority -100, type nat, policy ACCEPT)' in text
    assert '(this chain sees only part of the class: nat chains see only the first packet of a connection' in text
    # The accept requirement for lo never consults nat.
    assert 'table nat' not in explain(V4, 'input_accept_lo', sources_of(*texts)).text


def test_chains_are_listed_in_path_order_with_the_ruleset():
    text = explain(V4, 'input_accept_lo', sources_of(*RULESETS['raw-notrack-and-mangle-drop'])).text
    headers = [line for line in text.splitlines() if line.startswith('chain ')]
    assert [h.split(' (')[0] + ' ' + h.split('table ')[1].split(',')[0] for h in headers] == [
        'chain PREROUTING raw',
        'chain PREROUTING mangle',
        'chain INPUT mangle',
        'chain INPUT filter',
    ]
    text = explain(V4, 'input_accept_lo', sources_of(*RULESETS['legacy-beside-nft'])).text
    assert 'chain INPUT (table filter (legacy ruleset), hook input, priority 0' in text
    assert text.splitlines()[-1].startswith('result: FAIL: dropped by filter INPUT (legacy ruleset) rule 1')


def test_an_unevaluable_ruleset_says_why():
    text = explain(V4, 'input_accept_lo', sources_of(*RULESETS['loop'])).text
    assert text.splitlines()[-1].startswith('result: UNKNOWN: cannot evaluate the ruleset: a loop of jumps')


def test_literal_mode_says_it_does_not_walk():
    text = explain(V4, 'input_accept_lo', sources_of(example('ufw')), LITERAL).text
    assert 'literal mode does not walk' in text
    assert text.splitlines()[-1].startswith('result: FAIL: ')


# --------------------------------------------------------------------------- the command


def run(argv, capsys):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize('name', EXAMPLES)
@pytest.mark.parametrize('requirement', NAMES)
def test_cli_explain_follows_the_report_and_keeps_the_exit_code(capsys, name, requirement):
    plain_code, plain, _ = run(['--example', name], capsys)
    code, out, err = run(['--example', name, '--explain', requirement], capsys)
    assert (code, err) == (plain_code, '')
    assert out.startswith(plain)
    explained = out[len(plain):]
    assert explained.startswith('\nset_loopback_traffic (ipv4), {}: '.format(requirement))
    assert explained == '\n' + explain(V4, requirement, sources_of(example(name))).text


def test_cli_explain_goes_to_standard_error_beside_another_format(capsys):
    code, out, err = run(['--example', 'misordered', '--explain', 'input_accept_lo', '--format', 'json'], capsys)
    assert code == 2
    assert out.lstrip().startswith('{')
    assert err.startswith('set_loopback_traffic (ipv4), input_accept_lo: ')


def test_cli_explain_an_unknown_requirement_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--example', 'misordered', '--explain', 'input_accept'])
    assert exit_info.value.code == 3
    assert 'input_accept_lo' in capsys.readouterr().err


def test_cli_explain_with_a_missing_file_is_a_usage_error(capsys, tmp_path):
    missing = str(tmp_path / 'nothing.rules')
    code, out, err = run(['--iptables-save', missing, '--explain', 'input_accept_lo'], capsys)
    assert code == 3 and 'nothing.rules' in err  # a usage error, before anything is explained


def test_cli_explain_saved_ipv6_file(capsys, tmp_path):
    path = tmp_path / 'v6.rules'
    path.write_text(CIS_V6)
    code, out, _ = run(['--ip6tables-save', str(path), '--explain', 'input_drop_loopback_source'], capsys)
    assert code == 0
    assert 'set_ipv6_loopback_traffic (ipv6), input_drop_loopback_source: ' in out
    assert 'the class: from ::1/128 to anywhere arriving on any interface but lo' in out
    assert 'result: PASS: dropped by filter INPUT rule 2: -A INPUT -s ::1/128 -j DROP' in out.splitlines()


# --------------------------------------------------------------------------- the live host (lt- namespaces)


def live_config(tmp_path, ns, **options):
    instance = {'applicability': 'always', 'families': ['ipv4'], 'network_namespace': '/run/netns/' + ns.name}
    instance.update(options)
    path = tmp_path / 'conf.yaml'
    path.write_text(yaml.safe_dump({'init_config': {}, 'instances': [instance]}))
    return str(path)


@pytest.mark.parametrize('collection', ['auto', 'save'])
def test_cli_explain_on_the_live_host(capsys, tmp_path, netns, collection):
    require_tools('iptables-restore', 'iptables-save')
    netns.restore(example('ufw'), 'ipv4', 'nft')
    options = {} if collection == 'auto' else {'collection': 'save', 'iptables_save_command': netns.argv_prefix() + ['iptables-save']}
    code, out, err = run(['--config', live_config(tmp_path, netns, **options), '--explain', 'input_drop_loopback_source'], capsys)
    assert code == 1, out + err
    report = next(line for line in out.splitlines() if line.startswith('  [PARTIAL] input_drop_loopback_source: '))
    assert 'result: PARTIAL: ' + report[len('  [PARTIAL] input_drop_loopback_source: '):] in out.splitlines()  # the report's words
    if collection == 'auto':
        assert '(handle ' in report  # read over netlink, explained on what was read in the same generation
    found = rule_lines(out[out.index('set_loopback_traffic (ipv4), input_drop_loopback_source: '):])
    assert (1, 2, 'all', 'jump into ufw-before-input (all of the class):') in found
    assert (3, 5, 'all', 'verdict: dropped for all of the class') in found
