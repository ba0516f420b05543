"""Is a rule applicable on this host? (spec section 4)

Evaluated where iptables is installed and neither nftables nor ufw is; the IPv6 rule also needs IPv6
enabled. dpkg's status file is read (and re-read only when it changes); on RPM hosts ``rpm -q`` runs
once and again only when the RPM database changes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, FrozenSet, Iterable, Optional, Tuple

from .runner import CollectionError, run_command
from .config import Options
from .requirements import IPV6

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

    def check(self, family: str) -> Applicability:
        if self.options.applicability == 'always':
            return Applicability(True, 'evaluated regardless (applicability: always)')
        installed = self.packages.installed()
        blockers = sorted(installed & {NFTABLES, UFW})
        if blockers:
            return Applicability(False, 'not applicable: {} installed (the rule applies to hosts managed with iptables only)'.format(' and '.join(blockers)))
        if not installed & IPTABLES_PACKAGES:
            return Applicability(False, 'not applicable: the iptables package is not installed')
        if family == IPV6:
            reason = ipv6_disabled(self.options.proc_path)
            if reason:
                return Applicability(False, 'not applicable: ' + reason)
        return Applicability(True, 'applicable: iptables installed, neither nftables nor ufw')
