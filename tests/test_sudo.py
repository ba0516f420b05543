"""`use_sudo: true` against a real sudoers file (issue 14): whatever the check runs under sudo must be
exactly what the README's sudoers line allows.

A throw-away system user gets a sudoers drop-in holding exactly the README's line (checked with
``visudo -c``); the check then runs as that user, inside a throw-away network namespace, with the CIS
rules loaded with each backend (nft only, legacy only, both), and only the save tools go through
``sudo -n``. The user and the drop-in are removed at the end, also when a test fails. The firewall of
the machine's own network namespace is never touched: rules are only loaded in ``lt-`` namespaces.
"""
import json
import os
import pwd
import re
import secrets
import subprocess
import sys
import textwrap

import pytest


from .netns import netns, require_netns, require_tools  # noqa: F401  (netns is a fixture)
from .rulesets import CIS_V4, CIS_V6, filter_table


def iptables_rules(families):
    """The iptables rules of ``families``, the ones these tests judge."""
    return [name for name, family in (('set_loopback_traffic', 'ipv4'), ('set_ipv6_loopback_traffic', 'ipv6')) if family in families]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
RUN_AS_USER = os.path.join(ROOT, 'tests', 'data', 'faults', 'run_as_nobody.py')
SUDOERS_D = '/etc/sudoers.d'
TIMEOUT = 120

MISORDERED_V4 = filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
MISORDERED_V6 = MISORDERED_V4.replace('127.0.0.0/8', '::1/128')
CIS = {'ipv4': CIS_V4, 'ipv6': CIS_V6}
MISORDERED = {'ipv4': MISORDERED_V4, 'ipv6': MISORDERED_V6}
FAMILIES = ('ipv4', 'ipv6')
# The whole save commands the check may run under sudo; the README's line must allow each with no arguments.
SAVE_TOOLS = ('iptables-save', 'ip6tables-save', 'iptables-legacy-save', 'ip6tables-legacy-save', 'iptables-nft-save', 'ip6tables-nft-save')
SUDO_REFUSALS = ('a password is required', 'a terminal is required', 'not allowed', 'may not run sudo')


def readme_sudoers_line():
    """The sudoers line of the README's "### Permissions" section (the one starting with ``dd-agent``)."""
    with open(README) as readme:
        text = readme.read()
    section = text.split('### Permissions', 1)[1].split('\n### ', 1)[0]
    (line,) = [line for line in section.splitlines() if line.startswith('dd-agent ')]
    return line


# The check's pipeline, run as the test user in the namespace: everything is imported as root (the Python
# may live under /root), then the process drops its privileges for good and runs ``run_rule`` per family.
PIPELINE_AS_USER = textwrap.dedent(
    """\
    import json, os, sys
    import selectors, signal, subprocess, encodings.idna, encodings.latin_1  # noqa: F401
    from datadog_checks.loopback_traffic.applicability import ApplicabilityChecker
    from datadog_checks.loopback_traffic.config import parse_options
    from datadog_checks.loopback_traffic.pipeline import run_rule
    from datadog_checks.loopback_traffic.report import message
    from datadog_checks.loopback_traffic.requirements import rule_for_family

    uid, gid, instance = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    warm = parse_options({'applicability': 'always', 'ruleset_files': {'ipv4': os.devnull}})
    message(run_rule(warm, rule_for_family('ipv4'), ApplicabilityChecker(warm)).result)  # loads what the evaluation loads lazily
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    assert os.getuid() == os.geteuid() == uid and os.getgid() == os.getegid() == gid
    options = parse_options(instance)
    out = {'uid': os.getuid(), 'families': {}}
    for family in options.families:
        outcome = run_rule(options, rule_for_family(family), ApplicabilityChecker(options))
        result = outcome.result
        out['families'][family] = {
            'status': result.status.name,
            'error': result.error,
            'origins': list(outcome.origins),
            'deciding_rulesets': [r.deciding.ruleset for r in result.requirements if r.deciding is not None],
            'message': message(result),
        }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope='module')
def sudo_user(tmp_path_factory):
    """A throw-away system user whose sudoers drop-in is exactly the README's line; removed at the end."""
    require_netns()  # root and namespaces
    require_tools('sudo', 'visudo', 'useradd', 'userdel', 'iptables-save', 'ip6tables-save', 'iptables-legacy-save', 'ip6tables-legacy-save')
    name = 'lt-sudo-test-{}'.format(secrets.token_hex(4))
    dropin = os.path.join(SUDOERS_D, name)  # no '.' in the name: sudo ignores such files in @includedir
    assert not os.path.lexists(dropin)
    line = readme_sudoers_line()
    assert line.startswith('dd-agent ALL=(root) NOPASSWD: ')
    sudoers_line = name + line[len('dd-agent'):]
    staged = tmp_path_factory.mktemp('sudoers') / name
    staged.write_text(sudoers_line + '\n')
    os.chmod(str(staged), 0o440)
    checked = subprocess.run(['visudo', '-c', '-f', str(staged)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, 'visudo -c rejects the README line: {}{}'.format(checked.stdout, checked.stderr)
    created = subprocess.run(['useradd', '--system', '--no-create-home', '--shell', '/usr/sbin/nologin', name], capture_output=True, text=True, timeout=30)
    assert created.returncode == 0, created.stderr
    try:
        entry = pwd.getpwnam(name)
        assert entry.pw_uid != 0
        fd = os.open(dropin, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o440)
        try:
            with os.fdopen(fd, 'w') as out:
                out.write(sudoers_line + '\n')
            # The whole configuration, with the drop-in in place, must still be valid.
            whole = subprocess.run(['visudo', '-c'], capture_output=True, text=True, timeout=30)
            assert whole.returncode == 0, whole.stdout + whole.stderr
            print('\nSUDOERS {}: {}'.format(dropin, sudoers_line))
            yield entry
        finally:
            os.unlink(dropin)
    finally:
        subprocess.run(['userdel', name], capture_output=True, text=True, timeout=30)
        assert not os.path.lexists(dropin)


def as_user(ns, user, argv):
    """``argv`` run as ``user`` (no supplementary groups) inside the namespace."""
    drop = ['setpriv', '--reuid={}'.format(user.pw_uid), '--regid={}'.format(user.pw_gid), '--clear-groups', '--']
    env = {'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL': 'C', 'HOME': '/'}
    return subprocess.run(ns.argv_prefix() + drop + list(argv), capture_output=True, text=True, timeout=TIMEOUT, cwd='/', env=env)


def pipeline_as_user(ns, user, **options):
    instance = dict({'use_sudo': True, 'collection': 'auto', 'applicability': 'always', 'families': list(FAMILIES), 'timeout': 60}, **options)
    instance.setdefault('rules', iptables_rules(instance['families']))
    env = dict(os.environ, LC_ALL='C', HOME='/')
    done = subprocess.run(
        ns.argv_prefix() + [sys.executable, '-c', PIPELINE_AS_USER, str(user.pw_uid), str(user.pw_gid), json.dumps(instance)],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out['uid'] == user.pw_uid
    return out


def agent_as_user(ns, user, **options):
    """The check through the Agent API (tests/data/faults/run_as_nobody.py, with the test user's ids)."""
    instance = dict({'use_sudo': True, 'collection': 'auto', 'applicability': 'always', 'families': list(FAMILIES)}, **options)
    instance.setdefault('rules', iptables_rules(instance['families']))
    done = subprocess.run(
        ns.argv_prefix() + [sys.executable, RUN_AS_USER, str(user.pw_uid), str(user.pw_gid), json.dumps(instance)],
        input='run\n', capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=dict(os.environ, LC_ALL='C'),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out['uid'] == user.pw_uid and out['error'] == '', out
    return out


def load(ns, nft=None, legacy=None):
    for family in FAMILIES:
        if nft is not None:
            ns.restore(nft[family], family, 'nft')
        if legacy is not None:
            ns.restore(legacy[family], family, 'legacy')


def assert_no_sudo_refusal(out):
    for family, result in out['families'].items():
        text = '{} {}'.format(result['error'] or '', result['message'])
        for refusal in SUDO_REFUSALS + ('sudo would ask', 'was refused', 'sudoers'):
            assert refusal not in text, (family, result)


def report(backend, pipeline, agent):
    for family, result in sorted(pipeline['families'].items()):
        print('\n{} {}: {} origins={} deciding={} message={!r}'.format(
            backend, family, result['status'], result['origins'], result['deciding_rulesets'], result['message']))
    for status, message, tags in agent['service_checks']:
        print('{} agent service check {}: status={} message={!r}'.format(backend, [t for t in tags if t.startswith('family:')], status, message))


def test_the_sudoers_line_is_real_and_allows_only_the_whole_saves(netns, sudo_user):
    load(netns, nft=CIS, legacy=CIS)
    listed = as_user(netns, sudo_user, ['sudo', '-n', '-l'])
    assert listed.returncode == 0, listed.stderr
    for tool in SAVE_TOOLS:
        allowed = as_user(netns, sudo_user, ['sudo', '-n', tool])
        assert allowed.returncode == 0, (tool, allowed.stderr)
        assert '*filter' in allowed.stdout and '-A INPUT -i lo -j ACCEPT' in allowed.stdout, (tool, allowed.stdout)
    # Not in the line: arguments, other tools. sudo refuses them without asking (-n).
    for argv in (
        ['iptables-legacy-save', '-t', 'filter'],
        ['iptables-save', '-t', 'filter'],
        ['ip6tables-legacy-save', '-c'],
        ['iptables-nft-save', '-t', 'filter'],
        ['iptables-restore'],
        ['iptables', '-S'],
        ['nft', 'list', 'ruleset'],
    ):
        refused = as_user(netns, sudo_user, ['sudo', '-n'] + argv)
        assert refused.returncode != 0, (argv, refused.stdout)
        assert any(phrase in refused.stderr for phrase in SUDO_REFUSALS), (argv, refused.stderr)
        assert '*filter' not in refused.stdout
    # And without sudo the user cannot read the rules itself.
    unprivileged = as_user(netns, sudo_user, ['iptables-legacy-save'])
    assert '-A INPUT -i lo -j ACCEPT' not in unprivileged.stdout


@pytest.mark.parametrize('backend', ['nft', 'legacy', 'both'])
def test_use_sudo_reads_every_backend_through_the_readme_sudoers_line(netns, sudo_user, backend):
    load(netns, nft=CIS if backend in ('nft', 'both') else None, legacy=CIS if backend in ('legacy', 'both') else None)
    pipeline = pipeline_as_user(netns, sudo_user)
    agent = agent_as_user(netns, sudo_user)
    report(backend, pipeline, agent)
    assert_no_sudo_refusal(pipeline)
    for family, result in pipeline['families'].items():
        base = 'iptables' if family == 'ipv4' else 'ip6tables'
        assert result['status'] == 'PASS', (family, result)
        assert result['origins'][0] == 'sudo -n {}-save'.format(base), result
        # The Agent user cannot read /proc/net/ip_tables_names (mode 0440, root's), so it cannot tell whether
        # legacy tables exist: through sudo it always runs the (allowed) legacy save too.
        assert result['origins'][1:] == ['sudo -n {}-legacy-save'.format(base)], result
        if backend == 'nft':
            assert set(result['deciding_rulesets']) == {''}, result
        elif backend == 'legacy':
            assert set(result['deciding_rulesets']) == {'legacy'}, result
        # Everything the check ran under sudo is one of the sudoers line's whole commands.
        for origin in result['origins']:
            assert re.fullmatch(r'sudo -n (ip6?tables(-legacy|-nft)?-save)', origin), origin
    assert [status for status, _, _ in agent['service_checks']] == [0, 0], agent  # OK for both families
    for warning in agent['warnings']:
        assert 'sudo' not in warning, warning
    if backend == 'nft':
        # Reading the legacy save did not create legacy tables in the namespace.
        for name in ('ip_tables_names', 'ip6_tables_names'):
            assert netns.run(['cat', '/proc/net/' + name], check=True).stdout == '', name


def point_save_alternatives_to_legacy(netns):
    """iptables-save and ip6tables-save point to the legacy variant, in the namespace's own /etc/alternatives copy."""
    alternatives = netns.overlay_etc('alternatives')
    for base in ('iptables', 'ip6tables'):
        link = os.path.join(alternatives, base + '-save')
        os.unlink(link)
        os.symlink('/usr/sbin/{}-legacy-save'.format(base), link)


def test_use_sudo_on_a_legacy_host(netns, sudo_user):
    """A host whose iptables-save alternative is the legacy one (in the namespace's own /etc/alternatives copy)."""
    point_save_alternatives_to_legacy(netns)
    assert 'legacy' in netns.run(['readlink', '-f', '/usr/sbin/iptables-save'], check=True).stdout
    load(netns, legacy=CIS)
    pipeline = pipeline_as_user(netns, sudo_user)
    agent = agent_as_user(netns, sudo_user)
    report('legacy-host', pipeline, agent)
    assert_no_sudo_refusal(pipeline)
    for family, result in pipeline['families'].items():
        assert result['status'] == 'PASS', (family, result)
        for origin in result['origins']:
            assert re.fullmatch(r'sudo -n (ip6?tables(-legacy|-nft)?-save)', origin), origin
    assert [status for status, _, _ in agent['service_checks']] == [0, 0], agent


def test_use_sudo_with_the_legacy_save_tool_configured(netns, sudo_user):
    """`iptables_save_command: [iptables-legacy-save]`: the check then also reads the nft variant beside it."""
    load(netns, nft=CIS, legacy=CIS)
    pipeline = pipeline_as_user(
        netns, sudo_user, iptables_save_command=['iptables-legacy-save'], ip6tables_save_command=['ip6tables-legacy-save']
    )
    agent = agent_as_user(netns, sudo_user, iptables_save_command=['iptables-legacy-save'], ip6tables_save_command=['ip6tables-legacy-save'])
    report('configured-legacy-tool', pipeline, agent)
    assert [status for status, _, _ in agent['service_checks']] == [0, 0], agent
    assert_no_sudo_refusal(pipeline)
    for family, result in pipeline['families'].items():
        base = 'iptables' if family == 'ipv4' else 'ip6tables'
        assert result['status'] == 'PASS', (family, result)
        assert result['origins'] == ['sudo -n {}-legacy-save'.format(base), 'sudo -n {}-nft-save'.format(base)], result


@pytest.mark.parametrize('backend', ['legacy', 'both'])
def test_use_sudo_sees_a_misordered_legacy_ruleset(netns, sudo_user, backend):
    """The legacy save really is read through sudo: a misordered legacy ruleset fails, also beside CIS nft rules."""
    load(netns, nft=CIS if backend == 'both' else None, legacy=MISORDERED)
    pipeline = pipeline_as_user(netns, sudo_user)
    agent = agent_as_user(netns, sudo_user)
    report(backend + '+misordered-legacy', pipeline, agent)
    assert_no_sudo_refusal(pipeline)
    for family, result in pipeline['families'].items():
        base = 'iptables' if family == 'ipv4' else 'ip6tables'
        assert result['status'] == 'FAIL', (family, result)
        assert 'sudo -n {}-legacy-save'.format(base) in result['origins'], result
        if backend == 'both':
            assert 'legacy' in result['deciding_rulesets'], result
    assert [status for status, _, _ in agent['service_checks']] == [2, 2], agent  # CRITICAL for both families


def test_use_sudo_on_a_legacy_host_still_reads_the_nf_tables_rules(netns, sudo_user):
    """Where iptables-save is the legacy variant, nf_tables rules are read with iptables-nft-save (allowed by the line)."""
    point_save_alternatives_to_legacy(netns)
    load(netns, legacy=CIS)
    netns.run(['iptables-nft', '-I', 'INPUT', '1', '-i', 'lo', '-j', 'DROP'], check=True)
    pipeline = pipeline_as_user(netns, sudo_user)
    assert_no_sudo_refusal(pipeline)
    result = pipeline['families']['ipv4']
    assert result['status'] == 'FAIL', result
    assert 'sudo -n iptables-nft-save' in result['origins'], result
