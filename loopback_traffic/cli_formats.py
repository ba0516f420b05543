"""The CLI's reports for CI systems: JUnit XML and SARIF 2.1.0. Pure: no I/O.

JUnit: one test suite per compliance rule, one test case per requirement of it. A failing (or
partial) requirement is a failure whose text names the deciding rule and the fix; a rule that could
not be evaluated gives an error per requirement; a rule that does not apply gives skipped cases.

SARIF: one result per failing or partial requirement (``ruleId`` ``<rule id>/<requirement>``), at
the deciding rule: its line in the ruleset file where a file was judged, and always the logical
location ``ruleset:<table>/<chain>`` with the rule's position in its chain. A rule that could not be
evaluated is a tool execution notification, not a result.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .__about__ import __version__
from .pipeline import Outcome
from .report import CRITICAL, OK, STATUS_NAMES, WARNING, describe_position, explanation, printable, service_check_status, status_code
from .requirements import REQUIREMENTS, RULE_NAMES, rule_named
from .results import Position, RequirementResult, Status

TOOL = 'loopback-traffic'
SARIF_SCHEMA = 'https://json.schemastore.org/sarif-2.1.0.json'
SARIF_VERSION = '2.1.0'
SRCROOT = '%SRCROOT%'
# How to evaluate a rule that does not apply to this host anyway.
EVALUATE_ANYWAY = '--applicability always'
_WORDS = {Status.PASS: 'pass', Status.PARTIAL: 'partial', Status.FAIL: 'fail', Status.UNKNOWN: 'unknown'}
_DESCRIPTIONS = {requirement.name: requirement.description for requirement in REQUIREMENTS}
_MAX_DEVIATIONS = 10
# What XML 1.0 cannot hold, even escaped.
_NOT_XML = re.compile('[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]')


def not_applicable_hint(outcome: Outcome) -> str:
    return '{}; to evaluate it anyway: {}'.format(outcome.applicability.reason, EVALUATE_ANYWAY)


def _requirement_names(outcome: Outcome) -> List[str]:
    if outcome.result is not None and outcome.result.requirements:
        return [r.requirement for r in outcome.result.requirements]
    return [requirement.name for requirement in outcome.rule.requirements]


def _where(position: Position, files: Mapping[str, str], family: str) -> str:
    """``filter INPUT rule 1: -A INPUT ...``, with the line of the file where one was judged."""
    text = describe_position(position)
    path = files.get(family)
    if path is not None and not position.ruleset and position.line:
        text += ' ({} line {})'.format(path, position.line)
    return text


def _details(requirement: RequirementResult, files: Mapping[str, str], family: str) -> List[str]:
    lines = []
    if requirement.deciding is not None:
        lines.append('deciding rule: ' + _where(requirement.deciding, files, family))
    for deviation in requirement.deviations[:_MAX_DEVIATIONS]:
        lines.append('part {} by {}'.format(deviation.verdict, _where(deviation.where, files, family)))
    if len(requirement.deviations) > _MAX_DEVIATIONS:
        lines.append('... and {} more'.format(len(requirement.deviations) - _MAX_DEVIATIONS))
    lines.extend('fix: ' + fix for fix in requirement.remediation)
    return lines


# --------------------------------------------------------------------------- JUnit


def _xml(text: str) -> str:
    return _NOT_XML.sub(lambda found: '\\x{:02x}'.format(ord(found.group())), printable(text))


def _element(parent: ET.Element, tag: str, text: Optional[str] = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {name: _xml(value) for name, value in attributes.items()})
    if text is not None:
        element.text = _xml(text)
    return element


def _seconds(value: float) -> str:
    return '{:.6f}'.format(value)


def _suite(outcome: Outcome, partial: str, files: Mapping[str, str]) -> Tuple[ET.Element, Dict[str, int]]:
    rule = outcome.rule
    result = outcome.result
    suite = ET.Element('testsuite')
    properties = _element(suite, 'properties')
    facts = [('rule', rule.name), ('rule_id', rule.rule_id), ('family', rule.family), ('applicability', outcome.applicability.reason)]
    if result is not None:
        facts += [('status', STATUS_NAMES[service_check_status(result, partial)]), ('mode', result.mode)]
    facts += [('source', origin) for origin in outcome.origins]
    for name, value in facts:
        _element(properties, 'property', name=name, value=value)
    counts = {'tests': 0, 'failures': 0, 'errors': 0, 'skipped': 0}
    by_name = {r.requirement: r for r in result.requirements} if result is not None else {}
    for name in _requirement_names(outcome):
        counts['tests'] += 1
        case = _element(suite, 'testcase', classname=rule.name, name=name)
        requirement = by_name.get(name)
        if result is None:
            counts['skipped'] += 1
            _element(case, 'skipped', message=not_applicable_hint(outcome))
        elif requirement is None or requirement.status is Status.UNKNOWN:
            counts['errors'] += 1
            error = result.error or (explanation(requirement) if requirement is not None else 'not evaluated')
            _element(case, 'error', '{} could not be evaluated: {}'.format(rule.name, error), type='UNKNOWN', message=error)
        else:
            status = requirement_status(requirement, partial)
            text = '\n'.join(['{} ({}): {}'.format(name, _WORDS[requirement.status], explanation(requirement))] + _details(requirement, files, rule.family))
            if status == OK:
                _element(case, 'system-out', text)
            else:
                counts['failures'] += 1
                _element(case, 'failure', text, type=STATUS_NAMES[status], message=explanation(requirement))
    suite.attrib.update(
        {'name': '{} ({}, {})'.format(rule.name, rule.family, rule.rule_id), **{k: str(v) for k, v in counts.items()}, 'time': _seconds(outcome.duration)}
    )
    return suite, counts


def requirement_status(requirement: RequirementResult, partial: str) -> int:
    return status_code(requirement.status, partial)


def junit(outcomes: Sequence[Outcome], partial: str, files: Mapping[str, str]) -> str:
    """``files``: family -> the path of the ruleset file judged for it (for line numbers)."""
    root = ET.Element('testsuites')
    totals = {'tests': 0, 'failures': 0, 'errors': 0, 'skipped': 0}
    for outcome in outcomes:
        suite, counts = _suite(outcome, partial, files)
        root.append(suite)
        for key in totals:
            totals[key] += counts[key]
    root.attrib.update({'name': TOOL, **{k: str(v) for k, v in totals.items()}, 'time': _seconds(sum(o.duration for o in outcomes))})
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding='unicode') + '\n'


# --------------------------------------------------------------------------- SARIF


def _rule_id(outcome: Outcome, requirement: str) -> str:
    """``<rule id>/<requirement>``; with the family between them for a rule that covers several."""
    rule = outcome.rule
    several = rule.name in RULE_NAMES and len(rule_named(rule.name).families) > 1
    return '{}/{}/{}'.format(rule.rule_id, rule.family, requirement) if several else '{}/{}'.format(rule.rule_id, requirement)


def artifact_uri(path: str, cwd: str) -> Tuple[str, Optional[str]]:
    """A file's URI for SARIF: relative to ``cwd`` (base ``%SRCROOT%``) when it is under it, else an
    absolute ``file://`` URI."""
    absolute = os.path.normpath(os.path.join(cwd, path))
    relative = os.path.relpath(absolute, cwd)
    if not relative.startswith(os.pardir + os.sep) and relative != os.pardir:
        return urllib.parse.quote(relative.replace(os.sep, '/')), SRCROOT
    return 'file://' + urllib.parse.quote(absolute), None


def _location(position: Position, files: Mapping[str, str], family: str, cwd: str, text: str) -> Dict[str, Any]:
    logical: Dict[str, Any] = {
        'name': position.chain,
        'fullyQualifiedName': 'ruleset:{}/{}'.format(position.table, position.chain),
        'kind': 'function',  # a chain: rules jump to it and return from it
        'properties': {'table': position.table, 'chain': position.chain, 'position': position.index, 'ruleset': position.ruleset or 'main'},
    }
    location: Dict[str, Any] = {'logicalLocations': [logical], 'message': {'text': printable(text)}}
    path = files.get(family)
    if path is not None and not position.ruleset:
        uri, base = artifact_uri(path, cwd)
        artifact: Dict[str, Any] = {'uri': uri}
        if base:
            artifact['uriBaseId'] = base
        physical: Dict[str, Any] = {'artifactLocation': artifact}
        if position.line:
            physical['region'] = {'startLine': position.line, 'snippet': {'text': printable(position.text)}}
        location['physicalLocation'] = physical
    return location


def _fallback_position(requirement: str) -> Position:
    """Where the requirement's rule belongs when no rule decided: its built-in chain of filter."""
    chain = next(r.literal_chain for r in REQUIREMENTS if r.name == requirement)
    return Position('filter', chain, None, 'policy')


def _level(status: int) -> str:
    return {CRITICAL: 'error', WARNING: 'warning'}.get(status, 'note')


def _fingerprint(rule_id: str, position: Position) -> str:
    key = '\0'.join((rule_id, position.ruleset, position.table, position.chain, printable(position.text)))
    return hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]


def _message(requirement: RequirementResult, rule_name: str) -> str:
    text = '{} {} ({}): {}'.format(rule_name, requirement.requirement, _WORDS[requirement.status], explanation(requirement))
    if requirement.remediation:
        text += '. Fix: ' + '; '.join(requirement.remediation)
    return printable(text)


def sarif_document(outcomes: Sequence[Outcome], partial: str, files: Mapping[str, str], exit_code: int, cwd: Optional[str] = None) -> Dict[str, Any]:
    cwd = cwd or os.getcwd()
    rules: List[Dict[str, Any]] = []
    index: Dict[str, int] = {}
    results: List[Dict[str, Any]] = []
    notifications: List[Dict[str, Any]] = []
    for outcome in outcomes:
        rule = outcome.rule
        for name in _requirement_names(outcome):
            index[_rule_id(outcome, name)] = len(rules)
            rules.append(
                {
                    'id': _rule_id(outcome, name),
                    'name': '{}/{}'.format(rule.name, name),
                    'shortDescription': {'text': '{} ({}): {}'.format(name, rule.family, _DESCRIPTIONS.get(name, name))},
                    'fullDescription': {
                        'text': '{} ({}, {}), requirement {}: {}.'.format(rule.name, rule.family, rule.rule_id, name, _DESCRIPTIONS.get(name, name))
                    },
                    'defaultConfiguration': {'level': 'error'},
                    'properties': {'tags': ['compliance', rule.manager, rule.family, rule.name]},
                }
            )
        result = outcome.result
        if result is None:
            continue
        if result.status is Status.UNKNOWN and not result.requirements:
            notifications.append(
                {
                    'level': 'error',
                    'message': {'text': printable('{} could not be evaluated: {}'.format(rule.name, result.error))},
                    'descriptor': {'id': rule.rule_id},
                }
            )
            continue
        for requirement in result.requirements:
            if requirement.status is Status.PASS:
                continue
            rule_id = _rule_id(outcome, requirement.requirement)
            if requirement.status is Status.UNKNOWN:
                notifications.append(
                    {'level': 'error', 'message': {'text': printable(explanation(requirement))}, 'descriptor': {'id': rule_id}}
                )
                continue
            position = requirement.deciding or _fallback_position(requirement.requirement)
            status = requirement_status(requirement, partial)
            found: Dict[str, Any] = {
                'ruleId': rule_id,
                'ruleIndex': index[rule_id],
                'level': _level(status),
                'message': {'text': _message(requirement, rule.name)},
                'locations': [_location(position, files, rule.family, cwd, 'deciding: ' + describe_position(position))],
                'partialFingerprints': {'loopbackTrafficRule/v1': _fingerprint(rule_id, position)},
                'properties': {
                    'rule': rule.name,
                    'family': rule.family,
                    'status': _WORDS[requirement.status],
                    'remediation': [printable(fix) for fix in requirement.remediation],
                    'sources': list(outcome.origins),
                },
            }
            related = [
                dict(_location(d.where, files, rule.family, cwd, 'part {} by {}'.format(d.verdict, describe_position(d.where))), id=number)
                for number, d in enumerate(requirement.deviations, 1)
            ]
            if related:
                found['relatedLocations'] = related
            results.append(found)
    run: Dict[str, Any] = {
        'tool': {'driver': {'name': TOOL, 'version': __version__, 'semanticVersion': __version__, 'rules': rules}},
        'invocations': [{'executionSuccessful': not notifications, 'exitCode': exit_code, 'toolExecutionNotifications': notifications}],
        'results': results,
    }
    if any(artifact_uri(path, cwd)[1] for path in files.values()):
        run['originalUriBaseIds'] = {SRCROOT: {'uri': 'file://' + urllib.parse.quote(cwd.rstrip('/') + '/')}}
    return {'$schema': SARIF_SCHEMA, 'version': SARIF_VERSION, 'runs': [run]}


def sarif(outcomes: Sequence[Outcome], partial: str, files: Mapping[str, str], exit_code: int, cwd: Optional[str] = None) -> str:
    return json.dumps(sarif_document(outcomes, partial, files, exit_code, cwd), indent=2, ensure_ascii=False) + '\n'
