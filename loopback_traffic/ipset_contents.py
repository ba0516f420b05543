"""The contents of the ipsets that ``-m set`` matches name, joined to the rules that name them.

Both front-ends give a set match as ``--match-set REF DIRECTIONS``: the text of a save names the
set, the kernel's xtables match holds its index (``#5``). :func:`resolve_rule` looks the set up in
the ipsets read with the rules and puts what the match compares a packet with into the match
(:class:`.model.SetContents`), where :mod:`.classify` judges it. Where the sets could not be read,
the contents say why, and the match stays **some**. Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Tuple, Union

from .ipset import IpSet, IpsetSnapshot, Member
from .model import Chain, Match, Option, RawRule, Rule, Ruleset, SetContents, Table

SET_MODULE = 'set'
MATCH_SET = '--match-set'

# The set types' dimension names (hash:ip,port...) as the classification knows them.
_KINDS = {'ip': 'net', 'net': 'net', 'iface': 'iface', 'port': 'port', 'mark': 'mark', 'mac': 'mac', 'set': 'set'}
_VERSIONS = {'inet': 4, 'inet6': 6}
# A list:set can hold list:sets only to this depth (the kernel refuses more than one level anyway).
_MAX_DEPTH = 4


@dataclass(frozen=True)
class SetsRead:
    """The ipsets as they were read with the rules (``snapshot``), or why they were not (``unread``)."""

    snapshot: Optional[IpsetSnapshot] = None
    unread: str = ''

    @property
    def identity(self) -> object:
        """Equal for the same contents (members in any order)."""
        if self.snapshot is None:
            return self.unread
        return frozenset((s.name, s.type, s.family, s.index, s.netmask, s.bitmask, frozenset(s.members)) for s in self.snapshot.sets)

    def find(self, reference: str) -> Optional[IpSet]:
        if self.snapshot is None:
            return None
        if reference.startswith('#') and reference[1:].isdigit():
            return self.snapshot.by_index(int(reference[1:]))
        return self.snapshot.by_name(reference)


class SetsOnDemand:
    """The ipsets, read the first time a rule needs them (most rulesets use none): ``read_now``
    once, and the same answer after."""

    def __init__(self, read_now: Callable[[], SetsRead]) -> None:
        self._read_now = read_now
        self.read: Optional[SetsRead] = None

    def __call__(self) -> SetsRead:
        if self.read is None:
            self.read = self._read_now()
        return self.read


NOT_IN_A_SAVED_RULESET = 'a saved ruleset holds no ipset contents'


def uses_sets(rule: Rule) -> bool:
    return any(match.module == SET_MODULE for match in rule.matches)


def resolve_rule(rule: Rule, sets: Optional[SetsRead]) -> Rule:
    """The rule with the contents of the sets its set matches name (the text names the set, not
    its index)."""
    if not uses_sets(rule):
        return rule
    read = sets if sets is not None else SetsRead(unread=NOT_IN_A_SAVED_RULESET)
    matches = tuple(_resolve_match(match, read) if match.module == SET_MODULE else match for match in rule.matches)
    text = rule.text
    for before, after in zip(rule.matches, matches):
        reference = _reference(before)
        if after.contents is not None and reference.startswith('#') and not after.contents.unknown:
            text = text.replace('{} {}'.format(MATCH_SET, reference), '{} {}'.format(MATCH_SET, after.contents.name))
    return replace(rule, matches=matches, text=text)


def with_sets(ruleset: Ruleset, sets: Optional[SetsRead]) -> Ruleset:
    """A ruleset parsed from text whose rules are resolved against ``sets`` as they are parsed."""
    return replace(ruleset, tables={name: _table_with_sets(table, sets) for name, table in ruleset.tables.items()})


def _table_with_sets(table: Table, sets: Optional[SetsRead]) -> Table:
    chains = {}
    for name, chain in table.chains.items():
        parse = chain._parse_rule
        chains[name] = Chain(
            chain.name, chain.policy, chain.raw_rules, _resolving(parse, sets), chain.counters, chain.line, chain.base
        )
    return replace(table, chains=chains)


def _resolving(parse: Callable[[RawRule], Union[Rule, Tuple[Rule, ...]]], sets: Optional[SetsRead]) -> Callable[[RawRule], Union[Rule, Tuple[Rule, ...]]]:
    def parse_resolved(raw: RawRule) -> Union[Rule, Tuple[Rule, ...]]:
        parsed = parse(raw)
        if isinstance(parsed, tuple):
            return tuple(resolve_rule(rule, sets) for rule in parsed)
        return resolve_rule(parsed, sets)

    return parse_resolved


def _set_option(match: Match) -> Optional[Option]:
    return next((option for option in match.options if option.name == MATCH_SET and len(option.values) == 2), None)


def _reference(match: Match) -> str:
    option = _set_option(match)
    return option.values[0] if option is not None else ''


def _resolve_match(match: Match, sets: SetsRead) -> Match:
    option = _set_option(match)
    if option is None:
        return match
    reference, directions = option.values
    if sets.snapshot is None:
        return replace(match, contents=SetContents(reference, unknown=sets.unread))
    found = sets.find(reference)
    if found is None:
        why = 'no ipset {} was read with the rules (created or removed while they were read)'.format(reference)
        return replace(match, contents=SetContents(reference, unknown=why))
    try:
        contents = contents_of(found, tuple(directions.split(',')), sets.snapshot)
    except (ValueError, TypeError, AttributeError) as error:  # members the kernel sent in a shape not foreseen
        contents = SetContents(found.name, found.type, unknown='its members could not be compared ({})'.format(error))
    return replace(match, contents=contents)


def contents_of(found: IpSet, directions: Tuple[str, ...], snapshot: IpsetSnapshot, depth: int = 0) -> SetContents:
    """What a match with ``directions`` (``src``, ``dst`` per dimension) compares with the set."""
    kinds = tuple(_KINDS.get(name, name) for name in found.dimensions)
    version = _VERSIONS.get(found.family, 0)
    if found.type == 'list:set':
        return _list_contents(found, directions, snapshot, depth)
    if not kinds:
        return SetContents(found.name, found.type, unknown='ipset {} is of type {}, which the check does not model'.format(found.name, found.type))
    if len(directions) < len(kinds):
        # The kernel's match fails for a set with more dimensions than the match gives directions.
        return SetContents(found.name, found.type, version)
    dimensions = tuple(zip(kinds, directions))
    if found.bitmask is not None:
        return SetContents(found.name, found.type, version, dimensions, unknown='ipset {} masks addresses with a bitmask that is not a prefix'.format(found.name))
    exceptions = tuple(_values(member, kinds, found) for member in found.members if member.nomatch)
    networks = found.networks()
    if networks is not None:
        # The networks are the members with the holes the nomatch members cut (the exceptions are
        # kept for `--return-nomatch`, and only make ALL some where a hole meets the class).
        return SetContents(found.name, found.type, version, dimensions, tuple((str(network),) for network in networks), exceptions)
    members = tuple(_values(member, kinds, found) for member in found.members if not member.nomatch)
    return SetContents(found.name, found.type, version, dimensions, members, exceptions)


def _list_contents(found: IpSet, directions: Tuple[str, ...], snapshot: IpsetSnapshot, depth: int) -> SetContents:
    if depth >= _MAX_DEPTH:
        return SetContents(found.name, found.type, unknown='ipset {} nests list:sets too deeply'.format(found.name))
    subsets = []
    for member in found.members:
        inner = snapshot.by_name(member.set_name or '')
        if inner is None:
            return SetContents(found.name, found.type, unknown='ipset {} lists {}, which was not read'.format(found.name, member.set_name))
        subsets.append(contents_of(inner, directions, snapshot, depth + 1))
    return SetContents(found.name, found.type, subsets=tuple(subsets))


def _values(member: Member, kinds: Tuple[str, ...], found: IpSet) -> Tuple[str, ...]:
    values = []
    addresses = [member.address, member.address2]
    for kind in kinds:
        if kind == 'net':
            address = addresses.pop(0) if addresses else None
            values.append(str(address) if address is not None else '')
        elif kind == 'iface':
            values.append(_interface(member))
        elif kind == 'mark' and member.mark is not None:
            values.append('{:#x}/{:#x}'.format(member.mark, found.markmask if found.markmask is not None else 0xFFFFFFFF))
        else:
            values.append('')  # ports, MACs: a class holds every one
    return tuple(values)


def _interface(member: Member) -> str:
    if member.interface is None or member.physdev:
        return ''  # a bridge port: the class's interfaces do not tell
    return member.interface + ('+' if member.interface_wildcard else '')


def unknown_sets(rule: Rule) -> Tuple[str, ...]:
    """Why the contents of the sets the rule's matches name are not known, one sentence per set."""
    found: List[str] = []
    for match in rule.matches:
        contents = match.contents
        if contents is not None:
            found.extend(_unknown_of(contents))
    return tuple(found)


def _unknown_of(contents: SetContents) -> Tuple[str, ...]:
    if contents.unknown:
        return ('ipset {}: {}'.format(contents.name, contents.unknown),)
    return tuple(reason for subset in contents.subsets for reason in _unknown_of(subset))
