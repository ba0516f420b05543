"""Model -> ``iptables-save`` text, the inverse of :mod:`.parser`. Pure: no I/O."""
from __future__ import annotations

import re
from typing import List, Optional, Sequence

from .model import Chain, Counters, Match, Option, Rule, Ruleset, Table, Target

_PLAIN = re.compile(r'^[^\s"\\!-][^\s"\\]*$')


def quote(value: str) -> str:
    """Quote an argument the way ``iptables-restore`` reads it back as one value."""
    if _PLAIN.match(value):
        return value
    return '"{}"'.format(value.replace('\\', '\\\\').replace('"', '\\"'))


# The values iptables-save writes as xtables strings: bare only when made of letters, digits, '_'
# and '-'; else in double quotes, with a backslash before each double quote, backslash and single quote.
_STRING_OPTIONS = frozenset({'--comment', '--log-prefix', '--nflog-prefix'})
_BARE_STRING = re.compile(r'[_\-0-9a-zA-Z]+')
_STRING_ESCAPES = re.compile(r'(["\\\'])')


def _string(value: str) -> str:
    # xtables leaves "--match" bare too (getopt takes the next word whatever it is); quoted, it
    # cannot be read as an option.
    bare = _BARE_STRING.fullmatch(value) and not value.startswith('-')
    return value if bare else '"{}"'.format(_STRING_ESCAPES.sub(r'\\\1', value))


def _option(option: Option) -> List[str]:
    words = ['!'] if option.negated else []
    words.append(option.name)
    quoting = _string if option.name in _STRING_OPTIONS else quote
    words.extend(quoting(value) for value in option.values)
    return words


def _match(match: Match) -> List[str]:
    words = ['-m', match.module] if match.module else []
    for option in match.options:
        words.extend(_option(option))
    return words


def _target(target: Target) -> List[str]:
    words = ['-g' if target.goto else '-j', target.name]
    for argument in target.args:
        if words[-1] in _STRING_OPTIONS:
            words.append(_string(argument))
        else:
            words.append(argument if argument.startswith('--') and _PLAIN.match(argument[2:] or 'x') else quote(argument))
    return words


def _counters(counters: Optional[Counters]) -> str:
    return '[{}:{}]'.format(counters.packets, counters.bytes) if counters is not None else ''


def render_rule(rule: Rule) -> str:
    return rule_text(rule.chain, rule.matches, rule.target, rule.counters)


def rule_text(chain: str, matches: Sequence[Match], target: Optional[Target], counters: Optional[Counters] = None) -> str:
    """The ``-A`` line of a rule made of these parts (what :func:`render_rule` writes for it)."""
    words = ['-A', chain]
    for match in matches:
        words.extend(_match(match))
    if target is not None:
        words.extend(_target(target))
    line = ' '.join(words)
    return '{} {}'.format(_counters(counters), line) if counters is not None else line


def _chain_header(chain: Chain) -> str:
    header = ':{} {}'.format(chain.name, chain.policy if chain.policy is not None else '-')
    return '{} {}'.format(header, _counters(chain.counters)) if chain.counters is not None else header


def render_table(table: Table) -> str:
    lines = ['*' + table.name]
    lines.extend(_chain_header(chain) for chain in table.chains.values())
    for chain in table.chains.values():
        lines.extend(render_rule(rule) for rule in chain.rules)
    lines.append('COMMIT')
    return '\n'.join(lines) + '\n'


def render_ruleset(ruleset: Ruleset) -> str:
    return ''.join(render_table(table) for table in ruleset.tables.values())
