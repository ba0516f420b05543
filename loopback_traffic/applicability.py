"""Is a rule applicable on this host? (spec section 4)

The iptables rules where iptables is installed and neither nftables nor ufw is; the ufw rule where
ufw is installed; the nftables rule where nftables is installed and firewalld is not enabled. The
IPv6 rule, and the IPv6 part of the others, also need IPv6 enabled. dpkg's status file is read (and
re-read only when it changes); on RPM hosts ``rpm -q`` runs once and again only when the RPM
database changes. Whether firewalld is enabled, and whether ufw is, is read from their files under
``host_root`` (systemd's unit links, ufw.conf), never by running a command.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Tuple

from .runner import CollectionError, run_command
from .config import Options
from .requirements import IPTABLES, IPV6, NFTABLES as NFTABLES_MANAGER, UFW as UFW_MANAGER, ComplianceRule

IPTABLES_PACKAGES = frozenset({'iptables', 'iptables-nft', 'iptables-legacy'})
NFTABLES = 'nftables'
UFW = 'ufw'
WATCHED_PACKAGES = IPTABLES_PACKAGES | {NFTABLES, UFW}


class ApplicabilityError(Exception):
    """Applicability could not be decided; the message says why and how to fix it."""


@dataclass(frozen=True)
class Applicability:
    applicable: bool
    reason: str
    # The firewall manager the rule is written for is installed but its configuration says it is off:
    # the file that says so (as a path on the host), '' otherwise.
    disabled_by: str = ''


UFW_CONFIG = '/etc/ufw/ufw.conf'
# Where systemd keeps what is enabled: persistently (/etc) and for this boot only (/run).
SYSTEMD_UNIT_DIRECTORIES = ('/etc/systemd/system', '/run/systemd/system')
SYSTEMD_VENDOR_DIRECTORIES = ('/usr/lib/systemd/system', '/lib/systemd/system', '/etc/systemd/system')
FIREWALLD_UNIT = 'firewalld.service'
FIREWALLD_ALIAS = 'dbus-org.fedoraproject.FirewallD1.service'


def _on_host(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip('/')) if root not in ('', '/') else path


def _unit_target_exists(root: str, link: str) -> bool:
    """An enablement link whose unit file is gone (the package was removed) starts nothing."""
    try:
        target = os.readlink(link)
    except OSError:
        return os.path.exists(link)
    if target == '/dev/null':
        return False
    if os.path.isabs(target):
        return os.path.exists(_on_host(root, target))
    return os.path.exists(os.path.join(os.path.dirname(link), target))


def _masked(root: str, unit: str) -> bool:
    for directory in SYSTEMD_UNIT_DIRECTORIES:
        try:
            if os.readlink(_on_host(root, os.path.join(directory, unit))) == '/dev/null':
                return True
        except OSError:
            continue
    return False


def firewalld_enabled(root: str) -> Optional[str]:
    """The systemd link (as a path on the host) that enables firewalld, or None when it is not enabled
    (no link, a masked unit, or a link to a unit file that is gone)."""
    if _masked(root, FIREWALLD_UNIT):
        return None
    for directory in SYSTEMD_UNIT_DIRECTORIES:
        try:
            with os.scandir(_on_host(root, directory)) as entries:
                wants = sorted(entry.name for entry in entries if entry.name.endswith(('.wants', '.requires')))
        except OSError:
            continue
        for name in wants + ['']:
            link = os.path.join(directory, name, FIREWALLD_ALIAS if not name else FIREWALLD_UNIT)
            if os.path.lexists(_on_host(root, link)) and _unit_target_exists(root, _on_host(root, link)):
                return link
    return None


def ufw_disabled(root: str) -> Optional[str]:
    """``ENABLED=no`` in ufw.conf (ufw is installed but off): the file's path on the host; None when
    it says yes, or cannot be read (the kernel's ruleset is judged either way)."""
    try:
        with open(_on_host(root, UFW_CONFIG), encoding='utf-8', errors='replace') as config:
            text = config.read(1 << 16)
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.strip().partition('=')
        if key.strip() == 'ENABLED':
            return UFW_CONFIG if value.strip().strip('"\'').lower() != 'yes' else None
    return None


def installed_in_dpkg_status(text: str, packages: Iterable[str]) -> FrozenSet[str]:
    """Packages among ``packages`` whose dpkg state is exactly ``installed`` (not ``not-installed``,
    ``config-files``, ``half-installed``...)."""
    wanted = frozenset(packages)
    found = set()
    for stanza in text.split('\n\n'):
        name = status = None
        for line in stanza.splitlines():
            if line.startswith('Package: '):
                name = line[9:].strip()
            elif line.startswith('Status: '):
                status = line[8:].split()
        if name in wanted and status is not None and len(status) == 3 and status[2] == 'installed':
            found.add(name)
    return frozenset(found)


def _newest_change(path: str, status: os.stat_result) -> float:
    """A directory (the RPM database) changes in its files, not in its own entry."""
    newest = status.st_mtime
    if os.path.isdir(path):
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except OSError:
            pass
    return newest


class PackageDatabase:
    """Which of the watched packages are installed, cached until the database changes."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._stamp: Optional[Tuple[str, float, int]] = None
        self._installed: FrozenSet[str] = frozenset()

    def installed(self) -> FrozenSet[str]:
        dpkg = self.options.dpkg_status_file
        rpm = self.options.rpm_database_path
        if os.path.exists(dpkg):
            return self._cached(dpkg, self._read_dpkg)
        if os.path.isdir(rpm):
            return self._cached(rpm, self._query_rpm)
        raise ApplicabilityError(
            'no package database at {} or {}: mount the host\'s package database and set `dpkg_status_file` or '
            '`rpm_database_path`, or set `applicability: always`'.format(dpkg, rpm)
        )

    def _cached(self, path: str, load: Callable[[str], FrozenSet[str]]) -> FrozenSet[str]:
        try:
            status = os.stat(path)
        except OSError as error:
            raise ApplicabilityError('cannot read {}: {}'.format(path, error.strerror or error))
        stamp = (path, _newest_change(path, status), status.st_size)
        if stamp != self._stamp:
            self._installed = load(path)
            self._stamp = stamp
        return self._installed

    def _read_dpkg(self, path: str) -> FrozenSet[str]:
        try:
            with open(path, encoding='utf-8', errors='replace') as status_file:
                return installed_in_dpkg_status(status_file.read(), WATCHED_PACKAGES)
        except OSError as error:
            raise ApplicabilityError(
                'cannot read the dpkg status file {}: {} (or set `applicability: always`)'.format(path, error.strerror or error)
            )

    def _query_rpm(self, path: str) -> FrozenSet[str]:
        argv = list(self.options.rpm_command) + ['-q', '--qf', '%{NAME}\\n'] + sorted(WATCHED_PACKAGES)
        try:
            output = run_command(argv, self.options.timeout, 1 << 20, 'set `rpm_command`, or `applicability: always`')
        except CollectionError as error:
            raise ApplicabilityError('cannot query the RPM database: {}'.format(error))
        # rpm lists the installed ones by name and says "package X is not installed" for the others; anything
        # else (an error on stderr, a package it said nothing about) means the answer cannot be trusted.
        installed = set()
        answered = set()
        for line in output.stdout.splitlines():
            words = line.split()
            if len(words) == 1 and words[0] in WATCHED_PACKAGES:
                installed.add(words[0])
                answered.add(words[0])
            elif line.startswith('package ') and line.endswith(' is not installed') and line.split()[1] in WATCHED_PACKAGES:
                answered.add(line.split()[1])
        if output.stderr.strip() or answered != WATCHED_PACKAGES:
            reason = output.stderr.strip().splitlines()[0] if output.stderr.strip() else 'unexpected output'
            raise ApplicabilityError(
                'cannot query the RPM database with {}: {} (or set `applicability: always`)'.format(' '.join(argv), reason)
            )
        return frozenset(installed)


def ipv6_disabled(proc_path: str) -> Optional[str]:
    """Why IPv6 is off on this host, or None when it is on."""
    if not os.path.isdir(proc_path):
        raise ApplicabilityError('{} does not exist: set `proc_path` to where the host\'s /proc is mounted'.format(proc_path))
    if not os.path.isdir(os.path.join(proc_path, 'sys', 'net', 'ipv6')):
        return 'the kernel has no IPv6'
    flag = os.path.join(proc_path, 'sys', 'net', 'ipv6', 'conf', 'all', 'disable_ipv6')
    try:
        with open(flag) as disable_file:
            value = disable_file.read().strip()
    except OSError as error:
        raise ApplicabilityError('cannot read {}: {}'.format(flag, error.strerror or error))
    return 'IPv6 is disabled (net.ipv6.conf.all.disable_ipv6 = 1)' if value == '1' else None


class ApplicabilityChecker:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.packages = PackageDatabase(options)

    def check(self, rule: ComplianceRule) -> Applicability:
        if self.options.applicability == 'always':
            return Applicability(True, 'evaluated regardless (applicability: always)', self._disabled_by(rule))
        installed = self.packages.installed()
        found = _WHERE_IT_APPLIES[rule.manager](installed, self.options.host_root)
        if not found.applicable:
            return found
        if rule.family == IPV6:
            reason = ipv6_disabled(self.options.proc_path)
            if reason:
                return Applicability(False, 'not applicable: ' + reason)
        return Applicability(True, found.reason, self._disabled_by(rule))

    def _disabled_by(self, rule: ComplianceRule) -> str:
        return (ufw_disabled(self.options.host_root) or '') if rule.manager == UFW_MANAGER else ''


def _iptables_host(installed: FrozenSet[str], root: str) -> Applicability:
    blockers = sorted(installed & {NFTABLES, UFW})
    if blockers:
        return Applicability(False, 'not applicable: {} installed (the rule applies to hosts managed with iptables only)'.format(' and '.join(blockers)))
    if not installed & IPTABLES_PACKAGES:
        return Applicability(False, 'not applicable: the iptables package is not installed')
    return Applicability(True, 'applicable: iptables installed, neither nftables nor ufw')


def _ufw_host(installed: FrozenSet[str], root: str) -> Applicability:
    if UFW not in installed:
        return Applicability(False, 'not applicable: the ufw package is not installed')
    return Applicability(True, 'applicable: ufw installed')


def _nftables_host(installed: FrozenSet[str], root: str) -> Applicability:
    if NFTABLES not in installed:
        return Applicability(False, 'not applicable: the nftables package is not installed')
    link = firewalld_enabled(root)
    if link is not None:
        return Applicability(False, 'not applicable: firewalld is enabled ({}), and it manages the nftables ruleset'.format(link))
    return Applicability(True, 'applicable: nftables installed, firewalld not enabled')


_WHERE_IT_APPLIES: Dict[str, Callable[[FrozenSet[str], str], Applicability]] = {
    IPTABLES: _iptables_host,
    UFW_MANAGER: _ufw_host,
    NFTABLES_MANAGER: _nftables_host,
}
