"""Applicability (spec section 4): which rules apply on a host, decided from its package database and
its IPv6 state, with fabricated dpkg status files, fake ``rpm`` commands and fake ``/proc`` trees.
"""
import logging
import os
import stat
import textwrap

import pytest

from datadog_checks.loopback_traffic import LoopbackTrafficCheck
from datadog_checks.loopback_traffic import applicability as applicability_module
from datadog_checks.loopback_traffic.applicability import (
    IPTABLES_PACKAGES,
    ApplicabilityChecker,
    ApplicabilityError,
)
from datadog_checks.loopback_traffic.config import parse_options
from datadog_checks.loopback_traffic.requirements import COMPLIANCE_RULES, rule_for_family

from .rulesets import CIS_V4, CIS_V6

IPV4, IPV6 = 'ipv4', 'ipv6'
INSTALLED = 'install ok installed'
CONFIG_FILES = 'deinstall ok config-files'
NOT_INSTALLED = 'install ok not-installed'
PURGED = 'purge ok not-installed'
HALF_INSTALLED = 'install ok half-installed'
UNPACKED = 'install ok unpacked'
HALF_CONFIGURED = 'install ok half-configured'
TRIGGERS_PENDING = 'install ok triggers-pending'

SERVICE_CHECK = 'loopback_traffic.compliance'
INSTANCE_TAGS = ['team:net']
V4_TAGS = INSTANCE_TAGS + ['rule:set_loopback_traffic', 'family:ipv4', 'rule_id:def-000-byk']
V6_TAGS = INSTANCE_TAGS + ['rule:set_ipv6_loopback_traffic', 'family:ipv6', 'rule_id:def-000-mkc']


# --------------------------------------------------------------------------- fabricated host files


def stanza(package, state, description='a package'):
    """One dpkg status stanza, shaped like the real file (multi-line description, other fields)."""
    return textwrap.dedent(
        """\
        Package: {package}
        Status: {state}
        Priority: optional
        Section: net
        Installed-Size: 100
        Maintainer: Debian Maintainers <maint@example.org>
        Architecture: amd64
        Version: 1.0-1
        Depends: libc6 (>= 2.34)
        Description: {description}
         A longer description, continued on indented lines.
         .
         Status: this continuation line must not be read as a field
        """
    ).format(package=package, state=state, description=description)


def dpkg_status(packages):
    """A dpkg status file text: some unrelated packages around the given {name: state} ones."""
    stanzas = [stanza('base-files', INSTALLED), stanza('libc6', INSTALLED)]
    stanzas += [stanza(name, state) for name, state in packages.items()]
    stanzas.append(stanza('zlib1g', INSTALLED))
    return '\n'.join(stanzas)


def write_dpkg(tmp_path, packages, name='status'):
    path = tmp_path / name
    path.write_text(dpkg_status(packages))
    return str(path)


def make_proc(tmp_path, disable_ipv6='0', name='proc'):
    """A fake /proc: ``disable_ipv6`` is the flag's content, None for a kernel without IPv6."""
    proc = tmp_path / name
    (proc / 'sys' / 'net' / 'ipv4').mkdir(parents=True, exist_ok=True)
    if disable_ipv6 is not None:
        conf = proc / 'sys' / 'net' / 'ipv6' / 'conf' / 'all'
        conf.mkdir(parents=True, exist_ok=True)
        (conf / 'disable_ipv6').write_text(disable_ipv6 + '\n')
    return str(proc)


def checker(tmp_path, **options):
    options.setdefault('dpkg_status_file', str(tmp_path / 'no-dpkg-status'))
    options.setdefault('rpm_database_path', str(tmp_path / 'no-rpm-db'))
    options.setdefault('proc_path', make_proc(tmp_path, name='proc-default'))
    return ApplicabilityChecker(parse_options(options))


FAKE_RPM = """#!/bin/sh
# Answers like `rpm -q --qf '%{{NAME}}\\n' PKG...`: the name of each installed package, "package X is not
# installed" for the others, exit status the number of packages not installed.
printf "%s\\n" "$*" >> {log}
if [ "$1" != "-q" ] || [ "$2" != "--qf" ] || [ "$3" != '%{{NAME}}\\n' ]; then
    echo "fake rpm: unexpected arguments: $*" >&2
    exit 64
fi
shift 3
missing=0
for package in "$@"; do
    if grep -qx "$package" {installed}; then
        echo "$package"
    else
        echo "package $package is not installed"
        missing=$((missing + 1))
    fi
done
exit $missing
"""


class FakeRpm:
    """A fake ``rpm`` executable in tmp_path whose installed packages are listed in a file."""

    def __init__(self, tmp_path, installed=()):
        self.dir = tmp_path / 'fake-rpm'
        self.dir.mkdir()
        self.log = self.dir / 'calls.log'
        self.installed_file = self.dir / 'installed'
        self.command = self.dir / 'rpm'
        self.command.write_text(FAKE_RPM.format(log=self.log, installed=self.installed_file))
        self.command.chmod(0o755)
        self.database = tmp_path / 'rpmdb'
        self.database.mkdir()
        (self.database / 'rpmdb.sqlite').write_bytes(b'SQLite format 3\0')
        self.set_installed(installed)

    def set_installed(self, packages):
        self.installed_file.write_text(''.join(name + '\n' for name in packages))

    def calls(self):
        return self.log.read_text().splitlines() if self.log.exists() else []

    def options(self):
        return {'rpm_command': [str(self.command)], 'rpm_database_path': str(self.database)}


def bump_mtime(path, seconds=10):
    status = os.stat(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + seconds * 10**9))


# --------------------------------------------------------------------------- dpkg


@pytest.mark.parametrize(
    'packages, applicable, named',
    [
        pytest.param({'iptables': INSTALLED}, True, None, id='iptables-only'),
        pytest.param({'iptables': 'hold ok installed'}, True, None, id='iptables-on-hold'),
        pytest.param({'iptables': INSTALLED, 'nftables': INSTALLED}, False, 'nftables', id='nftables-installed'),
        pytest.param({'iptables': INSTALLED, 'ufw': INSTALLED}, False, 'ufw', id='ufw-installed'),
        pytest.param({'ufw': INSTALLED, 'iptables': INSTALLED, 'nftables': INSTALLED}, False, 'nftables and ufw', id='both-installed'),
        pytest.param({'iptables': INSTALLED, 'nftables': CONFIG_FILES}, True, None, id='nftables-config-files'),
        pytest.param({'iptables': INSTALLED, 'nftables': NOT_INSTALLED}, True, None, id='nftables-not-installed'),
        pytest.param({'iptables': INSTALLED, 'ufw': PURGED}, True, None, id='ufw-purged'),
        pytest.param({'iptables': INSTALLED, 'ufw': HALF_INSTALLED, 'nftables': UNPACKED}, True, None, id='blockers-half-installed'),
        pytest.param({'iptables': INSTALLED, 'libnftables1': INSTALLED, 'ufw-extras': INSTALLED}, True, None, id='similar-names-do-not-block'),
        pytest.param({'iptables': CONFIG_FILES}, False, 'iptables package is not installed', id='iptables-config-files'),
        pytest.param({'iptables': NOT_INSTALLED}, False, 'iptables package is not installed', id='iptables-not-installed'),
        pytest.param({'iptables': PURGED}, False, 'iptables package is not installed', id='iptables-purged'),
        pytest.param({'iptables': HALF_INSTALLED}, False, 'iptables package is not installed', id='iptables-half-installed'),
        pytest.param({'iptables': HALF_CONFIGURED}, False, 'iptables package is not installed', id='iptables-half-configured'),
        pytest.param({'iptables': TRIGGERS_PENDING}, False, 'iptables package is not installed', id='iptables-triggers-pending'),
        pytest.param({}, False, 'iptables package is not installed', id='iptables-absent'),
        pytest.param({'iptables-persistent': INSTALLED}, False, 'iptables package is not installed', id='only-iptables-persistent'),
        pytest.param({'iptables': CONFIG_FILES, 'ufw': INSTALLED}, False, 'ufw', id='ufw-without-iptables'),
    ],
)
def test_dpkg_states(tmp_path, packages, applicable, named):
    subject = checker(tmp_path, dpkg_status_file=write_dpkg(tmp_path, packages))
    for family in (IPV4, IPV6):
        result = subject.check(rule_for_family(family))
        assert result.applicable is applicable, (family, result)
        if applicable:
            assert result.reason.startswith('applicable'), result.reason
        else:
            assert result.reason.startswith('not applicable'), result.reason
            assert named in result.reason
    if named == 'nftables':
        assert 'ufw' not in subject.check(rule_for_family(IPV4)).reason
    if named == 'ufw':
        assert 'nftables' not in subject.check(rule_for_family(IPV4)).reason


def test_iptables_packages_are_the_ones_the_code_documents():
    assert IPTABLES_PACKAGES == {'iptables', 'iptables-nft', 'iptables-legacy'}


@pytest.mark.parametrize('package', ['iptables-nft', 'iptables-legacy'])
def test_iptables_nft_and_legacy_packages_count_as_iptables(tmp_path, package):
    subject = checker(tmp_path, dpkg_status_file=write_dpkg(tmp_path, {package: INSTALLED}))
    assert subject.check(rule_for_family(IPV4)).applicable
    blocked = checker(tmp_path, dpkg_status_file=write_dpkg(tmp_path, {package: INSTALLED, 'nftables': INSTALLED}, 'status2'))
    assert not blocked.check(rule_for_family(IPV4)).applicable


def test_one_architecture_installed_is_enough(tmp_path):
    # Multi-arch: one stanza per architecture; the package is installed when any of them is.
    text = stanza('iptables', CONFIG_FILES).replace('amd64', 'i386') + '\n' + stanza('iptables', INSTALLED)
    path = tmp_path / 'status'
    path.write_text(text)
    assert checker(tmp_path, dpkg_status_file=str(path)).check(rule_for_family(IPV4)).applicable


def test_last_stanza_without_trailing_newline(tmp_path):
    path = tmp_path / 'status'
    path.write_text(stanza('base-files', INSTALLED) + '\nPackage: iptables\nStatus: install ok installed')
    assert checker(tmp_path, dpkg_status_file=str(path)).check(rule_for_family(IPV4)).applicable


def test_the_real_dpkg_status_file_of_this_machine_is_read_like_dpkg_query():
    """Cross-check against dpkg-query itself, when this host has dpkg."""
    import shutil
    import subprocess

    if not (os.path.exists('/var/lib/dpkg/status') and shutil.which('dpkg-query')):
        pytest.skip('no dpkg on this host')
    installed = set()
    for package in ('iptables', 'iptables-nft', 'iptables-legacy', 'nftables', 'ufw'):
        done = subprocess.run(['dpkg-query', '-W', '-f', '${db:Status-Status}', package], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == 'installed':
            installed.add(package)
    with open('/var/lib/dpkg/status', encoding='utf-8', errors='replace') as status_file:
        found = applicability_module.installed_in_dpkg_status(status_file.read(), applicability_module.WATCHED_PACKAGES)
    assert set(found) == installed


# --------------------------------------------------------------------------- caching


@pytest.fixture
def count_dpkg_reads(monkeypatch):
    calls = []
    real = applicability_module.installed_in_dpkg_status

    def counting(text, packages):
        calls.append(text)
        return real(text, packages)

    monkeypatch.setattr(applicability_module, 'installed_in_dpkg_status', counting)
    return calls


def test_dpkg_status_is_read_once_while_unchanged(tmp_path, count_dpkg_reads):
    subject = checker(tmp_path, dpkg_status_file=write_dpkg(tmp_path, {'iptables': INSTALLED}))
    for _ in range(3):
        assert subject.check(rule_for_family(IPV4)).applicable
        assert subject.check(rule_for_family(IPV6)).applicable
    assert len(count_dpkg_reads) == 1


def test_dpkg_status_is_reread_when_it_changes(tmp_path, count_dpkg_reads):
    path = write_dpkg(tmp_path, {'iptables': INSTALLED})
    subject = checker(tmp_path, dpkg_status_file=path)
    assert subject.check(rule_for_family(IPV4)).applicable
    assert len(count_dpkg_reads) == 1

    # `apt install nftables`: new content, new size, new mtime.
    before = os.stat(path)
    with open(path, 'w') as status_file:
        status_file.write(dpkg_status({'iptables': INSTALLED, 'nftables': INSTALLED}))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    result = subject.check(rule_for_family(IPV4))
    assert not result.applicable and 'nftables' in result.reason
    assert len(count_dpkg_reads) == 2
    assert not subject.check(rule_for_family(IPV4)).applicable
    assert len(count_dpkg_reads) == 2


def test_dpkg_status_mtime_alone_triggers_a_reread(tmp_path, count_dpkg_reads):
    path = write_dpkg(tmp_path, {'iptables': INSTALLED})
    subject = checker(tmp_path, dpkg_status_file=path)
    subject.check(rule_for_family(IPV4))
    bump_mtime(path)
    subject.check(rule_for_family(IPV4))
    assert len(count_dpkg_reads) == 2


def test_dpkg_status_size_alone_triggers_a_reread(tmp_path, count_dpkg_reads):
    path = write_dpkg(tmp_path, {'iptables': INSTALLED})
    subject = checker(tmp_path, dpkg_status_file=path)
    assert subject.check(rule_for_family(IPV4)).applicable
    before = os.stat(path)
    with open(path, 'w') as status_file:
        status_file.write(dpkg_status({'iptables': INSTALLED, 'ufw': INSTALLED}))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime, other size
    assert os.stat(path).st_size != before.st_size
    result = subject.check(rule_for_family(IPV4))
    assert len(count_dpkg_reads) == 2
    assert not result.applicable and 'ufw' in result.reason


def test_an_unchanged_stamp_keeps_the_cached_answer(tmp_path, count_dpkg_reads):
    """The cache really is a cache: same size and mtime, different bytes -> the old answer (documented design)."""
    path = write_dpkg(tmp_path, {'iptables': INSTALLED, 'ufw': CONFIG_FILES})
    subject = checker(tmp_path, dpkg_status_file=path)
    assert subject.check(rule_for_family(IPV4)).applicable
    before = os.stat(path)
    # ufw becomes installed; the status line is padded so that the file keeps its size.
    text = dpkg_status({'iptables': INSTALLED, 'ufw': INSTALLED.ljust(len(CONFIG_FILES))})
    assert len(text.encode()) == before.st_size
    with open(path, 'w') as status_file:
        status_file.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert subject.check(rule_for_family(IPV4)).applicable
    assert len(count_dpkg_reads) == 1


# --------------------------------------------------------------------------- no package database, always


def test_no_package_database_is_an_error_that_says_how_to_fix_it(tmp_path):
    subject = checker(tmp_path)
    for family in (IPV4, IPV6):
        with pytest.raises(ApplicabilityError) as raised:
            subject.check(rule_for_family(family))
        text = str(raised.value)
        assert 'applicability: always' in text
        assert str(tmp_path / 'no-dpkg-status') in text and str(tmp_path / 'no-rpm-db') in text
        assert 'dpkg_status_file' in text and 'rpm_database_path' in text


def test_a_dpkg_status_path_that_cannot_be_read_is_an_error(tmp_path):
    directory = tmp_path / 'status-is-a-directory'
    directory.mkdir()
    with pytest.raises(ApplicabilityError) as raised:
        checker(tmp_path, dpkg_status_file=str(directory)).check(rule_for_family(IPV4))
    assert str(directory) in str(raised.value)
    assert 'applicability: always' in str(raised.value)


def test_always_reads_nothing(tmp_path, count_dpkg_reads):
    rpm = FakeRpm(tmp_path, installed=['nftables'])
    subject = checker(
        tmp_path,
        applicability='always',
        proc_path=str(tmp_path / 'no-proc'),
        **rpm.options(),
    )
    for family in (IPV4, IPV6):
        result = subject.check(rule_for_family(family))
        assert result.applicable
        assert 'always' in result.reason
    assert rpm.calls() == []
    assert count_dpkg_reads == []


def test_always_overrides_blocking_packages_and_disabled_ipv6(tmp_path):
    subject = checker(
        tmp_path,
        applicability='always',
        dpkg_status_file=write_dpkg(tmp_path, {'nftables': INSTALLED, 'ufw': INSTALLED}),
        proc_path=make_proc(tmp_path, '1'),
    )
    assert subject.check(rule_for_family(IPV4)).applicable and subject.check(rule_for_family(IPV6)).applicable


# --------------------------------------------------------------------------- rpm


@pytest.mark.parametrize(
    'installed, applicable, named',
    [
        (['iptables'], True, None),
        (['iptables-nft'], True, None),
        (['iptables-legacy', 'iptables'], True, None),
        (['iptables', 'nftables'], False, 'nftables'),
        (['iptables-nft', 'ufw'], False, 'ufw'),
        (['nftables'], False, 'nftables'),
        ([], False, 'iptables package is not installed'),
        (['iptables-services', 'iptables-libs'], False, 'iptables package is not installed'),
    ],
)
def test_rpm_database(tmp_path, installed, applicable, named):
    rpm = FakeRpm(tmp_path, installed)
    subject = checker(tmp_path, **rpm.options())
    result = subject.check(rule_for_family(IPV4))
    assert result.applicable is applicable, result
    if named:
        assert named in result.reason
    calls = rpm.calls()
    assert len(calls) == 1
    # Every watched package is asked about.
    assert set(calls[0].split()[3:]) == set(applicability_module.WATCHED_PACKAGES)


def test_rpm_is_queried_again_only_when_the_database_directory_changes(tmp_path):
    rpm = FakeRpm(tmp_path, ['iptables'])
    subject = checker(tmp_path, **rpm.options())
    assert subject.check(rule_for_family(IPV4)).applicable
    assert subject.check(rule_for_family(IPV6)).applicable
    assert subject.check(rule_for_family(IPV4)).applicable
    assert len(rpm.calls()) == 1

    # What rpm would answer changes, the database directory does not: the cached answer stays.
    rpm.set_installed(['iptables', 'nftables'])
    assert subject.check(rule_for_family(IPV4)).applicable
    assert len(rpm.calls()) == 1

    # The database directory changes (rpm -i rewrites it): rpm is asked again.
    bump_mtime(str(rpm.database))
    result = subject.check(rule_for_family(IPV4))
    assert not result.applicable and 'nftables' in result.reason
    assert len(rpm.calls()) == 2
    assert not subject.check(rule_for_family(IPV4)).applicable
    assert len(rpm.calls()) == 2


def test_dpkg_is_preferred_when_both_databases_exist(tmp_path):
    rpm = FakeRpm(tmp_path, ['nftables'])
    subject = checker(tmp_path, dpkg_status_file=write_dpkg(tmp_path, {'iptables': INSTALLED}), **rpm.options())
    assert subject.check(rule_for_family(IPV4)).applicable
    assert rpm.calls() == []


def test_a_missing_rpm_command_is_an_error(tmp_path):
    database = tmp_path / 'rpmdb'
    database.mkdir()
    missing = str(tmp_path / 'no-such-rpm')
    with pytest.raises(ApplicabilityError) as raised:
        checker(tmp_path, rpm_command=[missing], rpm_database_path=str(database)).check(rule_for_family(IPV4))
    assert missing in str(raised.value)


def test_a_failing_rpm_query_is_an_error_not_a_silent_not_applicable(tmp_path):
    database = tmp_path / 'rpmdb'
    database.mkdir()
    broken = tmp_path / 'broken-rpm'
    broken.write_text(
        '#!/bin/sh\n'
        'echo "error: cannot open Packages database in $PWD/rpmdb" >&2\n'
        'echo "error: cannot open Packages index using db5 - Permission denied (13)" >&2\n'
        'exit 1\n'
    )
    broken.chmod(0o755)
    subject = checker(tmp_path, rpm_command=[str(broken)], rpm_database_path=str(database))
    with pytest.raises(ApplicabilityError) as raised:
        subject.check(rule_for_family(IPV4))
    assert 'cannot open Packages' in str(raised.value)


# --------------------------------------------------------------------------- IPv6


@pytest.fixture
def iptables_only(tmp_path):
    return write_dpkg(tmp_path, {'iptables': INSTALLED}, name='iptables-only-status')


def test_ipv6_disabled_makes_only_the_ipv6_rule_not_applicable(tmp_path, iptables_only):
    subject = checker(tmp_path, dpkg_status_file=iptables_only, proc_path=make_proc(tmp_path, '1'))
    v6 = subject.check(rule_for_family(IPV6))
    assert not v6.applicable
    assert 'disable_ipv6' in v6.reason and v6.reason.startswith('not applicable')
    assert subject.check(rule_for_family(IPV4)).applicable


def test_ipv6_enabled_is_applicable(tmp_path, iptables_only):
    subject = checker(tmp_path, dpkg_status_file=iptables_only, proc_path=make_proc(tmp_path, '0'))
    assert subject.check(rule_for_family(IPV6)).applicable
    assert subject.check(rule_for_family(IPV4)).applicable


def test_the_ipv6_flag_is_read_on_every_check(tmp_path, iptables_only):
    proc = make_proc(tmp_path, '0')
    subject = checker(tmp_path, dpkg_status_file=iptables_only, proc_path=proc)
    assert subject.check(rule_for_family(IPV6)).applicable
    with open(os.path.join(proc, 'sys/net/ipv6/conf/all/disable_ipv6'), 'w') as flag:
        flag.write('1\n')
    assert not subject.check(rule_for_family(IPV6)).applicable


def test_kernel_without_ipv6(tmp_path, iptables_only):
    subject = checker(tmp_path, dpkg_status_file=iptables_only, proc_path=make_proc(tmp_path, None))
    v6 = subject.check(rule_for_family(IPV6))
    assert not v6.applicable
    assert 'no IPv6' in v6.reason
    assert subject.check(rule_for_family(IPV4)).applicable


def test_missing_proc_path_is_an_error_for_ipv6_only(tmp_path, iptables_only):
    missing = str(tmp_path / 'host-proc')
    subject = checker(tmp_path, dpkg_status_file=iptables_only, proc_path=missing)
    with pytest.raises(ApplicabilityError) as raised:
        subject.check(rule_for_family(IPV6))
    assert missing in str(raised.value) and 'proc_path' in str(raised.value)
    assert subject.check(rule_for_family(IPV4)).applicable


def test_unreadable_ipv6_flag_is_an_error(tmp_path, iptables_only):
    proc = make_proc(tmp_path, None)
    flag = os.path.join(proc, 'sys/net/ipv6/conf/all/disable_ipv6')
    os.makedirs(flag)  # a directory where the flag file should be: open() fails even for root
    assert stat.S_ISDIR(os.stat(flag).st_mode)
    subject = checker(tmp_path, dpkg_status_file=iptables_only, proc_path=proc)
    with pytest.raises(ApplicabilityError) as raised:
        subject.check(rule_for_family(IPV6))
    assert flag in str(raised.value)


def test_packages_are_decided_before_ipv6(tmp_path):
    subject = checker(
        tmp_path, dpkg_status_file=write_dpkg(tmp_path, {'iptables': INSTALLED, 'ufw': INSTALLED}), proc_path=make_proc(tmp_path, '1')
    )
    result = subject.check(rule_for_family(IPV6))
    assert not result.applicable and 'ufw' in result.reason


# --------------------------------------------------------------------------- through the Agent API


def agent_check(tmp_path, **options):
    v4 = tmp_path / 'rules.v4'
    v6 = tmp_path / 'rules.v6'
    v4.write_text(CIS_V4)
    v6.write_text(CIS_V6)
    instance = {
        'tags': list(INSTANCE_TAGS),
        'ruleset_files': {'ipv4': str(v4), 'ipv6': str(v6)},
        'dpkg_status_file': str(tmp_path / 'no-dpkg-status'),
        'rpm_database_path': str(tmp_path / 'no-rpm-db'),
    }
    instance.update(options)
    instance.setdefault('rules', [r.name for r in COMPLIANCE_RULES if r.family in instance.get('families', ('ipv4', 'ipv6'))])
    check = LoopbackTrafficCheck('loopback_traffic', {}, [instance])
    check.check_id = 'loopback_traffic:applicability-test'
    return check


def submissions_for(aggregator, tags_subset):
    """Every (kind, name) submitted whose tags contain all of ``tags_subset``."""
    found = []
    for name in aggregator.metric_names:
        for metric in aggregator.metrics(name):
            if set(tags_subset) <= set(metric.tags):
                found.append(('metric', name, metric.value))
    for name in aggregator.service_check_names:
        for service_check in aggregator.service_checks(name):
            if set(tags_subset) <= set(service_check.tags):
                found.append(('service_check', name, service_check.status))
    return found


def test_not_applicable_rule_sends_only_applicable_zero(aggregator, dd_run_check, tmp_path):
    check = agent_check(
        tmp_path,
        dpkg_status_file=write_dpkg(tmp_path, {'iptables': INSTALLED}),
        proc_path=make_proc(tmp_path, '1'),
    )
    dd_run_check(check)

    aggregator.assert_metric('loopback_traffic.applicable', value=0, tags=V6_TAGS, count=1)
    assert submissions_for(aggregator, ['family:ipv6']) == [('metric', 'loopback_traffic.applicable', 0)]
    assert aggregator.service_checks(SERVICE_CHECK) and all(
        'family:ipv6' not in sc.tags for sc in aggregator.service_checks(SERVICE_CHECK)
    )

    # The IPv4 rule is applicable and evaluated as usual.
    aggregator.assert_metric('loopback_traffic.applicable', value=1, tags=V4_TAGS, count=1)
    aggregator.assert_metric('loopback_traffic.compliant', value=1, tags=V4_TAGS, count=1)
    aggregator.assert_service_check(SERVICE_CHECK, LoopbackTrafficCheck.OK, tags=V4_TAGS, count=1)


def test_both_rules_not_applicable_where_nftables_is_installed(aggregator, dd_run_check, tmp_path):
    check = agent_check(
        tmp_path,
        dpkg_status_file=write_dpkg(tmp_path, {'iptables': INSTALLED, 'nftables': INSTALLED}),
        proc_path=make_proc(tmp_path, '0'),
    )
    dd_run_check(check)
    for tags in (V4_TAGS, V6_TAGS):
        aggregator.assert_metric('loopback_traffic.applicable', value=0, tags=tags, count=1)
    assert aggregator.service_checks(SERVICE_CHECK) == []
    assert aggregator.metric_names == ['loopback_traffic.applicable']


def test_not_applicable_reason_is_logged_once(aggregator, dd_run_check, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    check = agent_check(
        tmp_path,
        families=['ipv6'],
        dpkg_status_file=write_dpkg(tmp_path, {'iptables': INSTALLED}),
        proc_path=make_proc(tmp_path, '1'),
    )
    dd_run_check(check)
    dd_run_check(check)
    dd_run_check(check)
    logged = [r.getMessage() for r in caplog.records if 'disable_ipv6' in r.getMessage()]
    assert len(logged) == 1
    assert 'set_ipv6_loopback_traffic' in logged[0]
    aggregator.assert_metric('loopback_traffic.applicable', value=0, tags=V6_TAGS, count=3)


def test_applicability_error_is_an_unknown_service_check_saying_how_to_fix_it(aggregator, dd_run_check, tmp_path):
    dd_run_check(agent_check(tmp_path, proc_path=make_proc(tmp_path, '0')))
    for tags in (V4_TAGS, V6_TAGS):
        aggregator.assert_service_check(SERVICE_CHECK, LoopbackTrafficCheck.UNKNOWN, tags=tags, count=1)
        [service_check] = [sc for sc in aggregator.service_checks(SERVICE_CHECK) if set(tags) == set(sc.tags)]
        assert 'applicability: always' in service_check.message
        assert 'dpkg_status_file' in service_check.message
        assert 'Traceback' not in service_check.message
    assert aggregator.metrics('loopback_traffic.compliant') == []
    assert aggregator.metrics('loopback_traffic.requirement.status') == []


def test_applicability_error_for_ipv6_leaves_ipv4_evaluated(aggregator, dd_run_check, tmp_path):
    dd_run_check(
        agent_check(
            tmp_path,
            dpkg_status_file=write_dpkg(tmp_path, {'iptables': INSTALLED}),
            proc_path=str(tmp_path / 'host-proc-not-mounted'),
        )
    )
    aggregator.assert_service_check(SERVICE_CHECK, LoopbackTrafficCheck.OK, tags=V4_TAGS, count=1)
    aggregator.assert_service_check(SERVICE_CHECK, LoopbackTrafficCheck.UNKNOWN, tags=V6_TAGS, count=1)
    [v6] = [sc for sc in aggregator.service_checks(SERVICE_CHECK) if 'family:ipv6' in sc.tags]
    assert 'proc_path' in v6.message
