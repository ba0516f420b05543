"""Tests of the network-namespace harness (tests/netns.py) itself.

They load real rulesets into throw-away namespaces and send real packets, so they
need root and iproute2; elsewhere they skip (or fail with
LOOPBACK_TRAFFIC_REQUIRE_NETNS=1).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import tests.netns as harness
from tests.netns import (  # noqa: F401 - netns and netns_pair are fixtures
    Netns,
    NetnsPair,
    RulesetLoadError,
    netns,
    netns_pair,
    namespace_exists,
    probe_loopback,
    probe_spoofed_loopback_source,
    require_netns,
    root_netns_firewall_snapshot,
    tree_digest,
    ufw_in_netns,
)

LOOPBACK = {'ipv4': '127.0.0.0/8', 'ipv6': '::1/128'}


def ruleset(family: str) -> str:
    """A ruleset exercising policies, two tables, user chains, -j/-g, inversion, matches and comments."""
    lo = LOOPBACK[family]
    return (
        '*filter\n'
        ':INPUT DROP [0:0]\n'
        ':FORWARD DROP [0:0]\n'
        ':OUTPUT ACCEPT [0:0]\n'
        ':LT-AFTER - [0:0]\n'
        ':LT-USER - [0:0]\n'
        '-A INPUT -i lo -j ACCEPT\n'
        f'-A INPUT -s {lo} ! -i lo -j DROP\n'
        '-A INPUT -j LT-USER\n'
        '-A OUTPUT -o lo -j ACCEPT\n'
        '-A LT-AFTER -j RETURN\n'
        '-A LT-USER -p udp -m udp --dport 53 -m comment --comment "lt harness" -j RETURN\n'
        '-A LT-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n'
        '-A LT-USER -g LT-AFTER\n'
        'COMMIT\n'
        '*raw\n'
        ':PREROUTING ACCEPT [0:0]\n'
        ':OUTPUT ACCEPT [0:0]\n'
        f'-A PREROUTING -s {lo} ! -i lo -j DROP\n'
        'COMMIT\n'
    )


def normalize(save_output: str) -> dict[str, tuple[list[str], list[str]]]:
    """table -> (sorted chain declarations without counters, rules in order); comments dropped."""
    tables: dict[str, tuple[list[str], list[str]]] = {}
    current = None
    for line in save_output.splitlines():
        if not line or line.startswith('#'):
            continue
        if line.startswith('*'):
            current = line[1:]
            tables[current] = ([], [])
        elif line.startswith(':'):
            assert current is not None
            tables[current][0].append(line.rsplit(' ', 1)[0])
        elif line.startswith('-A'):
            assert current is not None
            tables[current][1].append(line)
        else:
            assert line == 'COMMIT', line
    for decls, _ in tables.values():
        decls.sort()
    return tables


# ----------------------------------------------------------------------------- gating


@pytest.fixture
def pretend_not_root(monkeypatch):
    monkeypatch.setattr(harness.os, 'geteuid', lambda: 1000)
    harness._netns_unavailable_reason.cache_clear()
    yield
    monkeypatch.undo()
    harness._netns_unavailable_reason.cache_clear()


def test_gating_skips_without_root(pretend_not_root, monkeypatch):
    monkeypatch.delenv(harness.ENV_REQUIRE_NETNS, raising=False)
    with pytest.raises(pytest.skip.Exception, match='need root'):
        require_netns()


def test_gating_fails_without_root_when_required(pretend_not_root, monkeypatch):
    monkeypatch.setenv(harness.ENV_REQUIRE_NETNS, '1')
    with pytest.raises(pytest.fail.Exception, match='need root'):
        require_netns()


@pytest.mark.parametrize('required,outcome', [(None, pytest.skip.Exception), ('1', pytest.fail.Exception)])
def test_gating_missing_tool(monkeypatch, required, outcome):
    if required is None:
        monkeypatch.delenv(harness.ENV_REQUIRE_NETNS, raising=False)
    else:
        monkeypatch.setenv(harness.ENV_REQUIRE_NETNS, required)
    with pytest.raises(outcome, match='lt-no-such-tool'):
        harness.require_tools('sh', 'lt-no-such-tool')
    harness.require_tools('sh')


# ----------------------------------------------------------------------------- lifecycle


def test_namespace_lifecycle_and_argv_prefix():
    require_netns()
    with Netns() as ns:
        assert ns.name.startswith('lt-')
        assert namespace_exists(ns.name)
        assert ns.argv_prefix() == ['ip', 'netns', 'exec', ns.name]
        assert ns.save_argv('ipv6', 'legacy') == ['ip', 'netns', 'exec', ns.name, 'ip6tables-legacy-save']
        links = ns.run(['ip', '-o', 'link', 'show'], check=True).stdout.splitlines()
        assert len(links) == 1 and ': lo: ' in links[0] and ',UP' in links[0]
        # A command pointed into the namespace through argv_prefix really runs there.
        inode_inside = subprocess.run(
            ns.argv_prefix() + ['stat', '-L', '-c', '%i', '/proc/self/ns/net'],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
        assert inode_inside != str(os.stat('/proc/self/ns/net').st_ino)
        # Processes left running are killed on exit: one tracked, one started behind the harness's back.
        tracked = ns.spawn(['sleep', '60'])
        untracked = subprocess.Popen(ns.argv_prefix() + ['sleep', '60'])
        name = ns.name
    assert not namespace_exists(name)
    assert tracked.wait(timeout=5) == -9
    assert untracked.wait(timeout=5) == -9


def test_namespace_removed_after_exception():
    require_netns()
    with pytest.raises(ZeroDivisionError):
        with Netns() as ns:
            name = ns.name
            ns.overlay_etc('default')
            assert os.path.isdir(f'/etc/netns/{name}/default')
            1 / 0
    assert not namespace_exists(name)
    assert not os.path.exists(f'/etc/netns/{name}')


def test_run_refuses_shell_strings_and_check_reports_stderr(netns):
    with pytest.raises(TypeError):
        netns.run('iptables-save')
    with pytest.raises(subprocess.CalledProcessError) as excinfo:
        netns.run(['iptables-nft', '-A', 'NO-SUCH-CHAIN', '-j', 'ACCEPT'], check=True)
    assert 'NO-SUCH-CHAIN' in str(excinfo.value) or 'No chain' in str(excinfo.value)


# ----------------------------------------------------------------------------- restore / save


@pytest.mark.parametrize('backend', ['nft', 'legacy'])
@pytest.mark.parametrize('family', ['ipv4', 'ipv6'])
def test_fresh_namespace_saves_nothing(netns, family, backend):
    assert netns.save(family, backend) == ('', '', 0)


@pytest.mark.parametrize('backend', ['nft', 'legacy'])
@pytest.mark.parametrize('family', ['ipv4', 'ipv6'])
def test_restore_save_roundtrip(netns, family, backend):
    text = ruleset(family)
    netns.restore(text, family, backend)
    result = netns.save(family, backend)
    assert result.returncode == 0, result.stderr
    assert normalize(result.stdout) == normalize(text)
    # Only the requested family/backend received the rules.
    other_family = 'ipv6' if family == 'ipv4' else 'ipv4'
    other_backend = 'legacy' if backend == 'nft' else 'nft'
    assert netns.save(other_family, backend).stdout == ''
    assert netns.save(family, other_backend).stdout == ''


def test_restore_error_includes_stderr(netns):
    with pytest.raises(RulesetLoadError) as excinfo:
        netns.restore('*filter\n-A INPUT -j LT-UNDECLARED\nCOMMIT\n')
    assert 'LT-UNDECLARED' in str(excinfo.value)
    assert 'iptables-nft-restore' in str(excinfo.value)


@pytest.mark.parametrize('family', ['ipv4', 'ipv6'])
def test_nft_save_warns_about_legacy_tables(netns, family):
    tool = 'iptables' if family == 'ipv4' else 'ip6tables'
    warning = f'# Warning: {tool}-legacy tables present, use {tool}-legacy-save to see them'
    netns.restore(ruleset(family), family, 'nft')
    assert warning not in netns.save(family, 'nft').stderr
    netns.restore(ruleset(family), family, 'legacy')
    result = netns.save(family, 'nft')
    assert result.returncode == 0
    assert warning in result.stderr
    assert warning not in result.stdout
    assert normalize(result.stdout) == normalize(ruleset(family))


# ----------------------------------------------------------------------------- loopback probes

INPUT_DROP_POLICY = '*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n'
OUTPUT_DROP_POLICY = '*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT DROP [0:0]\nCOMMIT\n'


def _ping_agrees(ns: Netns, family: str, expected: bool) -> None:
    """When iputils ping is installed, it must agree with the Python ICMP probe."""
    if shutil.which('ping') is None:
        return
    target = '127.0.0.1' if family == 'ipv4' else '::1'
    argv = ['ping', '-c1', '-W1'] + (['-6'] if family == 'ipv6' else []) + [target]
    assert (ns.run(argv, timeout=10).returncode == 0) is expected


@pytest.mark.parametrize('family,proto', [('ipv4', 'udp'), ('ipv4', 'icmp'), ('ipv6', 'udp'), ('ipv6', 'icmp')])
def test_loopback_probe_true_on_empty_ruleset(netns, family, proto):
    assert probe_loopback(netns, family, proto) is True
    if proto == 'icmp':
        _ping_agrees(netns, family, True)


@pytest.mark.parametrize('family,proto', [('ipv4', 'udp'), ('ipv4', 'icmp'), ('ipv6', 'udp')])
def test_loopback_probe_false_with_input_drop_policy(netns, family, proto):
    netns.restore(INPUT_DROP_POLICY, family)
    assert probe_loopback(netns, family, proto) is False
    if proto == 'icmp':
        _ping_agrees(netns, family, False)
    # The literal remediation makes the same namespace pass again.
    netns.restore(INPUT_DROP_POLICY.replace('COMMIT', '-A INPUT -i lo -j ACCEPT\nCOMMIT'), family)
    assert probe_loopback(netns, family, proto) is True


def test_loopback_probe_false_with_output_drop_policy(netns):
    netns.restore(OUTPUT_DROP_POLICY)
    assert probe_loopback(netns, 'ipv4', 'udp') is False


def test_loopback_probe_sees_legacy_rules_too(netns):
    # The nft ruleset is empty; the kernel still runs the legacy tables.
    netns.restore(INPUT_DROP_POLICY, 'ipv4', 'legacy')
    assert netns.save('ipv4', 'nft').stdout == ''
    assert probe_loopback(netns, 'ipv4', 'udp') is False


# ----------------------------------------------------------------------------- spoofed loopback source

ANTI_SPOOF = {
    'ipv4': '*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 127.0.0.0/8 ! -i lo -j DROP\nCOMMIT\n',
}


def test_spoofed_loopback_source_delivered_on_empty_ruleset(netns_pair):
    assert probe_spoofed_loopback_source(netns_pair) is True


def test_spoofed_loopback_source_dropped_by_rule(netns_pair):
    netns_pair.receiver.restore(ANTI_SPOOF['ipv4'])
    assert probe_spoofed_loopback_source(netns_pair) is False
    # The anti-spoofing rule must not break the receiver's own loopback traffic.
    assert probe_loopback(netns_pair.receiver, 'ipv4', 'udp') is True


def test_spoofed_loopback_source_dropped_by_kernel_without_route_localnet(netns_pair):
    for key in ('net.ipv4.conf.all.route_localnet', f'net.ipv4.conf.{netns_pair.receiver_if}.route_localnet'):
        netns_pair.receiver.sysctl(key, 0)
    assert probe_spoofed_loopback_source(netns_pair) is False


def _snmp6(ns: Netns, counter: str) -> int:
    for line in ns.run(['cat', '/proc/net/snmp6'], check=True).stdout.splitlines():
        name, _, value = line.partition(' ')
        if name == counter:
            return int(value)
    raise AssertionError(f'{counter} not in /proc/net/snmp6')


def test_ipv6_loopback_source_is_dropped_before_the_firewall(netns_pair):
    rx = netns_pair.receiver
    # Positive control: the raw IPv6 sender works with an ordinary source address.
    assert probe_spoofed_loopback_source(netns_pair, 'ipv6', source=netns_pair.sender_ipv6) is True
    # A counting rule at the very first hook (raw PREROUTING), no verdict.
    rx.restore('*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -s ::1/128\nCOMMIT\n', 'ipv6')
    hdr_errors = _snmp6(rx, 'Ip6InHdrErrors')
    assert probe_spoofed_loopback_source(netns_pair, 'ipv6') is False
    assert _snmp6(rx, 'Ip6InHdrErrors') == hdr_errors + 1  # dropped by ip6_rcv_core ...
    counted = rx.run(['ip6tables-nft', '-t', 'raw', '-L', 'PREROUTING', '-v', '-x', '-n'], check=True).stdout
    rule_line = [line for line in counted.splitlines() if '::1' in line]
    assert len(rule_line) == 1 and rule_line[0].split()[0] == '0', counted  # ... before netfilter saw it


# ----------------------------------------------------------------------------- ufw


def test_ufw_in_namespace_leaves_host_untouched(netns):
    host_paths = ['/etc/ufw', '/etc/default']
    before = {path: tree_digest(path) for path in host_paths}
    firewall_before = root_netns_firewall_snapshot()
    assert all(value == '' for value in firewall_before.values()), firewall_before

    ufw_in_netns(
        netns,
        [
            ['ufw', '--force', 'enable'],
            ['ufw', 'allow', 'in', 'on', 'lo'],
            ['ufw', 'allow', 'out', 'on', 'lo'],
            ['ufw', 'deny', 'in', 'from', '127.0.0.0/8'],
            ['ufw', 'deny', 'in', 'from', '::1'],
        ],
    )

    v4 = netns.save('ipv4')
    v6 = netns.save('ipv6')
    assert v4.returncode == 0 and v6.returncode == 0
    assert ':ufw-before-input - ' in v4.stdout and '-A INPUT -j ufw-before-input' in v4.stdout
    assert ':ufw6-before-input - ' in v6.stdout and '-A INPUT -j ufw6-before-input' in v6.stdout
    assert '-A ufw-user-input -s 127.0.0.0/8 -j DROP' in v4.stdout
    assert '-A ufw6-user-input -s ::1/128 -j DROP' in v6.stdout
    status = netns.run(['ufw', 'status'], check=True).stdout
    assert 'Status: active' in status
    with open(os.path.join(netns.etc_dir(), 'ufw', 'ufw.conf')) as fh:
        assert 'ENABLED=yes' in fh.read()
    # ufw's ruleset in the namespace accepts loopback traffic.
    assert probe_loopback(netns, 'ipv4', 'udp') is True

    assert {path: tree_digest(path) for path in host_paths} == before
    with open('/etc/ufw/ufw.conf') as fh:
        assert 'ENABLED=yes' not in fh.read()
    assert root_netns_firewall_snapshot() == firewall_before


def test_root_namespace_firewall_untouched_after_all_of_the_above():
    snapshot = root_netns_firewall_snapshot()
    assert all(value == '' for value in snapshot.values()), snapshot
