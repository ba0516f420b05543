"""``loopback-traffic``: run the check's pipeline once, on this host or on saved rulesets.

Exit codes follow service check statuses: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the worst over
the rules evaluated; 0 when no rule applies).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from .applicability import ApplicabilityChecker
from .collect import Collected, read_stream
from .config import APPLICABILITY, PARTIAL, InvalidConfiguration, parse_options
from .evaluator import MODES
from .pipeline import run_rule
from .report import OK, service_check_status, to_json, to_text
from .requirements import FAMILIES, IPV4, IPV6

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'examples')
EXAMPLES = ('compliant', 'ufw', 'misordered')
USAGE_ERROR = 3


def _families(text: str) -> List[str]:
    families = [part.strip() for part in text.split(',') if part.strip()]
    for family in families:
        if family not in FAMILIES:
            raise argparse.ArgumentTypeError('families are ipv4 and ipv6, not {!r}'.format(family))
    return families


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 3 (UNKNOWN) like every other usage error, not argparse's 2 (CRITICAL)
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, '{}: error: {}\n'.format(self.prog, message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog='loopback-traffic',
        description='Tell whether this host\'s iptables rules handle loopback traffic as the compliance rules '
        'set_loopback_traffic and set_ipv6_loopback_traffic require.',
        epilog='Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.',
    )
    source = parser.add_argument_group('what to evaluate (default: the live rulesets of this host)')
    source.add_argument('--iptables-save', metavar='FILE', help='a saved IPv4 ruleset (iptables-save output); - for standard input')
    source.add_argument('--ip6tables-save', metavar='FILE', help='a saved IPv6 ruleset (ip6tables-save output); - for standard input')
    source.add_argument('--example', choices=EXAMPLES, help='evaluate a bundled example IPv4 ruleset')
    parser.add_argument('--config', metavar='CONF_YAML', help='take the options of the first instance of this conf.yaml')
    parser.add_argument('--families', type=_families, help='comma-separated: ipv4,ipv6')
    parser.add_argument('--applicability', choices=APPLICABILITY, help='auto (default on the live host) or always')
    parser.add_argument('--mode', choices=MODES, help='effective (default) or literal')
    parser.add_argument('--partial', choices=PARTIAL, help='how a partial result is reported (default warning)')
    parser.add_argument('--use-sudo', action='store_true', default=None, help='run the save tools with sudo -n')
    parser.add_argument('--timeout', type=float, help='seconds per save command (default 10)')
    parser.add_argument('--json', action='store_true', help='print JSON instead of the human report')
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


def _instance(arguments: argparse.Namespace) -> Dict[str, Any]:
    instance = _load_config(arguments.config) if arguments.config else {}
    for name in ('families', 'applicability', 'mode', 'partial', 'use_sudo', 'timeout'):
        value = getattr(arguments, name)
        if value is not None:
            instance[name] = value
    return instance


def _file_texts(arguments: argparse.Namespace) -> Dict[str, Collected]:
    if arguments.iptables_save == '-' and arguments.ip6tables_save == '-':
        raise InvalidConfiguration('standard input can feed one ruleset only: give the other one as a file')
    files: Dict[str, Collected] = {}
    if arguments.example:
        files[IPV4] = _read_input(os.path.join(EXAMPLES_DIR, arguments.example + '.rules'))
    if arguments.iptables_save:
        files[IPV4] = _read_input(arguments.iptables_save)
    if arguments.ip6tables_save:
        files[IPV6] = _read_input(arguments.ip6tables_save)
    return files


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        instance = _instance(arguments)
        files = _file_texts(arguments)
        if files:
            # Saved rulesets are judged as they are; this host's packages say nothing about them.
            instance.setdefault('families', [family for family in FAMILIES if family in files])
            instance.setdefault('applicability', 'always')
        options = parse_options(instance)
    except (InvalidConfiguration, OSError, ValueError) as error:
        print('loopback-traffic: {}'.format(error), file=sys.stderr)
        return USAGE_ERROR
    checker = ApplicabilityChecker(options)
    outcomes = [run_rule(options, family, checker, files.get(family)) for family in options.families]
    statuses = [service_check_status(o.result, options.partial) for o in outcomes if o.result is not None]
    try:
        if arguments.json:
            print(json.dumps({'rules': [to_json(o, options.partial) for o in outcomes]}, indent=2))
        else:
            sys.stdout.write(''.join(to_text(o, options.partial) for o in outcomes))
            if os.geteuid() != 0 and any(o.result is not None and o.result.error for o in outcomes):
                print('hint: reading the firewall needs root (sudo loopback-traffic); to see a result without root: loopback-traffic --example compliant')
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. | head): nothing more to say
    return max(statuses, default=OK) if statuses else OK
