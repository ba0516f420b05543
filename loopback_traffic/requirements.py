"""The compliance rules and their requirements (spec section 1), and the packet class of each.

Pure data: no I/O.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PacketClass:
    source: IPNetwork
    destination: Optional[IPNetwork]  # None: any destination
    in_interface: Interfaces
    out_interface: Interfaces


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


@dataclass(frozen=True)
class Requirement:
    name: str
    literal_chain: str  # the built-in chain of table filter where the literal rule goes
    hooks: Tuple[str, ...]  # the hooks of its path, in the order packets meet them
    required: str  # ACCEPT or DENY
    description: str
    nat: str  # one of NAT_*

    def packet_class(self, loopback: IPNetwork) -> PacketClass:
        no_interface = Interfaces('')
        if self.name == INPUT_ACCEPT_LO:
            return PacketClass(loopback, loopback, Interfaces(LOOPBACK_INTERFACE), no_interface)
        if self.name == OUTPUT_ACCEPT_LO:
            return PacketClass(loopback, loopback, no_interface, Interfaces(LOOPBACK_INTERFACE))
        return PacketClass(loopback, None, Interfaces(LOOPBACK_INTERFACE, all_but=True), no_interface)


REQUIREMENTS = (
    Requirement(
        INPUT_ACCEPT_LO,
        'INPUT',
        (INGRESS, PREROUTING, INPUT),
        ACCEPT,
        'traffic arriving on lo from and to the loopback network is accepted',
        NAT_NOT_CONSULTED,
    ),
    Requirement(
        OUTPUT_ACCEPT_LO,
        'OUTPUT',
        (OUTPUT, POSTROUTING, EGRESS),
        ACCEPT,
        'traffic leaving through lo within the loopback network is accepted',
        NAT_DENIES,
    ),
    Requirement(
        INPUT_DROP_LOOPBACK_SOURCE,
        'INPUT',
        (INGRESS, PREROUTING, INPUT),
        DENY,
        'traffic with a loopback source arriving on any interface other than lo is dropped',
        NAT_DENIES_NEW_ONLY,
    ),
)


@dataclass(frozen=True)
class ComplianceRule:
    name: str
    family: str
    rule_id: str
    loopback: IPNetwork
    iptables: str  # the command that changes this family's rules
    save_tool: str

    @property
    def loopback_text(self) -> str:
        return str(self.loopback)

    @property
    def tags(self) -> Tuple[str, ...]:
        return ('rule:' + self.name, 'family:' + self.family, 'rule_id:' + self.rule_id)


SET_LOOPBACK_TRAFFIC = ComplianceRule(
    'set_loopback_traffic', IPV4, 'def-000-byk', ipaddress.ip_network('127.0.0.0/8'), 'iptables', 'iptables-save'
)
SET_IPV6_LOOPBACK_TRAFFIC = ComplianceRule(
    'set_ipv6_loopback_traffic', IPV6, 'def-000-mkc', ipaddress.ip_network('::1/128'), 'ip6tables', 'ip6tables-save'
)
COMPLIANCE_RULES = (SET_LOOPBACK_TRAFFIC, SET_IPV6_LOOPBACK_TRAFFIC)


def rule_for_family(family: str) -> ComplianceRule:
    for rule in COMPLIANCE_RULES:
        if rule.family == family:
            return rule
    raise ValueError('unknown family {!r}'.format(family))
