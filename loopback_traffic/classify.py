"""How a rule's match relates to a packet class: it matches none, all or some of its packets.

Spec section 2, "Walking one chain". Pure: no I/O.
"""
from __future__ import annotations

import enum
import ipaddress
from typing import Iterable, Optional

from .model import Match, Option, Rule
from .requirements import IPNetwork, Interfaces, PacketClass


class Relation(enum.Enum):
    NONE = 'none'
    SOME = 'some'
    ALL = 'all'


NONE, SOME, ALL = Relation.NONE, Relation.SOME, Relation.ALL

# Matches that every packet satisfies whatever their options.
_ALWAYS_MATCHING_MODULES = frozenset({'comment'})
_ANY_PROTOCOL = frozenset({'all', '0'})


def _invert(relation: Relation) -> Relation:
    if relation is ALL:
        return NONE
    if relation is NONE:
        return ALL
    return SOME


def _parse_network(text: str, family_of: IPNetwork) -> Optional[IPNetwork]:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if network.version != family_of.version:
        return None
    return network


def _address_relation(values: tuple, packets: Optional[IPNetwork], family_of: IPNetwork) -> Relation:
    """``-s``/``-d`` value(s) against the class's addresses (``packets`` None: any address); several
    values (``-s a,b``, or a set's elements) match when any does."""
    if not values:
        return SOME
    networks = []
    for text in ','.join(values).split(','):
        network = _parse_network(text, family_of)
        if network is None:
            return SOME  # a host name or a non-contiguous mask: cannot tell
        networks.append(network)
    if packets is None:
        if any(network.prefixlen == 0 for network in networks):
            return ALL
        return SOME
    if any(packets.subnet_of(network) for network in networks):  # type: ignore[arg-type]
        return ALL
    if all(not packets.overlaps(network) for network in networks):  # type: ignore[arg-type]
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


def _any_interface_relation(patterns: Iterable[str], packets: Interfaces) -> Relation:
    """Several interface patterns (a set of names): the rule matches when any does."""
    relations = [_interface_relation(pattern, packets) for pattern in patterns]
    if not relations:
        return SOME
    if ALL in relations:
        return ALL
    return NONE if all(relation is NONE for relation in relations) else SOME


def _option_relation(option: Option, packets: PacketClass) -> Relation:
    name, values = option.name, option.values
    if name == '-s':
        relation = _address_relation(values, packets.source, packets.source)
    elif name == '-d':
        relation = _address_relation(values, packets.destination, packets.source)
    elif name == '-i':
        relation = _any_interface_relation(values, packets.in_interface)
    elif name == '-o':
        relation = _any_interface_relation(values, packets.out_interface)
    elif name == '--nfproto' and len(values) == 1:
        # The packet's family (inet tables): the class's addresses tell it.
        relation = ALL if values[0] == 'ipv{}'.format(packets.source.version) else NONE
    elif name == '-p' and len(values) == 1:
        relation = ALL if values[0].lower() in _ANY_PROTOCOL else SOME
    else:
        return SOME  # -f, options of implicitly loaded matches (--dport), anything else
    return _invert(relation) if option.negated else relation


def _conjunction(relations: Iterable[Relation]) -> Relation:
    """All conditions of a rule must hold: NONE if one can never hold, ALL if every one always does."""
    result = ALL
    for relation in relations:
        if relation is NONE:
            return NONE
        if relation is SOME:
            result = SOME
    return result


def _match_relation(match: Match, packets: PacketClass) -> Relation:
    if match.module in _ALWAYS_MATCHING_MODULES:
        return ALL
    if match.module:
        return SOME
    return _conjunction(_option_relation(option, packets) for option in match.options)


def classify(rule: Rule, packets: PacketClass) -> Relation:
    """NONE if the rule can match no packet of the class, ALL if it matches every one, else SOME."""
    return _conjunction(_match_relation(match, packets) for match in rule.matches)
