"""How a rule's match relates to a packet class: it matches none, all or some of its packets.

Spec section 2, "Walking one chain": the relation is computed from what the class is known to be at
that point of the walk (its interfaces, addresses, and the marks and conntrack state that earlier
rules set for all of it), not from the rule alone. Each match module has one entry in
:data:`MODULES`; both front-ends (iptables text, nf_tables expressions) give the same vocabulary.
Pure: no I/O.
"""
from __future__ import annotations

import enum
import functools
import ipaddress
import socket
from dataclasses import replace
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from .model import Match, Option, Rule, SetContents, Target
from .requirements import (
    CT_UNATTACHED,
    CT_UNTRACKED,
    LOOPBACK_INTERFACE,
    Bits,
    Interfaces,
    IPNetwork,
    PacketClass,
)


class Relation(enum.Enum):
    NONE = 'none'
    SOME = 'some'
    ALL = 'all'


NONE, SOME, ALL = Relation.NONE, Relation.SOME, Relation.ALL

_ANY_PROTOCOL = frozenset({'all', '0'})


def _invert(relation: Relation) -> Relation:
    if relation is ALL:
        return NONE
    if relation is NONE:
        return ALL
    return SOME


def _negated(option: Option, relation: Relation) -> Relation:
    return _invert(relation) if option.negated else relation


def _truth(value: Optional[bool]) -> Relation:
    return SOME if value is None else (ALL if value else NONE)


def _conjunction(relations: Iterable[Relation]) -> Relation:
    """All conditions of a rule must hold: NONE if one can never hold, ALL if every one always does."""
    result = ALL
    for relation in relations:
        if relation is NONE:
            return NONE
        if relation is SOME:
            result = SOME
    return result


def _disjunction(relations: Iterable[Relation]) -> Relation:
    """Any of several values matches (``-s a,b``, a set's elements)."""
    found = list(relations)
    if not found:
        return SOME
    if ALL in found:
        return ALL
    return NONE if all(relation is NONE for relation in found) else SOME


# --- addresses and interfaces ------------------------------------------------------------------------


def _parse_network(text: str, family_of: IPNetwork) -> Optional[IPNetwork]:
    return _network_of_version(text, family_of.version)


@functools.lru_cache(maxsize=1 << 10)
def _network_of_version(text: str, version: int) -> Optional[IPNetwork]:
    """Parsed once per text: a rule is classified for every class, and rulesets repeat addresses."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return network if network.version == version else None


def _networks(values: Sequence[str], family_of: IPNetwork) -> Optional[List[IPNetwork]]:
    """The networks of ``-s``/``-d`` value(s); None when one cannot be read as a prefix."""
    networks = []
    for text in ','.join(values).split(','):
        network = _parse_network(text, family_of)
        if network is None:
            return None  # a host name or a non-contiguous mask: cannot tell
        networks.append(network)
    return networks


# (first, last, prefix length) of each of a condition's prefixes, as integers.
AddressRanges = Tuple[Tuple[int, int, int], ...]


@functools.lru_cache(maxsize=1 << 12)
def _address_ranges(values: Tuple[str, ...], version: int) -> Optional[AddressRanges]:
    """The first and last address and the prefix length of each ``-s``/``-d`` value, as integers: a
    Kubernetes node's service rules hold tens of thousands of addresses, each classified for every
    class. None when one value cannot be read as a prefix."""
    found = []
    for text in ','.join(values).split(','):
        parsed = _prefix_range(text, version)
        if parsed is None:
            return None
        found.append(parsed)
    return tuple(found)


_ADDRESS_BITS = {4: (socket.AF_INET, 32), 6: (socket.AF_INET6, 128)}


def _prefix_range(text: str, version: int) -> Optional[Tuple[int, int, int]]:
    """``address[/length]`` as (first, last, length) without building an ``ipaddress`` object; other
    forms (a dotted mask) through ``ipaddress``. None for a host name, a non-contiguous mask or the
    other family."""
    family, bits = _ADDRESS_BITS[version]
    address, _, length_text = text.partition('/')
    try:
        number = int.from_bytes(socket.inet_pton(family, address), 'big')
        length = int(length_text) if length_text else bits
    except (OSError, ValueError):
        return _parsed_range(text, version)
    if not 0 <= length <= bits or (length_text and not length_text.isdigit()):
        return _parsed_range(text, version)
    host = (1 << (bits - length)) - 1
    return number & ~host, (number & ~host) | host, length


def _parsed_range(text: str, version: int) -> Optional[Tuple[int, int, int]]:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if network.version != version:
        return None
    return int(network.network_address), int(network.broadcast_address), network.prefixlen


@functools.lru_cache(maxsize=1 << 8)
def _range_of(network: IPNetwork) -> Tuple[int, int]:
    return int(network.network_address), int(network.broadcast_address)


def _address_relation(values: Tuple[str, ...], packets: Optional[IPNetwork], family_of: IPNetwork) -> Relation:
    """``-s``/``-d`` value(s) against the class's addresses (``packets`` None: any address); several
    values (``-s a,b``, or a set's elements) match when any does. Prefixes nest or are disjoint."""
    if not values:
        return SOME
    return _ranges_relation(_address_ranges(values, family_of.version), packets)


def _ranges_relation(ranges: Optional[AddressRanges], packets: Optional[IPNetwork]) -> Relation:
    if ranges is None:
        return SOME
    if len(ranges) == 1:
        low, high, length = ranges[0]
        return _range_relation(low, high, length, packets)
    if not ranges:
        return SOME if packets is None else NONE
    return _disjunction(_range_relation(low, high, length, packets) for low, high, length in ranges)


def _range_relation(low: int, high: int, length: int, packets: Optional[IPNetwork]) -> Relation:
    """One prefix, ``low`` to ``high`` (``length`` bits), against the class's addresses."""
    if packets is None:
        return ALL if length == 0 else SOME
    first, last = _range_of(packets)
    if low <= first and last <= high:
        return ALL
    if high < first or last < low:
        return NONE
    return SOME


def _interface_relation(pattern: str, packets: Interfaces) -> Relation:
    """``-i``/``-o`` pattern (a trailing ``+`` is a prefix wildcard) against the class's interfaces."""
    wildcard = pattern.endswith('+')
    prefix = pattern[:-1] if wildcard else pattern
    if not packets.all_but:
        name = packets.name
        matches = name.startswith(prefix) if wildcard else name == prefix
        return ALL if matches else NONE
    # Every interface but packets.name (real interface names are never empty).
    if wildcard:
        return ALL if prefix == '' else SOME
    return NONE if prefix == packets.name else SOME


def _builtin_option(option: Option, packets: PacketClass) -> Relation:
    name, values = option.name, option.values
    if name == '-s':
        relation = _address_relation(values, packets.source, packets.source)
    elif name == '-d':
        relation = _address_relation(values, packets.destination, packets.source)
    elif name == '-i':
        relation = _disjunction(_interface_relation(pattern, packets.in_interface) for pattern in values)
    elif name == '-o':
        relation = _disjunction(_interface_relation(pattern, packets.out_interface) for pattern in values)
    elif name == '--nfproto' and len(values) == 1:
        # The packet's family (inet tables): the class's addresses tell it.
        relation = ALL if values[0] == 'ipv{}'.format(packets.source.version) else NONE
    elif name == '-p' and len(values) == 1:
        relation = ALL if values[0].lower() in _ANY_PROTOCOL else SOME
    else:
        return SOME  # -f, options of implicitly loaded matches (--dport), anything else
    return _negated(option, relation)


def _builtin(match: Match, packets: PacketClass) -> Relation:
    return _conjunction(_builtin_option(option, packets) for option in match.options)


# A condition of a rule known before the rule is decoded, in a form that holds no object the garbage
# collector follows (a Kubernetes node's rules have tens of thousands): an address,
# ('-s' | '-d', negated, IP version, first, last, prefix length) as classify reads the value (first
# None where it cannot), or an interface, ('-i' | '-o', negated, 0, the pattern, 0, 0). Each stands
# for the match ``Match('', (Option(option, (value,), negated),))``.
KnownCondition = Tuple[str, bool, int, Any, int, int]


def known_address(option: str, negated: bool, version: int, text: str) -> KnownCondition:
    """The known condition of one ``-s``/``-d`` value as the decoder writes it."""
    ranges = _address_ranges((text,), version)
    if ranges is None or len(ranges) != 1:
        return (option, negated, version, None, 0, 0)
    return (option, negated, version) + ranges[0]


def excluded_by_known(conditions: Iterable[KnownCondition], packets: PacketClass) -> bool:
    """Whether conditions known before a rule is decoded say it matches none of the class: exactly
    where :func:`classify_matches` of the matches they stand for is NONE."""
    for option, negated, version, first, last, length in conditions:
        if option == '-s' or option == '-d':
            if first is None or version != packets.source.version:
                continue  # SOME, negated or not
            relation = _range_relation(first, last, length, packets.source if option == '-s' else packets.destination)
        else:
            relation = _interface_relation(first, packets.in_interface if option == '-i' else packets.out_interface)
        if relation is (ALL if negated else NONE):
            return True
    return False


# --- match modules -------------------------------------------------------------------------------------


def _always(match: Match, packets: PacketClass) -> Relation:
    return ALL


def _arrives_on_lo(packets: PacketClass) -> bool:
    return packets.in_interface == Interfaces(LOOPBACK_INTERFACE)


def _uses_lo_only(packets: PacketClass) -> bool:
    """Packets that arrive on lo or leave through it: never bridged."""
    return _arrives_on_lo(packets) or packets.out_interface == Interfaces(LOOPBACK_INTERFACE)


_LOOPBACK_NETWORKS = {4: ipaddress.ip_network('127.0.0.0/8'), 6: ipaddress.ip_network('::1/128')}


def _address_type(types: Sequence[str], addresses: Optional[IPNetwork]) -> Relation:
    """Addresses of the loopback network are of type LOCAL (the local routing table routes them to lo)."""
    if addresses is None or not addresses.subnet_of(_LOOPBACK_NETWORKS[addresses.version]):  # type: ignore[arg-type]
        return SOME
    names = {name.strip().upper() for name in ','.join(types).split(',')}
    return ALL if 'LOCAL' in names else NONE


def _addrtype(match: Match, packets: PacketClass) -> Relation:
    relations = []
    for option in match.options:
        if option.name == '--src-type':
            relation = _address_type(option.values, packets.source)
        elif option.name == '--dst-type':
            relation = _address_type(option.values, packets.destination)
        else:
            return SOME  # --limit-iface-in/out: the type is looked up on one interface only
        relations.append(_negated(option, relation))
    return _conjunction(relations) if relations else SOME


def _rpfilter(match: Match, packets: PacketClass) -> Relation:
    """Packets arriving on lo pass the reverse-path test; a loopback-sourced packet arriving elsewhere
    fails it (its source routes to lo), unless --accept-local and --loose together let it pass.
    ``--invert`` (native ``fib saddr . iif oif missing``) matches those that fail."""
    flags = {option.name for option in match.options}
    if flags - {'--invert', '--loose', '--accept-local', '--validmark'}:
        return SOME
    if _arrives_on_lo(packets):
        passes = True
    elif packets.in_interface.all_but and packets.in_interface.name == LOOPBACK_INTERFACE:
        if '--validmark' in flags:
            return SOME  # the lookup uses the mark: policy routing may say otherwise
        passes = '--accept-local' in flags and '--loose' in flags
    else:
        return SOME
    return _truth(passes != ('--invert' in flags))


def _physdev(match: Match, packets: PacketClass) -> Relation:
    """Bridged packets only: for packets that are not bridged, the match holds exactly when every
    option it uses is negated."""
    if not _uses_lo_only(packets) or not match.options:
        return SOME
    return ALL if all(option.negated for option in match.options) else NONE


def _mark_values(option: Option) -> Optional[List[Tuple[int, int]]]:
    found = []
    for text in ','.join(option.values).split(','):
        parsed = _value_and_mask(text)
        if parsed is None:
            return None
        found.append(parsed)
    return found or None


def _value_and_mask(text: str, default_mask: int = 0xFFFFFFFF) -> Optional[Tuple[int, int]]:
    value, _, mask = text.partition('/')
    try:
        return int(value, 0) & 0xFFFFFFFF, (int(mask, 0) if mask else default_mask) & 0xFFFFFFFF
    except ValueError:
        return None


def _bits_match(match: Match, bits: Bits) -> Relation:
    relations = []
    for option in match.options:
        if option.name != '--mark':
            return SOME
        values = _mark_values(option)
        if values is None:
            return SOME
        relations.append(_negated(option, _disjunction(_truth(bits.test(value, mask)) for value, mask in values)))
    return _conjunction(relations) if relations else SOME


def _mark(match: Match, packets: PacketClass) -> Relation:
    return _bits_match(match, packets.mark)


def _of_the_connection(relation: Relation) -> Relation:
    """A match on the packet's connection fails, negated or not, for packets that have none: untracked
    ones, and those conntrack finds INVALID (it keeps no entry for them, even with a zone template).
    So it never holds for all of a class whose packets may be invalid."""
    return SOME if relation is ALL else relation


def _connmark(match: Match, packets: PacketClass) -> Relation:
    if packets.conntrack == CT_UNTRACKED:
        return NONE  # no connection, no connection mark: the match fails, negated or not
    return _of_the_connection(_bits_match(match, packets.ctmark))


def _ctzone(match: Match, packets: PacketClass) -> Relation:
    """The native ``ct zone N`` (iptables has no match for it): known where a CT template set it."""
    if packets.conntrack == CT_UNTRACKED:
        return NONE  # no connection: the expression breaks the rule, negated or not
    relations = []
    for option in match.options:
        values = _mark_values(option) if option.name == '--zone' else None
        if values is None:
            return SOME
        relations.append(_negated(option, _disjunction(_truth(packets.zone.test(value & _ZONE, mask & _ZONE)) for value, mask in values)))
    return _of_the_connection(_conjunction(relations)) if relations else SOME


_ZONE = 0xFFFF


def _state_names(option: Option) -> Set[str]:
    return {name.strip().upper() for name in ','.join(option.values).split(',')}


def _conntrack(match: Match, packets: PacketClass) -> Relation:
    """Decidable for packets that notrack exempted: their state is UNTRACKED (and they have no
    connection, so the other conntrack criteria fail)."""
    if packets.conntrack != CT_UNTRACKED:
        return SOME
    states = [option for option in match.options if option.name in ('--ctstate', '--state')]
    if not states:
        return NONE
    return _conjunction(_negated(option, ALL if 'UNTRACKED' in _state_names(option) else NONE) for option in states)


# Options of a set match that do not change which packets it matches.
_SET_FLAGS = frozenset({'--match-set', '--update-counters', '--update-subcounters'})


def _set(match: Match, packets: PacketClass) -> Relation:
    """Whether the packets are in the ipset, from its contents as read with the rules."""
    contents = match.contents
    option = next((option for option in match.options if option.name == '--match-set'), None)
    if contents is None or option is None or contents.unknown:
        return SOME
    names = {option.name for option in match.options}
    if names - _SET_FLAGS - {'--return-nomatch'}:
        return SOME  # counter comparisons
    if '--return-nomatch' in names:
        return _negated(option, _nomatch_relation(contents, packets))
    return _negated(option, _set_relation(contents, packets))


def _nomatch_relation(contents: SetContents, packets: PacketClass) -> Relation:
    """With ``--return-nomatch``, a set whose type has nomatch members (a ``net`` dimension of a hash
    type) matches the packets whose most specific member is a nomatch one, and no other."""
    if contents.unknown:
        return SOME
    if contents.kind == 'list:set':
        return _any_of(_nomatch_relation(subset, packets) for subset in contents.subsets)
    if not _has_nomatch(contents.kind):
        return _set_relation(contents, packets)
    if contents.version and contents.version != packets.source.version:
        return NONE
    if any(_member_relation(contents.dimensions, member, packets) is not NONE for member in contents.exceptions):
        return SOME
    return NONE


def _has_nomatch(kind: str) -> bool:
    method, _, dimensions = kind.partition(':')
    return method == 'hash' and 'net' in dimensions.split(',')


def _set_relation(contents: SetContents, packets: PacketClass) -> Relation:
    if contents.unknown:
        return SOME
    if contents.kind == 'list:set':
        return _any_of(_set_relation(subset, packets) for subset in contents.subsets)
    if contents.version and contents.version != packets.source.version:
        return NONE  # the kernel's match fails for a set of the other family
    found = _any_of(_member_relation(contents.dimensions, member, packets) for member in contents.members)
    if found is ALL and any(_member_relation(contents.dimensions, member, packets) is not NONE for member in contents.exceptions):
        return SOME  # a more specific nomatch member takes part of the class out
    return found


def _any_of(relations: Iterable[Relation]) -> Relation:
    """Whether any member matches (none of them fails to): an empty set matches nothing."""
    return _invert(_conjunction(_invert(relation) for relation in relations))


def _member_relation(dimensions: Sequence[Tuple[str, str]], values: Sequence[str], packets: PacketClass) -> Relation:
    return _conjunction(_dimension_relation(kind, direction, value, packets) for (kind, direction), value in zip(dimensions, values))


def _dimension_relation(kind: str, direction: str, value: str, packets: PacketClass) -> Relation:
    if not value:
        return SOME
    if kind == 'net':
        return _address_relation((value,), packets.source if direction == 'src' else packets.destination, packets.source)
    if kind == 'iface':
        return _interface_relation(value, packets.in_interface if direction == 'src' else packets.out_interface)
    if kind == 'mark':
        parsed = _value_and_mask(value)
        return _truth(packets.mark.test(*parsed)) if parsed else SOME
    return SOME


def _unknown(match: Match, packets: PacketClass) -> Relation:
    return SOME


# One entry per match module (``-m NAME``; '' is the built-in criteria). A module not listed is
# **some**: tcp/udp ports, limit, nft (a native condition the netlink front-end can describe but not
# judge), and every module the check does not know.
MODULES: Mapping[str, Callable[[Match, PacketClass], Relation]] = {
    '': _builtin,
    'comment': _always,
    'addrtype': _addrtype,
    'rpfilter': _rpfilter,
    'physdev': _physdev,
    'mark': _mark,
    'connmark': _connmark,
    'conntrack': _conntrack,
    'state': _conntrack,
    'set': _set,
    'ctzone': _ctzone,
}


def _match_relation(match: Match, packets: PacketClass) -> Relation:
    return MODULES.get(match.module, _unknown)(match, packets)


def classify(rule: Rule, packets: PacketClass) -> Relation:
    """NONE if the rule can match no packet of the class, ALL if it matches every one, else SOME."""
    return classify_matches(rule.matches, packets)


def classify_matches(matches: Iterable[Match], packets: PacketClass) -> Relation:
    """The relation of conditions that must all hold: of a rule's matches, or of some of them (NONE
    for some of them is NONE for the rule)."""
    return _conjunction(_match_relation(match, packets) for match in matches)


# --- coverage: the part of the class that rules decided, along the source address -------------------

# The most pieces of the source network kept apart; beyond it the coverage is not tracked.
MAX_PIECES = 64


def _source_networks(rule: Rule, family_of: IPNetwork) -> List[IPNetwork]:
    found: List[IPNetwork] = []
    for match in rule.matches:
        if match.module:
            continue
        for option in match.options:
            if option.name == '-s':
                found.extend(_networks(option.values, family_of) or ())
    return found


def _split(piece: IPNetwork, networks: Sequence[IPNetwork]) -> List[IPNetwork]:
    """``piece`` cut into prefixes each inside or outside every one of ``networks``."""
    pieces = [piece]
    for network in networks:
        cut: List[IPNetwork] = []
        for part in pieces:
            if part.subnet_of(network) or not part.overlaps(network):  # type: ignore[arg-type]
                cut.append(part)
            else:  # network lies strictly inside part
                cut.extend(part.address_exclude(network))  # type: ignore[arg-type]
                cut.append(network)
        pieces = cut
    return pieces


def cover(rule: Rule, packets: PacketClass, remaining: Sequence[IPNetwork]) -> Optional[Tuple[Relation, Tuple[IPNetwork, ...]]]:
    """The rule's relation to the packets of the class whose source is in ``remaining`` (disjoint
    prefixes: the part that earlier rules did not take), and the prefixes of it that the rule does
    not match entirely. None when that cannot be told along the source address."""
    networks = _source_networks(rule, packets.source)
    if not networks:
        return None
    matched = False
    left: List[IPNetwork] = []
    some = False
    for piece in remaining:
        for part in _split(piece, networks):
            relation = classify(rule, replace(packets, source=part))
            if relation is ALL:
                matched = True
                continue
            some = some or relation is SOME
            left.append(part)
        if len(left) > MAX_PIECES:
            return None
    if not left:
        return ALL, ()
    if not matched and not some:
        return NONE, tuple(left)
    return SOME, tuple(left)


# --- state set by a rule for the packets it matches -----------------------------------------------------

# The targets (and native statements, which arrive as the same targets) that set a field the
# matches above read.
STATE_TARGETS = frozenset({'MARK', 'CONNMARK', 'CT', 'NOTRACK'})


def effects(rule: Rule) -> Tuple[Target, ...]:
    """The statements of the rule that set marks or conntrack state: its actions, and its target
    when that is one of them."""
    found = tuple(action for action in rule.actions if action.name in STATE_TARGETS)
    if rule.target is not None and rule.target.name in STATE_TARGETS and not rule.target.goto:
        found += (rule.target,)
    return found


def _set_bits(bits: Bits, args: Sequence[str]) -> Optional[Bits]:
    """MARK/CONNMARK arguments applied to a field; None when the result cannot be told."""
    if len(args) < 2:
        return None
    option, value_text = args[0], args[1]
    if option == '--set-xmark':
        parsed = _value_and_mask(value_text)
        return bits.set_xmark(*parsed) if parsed else None
    if option == '--set-mark':
        parsed = _value_and_mask(value_text)
        return bits.set_xmark(parsed[0], parsed[0] | parsed[1]) if parsed else None
    parsed = _value_and_mask(value_text)
    if parsed is None:
        return None
    value = parsed[0]
    if option == '--and-mark':
        return bits.set_xmark(0, ~value & 0xFFFFFFFF)
    if option == '--or-mark':
        return bits.set_xmark(value, value)
    if option == '--xor-mark':
        return bits.set_xmark(value, 0)
    return None


def _option_value(args: Sequence[str], name: str) -> int:
    if name in args:
        index = list(args).index(name)
        if index + 1 < len(args):
            parsed = _value_and_mask(args[index + 1])
            if parsed is not None:
                return parsed[0]
    return 0xFFFFFFFF


def _connmark_effect(args: Sequence[str], packets: PacketClass) -> PacketClass:
    if packets.conntrack == CT_UNTRACKED:
        return packets  # no connection to mark
    if args and args[0] in ('--save-mark', '--restore-mark'):
        nfmask, ctmask = _option_value(args, '--nfmask'), _option_value(args, '--ctmask')
        if args[0] == '--save-mark':  # ctmark = (ctmark & ~ctmask) ^ (mark & nfmask)
            return replace(packets, ctmark=packets.ctmark.and_constant(~ctmask).xor(packets.mark.and_constant(nfmask)))
        # mark = (mark & ~nfmask) ^ (ctmark & ctmask), for the packets that have a connection (not the INVALID ones)
        restored = packets.mark.and_constant(~nfmask).xor(packets.ctmark.and_constant(ctmask))
        return replace(packets, mark=packets.mark.meet(restored))
    ctmark = _set_bits(packets.ctmark, args)
    return replace(packets, ctmark=ctmark if ctmark is not None else Bits())


def _effect(target: Target, packets: PacketClass) -> PacketClass:
    args = target.args
    if target.name == 'MARK':
        mark = _set_bits(packets.mark, args)
        return replace(packets, mark=mark if mark is not None else Bits())
    if target.name == 'CONNMARK':
        return _connmark_effect(args, packets)
    if packets.conntrack != CT_UNATTACHED:
        return packets  # CT and NOTRACK do nothing to packets already tracked (or exempted)
    if target.name == 'NOTRACK' or '--notrack' in args:
        return replace(packets, conntrack=CT_UNTRACKED)
    zone = next((args[i + 1] for i, arg in enumerate(args[:-1]) if arg in _ZONE_OPTIONS), None)
    if zone is not None:
        # The connection is looked up (or made) in that zone; ``ct zone`` reads its id whatever the direction.
        parsed = _value_and_mask(zone)
        return replace(packets, zone=Bits().set_xmark(parsed[0] & _ZONE, _ZONE) if parsed else Bits())
    return packets  # CT --helper, --ctevents ...: nothing a match here reads


_ZONE_OPTIONS = frozenset({'--zone', '--zone-orig', '--zone-reply'})


def apply(rule: Rule, packets: PacketClass) -> PacketClass:
    """The class after every one of its packets went through the rule's state statements."""
    for target in effects(rule):
        packets = _effect(target, packets)
    return packets


def after(rule: Rule, relation: Relation, packets: PacketClass) -> PacketClass:
    """What the packets that walk on past the rule are known to be: for ALL, the rule's statements
    set their fields; for SOME, only part of them went through the statements."""
    if relation is NONE or not effects(rule):
        return packets
    changed = apply(rule, packets)
    return changed if relation is ALL else packets.meet(changed)
