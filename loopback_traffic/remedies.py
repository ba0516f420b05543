"""The fixes of a rule in the language of the firewall manager it is written for (spec section 1):
iptables commands for the iptables rules, ufw's for the ufw rule, nft's for the nftables rule.

The evaluator places each fix where it takes effect, as iptables or nft insertions (:class:`Fix`).
A manager's own command only helps where the manager's rules are what decides: ufw's user rules come
after ``ufw-before-input`` (where /etc/ufw/before.rules puts the conntrack ACCEPT), so a deviation
there needs a line in before.rules; a deviation in a chain no manager owns keeps the evaluator's
command, which goes where that chain is. Pure: no I/O.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Callable, Dict, List, Tuple

from .requirements import (
    INPUT_ACCEPT_LO,
    INPUT_DROP_LOOPBACK_SOURCE,
    IPV4,
    LOOPBACK_INTERFACE,
    NFTABLES,
    OUTPUT_ACCEPT_LO,
    UFW,
    ComplianceRule,
)
from .results import Position, RequirementResult, RuleResult, Status

NFTABLES_CONFIG = '/etc/nftables.conf'
UFW_BEFORE_RULES = {IPV4: '/etc/ufw/before.rules', 'ipv6': '/etc/ufw/before6.rules'}
UFW_ENABLE = 'ufw enable'
# What the evaluator says of a hook with no chain at all (nothing is loaded there).
_NOTHING_LOADED = '(no such chain loaded'

# ufw's chains by where they stand: those of before.rules run before the user rules (ufw-before-input
# jumps to ufw-user-input last); the user rules, after.rules and the default policy come after.
_UFW_BEFORE = re.compile(r'ufw6?-(before-.*|not-local)$')
_UFW_LATER = re.compile(r'ufw6?-(user-.*|after-.*|reject-.*|track-.*|skip-to-policy-.*|logging-.*)$')
_UFW_USER = re.compile(r'ufw6?-user-(input|output)$')
_BUILT_IN = ('INPUT', 'OUTPUT', 'FORWARD')

# What ufw's own commands and before.rules lines say for each requirement.
_UFW_COMMANDS = {
    INPUT_ACCEPT_LO: 'allow in on {}'.format(LOOPBACK_INTERFACE),
    OUTPUT_ACCEPT_LO: 'allow out on {}'.format(LOOPBACK_INTERFACE),
}
_UFW_DENY_SOURCE = {IPV4: '127.0.0.0/8', 'ipv6': '::1'}
_BEFORE_RULES_LINES = {
    INPUT_ACCEPT_LO: ('input', '-i {} -j ACCEPT'.format(LOOPBACK_INTERFACE)),
    OUTPUT_ACCEPT_LO: ('output', '-o {} -j ACCEPT'.format(LOOPBACK_INTERFACE)),
    INPUT_DROP_LOOPBACK_SOURCE: ('input', '-s {} ! -i ' + LOOPBACK_INTERFACE + ' -j DROP'),
}


def in_manager_language(result: RuleResult, disabled_by: str = '') -> RuleResult:
    """``result`` with the fixes of its failing and partial requirements in its manager's language
    (``disabled_by``: the manager is installed but its configuration says off, e.g. ufw.conf)."""
    translate = _TRANSLATIONS.get(result.rule.manager)
    if translate is None or not result.requirements:
        return result
    translated = tuple(
        replace(r, remediation=translate(result.rule, r, disabled_by)) if r.status in (Status.PARTIAL, Status.FAIL) else r for r in result.requirements
    )
    return replace(result, requirements=translated)


def _positions(requirement: RequirementResult) -> List[Position]:
    found = [requirement.deciding] if requirement.deciding is not None else []
    return found + [deviation.where for deviation in requirement.deviations]


# --- ufw ----------------------------------------------------------------------------------------------


def _ufw_place(where: Position) -> str:
    """'before' (before.rules), 'later' (what ufw's commands reach) or 'other' (no chain of ufw's)."""
    if where.ruleset or ' ' in where.table or where.table != 'filter':
        return 'other'
    if _UFW_BEFORE.match(where.chain):
        return 'before'
    if _UFW_LATER.match(where.chain) or (where.is_policy and where.chain in _BUILT_IN):
        return 'later'
    return 'other'


def _ufw_command(rule: ComplianceRule, requirement: str, first: bool) -> str:
    if requirement == INPUT_DROP_LOOPBACK_SOURCE:
        words = 'deny in from {}'.format(_UFW_DENY_SOURCE[rule.family])
    else:
        words = _UFW_COMMANDS[requirement]
    # A user rule decides: the new one must come before it (`prepend` puts it first in its family).
    return 'ufw {} {}'.format('prepend' if first else '', words).replace('  ', ' ')


def before_rules_line(rule: ComplianceRule, requirement: str) -> str:
    """The line of before.rules (before6.rules) that meets ``requirement`` when it comes first."""
    direction, criteria = _BEFORE_RULES_LINES[requirement]
    chain = '{}-before-{}'.format('ufw' if rule.family == IPV4 else 'ufw6', direction)
    return '-A {} {}'.format(chain, criteria.format(rule.loopback_text))


def _before_rules_fix(rule: ComplianceRule, requirement: str) -> str:
    line = before_rules_line(rule, requirement)
    chain = line.split()[1]
    return 'in {} add `{}` above its first `-A {}` line, then run `ufw reload`'.format(UFW_BEFORE_RULES[rule.family], line, chain)


def _ufw_fixes(rule: ComplianceRule, requirement: RequirementResult, disabled_by: str) -> Tuple[str, ...]:
    name = requirement.requirement
    if disabled_by:
        return (UFW_ENABLE, _ufw_command(rule, name, first=False))
    places = [_ufw_place(where) for where in _positions(requirement)]
    if 'other' in places:
        return requirement.remediation  # a chain ufw does not write decides: the fix goes there
    if 'before' in places:
        return (_before_rules_fix(rule, name),)
    users = [where for where in _positions(requirement) if not where.is_policy and _UFW_USER.match(where.chain)]
    # ufw changes a rule of the same criteria in place (`ufw deny in on lo` -> `ufw allow in on lo`), but
    # skips a `prepend` of it; any other user rule that decides needs the new one first.
    same = any(_user_criteria(where) == _ufw_criteria(rule, name) for where in users)
    return (_ufw_command(rule, name, first=bool(users) and not same),)


def _user_criteria(where: Position) -> str:
    """A user rule's criteria as ufw writes them: ``-A ufw-user-input -i lo -j DROP`` -> ``-i lo``."""
    words = where.text.split()
    if words[:1] == ['-A']:
        words = words[2:]
    if '-j' in words:
        words = words[: words.index('-j')]
    return ' '.join(words)


def _ufw_criteria(rule: ComplianceRule, requirement: str) -> str:
    return _BEFORE_RULES_LINES[requirement][1].format(rule.loopback_text).split(' ! -i')[0].split(' -j')[0]


# --- nftables -----------------------------------------------------------------------------------------


def _nft_address(rule: ComplianceRule) -> str:
    return '{} saddr {}'.format('ip' if rule.family == IPV4 else 'ip6', rule.loopback_text)


def _nft_rule_text(rule: ComplianceRule, requirement: str) -> str:
    if requirement == INPUT_DROP_LOOPBACK_SOURCE:
        return 'iif != {} {} drop'.format(LOOPBACK_INTERFACE, _nft_address(rule))
    return '{} {} accept'.format('iif' if requirement == INPUT_ACCEPT_LO else 'oif', LOOPBACK_INTERFACE)


def persist_step(table: str, chain: str, rule: str) -> str:
    """What makes a rule inserted with nft survive a reboot: the same rule in nftables.conf."""
    return 'in {} add `{}` first in chain {} of table {}'.format(NFTABLES_CONFIG, rule, chain, table)


def _new_table(rule: ComplianceRule, requirement: str) -> Tuple[str, ...]:
    """Nothing is loaded on the hook: a table of its own, written to the persistent file too."""
    hook = 'output' if requirement == OUTPUT_ACCEPT_LO else 'input'
    text = _nft_rule_text(rule, requirement)
    return (
        'nft add table inet filter',
        "nft add chain inet filter {hook} '{{ type filter hook {hook} priority 0; policy accept; }}'".format(hook=hook),
        'nft add rule inet filter {} {}'.format(hook, text),
        persist_step('inet filter', hook, text),
    )


def _nftables_fixes(rule: ComplianceRule, requirement: RequirementResult, disabled_by: str) -> Tuple[str, ...]:
    deciding = requirement.deciding
    if deciding is not None and deciding.is_policy and deciding.text.startswith(_NOTHING_LOADED):
        return _new_table(rule, requirement.requirement)
    fixes: List[str] = []
    for fix in requirement.fixes:
        for step in fix.steps:
            # iptables' own tables keep iptables' commands: native rules in them break the iptables tools.
            fixes.append(step.command)
            if step.native:
                fixes.append(persist_step(step.table, step.chain, step.rule))
    return tuple(dict.fromkeys(fixes)) or requirement.remediation


_Translation = Callable[[ComplianceRule, RequirementResult, str], Tuple[str, ...]]
_TRANSLATIONS: Dict[str, _Translation] = {UFW: _ufw_fixes, NFTABLES: _nftables_fixes}
