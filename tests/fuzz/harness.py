"""The property every fuzzer in this folder checks, for any bytes a save tool (or a saved file) could hold.

* :func:`parse_ruleset` raises nothing but :class:`ParseError` (with a line number >= 0);
* :func:`evaluate` always returns a :class:`RuleResult` (three requirements, or UNKNOWN with an error), for
  both rules, both modes, one or two rulesets (the second as the legacy one);
* the message of the result is text; when the input was valid UTF-8 it encodes as UTF-8;
* the work is linear: the evaluator calls ``classify`` at most ``CLASSIFY_PER_RULE`` times per rule of the
  rulesets (plus a constant), counted by temporarily replacing ``evaluator.classify``, not timed.

Used by ``fuzz_parser.py`` (atheris) and ``test_fuzz.py`` (hypothesis).
"""
from __future__ import annotations

import contextlib
import glob
import os
from typing import Iterator, List

from datadog_checks.loopback_traffic import evaluator
from datadog_checks.loopback_traffic.evaluator import MODES, Source, evaluate
from datadog_checks.loopback_traffic.parser import EVALUATED_TABLES, ParseError, merge_rulesets, parse_ruleset
from datadog_checks.loopback_traffic.report import message
from datadog_checks.loopback_traffic.requirements import COMPLIANCE_RULES
from datadog_checks.loopback_traffic.results import RuleResult, Status

# Effective mode classifies each rule once per packet class whose path reaches its chain (3 classes), and the
# drop remediation looks at filter INPUT twice more; literal mode once per requirement. Per ruleset and mode.
CLASSIFY_PER_RULE = 8
CLASSIFY_CONSTANT = 16

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))
CORPUS_DIR = os.path.join(_HERE, 'corpus')


class Counter:
    def __init__(self) -> None:
        self.classify = 0


@contextlib.contextmanager
def counting_classify() -> Iterator[Counter]:
    """Count the evaluator's calls to ``classify`` (a monkeypatch of ``evaluator.classify``, undone on exit)."""
    counter = Counter()
    original = evaluator.classify

    def classify(rule, packets):
        counter.classify += 1
        return original(rule, packets)

    evaluator.classify = classify
    try:
        yield counter
    finally:
        evaluator.classify = original


def rule_count(ruleset) -> int:
    return sum(len(chain) for table in ruleset.tables.values() for chain in table.chains.values())


def _parse(text: str, **kwargs):
    try:
        return parse_ruleset(text, **kwargs)
    except ParseError as error:
        assert isinstance(error.line, int) and error.line >= 0, error.line
        assert str(error)
        return None


def _check_result(result, rulesets, counter, strict_utf8: bool) -> None:
    assert isinstance(result, RuleResult), result
    if result.status is Status.UNKNOWN:
        assert result.error, result
    else:
        assert result.error is None, result
        assert len(result.requirements) == 3, result
    limit = CLASSIFY_PER_RULE * sum(rule_count(r) for r in rulesets) + CLASSIFY_CONSTANT
    assert counter.classify <= limit, (counter.classify, limit)
    text = message(result)
    assert isinstance(text, str)
    if strict_utf8:
        text.encode('utf-8')


def check_text(text: str, strict_utf8: bool = True) -> int:
    """Check the properties for one text; returns how many rulesets were evaluated (for statistics)."""
    evaluated = 0
    parsed = [_parse(text), _parse(text, tables=EVALUATED_TABLES), _parse(text, listing_table='raw')]
    # The listing collection parses several pieces and merges them: the text cut in two at a line boundary.
    lines = text.splitlines(True)
    half = len(lines) // 2
    first, second = _parse(''.join(lines[:half]), listing_table='filter'), _parse(''.join(lines[half:]), listing_table='filter')
    if first is not None and second is not None:
        try:
            parsed.append(merge_rulesets([first, second]))
        except ParseError as error:
            assert isinstance(error.line, int)
    for ruleset in parsed:
        if ruleset is None:
            continue
        for rule in COMPLIANCE_RULES:
            for mode in MODES:
                for sources in ([Source(ruleset)], [Source(ruleset), Source(ruleset, 'iptables-legacy', 'legacy')]):
                    with counting_classify() as counter:
                        result = evaluate(rule, sources, mode)
                    _check_result(result, [s.ruleset for s in sources], counter, strict_utf8)
                    evaluated += 1
    return evaluated


def check_bytes(data: bytes) -> int:
    text = data.decode('utf-8', 'surrogateescape')
    try:
        data.decode('utf-8')
        valid = True
    except UnicodeDecodeError:
        valid = False
    return check_text(text, strict_utf8=valid)


# --------------------------------------------------------------------------- seeds


def _read(path: str) -> bytes:
    with open(path, 'rb') as seed:
        return seed.read()


def seeds() -> List[bytes]:
    """Realistic rulesets: the bundled examples, the test rulesets, and the corpus folder."""
    found: List[bytes] = []
    for path in sorted(glob.glob(os.path.join(_REPO, 'loopback_traffic', 'data', 'examples', '*.rules'))):
        found.append(_read(path))
    from tests.rulesets import CIS_V4, CIS_V6, filter_table, table

    found += [
        CIS_V4.encode(),
        CIS_V6.encode(),
        filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT').encode(),
        filter_table(
            '-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT', '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP'
        ).encode(),
        (table('raw', ['-A PREROUTING -s 127.0.0.0/8 ! -i lo -j DROP']) + CIS_V4).encode(),
    ]
    if os.path.isdir(CORPUS_DIR):
        for path in sorted(glob.glob(os.path.join(CORPUS_DIR, '*'))):
            found.append(_read(path))
    return found
