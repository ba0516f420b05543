"""Issue 12's reproductions in lt- namespaces: each ruleset loaded with the real restore tool, judged
the way the check reads the kernel (netlink, `network_namespace`) and through the save tool, and each
verdict checked against what the kernel does to real packets."""
import re
import sys
import textwrap

import pytest

from datadog_checks.loopback_traffic.requirements import INPUT_ACCEPT_LO, INPUT_DROP_LOOPBACK_SOURCE, OUTPUT_ACCEPT_LO
from datadog_checks.loopback_traffic.results import SYNPROXY_PART, Status

from .netns import netns, netns_pair, probe_loopback, probe_spoofed_loopback_source, require_tools  # noqa: F401
from .rulesets import filter_table, table
from .test_collection import evaluate_with

PASS, PARTIAL, FAIL = Status.PASS, Status.PARTIAL, Status.FAIL
COLLECTIONS = ['auto', 'save']  # netlink (network_namespace), the save tool

# A TCP connection over lo: the listener must accept it and read what the client sent.
_TCP_LOOPBACK = textwrap.dedent(
    """
    import socket, sys
    timeout = float(sys.argv[1])
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    server.settimeout(timeout)
    client = socket.socket()
    client.settimeout(timeout)
    try:
        client.connect(server.getsockname())
        client.sendall(b'lt-probe')
        accepted, _ = server.accept()
        accepted.settimeout(timeout)
        print('RECEIVED' if accepted.recv(16) == b'lt-probe' else 'TIMEOUT')
    except (socket.timeout, OSError):
        print('TIMEOUT')
    """
)


def probe_tcp_loopback(ns, timeout=2.0):
    proc = ns.run([sys.executable, '-I', '-c', _TCP_LOOPBACK, str(timeout)], timeout=timeout * 3 + 20)
    words = proc.stdout.split()
    assert proc.returncode == 0 and words and words[0] in ('RECEIVED', 'TIMEOUT'), (proc.stdout, proc.stderr)
    return words[0] == 'RECEIVED'


def judged(ns, collection):
    return evaluate_with(ns, 'ipv4', collection).result


def where(result, requirement):
    found = result.requirement(requirement).deciding
    return found.table, found.chain, found.index


def status(result, requirement):
    return result.requirement(requirement).status


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_addrtype_anti_spoofing_passes_and_the_kernel_drops_spoofed_packets(netns_pair, collection):
    """1. Anti-spoofing written with addrtype: loopback addresses are LOCAL."""
    receiver = netns_pair.receiver
    receiver.restore(filter_table('-A INPUT -m addrtype --src-type LOCAL ! -i lo -j DROP', '-A OUTPUT -o lo -j ACCEPT'), 'ipv4')
    assert not probe_spoofed_loopback_source(netns_pair, 'ipv4')
    assert probe_loopback(receiver, 'ipv4', 'udp')
    result = judged(receiver, collection)
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is PASS
    assert where(result, INPUT_DROP_LOOPBACK_SOURCE) == ('filter', 'INPUT', 1)
    assert status(result, INPUT_ACCEPT_LO) is PASS


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_two_drops_covering_the_loopback_network_leave_no_bulk(netns_pair, collection):
    """2. Two /9 DROPs with policy ACCEPT: every loopback source is dropped, lo traffic too."""
    receiver = netns_pair.receiver
    receiver.restore(filter_table('-A INPUT -s 127.0.0.0/9 -j DROP', '-A INPUT -s 127.128.0.0/9 -j DROP'), 'ipv4')
    for source in ('127.0.0.1', '127.200.0.1'):
        assert not probe_spoofed_loopback_source(netns_pair, 'ipv4', source=source)
    assert not probe_loopback(receiver, 'ipv4', 'udp')
    result = judged(receiver, collection)
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is PASS
    assert where(result, INPUT_DROP_LOOPBACK_SOURCE) == ('filter', 'INPUT', 2)
    assert status(result, INPUT_ACCEPT_LO) is FAIL
    assert where(result, INPUT_ACCEPT_LO) == ('filter', 'INPUT', 2)


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_synproxy_before_the_lo_accept_is_partial(netns, collection):
    """4. SYNPROXY without its companion rules: TCP over lo fails, UDP passes."""
    netns.restore(
        filter_table(
            '-A INPUT -p tcp -m tcp --syn -j SYNPROXY --sack-perm --timestamp --wscale 7 --mss 1460',
            '-A INPUT -i lo -j ACCEPT',
            '-A OUTPUT -o lo -j ACCEPT',
        ),
        'ipv4',
    )
    assert not probe_tcp_loopback(netns)
    assert probe_loopback(netns, 'ipv4', 'udp')
    result = judged(netns, collection)
    accept = result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is PARTIAL
    assert where(result, INPUT_ACCEPT_LO) == ('filter', 'INPUT', 2)
    assert [(d.where.index, d.part) for d in accept.deviations] == [(1, SYNPROXY_PART)]


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_rpfilter_invert_drops_spoofed_sources_and_keeps_lo(netns_pair, collection):
    receiver = netns_pair.receiver
    receiver.restore(table('raw', ['-A PREROUTING -m rpfilter --invert -j DROP']), 'ipv4')
    assert not probe_spoofed_loopback_source(netns_pair, 'ipv4')
    assert probe_loopback(receiver, 'ipv4', 'udp')
    result = judged(receiver, collection)
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is PASS
    assert where(result, INPUT_DROP_LOOPBACK_SOURCE) == ('raw', 'PREROUTING', 1)
    assert status(result, INPUT_ACCEPT_LO) is PASS


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_physdev_matches_no_lo_packet(netns_pair, collection):
    """physdev matches bridged packets only: nothing on lo, nor the (unbridged) spoofed packet."""
    receiver = netns_pair.receiver
    receiver.restore(filter_table('-A INPUT -m physdev --physdev-is-in -j DROP', '-A INPUT -m physdev --physdev-in lt-rx0 -j DROP'), 'ipv4')
    assert probe_loopback(receiver, 'ipv4', 'udp')
    assert probe_spoofed_loopback_source(netns_pair, 'ipv4')
    result = judged(receiver, collection)
    assert status(result, INPUT_ACCEPT_LO) is PASS
    assert where(result, INPUT_ACCEPT_LO) == ('filter', 'INPUT', None)
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is FAIL


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_a_negated_physdev_matches_every_lo_packet(netns, collection):
    netns.restore(filter_table('-A INPUT -m physdev ! --physdev-is-in -j DROP'), 'ipv4')
    assert not probe_loopback(netns, 'ipv4', 'udp')
    result = judged(netns, collection)
    assert status(result, INPUT_ACCEPT_LO) is FAIL
    assert where(result, INPUT_ACCEPT_LO) == ('filter', 'INPUT', 1)


# --- the native forms, read over netlink only (the save tools cannot show native tables) -----------------


def nft_file(ns, text):
    ns.run(['nft', '-f', '-'], input=text, check=True)


@pytest.mark.parametrize('setting', ['type filter hook prerouting priority -150', 'type route hook output priority -150'])
def test_native_meta_mark_set_then_matched_in_a_later_chain(netns, setting):
    """Set in prerouting, or on the way out (lo input packets were sent through lo), and dropped on input."""
    require_tools('nft')
    nft_file(
        netns,
        'table inet t {{\n chain pre {{\n  {};\n  meta mark set 0x8000\n }}\n'
        ' chain in {{\n  type filter hook input priority 0;\n  meta mark 0x8000 drop\n  iif lo accept\n }}\n}}\n'.format(setting),
    )
    assert not probe_loopback(netns, 'ipv4', 'udp')
    result = judged(netns, 'auto')
    assert status(result, INPUT_ACCEPT_LO) is FAIL
    assert where(result, INPUT_ACCEPT_LO) == ('inet t', 'in', 1)


def test_native_fib_reverse_path_drop(netns_pair):
    require_tools('nft')
    receiver = netns_pair.receiver
    nft_file(receiver, 'table inet t {\n chain pre {\n  type filter hook prerouting priority -300;\n  fib saddr . iif oif missing drop\n }\n}\n')
    assert not probe_spoofed_loopback_source(netns_pair, 'ipv4')
    assert probe_loopback(receiver, 'ipv4', 'udp')
    result = judged(receiver, 'auto')
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is PASS
    assert where(result, INPUT_DROP_LOOPBACK_SOURCE) == ('inet t', 'pre', 1)
    assert status(result, INPUT_ACCEPT_LO) is PASS


@pytest.mark.parametrize('collection', COLLECTIONS)
@pytest.mark.parametrize(
    'setting, criteria',
    [
        # 3. mangle PREROUTING marks every packet; filter INPUT drops the mark before the lo ACCEPT
        pytest.param(('mangle', '-A PREROUTING -j MARK --set-xmark 0x8000/0x8000'), '-m mark --mark 0x8000/0x8000', id='prerouting-mark'),
        pytest.param(('mangle', '-A OUTPUT -o lo -j MARK --set-xmark 0x8000/0x8000'), '-m mark --mark 0x8000/0x8000', id='output-mark'),
        pytest.param(('raw', '-A OUTPUT -j CT --notrack'), '-m conntrack --ctstate UNTRACKED', id='output-notrack'),
    ],
)
def test_a_state_set_earlier_then_dropped_in_filter_fails_the_lo_accept(netns, collection, setting, criteria):
    """Set for every packet earlier on the path, or on the way out (a packet arriving on lo was sent
    through lo): what the input chains see."""
    text = table(setting[0], [setting[1]]) + filter_table('-A INPUT {} -j DROP'.format(criteria), '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
    netns.restore(text, 'ipv4')
    assert not probe_loopback(netns, 'ipv4', 'udp')
    result = judged(netns, collection)
    assert status(result, INPUT_ACCEPT_LO) is FAIL
    assert where(result, INPUT_ACCEPT_LO) == ('filter', 'INPUT', 1)
    assert status(result, OUTPUT_ACCEPT_LO) is PASS


# A TCP segment with SYN and FIN, 127.0.0.1 to itself, through a raw socket: conntrack finds it INVALID
# and keeps no entry for it (nor the zone or connection mark a template or rule gave its connection).
_INVALID_TCP_OVER_LO = textwrap.dedent(
    """
    import socket, struct

    def checksum(data):
        data += b'\\0' * (len(data) % 2)
        total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    address = socket.inet_aton('127.0.0.1')
    tcp = struct.pack('!HHIIBBHHH', 40002, 9, 1, 0, 5 << 4, 0x03, 1024, 0, 0)
    tcp = tcp[:16] + struct.pack('!H', checksum(address + address + struct.pack('!BBH', 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0, address, address)
    ip = ip[:10] + struct.pack('!H', checksum(ip)) + ip[12:]
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(ip + tcp, ('127.0.0.1', 0))
    """
)


def send_invalid_tcp_over_lo(ns):
    ns.run([sys.executable, '-I', '-c', _INVALID_TCP_OVER_LO], check=True)


def nft_rule_packets(ns, family, table_name, chain, index):
    """The packets counted by the ``counter`` of rule ``index`` (1-based) of a native chain."""
    listing = ns.run(['nft', 'list', 'chain', family, table_name, chain], check=True).stdout
    rules = [line for line in listing.splitlines() if line.startswith('\t\t') and ' hook ' not in line]
    found = re.search(r'counter packets (\d+)', rules[index - 1])
    assert found, listing
    return int(found.group(1))


def test_a_native_ct_zone_set_on_the_output_path_is_matched_on_the_lo_input_path(netns):
    """`ct zone set` before conntrack puts every lo connection in zone 3; `ct zone 3 drop` on input
    then drops all lo traffic that has a connection. INVALID packets have none and are accepted."""
    require_tools('nft')
    nft_file(
        netns,
        'table inet t {\n chain out {\n  type filter hook output priority -300;\n  ct zone set 3\n }\n'
        ' chain in {\n  type filter hook input priority 0;\n  ct zone 3 drop\n  iif lo counter accept\n }\n}\n',
    )
    assert not probe_loopback(netns, 'ipv4', 'udp')
    send_invalid_tcp_over_lo(netns)
    assert nft_rule_packets(netns, 'inet', 't', 'in', 2) >= 1
    result = judged(netns, 'auto')
    assert status(result, INPUT_ACCEPT_LO) is PARTIAL
    assert where(result, INPUT_ACCEPT_LO) == ('inet t', 'in', 2)
    assert [d.where.index for d in result.requirement(INPUT_ACCEPT_LO).deviations] == [1]
    netns.run(['nft', 'flush', 'chain', 'inet', 't', 'out'], check=True)
    netns.run(['nft', 'add', 'rule', 'inet', 't', 'out', 'ct', 'zone', 'set', '4'], check=True)
    assert probe_loopback(netns, 'ipv4', 'udp')
    result = judged(netns, 'auto')
    assert status(result, INPUT_ACCEPT_LO) is PASS
    assert where(result, INPUT_ACCEPT_LO) == ('inet t', 'in', 2)


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_two_jumps_to_a_chain_that_drops_cover_the_loopback_network(netns_pair, collection):
    receiver = netns_pair.receiver
    receiver.restore(
        filter_table(
            '-A INPUT -i lo -j ACCEPT',
            '-A INPUT -s 127.0.0.0/9 -j SPOOF',
            '-A INPUT -s 127.128.0.0/9 -j SPOOF',
            '-A OUTPUT -o lo -j ACCEPT',
            '-A SPOOF -j DROP',
            chains=['SPOOF'],
        ),
        'ipv4',
    )
    for source in ('127.0.0.1', '127.200.0.1'):
        assert not probe_spoofed_loopback_source(netns_pair, 'ipv4', source=source)
    assert probe_loopback(receiver, 'ipv4', 'udp')
    result = judged(receiver, collection)
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is PASS
    assert where(result, INPUT_DROP_LOOPBACK_SOURCE) == ('filter', 'SPOOF', 1)


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_a_connmark_set_on_the_output_path_is_not_every_packets(netns, collection):
    """CONNMARK in mangle OUTPUT marks every lo connection, but INVALID packets have none: the
    connmark ACCEPT takes only part of lo traffic, and the DROP below takes the invalid packets."""
    netns.restore(
        table('mangle', ['-A OUTPUT -j CONNMARK --set-xmark 0x1/0x1'])
        + filter_table('-A INPUT -m connmark --mark 0x1/0x1 -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A OUTPUT -o lo -j ACCEPT'),
        'ipv4',
    )
    assert probe_loopback(netns, 'ipv4', 'udp')
    before = _iptables_rule_packets(netns, 2)
    send_invalid_tcp_over_lo(netns)
    assert _iptables_rule_packets(netns, 2) > before
    result = judged(netns, collection)
    assert status(result, INPUT_ACCEPT_LO) is FAIL  # the bulk gets the DROP
    assert where(result, INPUT_ACCEPT_LO) == ('filter', 'INPUT', 2)


def _iptables_rule_packets(ns, index):
    listing = ns.run(['iptables-nft', '-L', 'INPUT', '-v', '-x', '-n', '--line-numbers'], check=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        if fields and fields[0] == str(index):
            return int(fields[1])
    raise AssertionError(listing)
