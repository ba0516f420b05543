"""The compliance rules and their requirements (spec section 1), and the packet class of each.

Pure data: no I/O.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Optional, Tuple, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

IPV4 = 'ipv4'
IPV6 = 'ipv6'
FAMILIES = (IPV4, IPV6)

INPUT_ACCEPT_LO = 'input_accept_lo'
OUTPUT_ACCEPT_LO = 'output_accept_lo'
INPUT_DROP_LOOPBACK_SOURCE = 'input_drop_loopback_source'

ACCEPT = 'accept'
DENY = 'deny'
QUEUE = 'queue'

LOOPBACK_INTERFACE = 'lo'


@dataclass(frozen=True)
class Interfaces:
    """The interfaces the packets of a class use on one side: exactly ``name`` (``''``: none at this
    hook), or, with ``all_but`` set, every interface except ``name``."""

    name: str
    all_but: bool = False


_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Bits:
    """What is known of a 32-bit field (the packet mark, the connection mark) for every packet of a
    class: the bits of ``known`` have the values of ``value``; the other bits may be anything."""

    value: int = 0
    known: int = 0

    def set_xmark(self, value: int, mask: int) -> 'Bits':
        """``field = (field & ~mask) ^ value`` (iptables' MARK/CONNMARK --set-xmark)."""
        known = (self.known | mask) & _MASK32
        return Bits(((self.value & ~mask) ^ value) & known, known)

    def and_constant(self, constant: int) -> 'Bits':
        known = (self.known | ~constant) & _MASK32
        return Bits(self.value & constant & known, known)

    def xor(self, other: 'Bits') -> 'Bits':
        known = self.known & other.known
        return Bits((self.value ^ other.value) & known, known)

    def meet(self, other: 'Bits') -> 'Bits':
        """What is known of both (packets that took two ways): the bits known alike in each."""
        known = self.known & other.known & ~(self.value ^ other.value) & _MASK32
        return Bits(self.value & known, known)

    def test(self, value: int, mask: int) -> Optional[bool]:
        """``(field & mask) == value``: True for every packet, False for none, None when it depends."""
        if value & ~mask:
            return False  # bits outside the mask can never be equal
        if (self.value ^ value) & mask & self.known:
            return False
        if mask & ~self.known:
            return None
        return True


NO_BITS = Bits()

# What is known of the packets' connection tracking at a point of the path.
CT_UNKNOWN = ''  # anything: attached to a connection (whatever its state), or not yet looked up
CT_UNATTACHED = 'unattached'  # before the conntrack hook, for packets not tracked earlier: notrack takes effect
CT_UNTRACKED = 'untracked'  # exempted from tracking (CT --notrack, NOTRACK, native notrack)


@dataclass(frozen=True)
class PacketClass:
    """The packets a requirement is about (addresses, interfaces) and what the rules walked so far
    are known to have set for every one of them (marks, conntrack)."""

    source: IPNetwork
    destination: Optional[IPNetwork]  # None: any destination
    in_interface: Interfaces
    out_interface: Interfaces
    mark: Bits = NO_BITS
    ctmark: Bits = NO_BITS
    conntrack: str = CT_UNKNOWN
    zone: Bits = NO_BITS  # the conntrack zone (16 bits), set by a CT template before conntrack

    def __hash__(self) -> int:
        # Classes key the walk's memos, and hashing their networks is not cheap: computed once.
        found: Optional[int] = self.__dict__.get('_hash')
        if found is None:
            found = hash((self.source, self.destination, self.in_interface, self.out_interface, self.mark, self.ctmark, self.conntrack, self.zone))
            object.__setattr__(self, '_hash', found)
        return found

    @property
    def stateless(self) -> 'PacketClass':
        """The class without what earlier rules set (what it is at the start of its path)."""
        if self.mark is NO_BITS and self.ctmark is NO_BITS and self.conntrack == CT_UNKNOWN and self.zone is NO_BITS:
            return self
        found: Optional[PacketClass] = self.__dict__.get('_stateless')  # each walk into a chain asks: made once
        if found is None:
            found = replace(self, mark=NO_BITS, ctmark=NO_BITS, conntrack=CT_UNKNOWN, zone=NO_BITS)
            object.__setattr__(self, '_stateless', found)
        return found

    def meet(self, other: 'PacketClass') -> 'PacketClass':
        """What is known of the packets of two ways that join (the same addresses and interfaces)."""
        if other == self:
            return self
        conntrack = self.conntrack if self.conntrack == other.conntrack else CT_UNKNOWN
        return replace(
            self, mark=self.mark.meet(other.mark), ctmark=self.ctmark.meet(other.ctmark), conntrack=conntrack, zone=self.zone.meet(other.zone)
        )


# The hooks of the packet path (nft's names).
PREROUTING = 'prerouting'
INPUT = 'input'
OUTPUT = 'output'
POSTROUTING = 'postrouting'
INGRESS = 'ingress'  # netdev (and inet) chains attached to devices, before prerouting
EGRESS = 'egress'  # netdev chains attached to devices, after postrouting
HOOK_ORDER = (INGRESS, PREROUTING, INPUT, OUTPUT, POSTROUTING, EGRESS)

# How a requirement's walk treats nat chains (spec section 2, "nat chains"): they see only the first
# packet of each connection.
NAT_NOT_CONSULTED = 'not consulted'  # lo input: its connections were set up on the output path
NAT_DENIES = 'denies'  # output: a deny there denies every new connection
NAT_DENIES_NEW_ONLY = 'denies new connections only'  # input from elsewhere: established packets pass

# The value of a literal rule that stands for the family's loopback network (127.0.0.0/8, ::1/128).
LOOPBACK_NETWORK = '<loopback network>'


@dataclass(frozen=True)
class LiteralRule:
    """The rule an auditor looks for (spec section 1): ``-A <chain> <option> <value> -j <target>``."""

    chain: str  # the built-in chain of table filter where it goes
    option: str  # '-i', '-o' or '-s'
    value: str  # an interface name, or LOOPBACK_NETWORK
    target: str  # 'ACCEPT' or 'DROP'

    def value_for(self, loopback: IPNetwork) -> str:
        return str(loopback) if self.value == LOOPBACK_NETWORK else self.value

    def criteria(self, loopback: IPNetwork) -> str:
        """What follows the chain name: ``-i lo -j ACCEPT``."""
        return '{} {} -j {}'.format(self.option, self.value_for(loopback), self.target)

    def text(self, loopback: IPNetwork) -> str:
        return '-A {} {}'.format(self.chain, self.criteria(loopback))


@dataclass(frozen=True)
class Requirement:
    name: str
    literal: LiteralRule
    hooks: Tuple[str, ...]  # the hooks of its path, in the order packets meet them
    required: str  # ACCEPT or DENY
    description: str
    nat: str  # one of NAT_*
    # Its packet class (spec section 1): the interfaces on each side; the source is always the
    # loopback network, the destination too when ``to_loopback``, else any.
    arriving: Interfaces
    leaving: Interfaces
    to_loopback: bool
    # Literal mode: the literal rule must stand before every rule that denies packets of the class.
    literal_before_denies: bool = False

    @property
    def literal_chain(self) -> str:
        return self.literal.chain

    def packet_class(self, loopback: IPNetwork) -> PacketClass:
        return PacketClass(loopback, loopback if self.to_loopback else None, self.arriving, self.leaving)


_NO_INTERFACE = Interfaces('')
_LO = Interfaces(LOOPBACK_INTERFACE)

REQUIREMENTS = (
    Requirement(
        INPUT_ACCEPT_LO,
        LiteralRule('INPUT', '-i', LOOPBACK_INTERFACE, 'ACCEPT'),
        (INGRESS, PREROUTING, INPUT),
        ACCEPT,
        'traffic arriving on lo from and to the loopback network is accepted',
        NAT_NOT_CONSULTED,
        arriving=_LO,
        leaving=_NO_INTERFACE,
        to_loopback=True,
        literal_before_denies=True,
    ),
    Requirement(
        OUTPUT_ACCEPT_LO,
        LiteralRule('OUTPUT', '-o', LOOPBACK_INTERFACE, 'ACCEPT'),
        (OUTPUT, POSTROUTING, EGRESS),
        ACCEPT,
        'traffic leaving through lo within the loopback network is accepted',
        NAT_DENIES,
        arriving=_NO_INTERFACE,
        leaving=_LO,
        to_loopback=True,
    ),
    Requirement(
        INPUT_DROP_LOOPBACK_SOURCE,
        LiteralRule('INPUT', '-s', LOOPBACK_NETWORK, 'DROP'),
        (INGRESS, PREROUTING, INPUT),
        DENY,
        'traffic with a loopback source arriving on any interface other than lo is dropped',
        NAT_DENIES_NEW_ONLY,
        arriving=Interfaces(LOOPBACK_INTERFACE, all_but=True),
        leaving=_NO_INTERFACE,
        to_loopback=False,
    ),
)


def requirement_named(name: str) -> Requirement:
    for requirement in REQUIREMENTS:
        if requirement.name == name:
            return requirement
    raise KeyError(name)


# Who manages the firewall a rule is written for (spec section 1): the language of its fixes.
IPTABLES = 'iptables'
UFW = 'ufw'
NFTABLES = 'nftables'

LOOPBACK_NETWORKS = {IPV4: ipaddress.ip_network('127.0.0.0/8'), IPV6: ipaddress.ip_network('::1/128')}
_IPTABLES_COMMANDS = {IPV4: ('iptables', 'iptables-save'), IPV6: ('ip6tables', 'ip6tables-save')}


@dataclass(frozen=True)
class ComplianceRule:
    """One family of a compliance rule: what the evaluator judges on that family's rulesets."""

    name: str
    family: str
    rule_id: str
    loopback: IPNetwork
    iptables: str  # the command that changes this family's rules
    save_tool: str
    requirements: Tuple[Requirement, ...] = REQUIREMENTS
    manager: str = IPTABLES

    @property
    def loopback_text(self) -> str:
        return str(self.loopback)

    @property
    def tags(self) -> Tuple[str, ...]:
        return ('rule:' + self.name, 'family:' + self.family, 'rule_id:' + self.rule_id)


def _part(name: str, family: str, rule_id: str, manager: str, requirements: Tuple[Requirement, ...] = REQUIREMENTS) -> ComplianceRule:
    command, save_tool = _IPTABLES_COMMANDS[family]
    return ComplianceRule(name, family, rule_id, LOOPBACK_NETWORKS[family], command, save_tool, requirements, manager)


@dataclass(frozen=True)
class RuleDefinition:
    """A compliance rule of spec section 1: its families (one service check for all of them), the
    firewall manager it is written for, and one :class:`ComplianceRule` per family."""

    name: str
    rule_id: str
    manager: str
    parts: Tuple[ComplianceRule, ...]

    @property
    def families(self) -> Tuple[str, ...]:
        return tuple(part.family for part in self.parts)

    @property
    def requirements(self) -> Tuple[Requirement, ...]:
        return self.parts[0].requirements

    def part(self, family: str) -> ComplianceRule:
        for part in self.parts:
            if part.family == family:
                return part
        raise KeyError(family)

    def tags(self, families: Optional[Tuple[str, ...]] = None) -> Tuple[str, ...]:
        """``rule:``, a ``family:`` per family covered (all of them by default), ``rule_id:``."""
        covered = self.families if families is None else families
        return ('rule:' + self.name,) + tuple('family:' + family for family in covered) + ('rule_id:' + self.rule_id,)


SET_LOOPBACK_TRAFFIC = _part('set_loopback_traffic', IPV4, 'def-000-byk', IPTABLES)
SET_IPV6_LOOPBACK_TRAFFIC = _part('set_ipv6_loopback_traffic', IPV6, 'def-000-mkc', IPTABLES)
COMPLIANCE_RULES = (SET_LOOPBACK_TRAFFIC, SET_IPV6_LOOPBACK_TRAFFIC)

_NFTABLES_REQUIREMENTS = tuple(r for r in REQUIREMENTS if r.name in (INPUT_ACCEPT_LO, INPUT_DROP_LOOPBACK_SOURCE))

RULES = (
    RuleDefinition(SET_LOOPBACK_TRAFFIC.name, SET_LOOPBACK_TRAFFIC.rule_id, IPTABLES, (SET_LOOPBACK_TRAFFIC,)),
    RuleDefinition(SET_IPV6_LOOPBACK_TRAFFIC.name, SET_IPV6_LOOPBACK_TRAFFIC.rule_id, IPTABLES, (SET_IPV6_LOOPBACK_TRAFFIC,)),
    RuleDefinition(
        'set_ufw_loopback_traffic',
        'def-000-sbg',
        UFW,
        tuple(_part('set_ufw_loopback_traffic', family, 'def-000-sbg', UFW) for family in FAMILIES),
    ),
    RuleDefinition(
        'set_nftables_loopback_traffic',
        'def-000-x1o',
        NFTABLES,
        tuple(_part('set_nftables_loopback_traffic', family, 'def-000-x1o', NFTABLES, _NFTABLES_REQUIREMENTS) for family in FAMILIES),
    ),
)
RULE_NAMES = tuple(rule.name for rule in RULES)


def rule_named(name: str) -> RuleDefinition:
    for rule in RULES:
        if rule.name == name:
            return rule
    raise KeyError(name)


def rule_for_family(family: str) -> ComplianceRule:
    """The iptables rule of ``family``."""
    for rule in COMPLIANCE_RULES:
        if rule.family == family:
            return rule
    raise ValueError('unknown family {!r}'.format(family))
