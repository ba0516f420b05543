"""Soak and concurrency: many consecutive runs in one process leak nothing; instances run side by side
(as the Agent's runners may) keep to their own options and results.

The default is a short soak for every CI run. The full one (issue 6: 10,000 runs)::

    LOOPBACK_TRAFFIC_SOAK_RUNS=10000 python3 -m pytest tests/test_soak.py -q -s -k soak

Nothing here is timed: growth is measured in kB of RSS, open file descriptors and child processes.
"""
import glob
import os
import threading


from datadog_checks.base import AgentCheck
from datadog_checks.loopback_traffic import LoopbackTrafficCheck
from datadog_checks.loopback_traffic.config import DEFAULT_SAVE_COMMANDS

from .netns import netns  # noqa: F401
from .rulesets import CIS_V4, CIS_V6, filter_table

RUNS = int(os.environ.get('LOOPBACK_TRAFFIC_SOAK_RUNS', '300'))
WARM_UP = 50
RSS_NOISE_KB = 5 * 1024
SERVICE_CHECK = 'loopback_traffic.compliance'
REQUIREMENTS_PER_RULE = 3

MISORDERED = filter_table('-A INPUT -s 127.0.0.0/8 -j DROP', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')
CONNTRACK_FIRST = filter_table(
    '-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT', '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', '-A OUTPUT -o lo -j ACCEPT'
)


def rss_kb():
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise AssertionError('no VmRSS in /proc/self/status')


def open_fds():
    return len(os.listdir('/proc/self/fd'))


def children():
    """PIDs of this process's children (of any of its threads), zombies included."""
    pids = []
    for path in glob.glob('/proc/self/task/*/children'):
        try:
            with open(path) as listed:
                pids += [int(pid) for pid in listed.read().split()]
        except OSError:
            pass
    return sorted(pids)


def namespace_instance(ns, **options):
    prefix = ns.argv_prefix()
    instance = dict(
        applicability='always',
        iptables_save_command=prefix + ['iptables-save'],
        ip6tables_save_command=prefix + ['ip6tables-save'],
        iptables_legacy_save_command=prefix + ['iptables-legacy-save'],
        ip6tables_legacy_save_command=prefix + ['ip6tables-legacy-save'],
    )
    instance.update(options)
    families = instance.get('families', ['ipv4', 'ipv6'])
    instance.setdefault('rules', [name for name, family in (('set_loopback_traffic', 'ipv4'), ('set_ipv6_loopback_traffic', 'ipv6')) if family in families])
    return instance


def make_check(instance, check_id):
    check = LoopbackTrafficCheck('loopback_traffic', {}, [instance])
    check.check_id = check_id
    return check


class Samples:
    def __init__(self):
        self.rows = []

    def take(self, run):
        self.rows.append((run, rss_kb(), open_fds(), len(children())))

    def report(self, title):
        print('\n{}: run, VmRSS kB, open fds, children'.format(title))
        for row in self.rows:
            print('  {:>6} {:>8} {:>4} {:>3}'.format(*row))


def soak(check, aggregator, runs, verify):
    """``runs`` consecutive ``check.run()``; returns the samples (baseline after the warm-up)."""
    samples = Samples()
    every = max(runs // 10, 1)
    for run in range(1, runs + 1):
        aggregator.reset()  # the stub keeps every submission: it would grow, not the check
        error = check.run()
        assert error == '', error
        verify(aggregator, run)
        if run == min(WARM_UP, runs) or run % every == 0 or run == runs:
            samples.take(run)
    return samples


def assert_no_growth(samples, title):
    samples.report(title)
    baseline = next(row for row in samples.rows if row[0] >= min(WARM_UP, samples.rows[-1][0]))
    _, rss_start, fds_start, children_start = baseline
    _, rss_end, fds_end, children_end = samples.rows[-1]
    # Relative to the start: a process left over by an earlier test in the same session is not this check's.
    assert children_end <= children_start, samples.rows
    assert max(row[2] for row in samples.rows if row[0] >= baseline[0]) <= fds_start, samples.rows
    assert rss_end - rss_start < RSS_NOISE_KB, samples.rows


def test_soak_against_a_namespace_ruleset(netns, aggregator):
    netns.restore(CIS_V4, 'ipv4')
    netns.restore(CIS_V6, 'ipv6')
    check = make_check(namespace_instance(netns), 'loopback_traffic:soak')

    def verify(aggregator, run):
        statuses = [sc.status for sc in aggregator.service_checks(SERVICE_CHECK)]
        assert statuses == [AgentCheck.OK, AgentCheck.OK], (run, aggregator.service_checks(SERVICE_CHECK))

    runs = max(RUNS, WARM_UP + 10)
    assert_no_growth(soak(check, aggregator, runs, verify), 'soak, {} runs, namespace ruleset'.format(runs))


def test_soak_through_faults(tmp_path, aggregator):
    """The failure paths: a refused tool, an output over the limit (killed), an unparseable output, in turn."""
    tool = tmp_path / 'iptables-save'
    state = tmp_path / 'fault'
    tool.write_text(
        '#!/bin/sh\n'
        'case "$(cat {state})" in\n'
        '0) echo "iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)" >&2; exit 4;;\n'
        '1) exec yes "*filter";;\n'
        '*) echo "not a ruleset";;\n'
        'esac\n'.format(state=state)
    )
    tool.chmod(0o755)
    state.write_text('0')
    check = make_check(
        {'applicability': 'always', 'families': ['ipv4'], 'rules': ['set_loopback_traffic'], 'collection': 'save', 'iptables_save_command': [str(tool)], 'max_output_bytes': 100000},
        'loopback_traffic:soak-faults',
    )

    def verify(aggregator, run):
        (service_check,) = aggregator.service_checks(SERVICE_CHECK)
        assert service_check.status == AgentCheck.UNKNOWN, service_check
        state.write_text(str(run % 3))

    runs = max(RUNS // 3, WARM_UP + 10)
    assert_no_growth(soak(check, aggregator, runs, verify), 'soak, {} runs, faults'.format(runs))


# --------------------------------------------------------------------------- concurrency


CONCURRENT_RUNS = max(RUNS // 3, 30)


def test_instances_side_by_side_keep_their_own_options_and_results(netns, aggregator, tmp_path):
    children_before = set(children())
    netns.restore(CIS_V4, 'ipv4')
    misordered = tmp_path / 'misordered.v4'
    misordered.write_text(MISORDERED)
    conntrack = tmp_path / 'conntrack.v4'
    conntrack.write_text(CONNTRACK_FIRST)
    instances = {
        # name: (instance, expected status, expected requirement statuses)
        'misordered': (
            {'applicability': 'always', 'families': ['ipv4'], 'rules': ['set_loopback_traffic'], 'ruleset_files': {'ipv4': str(misordered)}, 'tags': ['instance:misordered']},
            AgentCheck.CRITICAL,
            [2, 0, 0],
        ),
        'literal': (
            {'applicability': 'always', 'families': ['ipv4'], 'rules': ['set_loopback_traffic'], 'ruleset_files': {'ipv4': str(conntrack)}, 'mode': 'literal', 'tags': ['instance:literal']},
            AgentCheck.OK,
            [0, 0, 0],
        ),
        'partial-critical': (
            {'applicability': 'always', 'families': ['ipv4'], 'rules': ['set_loopback_traffic'], 'ruleset_files': {'ipv4': str(conntrack)}, 'partial': 'critical', 'tags': ['instance:partial-critical']},
            AgentCheck.CRITICAL,
            [0, 0, 1],
        ),
        'namespace': (
            namespace_instance(netns, families=['ipv4'], tags=['instance:namespace'], timeout=30),
            AgentCheck.OK,
            [0, 0, 0],
        ),
    }
    checks = {name: make_check(instance, 'loopback_traffic:' + name) for name, (instance, _, _) in instances.items()}

    # No shared mutable state: every instance has its own options, applicability checker and log state.
    objects = [(c.options, c.options.save_commands, c.applicability, c.applicability.packages, c._last_state) for c in checks.values()]
    for kind in zip(*objects):
        assert len({id(o) for o in kind}) == len(checks), kind
    defaults_before = dict(DEFAULT_SAVE_COMMANDS)

    barrier = threading.Barrier(len(checks))
    errors = []

    def run(check):
        try:
            barrier.wait(60)
            for _ in range(CONCURRENT_RUNS):
                error = check.run()
                if error:
                    errors.append(error)
        except BaseException as error:  # noqa: B902 - reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=run, args=(check,), daemon=True) for check in checks.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not any(thread.is_alive() for thread in threads), 'an instance hangs'
    assert not errors, errors[:3]

    for name, (instance, status, requirement_statuses) in instances.items():
        tag = 'instance:' + name
        mine = [sc for sc in aggregator.service_checks(SERVICE_CHECK) if tag in sc.tags]
        assert len(mine) == CONCURRENT_RUNS, (name, len(mine))
        assert {sc.status for sc in mine} == {status}, (name, {(sc.status, sc.message) for sc in mine})
        assert len({sc.message for sc in mine}) == 1, name
        assert all(sc.check_id == 'loopback_traffic:' + name for sc in mine)
        for requirement, value in zip(['input_accept_lo', 'output_accept_lo', 'input_drop_loopback_source'], requirement_statuses):
            values = [m.value for m in aggregator.metrics('loopback_traffic.requirement.status') if tag in m.tags and 'requirement:' + requirement in m.tags]
            assert values == [value] * CONCURRENT_RUNS, (name, requirement, set(values))
    assert dict(DEFAULT_SAVE_COMMANDS) == defaults_before
    # Their options did not leak into each other.
    assert checks['literal'].options.mode == 'literal' and checks['misordered'].options.mode == 'effective'
    assert checks['partial-critical'].options.partial == 'critical' and checks['literal'].options.partial == 'warning'
    assert set(children()) <= children_before
