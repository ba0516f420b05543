"""``loopback-traffic``: run the check's pipeline once, on this host or on saved rulesets.

Exit codes follow service check statuses: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the worst over
the rules evaluated; 0 when no rule applies; 3 for a usage error).

Saved rulesets (``--iptables-save``, ``--ip6tables-save``, ``--example`` or the configuration's
``ruleset_files``) are judged on their own: every family evaluated needs its file (this host's live
ruleset is never read beside them), and this host's packages do not make them not applicable unless
``applicability`` is set.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import sys
from typing import IO, Any, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

from .__about__ import __version__
from .applicability import ApplicabilityChecker
from .cli_formats import EVALUATE_ANYWAY, junit, sarif
from .collect import Collected, CollectionError, collected_text, read_stream
from .config import APPLICABILITY, PARTIAL, InvalidConfiguration, Options, parse_options
from .evaluator import MODES
from .example_host import ExampleUnavailable, loaded_in_a_namespace
from .explain import ExplainingState
from .parser import EVALUATED_TABLES, ParseError, parse_ruleset
from .pipeline import Outcome, RuleOutcome, run_definition
from .report import OK, STATUS_NAMES, apply_waivers, printable, rule_status, to_json, to_text
from .requirements import COMPLIANCE_RULES, FAMILIES, IPV4, IPV6, REQUIREMENTS, RULE_NAMES, rule_named
from .saves import read_file

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'examples')
# The bundled examples: their saved rulesets per family, and the rule each is judged by (what manages
# that host's firewall). nftables-host is an nft -f file, loaded into a throwaway namespace.
EXAMPLE_FILES: Mapping[str, Mapping[str, str]] = {
    'compliant': {IPV4: 'compliant.rules'},
    'ufw': {IPV4: 'ufw.rules'},
    'misordered': {IPV4: 'misordered.rules'},
    'ufw-host': {IPV4: 'ufw.rules', IPV6: 'ufw6.rules'},
}
NFTABLES_EXAMPLE = 'nftables-host'
EXAMPLES = tuple(EXAMPLE_FILES) + (NFTABLES_EXAMPLE,)
EXAMPLE_RULES = {'ufw-host': 'set_ufw_loopback_traffic', NFTABLES_EXAMPLE: 'set_nftables_loopback_traffic'}
FORMATS = ('text', 'json', 'junit', 'sarif')
USAGE_ERROR = 3
NOT_APPLICABLE = 'NOT APPLICABLE'
_FILE_OPTIONS = {IPV4: '--iptables-save', IPV6: '--ip6tables-save'}
_FAMILY_NAMES = {IPV4: 'IPv4', IPV6: 'IPv6'}


def _families(text: str) -> List[str]:
    families = [part.strip() for part in text.split(',') if part.strip()]
    for family in families:
        if family not in FAMILIES:
            raise argparse.ArgumentTypeError('families are ipv4 and ipv6, not {!r}'.format(family))
    return families


def _rules(text: str) -> List[str]:
    rules = [part.strip() for part in text.split(',') if part.strip()]
    for rule in rules:
        if rule not in RULE_NAMES:
            raise argparse.ArgumentTypeError('the rules are {}, not {!r}'.format(', '.join(RULE_NAMES), rule))
    return rules


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # exit 3 (UNKNOWN) like every other usage error, not argparse's 2 (CRITICAL)
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, '{}: error: {}\n'.format(self.prog, message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog='loopback-traffic',
        description='Tell whether this host\'s firewall handles loopback traffic as the compliance rules '
        'set_loopback_traffic, set_ipv6_loopback_traffic (iptables), set_ufw_loopback_traffic (ufw) and '
        'set_nftables_loopback_traffic (nftables) require, judged on what the kernel runs.',
        epilog='Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the worst rule; 3 also for a usage error).',
    )
    parser.add_argument('--version', action='version', version='%(prog)s {}'.format(__version__))
    source = parser.add_argument_group(
        'what to evaluate (default: the live rulesets of this host)',
        'Saved rulesets are judged on their own: each family evaluated needs its file, and applicability defaults to always.',
    )
    source.add_argument('--iptables-save', metavar='FILE', help='a saved IPv4 ruleset (iptables-save output); - for standard input')
    source.add_argument('--ip6tables-save', metavar='FILE', help='a saved IPv6 ruleset (ip6tables-save output); - for standard input')
    source.add_argument(
        '--example',
        choices=EXAMPLES,
        help='evaluate a bundled example (alone): compliant, ufw and misordered (IPv4 iptables rulesets), ufw-host (a ufw host, '
        'both families, by the ufw rule), nftables-host (an nftables.conf, by the nftables rule, loaded into a throwaway network '
        'namespace: needs root)',
    )
    parser.add_argument('--config', metavar='CONF_YAML', help='take the options of the first instance of this conf.yaml')
    parser.add_argument(
        '--rules', type=_rules, help='comma-separated rules to evaluate where they apply (default: all; for saved rulesets: the iptables rules)'
    )
    parser.add_argument('--families', type=_families, help='comma-separated families of them: ipv4,ipv6')
    parser.add_argument(
        '--applicability', choices=APPLICABILITY, help='auto (default on the live host: judged by the installed packages) or always (default for saved rulesets)'
    )
    parser.add_argument('--mode', choices=MODES, help='effective (default) or literal')
    parser.add_argument('--partial', choices=PARTIAL, help='how a partial result is reported (default warning)')
    parser.add_argument('--use-sudo', action='store_true', default=None, help='run the save tools with sudo -n')
    parser.add_argument('--timeout', type=float, help='seconds per save command (default 10)')
    output = parser.add_argument_group('output')
    formats = output.add_mutually_exclusive_group()
    formats.add_argument(
        '--format', choices=FORMATS, default='text', help='text (default, the human report), json, junit (JUnit XML) or sarif (SARIF 2.1.0)'
    )
    formats.add_argument('--json', dest='format', action='store_const', const='json', help='the same as --format json')
    output.add_argument(
        '--explain',
        metavar='REQUIREMENT',
        choices=[requirement.name for requirement in REQUIREMENTS],
        help='also show the walk of one requirement ({}): chain by chain, rule by rule, each rule\'s relation '
        '(none/some/all) to its packet class and what it decided (after the text report; on standard error '
        'when standard output gets another format)'.format(', '.join(requirement.name for requirement in REQUIREMENTS)),
    )
    output.add_argument(
        '--output', metavar='FILE', help='write the report in --format to FILE; standard output then shows the human report'
    )
    return parser


def _load_config(path: str) -> Dict[str, Any]:
    import yaml

    with open(path, encoding='utf-8') as config_file:
        try:
            document = yaml.safe_load(config_file) or {}
        except yaml.YAMLError as error:
            raise InvalidConfiguration('{} is not valid YAML: {}'.format(path, error))
    instances = document.get('instances') if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise InvalidConfiguration('{} has no list of instances'.format(path))
    if instances[0] is not None and not isinstance(instances[0], dict):
        raise InvalidConfiguration('the first instance of {} is not a mapping of options'.format(path))
    return dict(instances[0] or {})


def _read_input(path: str) -> Collected:
    if path == '-':
        return read_stream(sys.stdin.buffer, '<standard input>')
    with open(path, 'rb') as saved:
        return read_stream(saved, path)


def _instance(arguments: argparse.Namespace) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The instance's options (the configuration's, overridden by the command line), and for each
    option set, who set it (``--families``, or ``families`` in CONF) for messages."""
    instance = _load_config(arguments.config) if arguments.config else {}
    set_by = {name: '`{}` in {}'.format(name, arguments.config) for name, value in instance.items() if value is not None}
    for name in ('rules', 'families', 'applicability', 'mode', 'partial', 'use_sudo', 'timeout'):
        value = getattr(arguments, name)
        if value is not None:
            instance[name] = value
            set_by[name] = '--' + name.replace('_', '-')
    return instance, set_by


# --------------------------------------------------------------------------- saved rulesets


def _saved_paths(arguments: argparse.Namespace, configured: Mapping[str, str], config: Optional[str]) -> Dict[str, Tuple[str, str]]:
    """family -> (path, what named it) of the saved rulesets to judge; {} for the live host."""
    given = {family: getattr(arguments, option[2:].replace('-', '_')) for family, option in _FILE_OPTIONS.items()}
    given = {family: path for family, path in given.items() if path}
    if arguments.example:
        if given or configured:
            named = [_FILE_OPTIONS[family] for family in given] + (['`ruleset_files` in {}'.format(config)] if configured else [])
            raise InvalidConfiguration(
                '--example evaluates a bundled ruleset on its own: drop {} (or --example)'.format(' and '.join(named))
            )
        files = EXAMPLE_FILES.get(arguments.example, {})
        return {family: (os.path.join(EXAMPLES_DIR, name), '--example') for family, name in files.items()}
    if list(given.values()).count('-') > 1:
        raise InvalidConfiguration('standard input can feed one ruleset only: give the other one as a file')
    paths = {family: (path, '`ruleset_files.{}` in {}'.format(family, config)) for family, path in configured.items()}
    paths.update({family: (path, _FILE_OPTIONS[family]) for family, path in given.items()})
    return paths


def _offline_families(instance: Mapping[str, Any], set_by: Mapping[str, str], paths: Mapping[str, Tuple[str, str]]) -> List[str]:
    """The families to judge on saved rulesets: those asked for, each of which must have its file
    (never completed with this host's live ruleset), or else those with a file."""
    if instance.get('families') is None:
        return [family for family in FAMILIES if family in paths]
    families = list(dict.fromkeys(instance['families']))
    for family in families:
        if family not in paths:
            others = [f for f in families if f in paths]
            leave_out = ' or evaluate only {} with --families {}'.format(','.join(others), ','.join(others)) if others else ''
            raise InvalidConfiguration(
                '{family} is to be evaluated ({by}) but no saved {name} ruleset is given: add {option} FILE{leave_out} '
                '(saved rulesets are never completed with this host\'s live ruleset)'.format(
                    family=family, by=set_by['families'], name=_FAMILY_NAMES[family], option=_FILE_OPTIONS[family], leave_out=leave_out
                )
            )
    for family, (_, named) in paths.items():
        if family not in families and named.startswith('--'):
            raise InvalidConfiguration(
                '{} gives a saved {} ruleset but {} leaves {} out: drop one of them'.format(named, _FAMILY_NAMES[family], set_by['families'], family)
            )
    return families


_ADDRESS_OPTIONS = ('-s', '-d', '--src-range', '--dst-range')
_IPV4_ADDRESS = re.compile(r'\d{1,3}(\.\d{1,3}){3}')


def _address_family(value: str) -> Optional[str]:
    address = value.split('/', 1)[0]
    if ':' in address:
        return IPV6
    return IPV4 if _IPV4_ADDRESS.fullmatch(address) else None


def _other_family_rule(text: str, family: str) -> Optional[Tuple[int, str, str]]:
    """The first rule of a saved ruleset whose addresses are of the other family: (line, rule, address).
    None when there is none, or when the text does not parse (the evaluation says where)."""
    try:
        ruleset = parse_ruleset(text, tables=EVALUATED_TABLES)
        for table in ruleset.tables.values():
            for chain in table.chains.values():
                for rule in chain.rules:
                    for match in rule.matches:
                        for option in match.options:
                            if option.name not in _ADDRESS_OPTIONS:
                                continue
                            for value in option.values:
                                for address in re.split(r'[,-]', value) if option.name.endswith('range') else value.split(','):
                                    found = _address_family(address.strip())
                                    if found is not None and found != family:
                                        return rule.line, rule.text, address.strip()
    except (ParseError, RecursionError):
        return None
    return None


def _check_family(collected: Collected, family: str, named: str) -> None:
    wrong = _other_family_rule(collected.text, family)
    if wrong is None:
        return
    line, rule, address = wrong
    other = IPV6 if family == IPV4 else IPV4
    where = named if named.startswith('--') else named.replace('ruleset_files.' + family, 'ruleset_files.' + other)
    fix = 'give it with {}'.format(_FILE_OPTIONS[other]) if named.startswith('--') else 'set it as {}'.format(where)
    raise InvalidConfiguration(
        '{origin} is not an {name} ruleset: line {line} ({rule}) has the {other_name} address {address}; it looks like '
        '{save} output: {fix} instead of {named}'.format(
            origin=collected.origin,
            name=_FAMILY_NAMES[family],
            line=line,
            rule=printable(rule.strip()),
            other_name=_FAMILY_NAMES[other],
            address=address,
            save='iptables-save' if other == IPV4 else 'ip6tables-save',
            fix=fix,
            named=named,
        )
    )


def _read_saved(path: str, named: str, max_output_bytes: int) -> Collected:
    if named.startswith('--'):
        return _read_input(path)
    return collected_text(read_file(path, max_output_bytes), path)


# --------------------------------------------------------------------------- the human report


_COLOURS = {
    'OK': '32',
    'WARNING': '33',
    'CRITICAL': '31',
    'UNKNOWN': '35',
    NOT_APPLICABLE: '36',
    'PASS': '32',
    'PARTIAL': '33',
    'FAIL': '31',
}
_STATUS_WORDS = '|'.join(re.escape(word) for word in _COLOURS)
_HEADER = re.compile(r'^(\S+ \([^()]*\): )({})\b'.format(_STATUS_WORDS))
_REQUIREMENT = re.compile(r'^(  \[)({})(\] )'.format(_STATUS_WORDS))
_COUNT = re.compile(r'(\d+ )({})\b'.format(_STATUS_WORDS))


def wants_colour(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """Colour on a terminal only, and never with NO_COLOR set (https://no-color.org) or TERM=dumb."""
    if environ.get('NO_COLOR') or environ.get('TERM') == 'dumb':
        return False
    isatty = getattr(stream, 'isatty', None)
    return bool(isatty and isatty())


def _paint(word: str) -> str:
    return '\033[1;{}m{}\033[0m'.format(_COLOURS[word], word)


def colour(text: str) -> str:
    """The human report with its statuses in colour (status lines, requirement tags, the summary)."""
    lines = []
    for line in text.split('\n'):
        if _HEADER.match(line):
            line = _HEADER.sub(lambda m: m.group(1) + _paint(m.group(2)), line, count=1)
        elif _REQUIREMENT.match(line):
            line = _REQUIREMENT.sub(lambda m: m.group(1) + _paint(m.group(2)) + m.group(3), line, count=1)
        elif re.match(r'^\d+ rules?: ', line):
            line = _COUNT.sub(lambda m: m.group(1) + _paint(m.group(2)), line)
        lines.append(line)
    return '\n'.join(lines)


def _status_name(outcome: RuleOutcome, partial: str) -> str:
    status = rule_status(outcome, partial)
    return NOT_APPLICABLE if status is None else STATUS_NAMES[status]


def summary(outcomes: Sequence[RuleOutcome], partial: str) -> str:
    """``2 rules: 1 CRITICAL, 1 OK``: the worst first."""
    names = [_status_name(outcome, partial) for outcome in outcomes]
    order = [STATUS_NAMES[code] for code in sorted(STATUS_NAMES, reverse=True)] + [NOT_APPLICABLE]
    counts = ['{} {}'.format(names.count(name), name) for name in order if name in names]
    return '{} rule{}: {}'.format(len(names), '' if len(names) == 1 else 's', ', '.join(counts))


def human(outcomes: Sequence[RuleOutcome], partial: str) -> str:
    parts = []
    for outcome in outcomes:
        parts.append(to_text(outcome, partial))
        if not outcome.applicable:
            parts.append('  to evaluate it anyway: {} (or `applicability: always` in conf.yaml)\n'.format(EVALUATE_ANYWAY))
    if os.geteuid() != 0 and any(part.result is not None and part.result.error for o in outcomes for part in o.parts):
        parts.append('hint: reading the firewall needs root (sudo loopback-traffic); to see a result without root: loopback-traffic --example compliant\n')
    parts.append(summary(outcomes, partial) + '\n')
    return ''.join(parts)


def explanations(requirement: str, outcomes: Sequence[RuleOutcome], states: Mapping[Tuple[str, str], ExplainingState]) -> str:
    """``--explain``: the walk of the requirement for each rule and family evaluated (before waivers)."""
    parts = []
    for whole in outcomes:
        for outcome in whole.parts:
            rule = outcome.rule
            state = states.get((rule.name, rule.family))
            found = state.explanations.get(rule.family) if state is not None else None
            if requirement not in [r.name for r in rule.requirements]:
                parts.append('{} ({}), {}: not explained: the rule has no such requirement\n'.format(rule.name, rule.family, requirement))
            elif found is not None:
                parts.append(found.text)
            elif outcome.result is None:
                parts.append('{} ({}), {}: not explained: the rule is not applicable\n'.format(rule.name, rule.family, requirement))
            else:
                parts.append('{} ({}), {}: not explained: {}\n'.format(rule.name, rule.family, requirement, outcome.result.error))
    return '\n'.join(parts)


def render(format_name: str, outcomes: Sequence[RuleOutcome], partial: str, files: Mapping[str, str], code: int) -> str:
    if format_name == 'json':
        return json.dumps({'rules': [to_json(o, partial) for o in outcomes]}, indent=2) + '\n'
    families = [part for outcome in outcomes for part in outcome.parts]
    if format_name == 'junit':
        return junit(families, partial, files)
    if format_name == 'sarif':
        return sarif(families, partial, files, code)
    return human(outcomes, partial)


def _write_file(path: str, text: str) -> None:
    """The whole report or nothing: a CI step never reads half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, '.{}.{}.tmp'.format(os.path.basename(path), os.getpid()))
    try:
        with open(temporary, 'w', encoding='utf-8') as report_file:
            report_file.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


# --------------------------------------------------------------------------- main


def _prepare(
    arguments: argparse.Namespace, example_namespace: Optional[str] = None
) -> Tuple[Options, Dict[str, Tuple[Collected, Optional[str]]]]:
    """The options and the saved rulesets to judge (family -> (collected, path of the file or None))."""
    instance, set_by = _instance(arguments)
    options = parse_options(instance)  # every option valid before anything is read
    if example_namespace is not None:
        instance.update(network_namespace=example_namespace, ruleset_files=None)
        instance.setdefault('applicability', 'always')  # the example is the host judged, whatever this one has
        instance.setdefault('rules', [EXAMPLE_RULES[NFTABLES_EXAMPLE]])
        return parse_options(instance), {}
    paths = _saved_paths(arguments, options.ruleset_files, arguments.config)
    if not paths:
        return options, {}
    instance['families'] = _offline_families(instance, set_by, paths)
    if instance.get('applicability') is None:
        instance['applicability'] = 'always'  # this host's packages say nothing about a saved ruleset
    if instance.get('rules') is None and arguments.example in EXAMPLE_RULES:
        instance['rules'] = [EXAMPLE_RULES[arguments.example]]
    elif instance.get('rules') is None:
        # A saved iptables-save file is judged by the iptables rules, unless others are asked for.
        instance['rules'] = [rule.name for rule in COMPLIANCE_RULES if rule.family in instance['families']]
    options = parse_options(instance)
    given: Dict[str, Tuple[Collected, Optional[str]]] = {}
    for family in options.families:
        path, named = paths[family]
        collected = _read_saved(path, named, options.max_output_bytes)
        _check_family(collected, family, named)
        given[family] = (collected, None if path == '-' else path)
    return options, given


def _with_waivers(outcome: RuleOutcome, options: Options) -> RuleOutcome:
    """The outcome as the Agent reports it: the configuration's waivers applied (judged on today's UTC date)."""
    if not options.waivers:
        return outcome
    today = datetime.datetime.now(datetime.timezone.utc).date()
    parts = tuple(_part_with_waivers(part, options, today) for part in outcome.parts)
    return dataclasses.replace(outcome, parts=parts)


def _part_with_waivers(outcome: Outcome, options: Options, today: datetime.date) -> Outcome:
    if outcome.result is None:
        return outcome
    return dataclasses.replace(outcome, result=apply_waivers(outcome.result, options.waivers, today).result)


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.example != NFTABLES_EXAMPLE:
        return _main(arguments)
    if arguments.iptables_save or arguments.ip6tables_save:
        print('loopback-traffic: --example evaluates a bundled ruleset on its own: drop --iptables-save/--ip6tables-save (or --example)', file=sys.stderr)
        return USAGE_ERROR
    try:
        with loaded_in_a_namespace(os.path.join(EXAMPLES_DIR, NFTABLES_EXAMPLE + '.conf')) as namespace:
            return _main(arguments, namespace)
    except ExampleUnavailable as error:
        print('loopback-traffic: --example {}: {}'.format(NFTABLES_EXAMPLE, error), file=sys.stderr)
        return USAGE_ERROR


def _main(arguments: argparse.Namespace, example_namespace: Optional[str] = None) -> int:
    try:
        options, given = _prepare(arguments, example_namespace)
    except (InvalidConfiguration, CollectionError, OSError, ValueError) as error:
        print('loopback-traffic: {}'.format(error), file=sys.stderr)
        return USAGE_ERROR
    checker = ApplicabilityChecker(options)
    definitions = [rule_named(name) for name in options.rules]
    states = (
        {(d.name, family): ExplainingState(arguments.explain) for d in definitions for family in d.families} if arguments.explain else {}
    )
    saved = {family: collected for family, (collected, _) in given.items()}
    outcomes = [
        run_definition(options, d, checker, saved, states={f: states[(d.name, f)] for f in d.families} if states else None) for d in definitions
    ]
    explained = explanations(arguments.explain, outcomes, states) if arguments.explain else ''
    outcomes = [_with_waivers(outcome, options) for outcome in outcomes]
    statuses = [status for status in (rule_status(o, options.partial) for o in outcomes) if status is not None]
    code = max(statuses, default=OK)
    files = {family: path for family, (_, path) in given.items() if path is not None}
    if arguments.output and arguments.output != '-':
        try:
            _write_file(arguments.output, render(arguments.format, outcomes, options.partial, files, code))
        except OSError as error:
            print('loopback-traffic: cannot write {}: {}'.format(arguments.output, error.strerror or error), file=sys.stderr)
            return USAGE_ERROR
        shown = 'text'
    else:
        shown = arguments.format
    text = render(shown, outcomes, options.partial, files, code)
    if shown == 'text' and wants_colour(sys.stdout, os.environ):
        text = colour(text)
    if explained and shown == 'text':
        text += '\n' + explained
    elif explained:
        sys.stderr.write(explained)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. | head): nothing more to say
    return code
