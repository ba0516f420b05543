"""Small builders of iptables-save text for the tests."""
from typing import Dict, Iterable, Optional

from datadog_checks.loopback_traffic.evaluator import EFFECTIVE, Source, evaluate
from datadog_checks.loopback_traffic.model import BUILTIN_CHAINS
from datadog_checks.loopback_traffic.parser import parse_ruleset
from datadog_checks.loopback_traffic.requirements import rule_for_family

CIS_V4 = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -s 127.0.0.0/8 -j DROP
-A OUTPUT -o lo -j ACCEPT
COMMIT
"""

CIS_V6 = CIS_V4.replace('127.0.0.0/8', '::1/128')


def table(name: str, rules: Iterable[str] = (), policies: Optional[Dict[str, str]] = None, chains: Iterable[str] = ()) -> str:
    """One table: its built-in chains (policy ACCEPT unless given), user ``chains``, then ``rules``."""
    policies = policies or {}
    lines = ['*' + name]
    lines += [':{} {} [0:0]'.format(chain, policies.get(chain, 'ACCEPT')) for chain in BUILTIN_CHAINS[name]]
    lines += [':{} - [0:0]'.format(chain) for chain in chains]
    lines += list(rules)
    lines.append('COMMIT')
    return '\n'.join(lines) + '\n'


def filter_table(*rules: str, input_policy: str = 'ACCEPT', output_policy: str = 'ACCEPT', chains: Iterable[str] = ()) -> str:
    return table('filter', rules, {'INPUT': input_policy, 'OUTPUT': output_policy}, chains)


def evaluate_text(*texts: str, family: str = 'ipv4', mode: str = EFFECTIVE, labels: Iterable[str] = ('', 'legacy')):
    """Evaluate one or more rulesets (the second one as the legacy ruleset) of one family."""
    rule = rule_for_family(family)
    command = 'iptables' if family == 'ipv4' else 'ip6tables'
    sources = [
        Source(parse_ruleset(text), command + ('-legacy' if label else ''), label) for text, label in zip(texts, labels)
    ]
    return evaluate(rule, sources, mode)
