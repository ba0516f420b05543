"""Network-namespace test harness for the ``loopback_traffic`` check.

Tests use this module to load real rulesets into a throw-away Linux network
namespace, read them back with the real ``*-save`` tools, and send real packets
to see what the kernel actually does with loopback traffic.

Safety model
------------
* Every namespace is created here, is named ``lt-<random>`` and is deleted when
  its context manager (or fixture) ends, also when the test fails.
* Every firewall command runs as ``ip netns exec <name> <tool> ...`` (never
  through a shell), so the firewall of the machine's own network namespace is
  never touched.
* Packets are only sent over ``lo`` inside a namespace, or over a veth pair
  between two of our namespaces, addressed from ``198.18.0.0/15`` and the ULA
  ``fd4c:7400::/64``.
* ufw is isolated with ``ip netns exec``'s ``/etc/netns/<name>/`` bind mounts,
  see :func:`ufw_in_netns`.

Gating
------
:func:`require_netns` (used by the fixtures) and :func:`require_tools` skip the
test when namespaces or a tool are unavailable (not root, ``ip`` missing,
``ip netns add`` refused, tool not installed). With the environment variable
``LOOPBACK_TRAFFIC_REQUIRE_NETNS=1`` (set by CI) the test fails instead.

Using the fixtures
------------------
Import them into a conftest or a test module::

    from tests.netns import netns, netns_pair  # noqa: F401

Running this file as a script is not supported; it is a pytest helper module.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Iterator, Literal, NamedTuple, NoReturn, Sequence

import pytest

__all__ = [
    'ENV_REQUIRE_NETNS',
    'NETNS_PREFIX',
    'NetnsError',
    'NetnsCommandError',
    'RulesetLoadError',
    'ProbeError',
    'SaveResult',
    'Netns',
    'NetnsPair',
    'namespace_exists',
    'require_netns',
    'require_tools',
    'restore_tool',
    'save_tool',
    'probe_loopback',
    'probe_spoofed_loopback_source',
    'ufw_in_netns',
    'tree_digest',
    'root_netns_firewall_snapshot',
    'netns',
    'netns_pair',
]

Family = Literal['ipv4', 'ipv6']
Backend = Literal['nft', 'legacy']
Proto = Literal['udp', 'icmp']

#: Environment variable: when ``1``, unavailable namespaces/tools fail the test instead of skipping it.
ENV_REQUIRE_NETNS = 'LOOPBACK_TRAFFIC_REQUIRE_NETNS'
#: Every namespace created by this module has a name starting with this prefix.
NETNS_PREFIX = 'lt-'

#: Default wait for a packet that may never arrive (seconds).
PROBE_TIMEOUT = 1.0

_IP = 'ip'


# --------------------------------------------------------------------------- errors


class NetnsError(RuntimeError):
    """A namespace could not be created, configured or used."""


class NetnsCommandError(subprocess.CalledProcessError, NetnsError):
    """A command inside a namespace exited non-zero; ``str()`` includes its stderr."""

    def __str__(self) -> str:
        stderr = (self.stderr or '').strip()
        stdout = (self.output or '').strip()
        text = f'command {self.cmd!r} exited {self.returncode}'
        if stderr:
            text += f'\nstderr:\n{stderr}'
        if stdout:
            text += f'\nstdout:\n{stdout}'
        return text


class RulesetLoadError(NetnsError):
    """``*-restore`` rejected a ruleset."""


class ProbeError(NetnsError):
    """A packet probe could not run (its helper crashed or printed nonsense).

    Distinct from a probe result of ``False``: a broken probe must never read as
    "the firewall dropped the packet".
    """


# --------------------------------------------------------------------------- gating


def _unavailable(reason: str) -> NoReturn:
    """Skip the current test, or fail it when ``LOOPBACK_TRAFFIC_REQUIRE_NETNS=1``."""
    if os.environ.get(ENV_REQUIRE_NETNS) == '1':
        pytest.fail(f'{reason} ({ENV_REQUIRE_NETNS}=1, so this is a failure)', pytrace=False)
    pytest.skip(reason)


@functools.lru_cache(maxsize=None)
def _netns_unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` when they can (cached)."""
    if os.geteuid() != 0:
        return 'network-namespace tests need root (euid 0)'
    if shutil.which(_IP) is None:
        return "network-namespace tests need iproute2's `ip` command"
    name = _new_name()
    try:
        proc = subprocess.run(
            [_IP, 'netns', 'add', name], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f'cannot create a network namespace: {exc}'
    if proc.returncode != 0:
        return f'cannot create a network namespace (`ip netns add` exited {proc.returncode}): {proc.stderr.strip()}'
    subprocess.run([_IP, 'netns', 'delete', name], capture_output=True, text=True, timeout=30, check=False)
    return None


def require_netns() -> None:
    """Skip (or, with ``LOOPBACK_TRAFFIC_REQUIRE_NETNS=1``, fail) unless namespaces work here.

    Checks: running as root, ``ip`` installed, and ``ip netns add`` really works
    (a probe namespace is created and deleted once per session).
    """
    reason = _netns_unavailable_reason()
    if reason is not None:
        _unavailable(reason)


def require_tools(*tools: str) -> None:
    """Skip (or fail, see :func:`require_netns`) unless every named executable is on ``PATH``."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        _unavailable(f"required tool(s) not installed: {', '.join(missing)}")


# --------------------------------------------------------------------------- tools

_RESTORE_TOOLS: dict[tuple[str, str], str] = {
    ('ipv4', 'nft'): 'iptables-nft-restore',
    ('ipv6', 'nft'): 'ip6tables-nft-restore',
    ('ipv4', 'legacy'): 'iptables-legacy-restore',
    ('ipv6', 'legacy'): 'ip6tables-legacy-restore',
}
_SAVE_TOOLS: dict[tuple[str, str], str] = {
    ('ipv4', 'nft'): 'iptables-nft-save',
    ('ipv6', 'nft'): 'ip6tables-nft-save',
    ('ipv4', 'legacy'): 'iptables-legacy-save',
    ('ipv6', 'legacy'): 'ip6tables-legacy-save',
}


def _tool(table: dict[tuple[str, str], str], family: str, backend: str) -> str:
    try:
        return table[(family, backend)]
    except KeyError:
        raise ValueError(
            f"family must be 'ipv4' or 'ipv6' and backend 'nft' or 'legacy', got {family!r}, {backend!r}"
        ) from None


def restore_tool(family: Family = 'ipv4', backend: Backend = 'nft') -> str:
    """Name of the restore tool for a family/backend, e.g. ``ip6tables-legacy-restore``."""
    return _tool(_RESTORE_TOOLS, family, backend)


def save_tool(family: Family = 'ipv4', backend: Backend = 'nft') -> str:
    """Name of the save tool for a family/backend, e.g. ``iptables-nft-save``."""
    return _tool(_SAVE_TOOLS, family, backend)


class SaveResult(NamedTuple):
    """What a ``*-save`` tool printed, and its exit status."""

    stdout: str
    stderr: str
    returncode: int


# --------------------------------------------------------------------------- namespaces


def _new_name() -> str:
    return f'{NETNS_PREFIX}{secrets.token_hex(4)}'


def _run_host(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run an ``ip ...`` management command in the root namespace (never a firewall tool)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


class Netns:
    """A fresh network namespace ``lt-<random>`` with ``lo`` up; a context manager.

    ``with Netns() as ns: ...`` creates the namespace on entry and on exit kills
    every process still inside it (``ip netns pids``), deletes it, and removes
    ``/etc/netns/<name>`` if :meth:`overlay_etc` created it. :meth:`close` is
    idempotent and may also be called directly.
    """

    def __init__(self, name: str | None = None) -> None:
        if name is None:
            name = _new_name()
        if not name.startswith(NETNS_PREFIX) or '/' in name or len(name) > 64:
            raise ValueError(f'namespace names must start with {NETNS_PREFIX!r}: {name!r}')
        self.name: str = name
        self._created = False
        self._closed = False
        self._children: list[subprocess.Popen[str]] = []

    # -- lifecycle

    def create(self) -> Netns:
        """Create the namespace and bring ``lo`` up. Raises :class:`NetnsError` on failure."""
        if self._created:
            return self
        proc = _run_host([_IP, 'netns', 'add', self.name])
        if proc.returncode != 0:
            raise NetnsError(f'ip netns add {self.name} failed: {proc.stderr.strip()}')
        self._created = True
        try:
            self.ip('link', 'set', 'lo', 'up')
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def pids(self) -> list[int]:
        """PIDs of the processes whose network namespace is this one."""
        if not self._created:
            return []
        proc = _run_host([_IP, 'netns', 'pids', self.name])
        return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]

    def close(self) -> None:
        """Kill the processes left in the namespace, delete it and its ``/etc/netns`` directory."""
        if self._closed:
            return
        self._closed = True
        try:
            for child in self._children:
                if child.poll() is None:
                    child.kill()
                try:
                    child.communicate(timeout=5)
                except (subprocess.TimeoutExpired, ValueError, OSError):
                    pass
            if self._created:
                self._kill_remaining()
                proc = _run_host([_IP, 'netns', 'delete', self.name])
                if proc.returncode != 0 and namespace_exists(self.name):
                    raise NetnsError(f'ip netns delete {self.name} failed: {proc.stderr.strip()}')
        finally:
            etc_dir = self.etc_dir()
            if os.path.isdir(etc_dir):
                shutil.rmtree(etc_dir, ignore_errors=True)
                try:
                    os.rmdir(os.path.dirname(etc_dir))  # /etc/netns, only when empty
                except OSError:
                    pass

    def _kill_remaining(self) -> None:
        # Only processes inside this namespace, which this harness created, are signalled.
        deadline = time.monotonic() + 3
        while True:
            pids = [pid for pid in self.pids() if pid != os.getpid()]
            if not pids or time.monotonic() > deadline:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    def exists(self) -> bool:
        """Whether ``ip netns list`` still shows this namespace."""
        return namespace_exists(self.name)

    # -- commands

    def argv_prefix(self) -> list[str]:
        """``['ip', 'netns', 'exec', NAME]``: prepend it to run a command in this namespace."""
        return [_IP, 'netns', 'exec', self.name]

    def run(
        self,
        argv: Sequence[str],
        input: str | None = None,  # noqa: A002 - mirrors subprocess.run
        timeout: float = 30,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ip netns exec NAME *argv`` (no shell), capturing text stdout/stderr.

        With ``check=True`` a non-zero exit raises :class:`NetnsCommandError`,
        whose message includes stderr. ``subprocess.TimeoutExpired`` propagates.
        """
        if not self._created or self._closed:
            raise NetnsError(f'namespace {self.name} is not open')
        if isinstance(argv, str):
            raise TypeError('argv must be a list of strings, not a shell string')
        cmd = self.argv_prefix() + list(argv)
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise NetnsCommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def spawn(self, argv: Sequence[str], stdin_pipe: bool = False) -> subprocess.Popen[str]:
        """Start ``ip netns exec NAME *argv`` in the background (stdout/stderr piped, text).

        stdin is a pipe when ``stdin_pipe``, else ``/dev/null``. The process is
        killed, at the latest, when the namespace closes.
        """
        if not self._created or self._closed:
            raise NetnsError(f'namespace {self.name} is not open')
        child = subprocess.Popen(
            self.argv_prefix() + list(argv),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._children.append(child)
        return child

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME *args``, raising :class:`NetnsCommandError` on failure."""
        cmd = [_IP, '-n', self.name, *args]
        proc = _run_host(cmd)
        if proc.returncode != 0:
            raise NetnsCommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def sysctl(self, key: str, value: str | int) -> None:
        """``sysctl -w key=value`` inside the namespace (only per-namespace ``net.*`` keys)."""
        if not key.startswith('net.'):
            raise ValueError(f'only per-namespace net.* sysctls may be set here, not {key!r}')
        self.run(['sysctl', '-q', '-w', f'{key}={value}'], check=True)

    # -- firewall

    def restore(
        self, ruleset_text: str, family: Family = 'ipv4', backend: Backend = 'nft', *, noflush: bool = False
    ) -> None:
        """Load ``ruleset_text`` (``iptables-save`` format) with the real restore tool.

        ``backend='nft'`` uses ``iptables-nft-restore``/``ip6tables-nft-restore``,
        ``backend='legacy'`` ``iptables-legacy-restore``/``ip6tables-legacy-restore``.
        Skips/fails the test if the tool is not installed (see :func:`require_tools`);
        raises :class:`RulesetLoadError` with the tool's stderr when it rejects the ruleset.
        """
        tool = restore_tool(family, backend)
        require_tools(tool)
        argv = [tool] + (['--noflush'] if noflush else [])
        proc = self.run(argv, input=ruleset_text, timeout=30)
        if proc.returncode != 0:
            raise RulesetLoadError(
                f'{tool} in namespace {self.name} exited {proc.returncode}\n'
                f'stderr:\n{proc.stderr.strip()}\nruleset:\n{ruleset_text}'
            )

    def save_argv(self, family: Family = 'ipv4', backend: Backend = 'nft') -> list[str]:
        """The argv that runs the save tool in this namespace, e.g. for a check's command config."""
        return self.argv_prefix() + [save_tool(family, backend)]

    def save(self, family: Family = 'ipv4', backend: Backend = 'nft') -> SaveResult:
        """Run the real save tool (``iptables-nft-save``, ``ip6tables-legacy-save``, ...) in the namespace."""
        tool = save_tool(family, backend)
        require_tools(tool)
        proc = self.run([tool], timeout=30)
        return SaveResult(proc.stdout, proc.stderr, proc.returncode)

    # -- /etc isolation

    def etc_dir(self) -> str:
        """``/etc/netns/<name>``: entries here are bind-mounted over ``/etc/<entry>`` by ``ip netns exec``."""
        return os.path.join('/etc/netns', self.name)

    def overlay_etc(self, entry: str) -> str:
        """Give commands run in this namespace a private copy of ``/etc/<entry>``.

        Copies ``/etc/<entry>`` (file or directory) to ``/etc/netns/<name>/<entry>``;
        from then on ``ip netns exec`` bind-mounts the copy over ``/etc/<entry>``
        for every command of this namespace, so writes land in the copy. Verifies
        that the bind mount really takes effect (same inode seen from inside) and
        raises :class:`NetnsError` otherwise. Returns the copy's path. The copy is
        removed by :meth:`close`. Prefer directories: a program that replaces a
        single bind-mounted file by rename() fails with EBUSY.
        """
        if '/' in entry or entry in ('', '.', '..', 'netns'):
            raise ValueError(f'not a top-level /etc entry: {entry!r}')
        src = os.path.join('/etc', entry)
        dst = os.path.join(self.etc_dir(), entry)
        if not os.path.lexists(dst):
            if os.path.isdir(src) and not os.path.islink(src):
                shutil.copytree(src, dst, symlinks=True)
            else:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(src, dst, follow_symlinks=False)
        expected = os.lstat(dst)
        seen = self.run(['stat', '-c', '%d %i', src], check=True).stdout.split()
        if seen != [str(expected.st_dev), str(expected.st_ino)]:
            raise NetnsError(f'ip netns exec did not bind-mount {dst} over {src} (saw dev/inode {seen})')
        return dst


def namespace_exists(name: str) -> bool:
    """Whether ``ip netns list`` shows a namespace called ``name``."""
    proc = _run_host([_IP, 'netns', 'list'])
    return any(line.split()[0] == name for line in proc.stdout.splitlines() if line.strip())


@dataclass
class NetnsPair:
    """Two namespaces joined by a veth pair: ``sender`` -> ``receiver``.

    Addresses (links up, IPv6 without DAD): receiver ``198.18.0.1/24`` and
    ``fd4c:7400::1/64`` on :attr:`receiver_if`; sender ``198.18.0.2/24`` and
    ``fd4c:7400::2/64`` on :attr:`sender_if`. The sender has permanent neighbour
    entries for the receiver's addresses, so no ARP/ND is needed before a packet
    goes out. On the receiver: ``route_localnet=1`` (all and veth),
    ``rp_filter=0`` (all, default, veth) and ``accept_local=1`` (all and veth),
    so that an IPv4 packet with a loopback source arriving on the veth is not
    dropped by the kernel's martian checks and reaches the firewall.
    Use as a context manager (the fixture :func:`netns_pair` does).
    """

    receiver: Netns
    sender: Netns
    receiver_if: str = 'lt-rx0'
    sender_if: str = 'lt-tx0'
    receiver_ipv4: str = '198.18.0.1'
    sender_ipv4: str = '198.18.0.2'
    receiver_ipv6: str = 'fd4c:7400::1'
    sender_ipv6: str = 'fd4c:7400::2'
    ipv4_prefixlen: int = 24
    ipv6_prefixlen: int = 64

    @classmethod
    def create(cls) -> NetnsPair:
        """Create, wire and configure both namespaces (cleaning up if any step fails)."""
        pair = cls(receiver=Netns(), sender=Netns())
        try:
            pair._setup()
        except BaseException:
            pair.close()
            raise
        return pair

    def _setup(self) -> None:
        rx, tx = self.receiver, self.sender
        rx.create()
        tx.create()
        # Created directly inside the namespaces: no interface ever appears in the root namespace.
        rx.ip('link', 'add', self.receiver_if, 'type', 'veth', 'peer', 'name', self.sender_if, 'netns', tx.name)
        rx.ip('addr', 'add', f'{self.receiver_ipv4}/{self.ipv4_prefixlen}', 'dev', self.receiver_if)
        tx.ip('addr', 'add', f'{self.sender_ipv4}/{self.ipv4_prefixlen}', 'dev', self.sender_if)
        rx.ip('-6', 'addr', 'add', f'{self.receiver_ipv6}/{self.ipv6_prefixlen}', 'dev', self.receiver_if, 'nodad')
        tx.ip('-6', 'addr', 'add', f'{self.sender_ipv6}/{self.ipv6_prefixlen}', 'dev', self.sender_if, 'nodad')
        for key, value in (
            ('net.ipv4.conf.all.route_localnet', 1),
            (f'net.ipv4.conf.{self.receiver_if}.route_localnet', 1),
            ('net.ipv4.conf.all.rp_filter', 0),
            ('net.ipv4.conf.default.rp_filter', 0),
            (f'net.ipv4.conf.{self.receiver_if}.rp_filter', 0),
            ('net.ipv4.conf.all.accept_local', 1),
            (f'net.ipv4.conf.{self.receiver_if}.accept_local', 1),
        ):
            rx.sysctl(key, value)
        rx.ip('link', 'set', self.receiver_if, 'up')
        tx.ip('link', 'set', self.sender_if, 'up')
        rx_mac = self.link_info(rx, self.receiver_if)['address']
        tx.ip('neigh', 'replace', self.receiver_ipv4, 'lladdr', rx_mac, 'dev', self.sender_if, 'nud', 'permanent')
        tx.ip('-6', 'neigh', 'replace', self.receiver_ipv6, 'lladdr', rx_mac, 'dev', self.sender_if, 'nud', 'permanent')

    @staticmethod
    def link_info(ns: Netns, ifname: str) -> dict:
        """``ip -j -s link show dev IFNAME`` in ``ns``, parsed (includes ``stats64``)."""
        out = ns.ip('-j', '-s', 'link', 'show', 'dev', ifname).stdout
        return json.loads(out)[0]

    def receiver_rx_packets(self) -> int:
        """Packets received so far on the receiver's veth (counted before any firewall or martian check)."""
        return int(self.link_info(self.receiver, self.receiver_if)['stats64']['rx']['packets'])

    def close(self) -> None:
        """Delete both namespaces (the veth pair goes with them)."""
        try:
            self.sender.close()
        finally:
            self.receiver.close()

    def __enter__(self) -> NetnsPair:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------- probes
#
# The helpers below run as `ip netns exec NS <python> -c CODE ARG...` and print one
# status word. Any other output or a non-zero exit raises ProbeError.

_LOOPBACK_UDP = textwrap.dedent(
    """
    import errno, os, socket, sys, time
    family, timeout = sys.argv[1], float(sys.argv[2])
    fam, addr = (socket.AF_INET, '127.0.0.1') if family == 'ipv4' else (socket.AF_INET6, '::1')
    token = os.urandom(16)
    rx = socket.socket(fam, socket.SOCK_DGRAM)
    rx.bind((addr, 0))
    port = rx.getsockname()[1]
    tx = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        tx.sendto(token, (addr, port))
    except OSError as exc:  # EPERM: an OUTPUT rule dropped it
        print('NOT-SENT', errno.errorcode.get(exc.errno, exc.errno))
        sys.exit(0)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print('TIMEOUT')
            break
        rx.settimeout(left)
        try:
            data, _ = rx.recvfrom(2048)
        except socket.timeout:
            print('TIMEOUT')
            break
        if data == token:
            print('RECEIVED')
            break
    """
)

_LOOPBACK_ICMP = textwrap.dedent(
    """
    import errno, os, socket, struct, sys, time
    family, timeout = sys.argv[1], float(sys.argv[2])

    def csum(data):
        if len(data) % 2:
            data += b'\\0'
        s = sum(struct.unpack('!%dH' % (len(data) // 2), data))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF

    ident, seq, payload = int.from_bytes(os.urandom(2), 'big'), 1, os.urandom(16)
    if family == 'ipv4':
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        addr, request, reply = '127.0.0.1', 8, 0
        hdr = struct.pack('!BBHHH', request, 0, 0, ident, seq)
        packet = struct.pack('!BBHHH', request, 0, csum(hdr + payload), ident, seq) + payload
    else:  # the kernel computes ICMPv6 checksums on raw ICMPv6 sockets
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        addr, request, reply = '::1', 128, 129
        packet = struct.pack('!BBHHH', request, 0, 0, ident, seq) + payload
    try:
        sock.sendto(packet, (addr, 0))
    except OSError as exc:
        print('NOT-SENT', errno.errorcode.get(exc.errno, exc.errno))
        sys.exit(0)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print('TIMEOUT')
            break
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            print('TIMEOUT')
            break
        if family == 'ipv4':  # raw IPv4 sockets see the IP header
            data = data[(data[0] & 0x0F) * 4:]
        if len(data) >= 8 + len(payload):
            typ, _, _, rid, rseq = struct.unpack('!BBHHH', data[:8])
            if typ == reply and rid == ident and rseq == seq and data[8:] == payload:
                print('RECEIVED')
                break
    """
)

# Receiver side of the spoofed-source probe: print READY <port>, then wait for the token
# coming from the expected source address.
_UDP_LISTENER = textwrap.dedent(
    """
    import socket, sys, time
    family, bind_addr, timeout, token, want_src = sys.argv[1:6]
    fam = socket.AF_INET if family == 'ipv4' else socket.AF_INET6
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.bind((bind_addr, 0))
    print('READY', sock.getsockname()[1], flush=True)
    sys.stdin.readline()  # the parent says when the datagram has been sent
    deadline = time.monotonic() + float(timeout)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print('TIMEOUT', flush=True)
            break
        sock.settimeout(left)
        try:
            data, src = sock.recvfrom(2048)
        except socket.timeout:
            print('TIMEOUT', flush=True)
            break
        if data == token.encode():
            print('RECEIVED' if src[0] == want_src else 'WRONG-SOURCE', src[0], flush=True)
            break
    """
)

# Sender side: one UDP datagram in a hand-made IP header (any source address).
_SPOOF_SENDER = textwrap.dedent(
    """
    import os, socket, struct, sys
    family, src, dst, port, token = sys.argv[1:6]
    port, token = int(port), token.encode()

    def csum(data):
        if len(data) % 2:
            data += b'\\0'
        s = sum(struct.unpack('!%dH' % (len(data) // 2), data))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF

    sport = 40000 + int.from_bytes(os.urandom(2), 'big') % 20000
    ulen = 8 + len(token)
    fam = socket.AF_INET if family == 'ipv4' else socket.AF_INET6
    s_bin, d_bin = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    if family == 'ipv4':
        pseudo = s_bin + d_bin + struct.pack('!BBH', 0, socket.IPPROTO_UDP, ulen)
    else:
        pseudo = s_bin + d_bin + struct.pack('!I3xB', ulen, socket.IPPROTO_UDP)
    udp = struct.pack('!HHHH', sport, port, ulen, 0) + token
    udp = struct.pack('!HHHH', sport, port, ulen, csum(pseudo + udp) or 0xFFFF) + token
    if family == 'ipv4':
        ident = int.from_bytes(os.urandom(2), 'big')
        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + ulen, ident, 0x4000, 64, socket.IPPROTO_UDP, 0, s_bin, d_bin)
        ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    else:
        ip = struct.pack('!IHBB16s16s', 6 << 28, ulen, socket.IPPROTO_UDP, 64, s_bin, d_bin)
    # IPPROTO_RAW implies IP_HDRINCL / IPV6_HDRINCL: the kernel sends our header as is.
    sock = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.sendto(ip + udp, (dst, 0))
    print('SENT')
    """
)


def _python(code: str, *args: object) -> list[str]:
    return [sys.executable, '-I', '-c', code, *(str(a) for a in args)]


def _status(proc: subprocess.CompletedProcess[str], what: str) -> list[str]:
    words = proc.stdout.split()
    if proc.returncode != 0 or not words:
        raise ProbeError(f'{what} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}')
    return words


def _check_family(family: str) -> None:
    if family not in ('ipv4', 'ipv6'):
        raise ValueError(f"family must be 'ipv4' or 'ipv6', got {family!r}")


def probe_loopback(
    ns: Netns, family: Family = 'ipv4', proto: Proto = 'udp', timeout: float = PROBE_TIMEOUT
) -> bool:
    """Whether loopback traffic over ``lo`` really gets through inside ``ns``.

    ``udp``: a datagram from a socket in ``ns`` to a listener on ``127.0.0.1``
    (``::1``) in the same namespace is received within ``timeout`` seconds.
    ``icmp``: an echo request to ``127.0.0.1`` (``::1``) gets its echo reply
    (what ``ping -c1 -W1`` checks; done with a raw socket in Python so that no
    ``ping`` binary is needed). On ``lo`` each packet traverses both OUTPUT and
    INPUT (plus PREROUTING/POSTROUTING), so a deny in either makes this False;
    a send refused with EPERM by an OUTPUT rule is False too. Raises
    :class:`ProbeError` if the helper itself breaks.
    """
    _check_family(family)
    if proto == 'udp':
        code = _LOOPBACK_UDP
    elif proto == 'icmp':
        code = _LOOPBACK_ICMP
    else:
        raise ValueError(f"proto must be 'udp' or 'icmp', got {proto!r}")
    proc = ns.run(_python(code, family, timeout), timeout=timeout + 20)
    words = _status(proc, f'{proto}/{family} loopback probe in {ns.name}')
    if words[0] == 'RECEIVED':
        return True
    if words[0] in ('TIMEOUT', 'NOT-SENT'):
        return False
    raise ProbeError(f'unexpected loopback probe output: {proc.stdout!r}')


def probe_spoofed_loopback_source(
    pair: NetnsPair,
    family: Family = 'ipv4',
    timeout: float = PROBE_TIMEOUT,
    source: str | None = None,
) -> bool:
    """Whether a UDP datagram with a loopback SOURCE address, arriving on the receiver's veth, is delivered.

    The sender namespace writes one IPv4 packet with source ``127.0.0.1`` (or
    ``source``), destination the receiver's veth address, a correct IP header
    and UDP checksum, through a raw ``IPPROTO_RAW`` (IP_HDRINCL) socket; a UDP
    listener in the receiver namespace reports whether it got it (from that
    source) within ``timeout`` seconds.

    Kernel prerequisites on the receiver, all set by :class:`NetnsPair`:

    * ``net.ipv4.conf.{all,<veth>}.route_localnet=1``: otherwise the route lookup
      on input treats a 127/8 source as a martian and drops the packet;
    * ``net.ipv4.conf.{all,default,<veth>}.rp_filter=0``: the reverse path of
      127.0.0.1 is ``lo``, not the veth;
    * ``net.ipv4.conf.{all,<veth>}.accept_local=1``: ``fib_validate_source`` also
      rejects a source that is one of the namespace's own addresses (127.0.0.1 is
      on the receiver's ``lo``) unless ``accept_local`` is on;

    and on the sender a permanent neighbour entry for the receiver: the ARP
    request triggered by a packet with source 127.0.0.1 carries 127.0.0.1 as
    its sender address (the sender's kernel takes it from the packet, since it
    is a local address there) and the receiver ignores it, so the neighbour
    stays INCOMPLETE and nothing is sent (``arp_announce=2`` on the sender would
    also avoid that). With these, an empty ruleset delivers the packet (True) and
    ``-A INPUT -s 127.0.0.0/8 ! -i lo -j DROP`` on the receiver drops it (False).

    ``family='ipv6'`` sends source ``::1`` to the receiver's ULA. Linux always
    drops an IPv6 packet with source ``::1`` arriving on a non-loopback device in
    ``ip6_rcv_core``, before netfilter, so the result is False whatever the
    ruleset; it exists to demonstrate exactly that.
    """
    _check_family(family)
    if family == 'ipv4':
        src = source or '127.0.0.1'
        dst = pair.receiver_ipv4
    else:
        src = source or '::1'
        dst = pair.receiver_ipv6
    token = secrets.token_hex(16)
    listener = pair.receiver.spawn(_python(_UDP_LISTENER, family, dst, timeout, token, src), stdin_pipe=True)
    try:
        assert listener.stdout is not None
        ready, _, _ = select.select([listener.stdout], [], [], 15)
        line = listener.stdout.readline() if ready else ''
        words = line.split()
        if len(words) != 2 or words[0] != 'READY':
            listener.kill()
            _, err = listener.communicate(timeout=5)
            raise ProbeError(f'listener in {pair.receiver.name} did not start: {line!r} {err.strip()}')
        port = int(words[1])
        sent = pair.sender.run(_python(_SPOOF_SENDER, family, src, dst, port, token), timeout=20)
        if sent.stdout.split() != ['SENT']:
            raise ProbeError(f'spoofing sender in {pair.sender.name} failed (exit {sent.returncode}): '
                             f'{sent.stderr.strip() or sent.stdout.strip()}')
        # Starts the listener's countdown only now that the datagram is on its way.
        out, err = listener.communicate(input='sent\n', timeout=timeout + 20)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate(timeout=5)
    result = out.split()
    if listener.returncode != 0 or not result:
        raise ProbeError(f'listener in {pair.receiver.name} failed (exit {listener.returncode}): {err.strip()}')
    if result[0] == 'RECEIVED':
        return True
    if result[0] == 'TIMEOUT':
        return False
    raise ProbeError(f'unexpected listener output: {out!r}')


# --------------------------------------------------------------------------- ufw


def ufw_in_netns(
    ns: Netns, commands: Sequence[Sequence[str]], timeout: float = 60
) -> list[subprocess.CompletedProcess[str]]:
    """Run ufw commands inside ``ns`` without touching the host's ufw configuration.

    Each command is ufw's argument list, e.g. ``['--force', 'enable']`` or
    ``['allow', 'in', 'on', 'lo']``; a leading ``'ufw'`` is accepted too.

    Isolation: before the first command, private copies of ``/etc/ufw`` (rules,
    ``ufw.conf``) and ``/etc/default`` (``/etc/default/ufw`` is rewritten by
    ``ufw default ...``) are placed in ``/etc/netns/<name>/``, which
    ``ip netns exec`` bind-mounts over ``/etc/ufw`` and ``/etc/default`` for every
    command of this namespace; :meth:`Netns.overlay_etc` verifies the mounts
    before ufw runs. ufw's only other write is the empty lock file
    ``/run/ufw.lock`` (shared with the host's ufw, holds no state; left in place).
    The rules ufw loads go to this namespace's iptables/ip6tables (the ``iptables``
    alternative, normally nft), and its ``sysctl -p /etc/ufw/sysctl.conf`` only sets
    per-namespace ``net.*`` keys. Raises :class:`NetnsCommandError` (with stderr)
    when a command fails. The copies are removed when the namespace closes.
    """
    require_tools('ufw')
    ns.overlay_etc('ufw')
    ns.overlay_etc('default')
    results = []
    for command in commands:
        if isinstance(command, str):
            raise TypeError('each ufw command must be a list of arguments, not a string')
        argv = list(command)
        if argv and argv[0] == 'ufw':
            argv = argv[1:]
        results.append(ns.run(['ufw', *argv], timeout=timeout, check=True))
    return results


# --------------------------------------------------------------------------- host checks


def tree_digest(path: str) -> str:
    """SHA-256 over the names, types, modes and contents of everything under ``path`` (or one file)."""
    digest = hashlib.sha256()

    def add(full: str, rel: str) -> None:
        st = os.lstat(full)
        digest.update(f'{rel}\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0'.encode())
        if os.path.islink(full):
            digest.update(os.readlink(full).encode())
        elif os.path.isfile(full):
            with open(full, 'rb') as fh:
                digest.update(hashlib.sha256(fh.read()).digest())
        digest.update(b'\0')

    if not os.path.isdir(path) or os.path.islink(path):
        add(path, os.path.basename(path))
        return digest.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(dirs + files):
            full = os.path.join(root, name)
            add(full, os.path.relpath(full, path))
    return digest.hexdigest()


def root_netns_firewall_snapshot() -> dict[str, str]:
    """What the ROOT namespace's firewall holds, read without changing anything.

    Keys: ``iptables-nft-save`` / ``ip6tables-nft-save`` (stdout without ``#``
    comment lines), ``nft list ruleset``, and the legacy table lists from
    ``/proc/net/ip_tables_names`` / ``ip6_tables_names`` (read directly, so no
    legacy table is instantiated by looking). An untouched host gives all ``''``.
    """
    snap: dict[str, str] = {}
    for tool in ('iptables-nft-save', 'ip6tables-nft-save'):
        if shutil.which(tool):
            out = _run_host([tool]).stdout
            snap[tool] = ''.join(line for line in out.splitlines(True) if not line.startswith('#'))
    if shutil.which('nft'):
        snap['nft list ruleset'] = _run_host(['nft', 'list', 'ruleset']).stdout
    for name in ('ip_tables_names', 'ip6_tables_names'):
        try:
            with open(f'/proc/net/{name}') as fh:
                snap[name] = fh.read()
        except OSError:
            snap[name] = ''
    return snap


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh namespace ``lt-<random>`` with ``lo`` up, deleted after the test."""
    require_netns()
    with Netns() as ns:
        yield ns


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """A :class:`NetnsPair` (receiver and sender joined by a veth), deleted after the test."""
    require_netns()
    require_tools('sysctl')
    with NetnsPair.create() as pair:
        yield pair
