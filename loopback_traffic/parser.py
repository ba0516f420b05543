"""Text -> :class:`.model.Ruleset`, for ``iptables-save`` and ``iptables -S`` output. Pure: no I/O.

The tokeniser follows ``iptables-restore`` (``add_param_to_argv`` in iptables' xshared.c): arguments
are split on spaces, tabs and newlines; a double quote opens a quoted argument in which a backslash
escapes the next character and the closing quote ends the argument.
"""
from __future__ import annotations

import itertools
import re
from types import MappingProxyType
from typing import Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from .model import (
    BUILTIN_CHAINS,
    IPTABLES_BASE_CHAINS,
    INCOMPATIBLE_TABLE,
    LEGACY_TABLES_PRESENT,
    POLICIES,
    Chain,
    Counters,
    Match,
    Option,
    RawRule,
    Rule,
    Ruleset,
    SaveWarning,
    Table,
    Target,
)

ALL_TABLES = frozenset(BUILTIN_CHAINS)
# The tables whose chains can decide the fate of a packet on the loopback paths: all of them (a nat
# chain denies new connections, spec section 2).
EVALUATED_TABLES = ALL_TABLES

_MAX_REPORTED_TEXT = 200


class ParseError(ValueError):
    """The text is not a ruleset. ``line`` is 1-based (0 when the problem is the text as a whole)."""

    def __init__(self, line: int, reason: str, text: str = '') -> None:
        self.line = line
        self.reason = reason
        self.text = text[:_MAX_REPORTED_TEXT]
        where = 'line {}: '.format(line) if line else ''
        shown = ': {!r}'.format(self.text) if self.text else ''
        super().__init__('{}{}{}'.format(where, reason, shown))


class Token(str):
    """An argument; ``quoted`` tells that it was written in double quotes (so it is always a value)."""

    __slots__ = ()
    quoted: bool = False


class _QuotedToken(Token):
    __slots__ = ()
    quoted = True


_quoted_token = _QuotedToken


_UNQUOTED_ARGUMENT = re.compile(r'[^ \t\n]+')
# An argument: unquoted characters, optionally followed by a double-quoted part, which ends it.
_ARGUMENT = re.compile(r'([^ \t\n"]*)"((?:[^"\\]|\\.)*)"|[^ \t\n"]+', re.DOTALL)
_ESCAPE = re.compile(r'\\(.)', re.DOTALL)


def _tokenize_whole_quoted_arguments(text: str) -> Optional[List[Token]]:
    """The common case, ``--comment "a b"``: every quoted part is a whole argument with no escapes.
    None when the text is not of that shape."""
    parts = text.split('"')
    if len(parts) % 2 == 0:
        return None
    tokens: List[Token] = []
    for index, part in enumerate(parts):
        if index % 2:
            tokens.append(_QuotedToken(part))
            continue
        if index < len(parts) - 1 and part[-1:] not in ('', ' ', '\t', '\n'):
            return None  # glued to the quote that opens after it: one argument
        tokens.extend(Token(value) for value in _UNQUOTED_ARGUMENT.findall(part))
    return tokens


def tokenize(text: str, line: int = 0) -> List[Token]:
    """Split one rule line into arguments exactly as ``iptables-restore`` does."""
    if '"' not in text:
        return [Token(value) for value in _UNQUOTED_ARGUMENT.findall(text)]
    if '\\' not in text:
        simple = _tokenize_whole_quoted_arguments(text)
        if simple is not None:
            return simple
    tokens: List[Token] = []
    end = 0
    for argument in _ARGUMENT.finditer(text):
        if '"' in text[end : argument.start()]:
            break  # a quote that no argument could close
        end = argument.end()
        quoted = argument.group(2)
        if quoted is None:
            tokens.append(Token(argument.group(0)))
        else:
            tokens.append(_quoted_token(argument.group(1) + (_ESCAPE.sub(r'\1', quoted) if '\\' in quoted else quoted)))
    if '"' in text[end:]:
        raise ParseError(line, 'unterminated double quote', text)
    return tokens


# Built-in criteria that take one argument, by every spelling iptables accepts, to the short form
# iptables-save prints.
_BUILTIN_WITH_ARGUMENT = {
    '-s': '-s',
    '--source': '-s',
    '--src': '-s',
    '-d': '-d',
    '--destination': '-d',
    '--dst': '-d',
    '-i': '-i',
    '--in-interface': '-i',
    '-o': '-o',
    '--out-interface': '-o',
    '-p': '-p',
    '--protocol': '-p',
}
_FRAGMENT = ('-f', '--fragment')
_MATCH = ('-m', '--match')
_JUMP = ('-j', '--jump')
_GOTO = ('-g', '--goto')
_COUNTERS = ('-c', '--set-counters')
_APPEND = ('-A', '--append')
_NUMBER = re.compile(r'^[0-9]+$')


def _is_option(token: Token) -> bool:
    return not token.quoted and len(token) > 1 and token[0] == '-' and not _NUMBER.match(token[1:])


def _is_builtin_option(token: Token) -> bool:
    return not token.quoted and (
        token in _BUILTIN_WITH_ARGUMENT
        or token in _FRAGMENT
        or token in _MATCH
        or token in _JUMP
        or token in _GOTO
        or token in _COUNTERS
    )


def _parse_counter_pair(packets: str, octets: str, line: int, text: str) -> Counters:
    if not (_NUMBER.match(packets) and _NUMBER.match(octets)):
        raise ParseError(line, 'counters must be two whole numbers', text)
    return Counters(int(packets), int(octets))


class _RuleBuilder:
    """Turns the arguments after ``-A CHAIN`` into matches, a target and counters."""

    def __init__(self, tokens: Sequence[Token], line: int, text: str) -> None:
        self.tokens = tokens
        self.line = line
        self.text = text
        self.position = 0
        self.matches: List[Match] = []
        self.module: Optional[str] = None
        self.module_options: List[Option] = []
        self.target: Optional[Target] = None
        self.counters: Optional[Counters] = None

    def fail(self, reason: str) -> ParseError:
        return ParseError(self.line, reason, self.text)

    def take(self, what: str) -> Token:
        if self.position >= len(self.tokens):
            raise self.fail('{} is missing'.format(what))
        token = self.tokens[self.position]
        self.position += 1
        return token

    def close_module(self) -> None:
        if self.module is not None:
            self.matches.append(Match(self.module, tuple(self.module_options)))
        self.module = None
        self.module_options = []

    def build(self) -> Tuple[Tuple[Match, ...], Optional[Target], Optional[Counters]]:
        negated = False
        while self.position < len(self.tokens):
            token = self.take('argument')
            if token == '!' and not token.quoted:
                if negated:
                    raise self.fail("two '!' in a row")
                negated = True
                continue
            if token.quoted:
                raise self.fail('unexpected argument {!r}'.format(str(token)))
            if token in _MATCH:
                if negated:
                    raise self.fail("'!' cannot negate -m")
                self.close_module()
                self.module = self.take('match name after -m')
            elif token in _JUMP or token in _GOTO:
                if negated:
                    raise self.fail("'!' cannot negate a target")
                if self.target is not None:
                    raise self.fail('more than one target')
                self.close_module()
                self.target = self.read_target(token in _GOTO)
            elif token in _COUNTERS:
                if negated:
                    raise self.fail("'!' cannot negate -c")
                self.counters = _parse_counter_pair(self.take('packet count'), self.take('byte count'), self.line, self.text)
            elif token in _BUILTIN_WITH_ARGUMENT:
                self.close_module()
                self.read_builtin(_BUILTIN_WITH_ARGUMENT[token], negated)
            elif token in _FRAGMENT:
                self.close_module()
                self.matches.append(Match('', (Option('-f', (), negated),)))
            elif _is_option(token):
                option = self.read_module_option(token, negated)
                if self.module is None:
                    # An option of a match loaded implicitly, e.g. "-p tcp --dport 22" without "-m tcp".
                    self.matches.append(Match('', (option,)))
                else:
                    self.module_options.append(option)
            else:
                raise self.fail('unexpected argument {!r}'.format(str(token)))
            negated = False
        if negated:
            raise self.fail("'!' at the end of the rule")
        self.close_module()
        return tuple(self.matches), self.target, self.counters

    def read_builtin(self, name: str, negated: bool) -> None:
        value = self.take('argument of {}'.format(name))
        if value == '!' and not value.quoted and not negated:
            # The old intrapositioned form "-s ! 10.0.0.1".
            negated = True
            value = self.take('argument of {}'.format(name))
        self.matches.append(Match('', (Option(name, (str(value),), negated),)))

    def read_module_option(self, name: Token, negated: bool) -> Option:
        values: List[str] = []
        tokens = self.tokens
        if (
            not negated
            and self.position + 1 < len(tokens)
            and tokens[self.position] == '!'
            and not tokens[self.position].quoted
            and not _is_option(tokens[self.position + 1])
        ):
            negated = True  # the old form "--dport ! 22"
            self.position += 1
        while self.position < len(tokens):
            token = tokens[self.position]
            if _is_option(token) or (token == '!' and not token.quoted):
                break
            values.append(str(token))
            self.position += 1
        return Option(str(name), tuple(values), negated)

    def read_target(self, goto: bool) -> Target:
        name = self.take('target name')
        if not name.strip():
            raise self.fail('empty target name')
        arguments: List[str] = []
        while self.position < len(self.tokens):
            token = self.tokens[self.position]
            if _is_builtin_option(token) or (token == '!' and not token.quoted):
                break  # criteria written after the target, e.g. "-j ACCEPT -i lo"
            arguments.append(str(token))
            self.position += 1
        if goto and arguments:
            raise self.fail('-g takes a chain name only')
        return Target(str(name), tuple(arguments), goto)


def _split_counters_prefix(text: str, line: int) -> Tuple[Optional[Counters], str]:
    """``[12:3456] -A INPUT ...`` (``iptables-save -c``) -> counters and the rest."""
    if not text.startswith('['):
        return None, text
    end = text.find(']')
    if end < 0:
        raise ParseError(line, "counters '[' without ']'", text)
    packets, _, octets = text[1:end].partition(':')
    return _parse_counter_pair(packets, octets, line, text), text[end + 1 :].lstrip(' \t')


def parse_rule(raw: RawRule) -> Rule:
    """Parse one ``-A CHAIN ...`` line (with an optional ``[p:b]`` prefix) into a :class:`Rule`."""
    counters, text = _split_counters_prefix(raw.text, raw.line)
    tokens = tokenize(text, raw.line)
    if len(tokens) < 2 or tokens[0] not in _APPEND:
        raise ParseError(raw.line, 'expected "-A CHAIN ..."', raw.text)
    builder = _RuleBuilder(tokens[2:], raw.line, raw.text)
    matches, target, inline_counters = builder.build()
    return Rule(
        chain=str(tokens[1]),
        matches=matches,
        target=target,
        counters=counters or inline_counters,
        line=raw.line,
        text=raw.text,
    )


class _TableBuilder:
    def __init__(self, name: str, line: int) -> None:
        self.name = name
        self.line = line
        self.declared: Dict[str, Tuple[Optional[str], Optional[Counters], int]] = {}
        self.rules: Dict[str, List[RawRule]] = {}

    def declare(self, chain: str, policy: Optional[str], counters: Optional[Counters], line: int, text: str) -> None:
        if not chain or chain[0] in '-!':
            raise ParseError(line, 'invalid chain name', text)
        builtin = chain in BUILTIN_CHAINS.get(self.name, ())
        if chain in self.declared:
            raise ParseError(line, 'chain {} is declared twice'.format(chain), text)
        if policy is None and builtin:
            raise ParseError(line, 'built-in chain {} needs a policy (ACCEPT or DROP)'.format(chain), text)
        if policy is not None and not builtin:
            raise ParseError(
                line, 'chain {} is not a built-in chain of table {}, so it cannot have a policy'.format(chain, self.name), text
            )
        if policy is not None and policy not in POLICIES:
            raise ParseError(line, 'policy must be ACCEPT or DROP, not {!r}'.format(policy), text)
        self.declared[chain] = (policy, counters, line)
        self.rules[chain] = []

    def add_rule(self, line: int, text: str) -> None:
        chain = _chain_of_rule_line(text, line)
        rules = self.rules.get(chain)
        if rules is None:
            if chain not in BUILTIN_CHAINS.get(self.name, ()):
                raise ParseError(line, 'rule for chain {} which is not declared in table {}'.format(chain, self.name), text)
            self.declare(chain, 'ACCEPT', None, 0, text)
            rules = self.rules[chain]
        rules.append(RawRule(line, text))

    def build(self) -> Table:
        chains = {
            name: Chain(name, policy, tuple(self.rules[name]), parse_rule, counters, line, IPTABLES_BASE_CHAINS.get((self.name, name)))
            for name, (policy, counters, line) in self.declared.items()
        }
        return Table(self.name, MappingProxyType(chains), self.line)


def _chain_of_rule_line(text: str, line: int) -> str:
    body = text
    if body.startswith('['):
        end = body.find(']')
        if end < 0:
            raise ParseError(line, "counters '[' without ']'", text)
        body = body[end + 1 :]
    parts = body.split(None, 2)
    if len(parts) < 2 or parts[0] not in _APPEND:
        raise ParseError(line, 'expected "-A CHAIN ..."', text)
    chain = parts[1]
    if chain.startswith('"'):
        chain = str(tokenize(body, line)[1])
    return chain


# "is incompatible" (the whole table) and "contains incompatible base-chains" (shown without them).
_INCOMPATIBLE = re.compile(r"^# Table `([^']*)' (?:is incompatible|contains incompatible)")
_LEGACY_WARNING = '# Warning: iptables-legacy tables present'


def _comment_warning(text: str, line: int) -> Optional[SaveWarning]:
    if text.startswith(_LEGACY_WARNING):
        return SaveWarning(LEGACY_TABLES_PRESENT, line, text)
    incompatible = _INCOMPATIBLE.match(text)
    if incompatible:
        return SaveWarning(INCOMPATIBLE_TABLE, line, text, incompatible.group(1))
    return None


_TABLE_NAME = re.compile(r'^[A-Za-z0-9_]+$')


class _TextLines:
    """The numbered lines of a whole text (split on newlines, as iptables-restore does), able to
    jump over a table the parse does not need without splitting it into lines."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self.number = 0

    def __iter__(self) -> '_TextLines':
        return self

    def __next__(self) -> Tuple[int, str]:
        start = self.position
        if start >= len(self.text):
            raise StopIteration
        end = self.text.find('\n', start)
        if end < 0:
            end = len(self.text)
        self.position = end + 1
        self.number += 1
        return self.number, self.text[start:end].rstrip('\r')

    def skip_to_table_end(self) -> Optional[Tuple[int, str]]:
        """Consume lines up to the next ``COMMIT`` or table header; return it (None at the end)."""
        text = self.text
        search_from = self.position - 1  # the newline before the current line (-1: start of text)
        while True:
            commit = _find_line_start(text, '\nCOMMIT', search_from)
            header = _find_line_start(text, '\n*', search_from)
            start = min(commit, header)
            if start == len(text):
                self.number += text.count('\n', self.position)
                self.position = len(text)
                return None
            end = text.find('\n', start)
            end = len(text) if end < 0 else end
            line = text[start:end].rstrip('\r')
            if start == header or line.rstrip() == 'COMMIT':
                self.number += text.count('\n', self.position, start) + 1
                self.position = end + 1
                return self.number, line
            search_from = end - 1  # "COMMIT" starting a longer line: look further


def _find_line_start(text: str, marker: str, search_from: int) -> int:
    """The index where a line starting with ``marker[1:]`` begins, at or after ``search_from + 1``."""
    if search_from < 0 and text.startswith(marker[1:]):
        return 0
    found = text.find(marker, max(search_from, 0))
    return len(text) if found < 0 else found + 1


class UnreadTablesFilter:
    """Drops, as ``iptables-save`` output streams past, the lines of the tables ``parse_ruleset``
    would skip (a Kubernetes node's nat table is most of a save), so that only the evaluated tables
    are held in memory. Comments other than the tools' warnings (``iptables-save``'s timestamps)
    are dropped too, so that an unchanged ruleset gives the same text. Each dropped line leaves its
    newline, and table headers and ``COMMIT`` lines are kept: the filtered text parses to the same
    ruleset, or fails on the same line with the same message, as the whole text (``tables=`` the
    same tables)."""

    def __init__(self, tables: Iterable[str] = EVALUATED_TABLES) -> None:
        self._wanted = frozenset(tables)
        self._kept: List[bytes] = []
        self._pending: List[bytes] = []  # the line being read, in pieces (a line may be long)
        self._skipping = False

    def feed(self, data: bytes) -> None:
        end = data.rfind(b'\n') + 1
        if not end:
            self._pending.append(data)
            return
        if self._pending:
            self._pending.append(data[:end])
            self._filter(b''.join(self._pending))
        else:
            self._filter(data[:end])
        self._pending = [data[end:]] if end < len(data) else []

    def value(self) -> bytes:
        """The kept text (after the last ``feed``)."""
        self._filter(b''.join(self._pending))
        self._pending = []
        return b''.join(self._kept)

    def _filter(self, block: bytes) -> None:
        """Filter ``block``, which starts at the start of a line and ends at the end of one."""
        position = 0
        while position < len(block):
            markers = (b'*', b'COMMIT') if self._skipping else (b'*', b'#')
            start = min(_find_marked_line(block, marker, position) for marker in markers)
            if self._skipping:
                self._kept.append(b'\n' * block.count(b'\n', position, start))
            else:
                self._kept.append(block[position:start])
            if start == len(block):
                return
            end = block.find(b'\n', start)
            end = len(block) if end < 0 else end + 1
            line = block[start:end]
            text = line.decode('utf-8', 'surrogateescape')  # stripped as the parser strips it
            if text[:1] == '*':
                self._skipping = text[1:].strip() not in self._wanted
            elif text[:1] == '#':
                if _comment_warning(text[:-1] if text.endswith('\n') else text, 0) is None:
                    line = b'\n' if line.endswith(b'\n') else b''
            elif text.rstrip() == 'COMMIT':
                self._skipping = False
            else:  # a longer line starting with COMMIT, in a skipped table
                line = b'\n' if line.endswith(b'\n') else b''
            self._kept.append(line)
            position = end


def _find_marked_line(block: bytes, marker: bytes, position: int) -> int:
    """The index of the first line at or after ``position`` (a line start) that starts with ``marker``."""
    if block.startswith(marker, position):
        return position
    found = block.find(b'\n' + marker, position)
    return len(block) if found < 0 else found + 1


def _numbered_lines(source: Union[str, Iterable[str]]) -> Iterator[Tuple[int, str]]:
    if isinstance(source, str):
        return _TextLines(source)
    return ((number, line.rstrip('\r\n')) for number, line in enumerate(source, 1))


def parse_ruleset(
    source: Union[str, Iterable[str]],
    *,
    tables: Optional[Iterable[str]] = None,
    listing_table: str = 'filter',
) -> Ruleset:
    """Parse ``iptables-save`` output (or ``iptables -S`` output, whose rules belong to ``listing_table``).

    ``tables`` limits which tables are parsed; the others are only checked to be closed by ``COMMIT``.
    ``source`` may be the whole text or an iterable of lines (e.g. a pipe read line by line).
    Empty text is an empty ruleset (a host with no rules loaded). Raises :class:`ParseError`.
    """
    wanted = frozenset(tables) if tables is not None else None
    lines = _numbered_lines(source)
    warnings: List[SaveWarning] = []
    for number, text in lines:
        if _comment_or_blank(text, number, warnings):
            continue
        if text.startswith('*'):
            return _parse_save((number, text), lines, wanted, warnings)
        if text.startswith('-'):
            return _parse_listing(itertools.chain([(number, text)], lines), listing_table, warnings)
        raise ParseError(number, 'not iptables-save or iptables -S output', text)
    return Ruleset(MappingProxyType({}), tuple(warnings))


def _comment_or_blank(text: str, number: int, warnings: List[SaveWarning]) -> bool:
    """Skip a blank line or a comment, keeping the comments that are warnings."""
    if not text.strip():
        return True
    if text.startswith('#'):
        warning = _comment_warning(text, number)
        if warning:
            warnings.append(warning)
        return True
    return False


def _parse_save(
    first: Tuple[int, str], lines: Iterator[Tuple[int, str]], wanted: Optional[FrozenSet[str]], warnings: List[SaveWarning]
) -> Ruleset:
    parsed: Dict[str, Table] = {}
    skipped: List[str] = []
    seen = set()
    for number, text in itertools.chain([first], lines):
        if _comment_or_blank(text, number, warnings):
            continue
        if not text.startswith('*'):
            raise ParseError(number, "expected a table header such as '*filter'", text)
        name = text[1:].strip()
        if not _TABLE_NAME.match(name):
            raise ParseError(number, 'invalid table name', text)
        if name in seen:
            raise ParseError(number, 'table {} appears twice'.format(name), text)
        seen.add(name)
        if wanted is not None and name not in wanted:
            _skip_table(name, number, lines)
            skipped.append(name)
        else:
            parsed[name] = _parse_table(name, number, lines, warnings)
    return Ruleset(MappingProxyType(parsed), tuple(warnings), tuple(skipped))


def _skip_table(name: str, header_line: int, lines: Iterator[Tuple[int, str]]) -> None:
    """Go past a table that is not parsed: to its ``COMMIT``. Another table's header before it means
    the table was cut off, which must not hide the next table."""
    if isinstance(lines, _TextLines):
        end = lines.skip_to_table_end()
    else:
        end = next(((number, text) for number, text in lines if text[:1] == '*' or text.rstrip() == 'COMMIT'), None)
    if end is None:
        raise ParseError(header_line, 'table {} is not closed by COMMIT (output cut off?)'.format(name))
    number, text = end
    if text.startswith('*'):
        raise ParseError(number, 'unexpected line in table {}'.format(name), text)


def _parse_table(name: str, header_line: int, lines: Iterator[Tuple[int, str]], warnings: List[SaveWarning]) -> Table:
    table = _TableBuilder(name, header_line)
    # A bad line is reported once the table is known to be complete: in output that was cut off,
    # the cut (no COMMIT) is the useful message, not the half line before it.
    first_error: Optional[ParseError] = None
    for number, text in lines:
        first = text[:1]
        if first == 'C' and text.rstrip() == 'COMMIT':
            if first_error is not None:
                raise first_error
            return table.build()
        if first_error is not None:
            continue
        try:
            _parse_table_line(table, number, text, warnings)
        except ParseError as error:
            first_error = error
    raise ParseError(header_line, 'table {} is not closed by COMMIT (output cut off?)'.format(name))


def _parse_table_line(table: _TableBuilder, number: int, text: str, warnings: List[SaveWarning]) -> None:
    first = text[:1]
    if first == '-' or first == '[':
        table.add_rule(number, text)
    elif first == ':':
        table.declare(*_parse_chain_line(text, number), number, text)
    elif first == '#':
        warning = _comment_warning(text, number)
        if warning:
            warnings.append(warning)
    elif text.strip():
        raise ParseError(number, 'unexpected line in table {}'.format(table.name), text)


def _parse_chain_line(text: str, number: int) -> Tuple[str, Optional[str], Optional[Counters]]:
    parts = text[1:].split()
    if len(parts) < 2 or len(parts) > 3:
        raise ParseError(number, 'expected ":CHAIN POLICY [packets:bytes]"', text)
    chain, policy = parts[0], parts[1]
    counters = None
    if len(parts) == 3:
        counters, rest = _split_counters_prefix(parts[2], number)
        if rest:
            raise ParseError(number, 'unexpected text after the counters', text)
    return chain, (None if policy == '-' else policy), counters


def _parse_listing(lines: Iterator[Tuple[int, str]], table_name: str, warnings: List[SaveWarning]) -> Ruleset:
    table = _TableBuilder(table_name, 0)
    for number, text in lines:
        if _comment_or_blank(text, number, warnings):
            continue
        parts = text.split()
        command = parts[0]
        if command in ('-P', '--policy'):
            if len(parts) not in (3, 6):  # "-P INPUT ACCEPT" or with "-c p b"
                raise ParseError(number, 'expected "-P CHAIN POLICY"', text)
            counters = None
            if len(parts) == 6:
                if parts[3] not in _COUNTERS:
                    raise ParseError(number, 'expected "-P CHAIN POLICY -c PACKETS BYTES"', text)
                counters = _parse_counter_pair(parts[4], parts[5], number, text)
            table.declare(parts[1], parts[2], counters, number, text)
        elif command in ('-N', '--new-chain'):
            if len(parts) != 2:
                raise ParseError(number, 'expected "-N CHAIN"', text)
            table.declare(parts[1], None, None, number, text)
        elif command in _APPEND or command.startswith('['):
            table.add_rule(number, text)
        else:
            raise ParseError(number, 'not iptables -S output', text)
    return Ruleset(MappingProxyType({table_name: table.build()}), tuple(warnings))


def merge_rulesets(parts: Sequence[Ruleset]) -> Ruleset:
    """Join rulesets that hold different tables (e.g. one ``iptables -t T -S`` listing per table)."""
    tables: Dict[str, Table] = {}
    warnings: List[SaveWarning] = []
    skipped: List[str] = []
    for part in parts:
        for name, table in part.tables.items():
            if name in tables:
                merged = dict(tables[name].chains)
                for chain_name, chain in table.chains.items():
                    if chain_name in merged:
                        raise ParseError(0, 'chain {} of table {} was collected twice'.format(chain_name, name))
                    merged[chain_name] = chain
                table = Table(name, MappingProxyType(merged), tables[name].line)
            tables[name] = table
        warnings.extend(part.warnings)
        skipped.extend(name for name in part.skipped_tables if name not in skipped)
    return Ruleset(MappingProxyType(tables), tuple(warnings), tuple(name for name in skipped if name not in tables))
