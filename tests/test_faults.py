"""Fault matrix (issue 6): everything that can go wrong while collecting a ruleset, through the Agent API.

For every fault the service check ``loopback_traffic.compliance`` is UNKNOWN (never OK, never an exception
out of ``check``), its message says what happened and how to fix it, the error is logged once however many
runs it lasts, and the first run after the fault is gone is OK again without any intervention.

Fake save tools are shell scripts written into ``tmp_path``; real tools only ever run inside a throw-away
network namespace (``netns`` fixture) or as an unprivileged user that cannot change anything.
"""
import json
import logging
import os
import random
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from datadog_checks.base import AgentCheck
from datadog_checks.loopback_traffic import LoopbackTrafficCheck
from datadog_checks.loopback_traffic.applicability import ApplicabilityChecker
from datadog_checks.loopback_traffic.config import parse_options
from datadog_checks.loopback_traffic.pipeline import run_rule
from datadog_checks.loopback_traffic.requirements import COMPLIANCE_RULES, rule_for_family
from datadog_checks.loopback_traffic.results import Status

from .netns import netns, probe_loopback, require_tools  # noqa: F401
from .rulesets import CIS_V4, CIS_V6, filter_table

SERVICE_CHECK = 'loopback_traffic.compliance'
INSTANCE_TAGS = ['team:network']
V4_TAGS = INSTANCE_TAGS + ['rule:set_loopback_traffic', 'family:ipv4', 'rule_id:def-000-byk']
V6_TAGS = INSTANCE_TAGS + ['rule:set_ipv6_loopback_traffic', 'family:ipv6', 'rule_id:def-000-mkc']
REQUIREMENTS = ['input_accept_lo', 'output_accept_lo', 'input_drop_loopback_source']
NOBODY = 65534
SETPRIV_NOBODY = ['setpriv', '--reuid={}'.format(NOBODY), '--regid={}'.format(NOBODY), '--clear-groups']
RUN_AS_NOBODY = os.path.join(os.path.dirname(__file__), 'data', 'faults', 'run_as_nobody.py')
# The real messages of iptables 1.8.9.
REAL_PERMISSION_DENIED = 'iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)'
INCOMPATIBLE_LINE = "# Table `{}' is incompatible, use 'nft' tool."
# Bounds that only keep a broken test from hanging; nothing is asserted about how long things take.
HANG_GUARD = 120

MISORDERED = filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')


# --------------------------------------------------------------------------- helpers


def make_check(**options):
    # Most faults here are the save tools': they are read with `collection: save` unless a test says otherwise.
    instance = {'tags': list(INSTANCE_TAGS), 'applicability': 'always', 'families': ['ipv4'], 'collection': 'save'}
    instance.update(options)
    instance.setdefault('rules', [rule.name for rule in COMPLIANCE_RULES if rule.family in instance['families']])
    check = LoopbackTrafficCheck('loopback_traffic', {}, [instance])
    check.check_id = 'loopback_traffic:faults'
    return check


class FakeTools:
    """Stand-ins for one family's tools in one directory: the save tool the check is configured with
    (``iptables-save``) and the listing tool it derives from it (``iptables``, for ``collection: listing``/``auto``).

    A fault is injected by writing the same shell script to both; ``good()`` removes it: both then run the real
    tools inside the test's network namespace, which holds the CIS ruleset.
    """

    def __init__(self, directory, ns, family='ipv4'):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ns = ns
        self.family = family
        base = 'iptables' if family == 'ipv4' else 'ip6tables'
        self.listing = directory / base
        self.save = directory / (base + '-save')
        self.prefix = str(self.listing)  # both command lines start with it
        self._loaded = False

    @property
    def argv(self):
        return [str(self.save)]

    @property
    def paths(self):
        return (self.save, self.listing)

    def script(self, body, mode=0o755):
        for path in self.paths:
            if path.exists():
                path.unlink()  # a new inode: never rewrite a script a process may still be reading
            path.write_text('#!/bin/sh\n' + body + '\n')
            path.chmod(mode)

    def chmod(self, mode):
        for path in self.paths:
            path.chmod(mode)

    def prints(self, data):
        """Both print ``data`` (str or bytes) exactly and exit 0."""
        data = data.encode() if isinstance(data, str) else data
        out = self.directory / 'output.{}'.format(secrets.token_hex(4))
        out.write_bytes(data)
        self.script('exec {} {}'.format(shutil.which('cat'), out))

    def good(self):
        if not self._loaded:
            self.ns.restore(CIS_V4 if self.family == 'ipv4' else CIS_V6, self.family)
            self._loaded = True
        prefix = ' '.join([shutil.which('ip')] + self.ns.argv_prefix()[1:])
        for path, real in zip(self.paths, (self.save.name, self.listing.name)):
            if path.exists():
                path.unlink()
            path.write_text('#!/bin/sh\nexec {} {} "$@"\n'.format(prefix, real))
            path.chmod(0o755)


@pytest.fixture
def tool(tmp_path, netns):
    return FakeTools(tmp_path / 'bin', netns)


@pytest.fixture
def tool6(tmp_path, netns):
    return FakeTools(tmp_path / 'bin', netns, 'ipv6')


# Where the check runs a command: the save tool (`save`), or `auto`, which lists the rules with the
# command next to the save tool (unless use_sudo).
# Faults of the save tools: the text path reads them (the netlink path has its own tests).
COLLECTIONS = pytest.mark.parametrize('collection', ['save'])


def compliance(aggregator, tags=V4_TAGS):
    found = [sc for sc in aggregator.service_checks(SERVICE_CHECK) if sc.tags == tags]
    assert len(found) == 1, aggregator.service_checks(SERVICE_CHECK)
    return found[0]


def run_once(check, dd_run_check, aggregator, tags=V4_TAGS):
    aggregator.reset()
    dd_run_check(check)  # raises if check() raised
    return compliance(aggregator, tags)


def check_records(caplog):
    return [r for r in caplog.records if r.name.startswith('datadog_checks')]


def assert_unknown(service_check, phrases, aggregator, tags):
    assert service_check.status == AgentCheck.UNKNOWN, service_check
    message = service_check.message
    assert message.startswith(('set_loopback_traffic could not be evaluated: ', 'set_ipv6_loopback_traffic could not be evaluated: ')), message
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    assert 'Traceback' not in message and 'internal error' not in message, message
    message.encode('utf-8')  # the Agent sends messages as UTF-8
    # UNKNOWN sends no verdict.
    aggregator.assert_metric('loopback_traffic.compliant', tags=tags, count=0)
    aggregator.assert_metric('loopback_traffic.requirement.status', count=0)
    aggregator.assert_metric('loopback_traffic.applicable', value=1, tags=tags, count=1)


def fault_then_recovery(check, dd_run_check, aggregator, caplog, phrases, fix=None, runs=3, tags=V4_TAGS, after_each=None):
    """Run ``check`` ``runs`` times under the fault, then ``fix()`` it and run once more. Returns the message."""
    caplog.set_level(logging.INFO)
    caplog.clear()
    messages = []
    for _ in range(runs):
        service_check = run_once(check, dd_run_check, aggregator, tags)
        assert_unknown(service_check, phrases, aggregator, tags)
        messages.append(service_check.message)
        if after_each is not None:
            after_each()
    assert len(set(messages)) == 1, messages
    error = messages[0].split(' could not be evaluated: ', 1)[1]
    records = check_records(caplog)
    logged = [r for r in records if error in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in records]
    assert logged[0].levelno == logging.INFO  # spec section 5: a change is logged at INFO, WARNING only for CRITICAL
    assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    print('\nFAULT MESSAGE: {}'.format(messages[0]))
    if fix is None:
        return messages[0]
    fix()
    recovered = run_once(check, dd_run_check, aggregator, tags)
    assert recovered.status == AgentCheck.OK, recovered
    assert not recovered.message
    aggregator.assert_metric('loopback_traffic.compliant', value=1, tags=tags, count=1)
    assert any('can be evaluated again' in r.getMessage() for r in check_records(caplog))
    return messages[0]


def run_guarded(function, guard=HANG_GUARD):
    """Run ``function`` in a thread; fail (instead of hanging the suite) if it has not returned after ``guard`` s."""
    outcome = {}

    def target():
        try:
            outcome['value'] = function()
        except BaseException as error:  # noqa: B902 - re-raised in the test's thread
            outcome['error'] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(guard)
    assert not thread.is_alive(), 'still running after {} s: it hangs'.format(guard)
    if 'error' in outcome:
        raise outcome['error']
    return outcome.get('value')


# -- processes


def _processes():
    """(pid, state, ppid, pgrp, cmdline) of every process, zombies included (their cmdline is empty)."""
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/{}/stat'.format(entry)) as stat_file:
                fields = stat_file.read().rsplit(')', 1)[1].split()
            with open('/proc/{}/cmdline'.format(entry), 'rb') as cmdline_file:
                cmdline = cmdline_file.read().replace(b'\0', b' ').decode('utf-8', 'replace')
        except OSError:
            continue
        yield int(entry), fields[0], int(fields[1]), int(fields[2]), cmdline


def assert_nothing_left(marker=None, pgid=None, bound=30):
    """No live process whose command line holds ``marker`` or that is in process group ``pgid``, and no zombie
    left for this process to reap. SIGKILL takes effect asynchronously: poll (bounded) until they are gone."""

    def ours(process):
        pid, _, _, pgrp, cmdline = process
        return (marker is not None and marker in cmdline) or (pgid is not None and (pgrp == pgid or pid == pgid))

    deadline = time.monotonic() + bound
    while True:
        left = [p for p in _processes() if ours(p) and p[0] != os.getpid()]
        alive = [p for p in left if p[1] != 'Z']
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not alive, 'processes left behind: {}'.format(alive)
    # Zombies of our own children: the check did not reap them. (Grandchildren are re-parented to init.)
    zombies = [p for p in left if p[1] == 'Z' and p[2] == os.getpid()]
    assert not zombies, 'zombies the check did not reap: {}'.format(zombies)


def kill_marked(mark):
    """Kill, by pid, the processes a test started (through the check) whose command line holds ``mark``."""
    for pid, state, _, _, cmdline in _processes():
        if mark in cmdline and state != 'Z' and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def marker():
    """A unique `sleep` argument to find our processes by their command line."""
    return '{}.{}'.format(random.randint(3000, 3500), random.randint(100000, 999999))


# --------------------------------------------------------------------------- the command cannot run


def test_save_command_missing(aggregator, dd_run_check, caplog):
    check = make_check(iptables_save_command=['/nonexistent/iptables-save'])
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        ['/nonexistent/iptables', 'was not found: install the iptables package or set the command path'],
    )


@COLLECTIONS
def test_save_command_missing_then_installed(aggregator, dd_run_check, caplog, tool, collection):
    check = make_check(iptables_save_command=tool.argv, collection=collection)
    fault_then_recovery(check, dd_run_check, aggregator, caplog, [tool.prefix, 'was not found'], fix=tool.good)


@COLLECTIONS
def test_save_command_not_executable(aggregator, dd_run_check, caplog, tool, collection):
    tool.good()
    tool.chmod(0o644)
    check = make_check(iptables_save_command=tool.argv, collection=collection)
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog, [tool.prefix, 'is not executable by the Agent user'], fix=lambda: tool.chmod(0o755)
    )


def test_save_command_is_a_directory(aggregator, dd_run_check, caplog, tmp_path):
    check = make_check(iptables_save_command=[str(tmp_path)], collection='save')
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['{} is not executable'.format(tmp_path)])


def test_use_sudo_where_sudo_is_not_installed(aggregator, dd_run_check, caplog, tool, monkeypatch):
    # The Agent's container image has no sudo: PATH holds the save tool but no sudo.
    tool.good()
    monkeypatch.setenv('PATH', str(tool.directory))
    check = make_check(iptables_save_command=['iptables-save'], use_sudo=True)
    message = fault_then_recovery(check, dd_run_check, aggregator, caplog, ['sudo was not found'])
    assert 'use_sudo' in message and 'iptables package' not in message


def test_a_save_command_not_named_save(aggregator, dd_run_check, tool, tmp_path):
    tool.good()
    wrapper = tmp_path / 'dump-firewall'
    wrapper.write_text('#!/bin/sh\nexec {} "$@"\n'.format(tool.save))
    wrapper.chmod(0o755)
    service_check = run_once(make_check(iptables_save_command=[str(wrapper)]), dd_run_check, aggregator)
    assert service_check.status == AgentCheck.OK, service_check.message


@COLLECTIONS
def test_legacy_save_command_missing_where_legacy_tables_are_present(aggregator, dd_run_check, caplog, tool, tmp_path, collection):
    """Real legacy tables next to the nft ones: the nft tool warns (for real) and the legacy tool is needed."""
    tool.good()
    tool.ns.restore(CIS_V4, 'ipv4', 'legacy')
    legacy = tmp_path / 'legacy-bin' / 'iptables-legacy-save'
    check = make_check(iptables_save_command=tool.argv, iptables_legacy_save_command=[str(legacy)], collection=collection)

    def install():
        legacy.parent.mkdir()
        legacy.write_text('#!/bin/sh\nexec {} {} iptables-legacy-save "$@"\n'.format(shutil.which('ip'), ' '.join(tool.ns.argv_prefix()[1:])))
        legacy.chmod(0o755)

    fault_then_recovery(check, dd_run_check, aggregator, caplog, [str(legacy), 'was not found'], fix=install)


# --------------------------------------------------------------------------- permission denied, sudo


@COLLECTIONS
def test_permission_denied(aggregator, dd_run_check, caplog, tool, collection):
    tool.script('echo "{}" >&2\nexit 4'.format(REAL_PERMISSION_DENIED))
    check = make_check(iptables_save_command=tool.argv, collection=collection)
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        [tool.prefix, 'was refused: ' + REAL_PERMISSION_DENIED, 'set `use_sudo: true` and allow it in sudoers', 'CAP_NET_ADMIN'],
        fix=tool.good,
    )


def test_permission_denied_with_sudo_names_sudoers(aggregator, dd_run_check, caplog, tool):
    # use_sudo: true as root (sudo works for root here) with a tool that is refused anyway.
    require_tools('sudo')
    tool.script('echo "{}" >&2\nexit 4'.format(REAL_PERMISSION_DENIED))
    check = make_check(iptables_save_command=tool.argv, use_sudo=True)
    message = fault_then_recovery(
        check, dd_run_check, aggregator, caplog, ['sudo -n {} was refused'.format(tool.save), 'allow it in sudoers'], fix=tool.good
    )
    assert 'set `use_sudo: true`' not in message


@COLLECTIONS
def test_real_tool_as_an_unprivileged_user(aggregator, dd_run_check, caplog, netns, collection):
    """The real tools, run as nobody inside a namespace: refused by the kernel."""
    require_tools('setpriv', 'iptables-save')
    netns.restore(CIS_V4, 'ipv4')
    command = netns.argv_prefix() + SETPRIV_NOBODY + ['iptables-save']
    check = make_check(iptables_save_command=command, collection=collection)
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        [' '.join(command[:-1]) + ' iptables', 'was refused', 'Permission denied (you must be root)', 'use_sudo', 'CAP_NET_ADMIN'],
    )


@COLLECTIONS
def test_real_tool_as_an_unprivileged_user_recovers_when_given_the_privilege(aggregator, dd_run_check, caplog, tool, collection):
    require_tools('setpriv', 'iptables-save')
    tool.good()  # loads the ruleset into the namespace
    real = ' '.join(tool.ns.argv_prefix())
    tool.script('exec {} {} "$(basename "$0")" "$@"'.format(real, ' '.join(SETPRIV_NOBODY)))
    check = make_check(iptables_save_command=tool.argv, collection=collection)
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['was refused', 'Permission denied (you must be root)'], fix=tool.good)


@COLLECTIONS
def test_sudo_that_would_ask_for_a_password_fails_at_once(aggregator, dd_run_check, caplog, collection):
    """A user without a sudoers entry: sudo -n refuses at once; the check must not wait for the timeout."""
    require_tools('setpriv', 'sudo')
    command = SETPRIV_NOBODY + ['sudo', '-n', 'iptables-save']
    check = make_check(iptables_save_command=command, timeout=60, collection=collection)
    message = run_guarded(
        lambda: fault_then_recovery(check, dd_run_check, aggregator, caplog, ['sudo would ask for a password', 'NOPASSWD', 'sudoers'])
    )
    assert 'did not finish' not in message
    (duration,) = [m.value for m in aggregator.metrics('loopback_traffic.collection.duration')]
    assert duration < 60  # it was not the timeout that ended it


def test_sudo_without_n_never_prompts(aggregator, dd_run_check, caplog):
    """Without -n sudo would prompt, but the check gives it no terminal and no stdin: it fails instead."""
    require_tools('setpriv', 'sudo')
    command = SETPRIV_NOBODY + ['sudo', 'iptables-save']
    check = make_check(iptables_save_command=command, timeout=60)
    message = run_guarded(
        lambda: fault_then_recovery(check, dd_run_check, aggregator, caplog, ['sudo would ask for a password', 'NOPASSWD'])
    )
    assert 'did not finish' not in message


# -- the Agent itself running as an unprivileged user (the check in a subprocess that drops to nobody)


class NobodyCheck:
    """The check, run through the Agent API by a subprocess that has dropped to uid/gid 65534."""

    def __init__(self, instance):
        self.process = subprocess.Popen(
            [sys.executable, RUN_AS_NOBODY, str(NOBODY), str(NOBODY), json.dumps(instance)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )

    def run(self):
        self.process.stdin.write('run\n')
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], HANG_GUARD)
        assert ready, 'the check run as nobody did not answer within {} s'.format(HANG_GUARD)
        line = self.process.stdout.readline()
        assert line, 'the check run as nobody died: {}'.format(self.process.stderr.read())
        return json.loads(line)

    def close(self):
        try:
            self.process.stdin.close()
            self.process.wait(HANG_GUARD)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self.process.stderr.close()


@pytest.fixture
def public_dir():
    """A directory nobody can traverse (pytest's tmp_path is not)."""
    path = tempfile.mkdtemp(prefix='lt-faults-')
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nobody_runs(instance, runs, between=None):
    nobody = NobodyCheck(dict({'applicability': 'always', 'families': ['ipv4'], 'rules': ['set_loopback_traffic'], 'tags': list(INSTANCE_TAGS)}, **instance))
    try:
        results = []
        for index in range(runs):
            if between is not None and index == runs - 1:
                between()
            result = nobody.run()
            assert result['uid'] == NOBODY
            assert result['error'] == '', result['error']  # no exception out of check()
            results.append(result)
        return results
    finally:
        nobody.close()


def assert_nobody_fault(results, phrases):
    messages = []
    for result in results:
        ((status, message, tags),) = result['service_checks']
        assert status == AgentCheck.UNKNOWN, message
        assert tags == V4_TAGS
        for phrase in phrases:
            assert phrase in message, (phrase, message)
        messages.append(message)
    assert len(set(messages)) == 1
    error = messages[0].split(' could not be evaluated: ', 1)[1]
    logged = [line for result in results for line in result['infos'] if error in line]  # spec section 5: INFO
    assert len(logged) == 1, results
    print('\nFAULT MESSAGE: {}'.format(messages[0]))


def test_agent_as_unprivileged_user_with_use_sudo_and_no_sudoers_entry():
    require_tools('sudo')
    results = nobody_runs({'use_sudo': True, 'timeout': 60}, runs=3)
    assert_nobody_fault(results, ['sudo -n iptables-save failed: sudo would ask for a password', 'NOPASSWD', 'sudoers'])


@COLLECTIONS
def test_agent_as_unprivileged_user_without_sudo(collection):
    # The default command, the real tools, refused to an unprivileged user (they read nothing).
    require_tools('iptables-save')
    results = nobody_runs({'collection': collection}, runs=3)
    assert_nobody_fault(results, ['iptables', 'was refused', 'Permission denied (you must be root)', '`use_sudo: true`'])


def test_saved_ruleset_unreadable_by_the_agent_user(public_dir):
    path = os.path.join(public_dir, 'rules.v4')
    with open(path, 'w') as saved:
        saved.write(CIS_V4)
    os.chmod(path, 0o600)  # root's, not readable by nobody
    results = nobody_runs({'ruleset_files': {'ipv4': path}}, runs=4, between=lambda: os.chmod(path, 0o644))
    assert_nobody_fault(results[:3], ['saved ruleset {} is not readable by the Agent user'.format(path)])
    ((status, message, _),) = results[3]['service_checks']
    assert status == AgentCheck.OK and not message
    assert any('can be evaluated again' in info for info in results[3]['infos'])


def test_package_database_unreadable_by_the_agent_user(public_dir):
    status_file = os.path.join(public_dir, 'status')
    with open(status_file, 'w') as dpkg:
        dpkg.write('Package: iptables\nStatus: install ok installed\n\n')
    os.chmod(status_file, 0o600)
    results = nobody_runs({'applicability': 'auto', 'dpkg_status_file': status_file}, runs=3)
    assert_nobody_fault(results, ['cannot read the dpkg status file {}: Permission denied'.format(status_file), '`applicability: always`'])


# --------------------------------------------------------------------------- the command hangs


@COLLECTIONS
@pytest.mark.parametrize(
    'body',
    [
        'echo $$ > {pidfile}\nsleep {mark} &\nexec sleep {mark}',  # the tool and a child, both hanging
        'echo $$ > {pidfile}\nexec >&- 2>&-\nexec sleep {mark}',  # hangs after closing its output
    ],
    ids=['with-a-child', 'closed-output'],
)
def test_command_that_hangs_is_killed_with_its_children(aggregator, dd_run_check, caplog, tool, tmp_path, body, collection):
    mark = marker()
    pidfile = tmp_path / 'pid'
    tool.script(body.format(pidfile=pidfile, mark=mark))
    check = make_check(iptables_save_command=tool.argv, timeout=1, collection=collection)
    try:
        fault_then_recovery(
            check, dd_run_check, aggregator, caplog,
            [tool.prefix, 'did not finish within 1 s (option `timeout`)'],
            fix=tool.good, after_each=lambda: assert_nothing_left(marker=mark, pgid=int(pidfile.read_text())),
        )
    finally:
        kill_marked(mark)


def test_command_that_hangs_under_sudo_is_killed(aggregator, dd_run_check, caplog, tool):
    require_tools('sudo')
    mark = marker()
    tool.script('sleep {0} &\nexec sleep {0}'.format(mark))
    check = make_check(iptables_save_command=tool.argv, timeout=1, use_sudo=True)
    try:
        fault_then_recovery(
            check, dd_run_check, aggregator, caplog, ['sudo -n {} did not finish within 1 s'.format(tool.save)],
            fix=tool.good, after_each=lambda: assert_nothing_left(marker=mark),
        )
    finally:
        kill_marked(mark)


# --------------------------------------------------------------------------- the command fails


@COLLECTIONS
def test_non_zero_exit_with_an_error(aggregator, dd_run_check, caplog, tool, collection):
    error = 'iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Invalid argument'
    tool.script('echo "{}" >&2\necho "second line" >&2\nexit 1'.format(error))
    check = make_check(iptables_save_command=tool.argv, collection=collection)
    fault_then_recovery(check, dd_run_check, aggregator, caplog, [tool.prefix, 'exited with status 1: ' + error], fix=tool.good)


@COLLECTIONS
def test_non_zero_exit_without_a_message(aggregator, dd_run_check, caplog, tool, collection):
    tool.script('exit 3')
    check = make_check(iptables_save_command=tool.argv, collection=collection)
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['exited with status 3: no error message'], fix=tool.good)


def test_killed_by_a_signal(aggregator, dd_run_check, caplog, tool):
    tool.script('echo "*filter"\nkill -SEGV $$')
    check = make_check(iptables_save_command=tool.argv, collection='save')
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['{} exited with status'.format(tool.save)], fix=tool.good)


@COLLECTIONS
def test_ip6tables_where_the_kernel_has_no_ipv6(aggregator, dd_run_check, caplog, tool6, collection):
    tool6.script(
        'echo "ip6tables-save v1.8.9 (legacy): can\'t initialize ip6tables table \\`filter\': Address family not supported by protocol" >&2\n'
        'echo "Perhaps ip6tables or your kernel needs to be upgraded." >&2\nexit 1'
    )
    check = make_check(families=['ipv6'], ip6tables_save_command=tool6.argv, collection=collection)
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        [tool6.prefix, 'Address family not supported by protocol', 'this family is off in the kernel'],
        fix=tool6.good, tags=V6_TAGS,
    )


def test_ip6tables_without_ipv6_names_the_option_that_fixes_it(aggregator, dd_run_check, tool6):
    tool6.script('echo "ip6tables-save v1.8.9 (legacy): can\'t initialize ip6tables table: Address family not supported by protocol" >&2\nexit 1')
    check = make_check(families=['ipv6'], ip6tables_save_command=tool6.argv)
    message = run_once(check, dd_run_check, aggregator, V6_TAGS).message
    assert '`families`' in message or '`applicability`' in message


# --------------------------------------------------------------------------- the output is not a ruleset


@COLLECTIONS
def test_empty_output_is_no_rules_not_a_fault(aggregator, dd_run_check, caplog, tool, collection):
    tool.script('exit 0')
    check = make_check(iptables_save_command=tool.argv, collection=collection)
    caplog.set_level(logging.INFO)
    for _ in range(3):
        service_check = run_once(check, dd_run_check, aggregator)
        assert service_check.status == AgentCheck.CRITICAL, service_check
        assert service_check.message.startswith('set_loopback_traffic input_drop_loopback_source (fail): accepted by filter INPUT')
        assert 'Fix: iptables -I INPUT 1 -s 127.0.0.0/8 ! -i lo -j DROP' in service_check.message
        for requirement, value in zip(REQUIREMENTS, [0, 0, 2]):
            aggregator.assert_metric('loopback_traffic.requirement.status', value=value, tags=V4_TAGS + ['requirement:' + requirement], count=1)
    # Empty output is a CRITICAL result, not a fault: the only warning is the status change (logged once).
    warnings = [r.getMessage() for r in check_records(caplog) if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and 'is CRITICAL (first evaluation)' in warnings[0], warnings


def test_output_cut_off_in_the_middle_of_a_table(aggregator, dd_run_check, caplog, tool):
    tool.prints(CIS_V4[: CIS_V4.index('-A OUTPUT') + 8])  # "...-A OUTPU"
    check = make_check(iptables_save_command=tool.argv, collection='save')
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        ['unparseable output of {}'.format(tool.save), 'line 1: table filter is not closed by COMMIT (output cut off?)'],
        fix=tool.good,
    )


def test_output_cut_off_in_a_table_that_is_not_evaluated(aggregator, dd_run_check, caplog, tool):
    tool.prints('*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n' + CIS_V4 + '*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROU')
    check = make_check(iptables_save_command=tool.argv, collection='save')
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['line 13: table nat is not closed by COMMIT (output cut off?)'], fix=tool.good)


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'loopback_traffic', 'data', 'examples')


def _saved_outcome(tmp_path, text, family='ipv4'):
    path = tmp_path / 'cut.rules'
    path.write_text(text)
    options = parse_options({'applicability': 'always', 'ruleset_files': {family: str(path)}})
    return run_rule(options, rule_for_family(family), ApplicabilityChecker(options)).result


@pytest.mark.parametrize('name, complete', [('compliant.rules', Status.PASS), ('ufw.rules', Status.PARTIAL), ('misordered.rules', Status.FAIL)])
def test_every_cut_of_a_ruleset_is_unknown_never_a_pass(tmp_path, name, complete):
    """A ruleset cut at any character inside its table is UNKNOWN; before the table it is no rules (CRITICAL)."""
    with open(os.path.join(EXAMPLES, name)) as example:
        full = example.read()
    assert full.count('COMMIT') == 1
    assert _saved_outcome(tmp_path, full).status is complete
    end = full.index('COMMIT') + len('COMMIT')
    step = 1 if len(full) < 3000 else 7  # every character of the small one; every 7th of the big one (and the last 20)
    cuts = sorted(set(range(0, end, step)) | set(range(max(end - 20, 0), end)))
    for cut in cuts:
        result = _saved_outcome(tmp_path, full[:cut])
        if '*' in full[:cut]:
            assert result.status is Status.UNKNOWN, (cut, full[:cut][-40:], result)
            assert 'line ' in result.error
        else:
            assert result.status is Status.FAIL, (cut, result)  # nothing loaded: the drop requirement fails
    assert _saved_outcome(tmp_path, full[:end]).status is complete  # COMMIT without its newline is complete


@COLLECTIONS
def test_another_tools_error_text_on_stdout(aggregator, dd_run_check, caplog, tool, collection):
    tool.prints('nsenter: cannot open /host/proc/1/ns/net: No such file or directory\n')
    check = make_check(iptables_save_command=tool.argv, collection=collection)
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        ['unparseable output of {}'.format(tool.prefix), 'line 1: not iptables-save or iptables -S output', 'nsenter: cannot open'],
        fix=tool.good,
    )


def test_error_text_after_a_comment_names_its_line(aggregator, dd_run_check, caplog, tool):
    tool.prints('# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n\nUsage: iptables-save [-c] [-t table]\n')
    check = make_check(iptables_save_command=tool.argv, collection='save')
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['line 3: not iptables-save or iptables -S output'], fix=tool.good)


LATIN1_COMMENT = (
    b'*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n'
    b'-A INPUT -i lo -m comment --comment "caf\xe9 loopback" -j ACCEPT\n'
    b'-A INPUT -s 127.0.0.0/8 -m comment --comment "anti-spoof \xa7 5" -j DROP\n'
    b'-A OUTPUT -o lo -j ACCEPT\nCOMMIT\n'
)


def test_latin1_byte_in_a_comment_is_a_valid_ruleset(aggregator, dd_run_check, tool, tmp_path):
    tool.prints(LATIN1_COMMENT)
    saved = tmp_path / 'latin1.v4'
    saved.write_bytes(LATIN1_COMMENT)
    for check in (make_check(iptables_save_command=tool.argv, collection='save'), make_check(ruleset_files={'ipv4': str(saved)})):
        service_check = run_once(check, dd_run_check, aggregator)
        assert service_check.status == AgentCheck.OK, service_check


def test_latin1_byte_in_the_deciding_rule_gives_a_sendable_message(aggregator, dd_run_check, tool):
    text = MISORDERED.replace('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -s 127.0.0.0/8 -m comment --comment "caf\xe9" -j DROP')
    tool.prints(text.encode('latin-1'))
    service_check = run_once(make_check(iptables_save_command=tool.argv, collection='save'), dd_run_check, aggregator)
    assert service_check.status == AgentCheck.CRITICAL
    assert 'filter INPUT rule 1' in service_check.message
    service_check.message.encode('utf-8')


def noise(seed=6, size=4096):
    return random.Random(seed).randbytes(size)


@COLLECTIONS
def test_binary_noise_is_unknown_with_a_line_number(aggregator, dd_run_check, caplog, tool, collection):
    tool.prints(noise())
    check = make_check(iptables_save_command=tool.argv, collection=collection)
    message = fault_then_recovery(check, dd_run_check, aggregator, caplog, ['unparseable output of {}'.format(tool.prefix), ': line '], fix=tool.good)
    assert len(message) < 2000, len(message)  # the offending text is shown cut short


@pytest.mark.parametrize('seed', range(20))
def test_binary_noise_never_passes(tmp_path, seed):
    generator = random.Random(seed)
    data = generator.randbytes(generator.randint(1, 5000))
    path = tmp_path / 'noise'
    path.write_bytes(data)
    options = parse_options({'applicability': 'always', 'ruleset_files': {'ipv4': str(path)}})
    result = run_rule(options, rule_for_family('ipv4'), ApplicabilityChecker(options)).result
    assert result.status is not Status.PASS
    if result.status is Status.UNKNOWN:
        assert 'line ' in result.error


@COLLECTIONS
@pytest.mark.parametrize('stream', ['stdout', 'stderr'])
def test_gigantic_output_is_cut_and_the_tool_killed(aggregator, dd_run_check, caplog, tool, tmp_path, stream, collection):
    mark = marker()
    pidfile = tmp_path / 'pid'
    redirect = '' if stream == 'stdout' else ' >&2'
    tool.script('echo $$ > {}\nexec yes "*filter {}"{}'.format(pidfile, mark, redirect))
    check = make_check(iptables_save_command=tool.argv, max_output_bytes=100000, collection=collection)
    try:
        fault_then_recovery(
            check, dd_run_check, aggregator, caplog,
            [tool.prefix, 'printed more than 100000 bytes (option `max_output_bytes`)'],
            fix=tool.good, after_each=lambda: assert_nothing_left(marker=mark, pgid=int(pidfile.read_text())),
        )
    finally:
        kill_marked(mark)


def test_gigantic_saved_ruleset(aggregator, dd_run_check, caplog, tmp_path):
    path = tmp_path / 'rules.v4'
    path.write_text(CIS_V4.replace('COMMIT', '-A FORWARD -j ACCEPT\n' * 10000 + 'COMMIT'))
    check = make_check(ruleset_files={'ipv4': str(path)}, max_output_bytes=100000)
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        ['saved ruleset {} is larger than 100000 bytes (option `max_output_bytes`)'.format(path)],
        fix=lambda: path.write_text(CIS_V4),
    )


# --------------------------------------------------------------------------- native nftables rules


NFT = {'ipv4': ('ip', 'iptables-save'), 'ipv6': ('ip6', 'ip6tables-save')}


def add_native_nft_rules(ns, nft_family, table, chain, hook, rule, priority=0):
    ns.run(['nft', 'add', 'table', nft_family, table], check=True)
    ns.run(['nft', 'add', 'chain', nft_family, table, chain, '{{ type {} hook {} priority {}; }}'.format(*hook, priority)], check=True)
    ns.run(['nft', 'add', 'rule', nft_family, table, chain] + rule.split(), check=True)


def native_filter_input(ns, family):
    """Table filter with a native nftables rule the iptables tools cannot show (a ct state match written by nft)."""
    require_tools('nft')
    nft_family, save = NFT[family]
    add_native_nft_rules(ns, nft_family, 'filter', 'INPUT', ('filter', 'input'), 'tcp dport 22 ct state new counter accept')
    saved = ns.run([save])
    # What the real tool does: exit 0, the table replaced by one comment line, on stdout.
    assert saved.returncode == 0
    assert INCOMPATIBLE_LINE.format('filter') in saved.stdout.splitlines()
    return save


@pytest.mark.parametrize('family', ['ipv4', 'ipv6'])
def test_table_the_iptables_tools_call_incompatible(aggregator, dd_run_check, caplog, netns, family):
    save = native_filter_input(netns, family)
    tags = V4_TAGS if family == 'ipv4' else V6_TAGS
    check = make_check(families=[family], collection='save', **{save.replace('-', '_') + '_command': netns.argv_prefix() + [save]})

    def replace_with_iptables_rules():
        netns.run(['nft', 'flush', 'ruleset'], check=True)
        netns.restore(CIS_V4 if family == 'ipv4' else CIS_V6, family)

    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        ["table `filter' holds rules the iptables tools cannot show (native nftables rules)", "inspect them with 'nft list ruleset'", 'line 1'],
        fix=replace_with_iptables_rules, tags=tags,
    )


@pytest.mark.parametrize('family', ['ipv4', 'ipv6'])
def test_incompatible_table_read_through_a_wrapper(aggregator, dd_run_check, netns, family):
    save = native_filter_input(netns, family)
    nft_family = NFT[family][0]
    loopback = '127.0.0.0/8' if family == 'ipv4' else '::1/128'
    # Native: drop everything on lo. iptables-compatible, in table raw: the anti-spoofing rule.
    netns.run(['nft', 'add', 'rule', nft_family, 'filter', 'INPUT', 'iifname', 'lo', 'drop'], check=True)
    netns.run([save[: -len('-save')], '-t', 'raw', '-A', 'PREROUTING', '-s', loopback, '!', '-i', 'lo', '-j', 'DROP'], check=True)
    assert not probe_loopback(netns, family, 'udp')  # the kernel really drops loopback traffic
    tags = V4_TAGS if family == 'ipv4' else V6_TAGS
    check = make_check(families=[family], **{save.replace('-', '_') + '_command': netns.argv_prefix() + [save]})
    service_check = run_once(check, dd_run_check, aggregator, tags)
    assert service_check.status == AgentCheck.UNKNOWN, service_check
    assert 'nft' in service_check.message


@COLLECTIONS
def test_incompatible_nat_table_that_drops_loopback_is_not_a_pass(aggregator, dd_run_check, netns, collection):
    require_tools('nft')
    netns.restore(CIS_V4, 'ipv4')
    add_native_nft_rules(netns, 'ip', 'nat', 'OUTPUT', ('nat', 'output'), 'oifname lo ct state new counter drop', priority=-100)
    assert INCOMPATIBLE_LINE.format('nat') in netns.run(['iptables-save']).stdout.splitlines()
    assert not probe_loopback(netns, 'ipv4', 'udp')  # the kernel really drops loopback traffic
    check = make_check(iptables_save_command=netns.argv_prefix() + ['iptables-save'], collection=collection)
    service_check = run_once(check, dd_run_check, aggregator)
    assert service_check.status == AgentCheck.UNKNOWN, service_check
    assert 'nft' in service_check.message


BASE_CHAINS_LINE = "# Table `{}' contains incompatible base-chains, use 'nft' tool to list them."


@COLLECTIONS
@pytest.mark.parametrize('family', ['ipv4', 'ipv6'])
def test_table_with_incompatible_base_chains_is_not_a_pass(aggregator, dd_run_check, netns, family, collection):
    require_tools('nft')
    nft_family, save = NFT[family]
    netns.restore(CIS_V4 if family == 'ipv4' else CIS_V6, family)
    # A second base chain on the input hook of table filter, at a priority iptables does not use.
    add_native_nft_rules(netns, nft_family, 'filter', 'EXTRA', ('filter', 'input'), 'iifname lo drop', priority=10)
    assert BASE_CHAINS_LINE.format('filter') in netns.run([save]).stdout.splitlines()
    assert not probe_loopback(netns, family, 'udp')  # the kernel really drops loopback traffic
    tags = V4_TAGS if family == 'ipv4' else V6_TAGS
    check = make_check(families=[family], collection=collection, **{save.replace('-', '_') + '_command': netns.argv_prefix() + [save]})
    service_check = run_once(check, dd_run_check, aggregator, tags)
    assert service_check.status == AgentCheck.UNKNOWN, service_check
    assert 'nft' in service_check.message


@COLLECTIONS
def test_drop_in_nat_table_shown_by_iptables_is_not_a_pass(aggregator, dd_run_check, netns, collection):
    require_tools('nft')
    # Any conntrack match (here one in FORWARD, off the loopback paths) turns connection tracking, and so nat, on.
    netns.restore(CIS_V4.replace('COMMIT', '-A FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT'), 'ipv4')
    add_native_nft_rules(netns, 'ip', 'nat', 'OUTPUT', ('nat', 'output'), 'oifname lo counter drop', priority=-100)
    assert '-A OUTPUT -o lo -j DROP' in netns.run(['iptables-save']).stdout.splitlines()
    assert not probe_loopback(netns, 'ipv4', 'udp')  # the kernel really drops loopback traffic
    check = make_check(iptables_save_command=netns.argv_prefix() + ['iptables-save'], collection=collection)
    service_check = run_once(check, dd_run_check, aggregator)
    assert service_check.status != AgentCheck.OK, service_check


# --------------------------------------------------------------------------- applicability


def write_dpkg_status(tmp_path, *packages):
    path = tmp_path / 'dpkg-status'
    path.write_text(''.join('Package: {}\nStatus: install ok installed\n\n'.format(name) for name in packages))
    return str(path)


def test_proc_missing(aggregator, dd_run_check, caplog, tmp_path, tool6):
    tool6.good()
    proc = tmp_path / 'proc'
    check = make_check(
        families=['ipv6'], applicability='auto', dpkg_status_file=write_dpkg_status(tmp_path, 'iptables'),
        proc_path=str(proc), ip6tables_save_command=tool6.argv,
    )

    def mount_proc():
        (proc / 'sys' / 'net' / 'ipv6' / 'conf' / 'all').mkdir(parents=True)
        (proc / 'sys' / 'net' / 'ipv6' / 'conf' / 'all' / 'disable_ipv6').write_text('0\n')

    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        ['{} does not exist: set `proc_path` to where the host\'s /proc is mounted'.format(proc)], fix=mount_proc, tags=V6_TAGS,
    )


def test_proc_path_nonexistent(aggregator, dd_run_check, caplog, tmp_path):
    check = make_check(families=['ipv6'], applicability='auto', dpkg_status_file=write_dpkg_status(tmp_path, 'iptables'), proc_path='/nonexistent')
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['/nonexistent does not exist', '`proc_path`'], tags=V6_TAGS)


def test_package_database_missing(aggregator, dd_run_check, caplog, tmp_path, tool):
    tool.good()
    dpkg = tmp_path / 'var-lib-dpkg-status'
    check = make_check(
        applicability='auto', dpkg_status_file=str(dpkg), rpm_database_path=str(tmp_path / 'no-rpm'), iptables_save_command=tool.argv
    )
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        ['no package database at {} or {}'.format(dpkg, tmp_path / 'no-rpm'), '`dpkg_status_file`', '`rpm_database_path`', '`applicability: always`'],
        fix=lambda: dpkg.write_text('Package: iptables\nStatus: install ok installed\n\n'),
    )


def test_package_database_nowhere(aggregator, dd_run_check, caplog):
    check = make_check(applicability='auto', dpkg_status_file='/nonexistent/status', rpm_database_path='/nonexistent/rpm')
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['no package database at /nonexistent/status or /nonexistent/rpm'])


def test_dpkg_status_file_is_a_directory(aggregator, dd_run_check, caplog, tmp_path, tool):
    tool.good()
    dpkg = tmp_path / 'status'
    dpkg.mkdir()
    check = make_check(applicability='auto', dpkg_status_file=str(dpkg), iptables_save_command=tool.argv)

    def replace_with_file():
        dpkg.rmdir()
        dpkg.write_text('Package: iptables\nStatus: install ok installed\n\n')

    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        ['cannot read the dpkg status file {}: Is a directory'.format(dpkg), '`applicability: always`'], fix=replace_with_file,
    )


def test_rpm_command_missing(aggregator, dd_run_check, caplog, tmp_path):
    (tmp_path / 'rpmdb').mkdir()
    check = make_check(
        applicability='auto', dpkg_status_file=str(tmp_path / 'no-dpkg'), rpm_database_path=str(tmp_path / 'rpmdb'),
        rpm_command=[str(tmp_path / 'no-rpm')],
    )
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['cannot query the RPM database', str(tmp_path / 'no-rpm')])


def fake_rpm_answer(tmp_path, *installed):
    """A function that turns the fake rpm into one that answers, as rpm does, with ``installed`` installed."""

    def answer():
        fake_rpm(
            tmp_path,
            'for p in "$@"; do case "$p" in -*|%*) ;; {}) echo "$p";; *) echo "package $p is not installed";; esac; done\n'
            'exit 0'.format('|'.join(installed)),
        )
        os.utime(str(tmp_path / 'rpmdb'))  # rpm -i changes the database

    return answer


def test_rpm_command_missing_names_the_option(aggregator, dd_run_check, tmp_path):
    (tmp_path / 'rpmdb').mkdir()
    check = make_check(
        applicability='auto', dpkg_status_file=str(tmp_path / 'no-dpkg'), rpm_database_path=str(tmp_path / 'rpmdb'),
        rpm_command=[str(tmp_path / 'no-rpm')],
    )
    message = run_once(check, dd_run_check, aggregator).message
    assert '`rpm_command`' in message and 'iptables package' not in message


def fake_rpm(tmp_path, body):
    path = tmp_path / 'rpm-bin' / 'rpm'
    path.parent.mkdir(exist_ok=True)
    if path.exists():
        path.unlink()
    path.write_text('#!/bin/sh\n' + body + '\n')
    path.chmod(0o755)
    return [str(path)]


def test_rpm_database_unreadable(aggregator, dd_run_check, caplog, tmp_path, tool):
    tool.good()
    (tmp_path / 'rpmdb').mkdir()
    # What rpm 4.16 prints when it cannot open its database: errors, then every package "not installed".
    rpm = fake_rpm(
        tmp_path,
        'echo "error: cannot open Packages index using sqlite - Permission denied (13)" >&2\n'
        'echo "error: cannot open Packages database in /var/lib/rpm" >&2\n'
        'for p in "$@"; do case "$p" in -*|%*) ;; *) echo "package $p is not installed";; esac; done\nexit 5',
    )
    check = make_check(
        applicability='auto', dpkg_status_file=str(tmp_path / 'no-dpkg'), rpm_database_path=str(tmp_path / 'rpmdb'),
        rpm_command=rpm, iptables_save_command=tool.argv,
    )
    rpm_answers = fake_rpm_answer(tmp_path, 'iptables')
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['cannot query the RPM database', 'cannot open Packages'], fix=rpm_answers)


def test_rpm_query_that_hangs_is_killed_with_its_children(aggregator, dd_run_check, caplog, tmp_path):
    (tmp_path / 'rpmdb').mkdir()
    mark = marker()
    rpm = fake_rpm(tmp_path, 'sleep {0} &\nexec sleep {0}'.format(mark))
    check = make_check(
        applicability='auto', dpkg_status_file=str(tmp_path / 'no-dpkg'), rpm_database_path=str(tmp_path / 'rpmdb'),
        rpm_command=rpm, timeout=1,
    )
    try:
        fault_then_recovery(
            check, dd_run_check, aggregator, caplog, ['cannot query the RPM database', 'did not finish within 1 s'],
            after_each=lambda: assert_nothing_left(marker=mark),
        )
    finally:
        kill_marked(mark)


# --------------------------------------------------------------------------- saved ruleset files


def test_saved_ruleset_missing(aggregator, dd_run_check, caplog, tmp_path):
    path = tmp_path / 'rules.v4'
    check = make_check(ruleset_files={'ipv4': str(path)})
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        ['saved ruleset {} does not exist (option `ruleset_files`)'.format(path)], fix=lambda: path.write_text(CIS_V4),
    )


def test_saved_ruleset_is_a_directory(aggregator, dd_run_check, caplog, tmp_path):
    path = tmp_path / 'rules.v4'
    path.mkdir()

    def replace_with_file():
        path.rmdir()
        path.write_text(CIS_V4)

    check = make_check(ruleset_files={'ipv4': str(path)})
    fault_then_recovery(
        check, dd_run_check, aggregator, caplog,
        ['saved ruleset {} is a directory, not a file (option `ruleset_files`)'.format(path)], fix=replace_with_file,
    )


def test_saved_ruleset_under_a_file(aggregator, dd_run_check, caplog, tmp_path):
    (tmp_path / 'iptables').write_text('')
    path = tmp_path / 'iptables' / 'rules.v4'
    check = make_check(ruleset_files={'ipv4': str(path)})
    fault_then_recovery(check, dd_run_check, aggregator, caplog, ['saved ruleset {}'.format(path), 'Not a directory'])


def _wchan(native_id):
    try:
        with open('/proc/self/task/{}/wchan'.format(native_id)) as wchan:
            return wchan.read().strip()
    except OSError:
        return ''


def test_saved_ruleset_that_is_a_fifo_does_not_hang(aggregator, dd_run_check, tmp_path):
    path = tmp_path / 'rules.v4'
    os.mkfifo(str(path))
    check = make_check(ruleset_files={'ipv4': str(path)})
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault('service_check', run_once(check, dd_run_check, aggregator)), daemon=True)
    thread.start()
    # Deterministic: either the run ends, or its thread is seen blocked opening the FIFO.
    deadline = time.monotonic() + HANG_GUARD
    while thread.is_alive() and _wchan(thread.native_id) != 'wait_for_partner' and time.monotonic() < deadline:
        time.sleep(0.01)
    blocked = thread.is_alive()
    if blocked:
        # Unblock it (open the writing end and close it: the reader sees an empty file) so the suite goes on.
        fd = os.open(str(path), os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(HANG_GUARD)
    assert not blocked, 'the check blocks forever opening a FIFO given as a saved ruleset'
    service_check = outcome['service_check']
    assert service_check.status == AgentCheck.UNKNOWN
    assert 'not a regular file' in service_check.message


# --------------------------------------------------------------------------- several faults


def test_a_fault_in_one_family_does_not_touch_the_other(aggregator, dd_run_check, tmp_path, netns):
    tool = FakeTools(tmp_path / 'bin', netns)
    tool6 = FakeTools(tmp_path / 'bin', netns, 'ipv6')
    tool.script('echo "{}" >&2\nexit 4'.format(REAL_PERMISSION_DENIED))
    tool6.good()
    check = make_check(families=['ipv4', 'ipv6'], iptables_save_command=tool.argv, ip6tables_save_command=tool6.argv)
    for _ in range(2):
        aggregator.reset()
        dd_run_check(check)
        assert compliance(aggregator, V4_TAGS).status == AgentCheck.UNKNOWN
        assert compliance(aggregator, V6_TAGS).status == AgentCheck.OK


def test_a_changing_fault_is_logged_at_each_change_only(aggregator, dd_run_check, caplog, tool):
    """A fault that changes (A, A, B, A) is logged at each change, and never more than once per change."""
    check = make_check(iptables_save_command=tool.argv)
    caplog.set_level(logging.INFO)
    for body in ['exit 3', 'exit 3', 'echo "{}" >&2\nexit 4'.format(REAL_PERMISSION_DENIED), 'exit 3']:
        tool.script(body)
        run_once(check, dd_run_check, aggregator)
    changes = [r.getMessage() for r in check_records(caplog) if 'evaluated' in r.getMessage()]
    levels = {r.levelno for r in check_records(caplog) if 'evaluated' in r.getMessage()}
    assert len(changes) == 3 and levels == {logging.INFO}, changes
