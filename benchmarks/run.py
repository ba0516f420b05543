#!/usr/bin/env python3
"""Kubernetes-scale benchmark of the loopback_traffic check (issue 5). Needs root.

    python3 benchmarks/run.py                                  # every preset, both backends
    python3 benchmarks/run.py --presets cis,ufw,k8s-1k --backends nft --repeat 10 --json /tmp/bench.json

For each preset (see ``generate.py --list``) and backend (``nft``: iptables-nft, ``legacy``:
iptables-legacy) it

1. creates a private network namespace ``lt-bench-<pid>-<preset>-<backend>`` and loads the
   preset's IPv4 and IPv6 rulesets into it with ``ip[6]tables-<backend>-restore`` (timed);
2. re-executes itself inside that namespace (``ip netns exec NS python3 run.py --inside ...``),
   once per measurement, so every measurement starts in a fresh process and the collection
   runs natively:

   * ``baseline``: full ``iptables-save`` + ``ip6tables-save`` of the backend, captured with
     ``subprocess.run``, then every ``-A`` line tokenised with ``shlex.split`` (the naive way);
   * ``check``: ``LoopbackTrafficCheck(...).run()`` through the Agent API with the stub
     aggregator, one warm-up run then ``--repeat`` measured runs (``measure_check_run``);
   * ``probes`` (``--probes``): how long single listing commands take and what they print
     when a table does not exist;
3. measures the offline path once per preset, outside any namespace: parse + evaluate the
   preset's saved IPv4 file (``measure_offline``) against reading it + ``shlex.split`` per line.

Every measurement reports wall time, CPU time of the process *and its children*
(``getrusage`` SELF + CHILDREN deltas) and peak memory: the peak RSS the measuring process
added (``VmHWM`` after ``/proc/self/clear_refs`` reset, minus ``VmRSS`` before) plus the
largest child's ``ru_maxrss``. Nothing is loaded into, or flushed from, the caller's namespace;
the namespaces are deleted on exit, errors and Ctrl-C.
"""
from __future__ import annotations

import dataclasses
import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import generate  # noqa: E402

BACKENDS = ('nft', 'legacy')
FAMILY_TOOL = {'ipv4': 'iptables', 'ipv6': 'ip6tables'}
NS_PREFIX = 'lt-bench-'


def tool(family: str, backend: str, kind: str = '') -> str:
    """tool('ipv6', 'legacy', 'save') -> 'ip6tables-legacy-save'"""
    return f'{FAMILY_TOOL[family]}-{backend}' + (f'-{kind}' if kind else '')


def check_instance(backend: str) -> dict:
    """The check instance used for a backend (nft uses the default commands): the two iptables rules,
    what applies on an iptables host such as a kube-proxy node."""
    instance = {'rules': ['set_loopback_traffic', 'set_ipv6_loopback_traffic'], 'applicability': 'always'}
    if backend == 'legacy':
        instance['iptables_save_command'] = ['iptables-legacy-save']
        instance['ip6tables_save_command'] = ['ip6tables-legacy-save']
    return instance


# --------------------------------------------------------------------------- measuring


def _proc_status_kb(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    """Reset VmHWM of this process (Linux >= 4.0, own process)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _cpu(ru) -> float:
    return ru.ru_utime + ru.ru_stime


@dataclass
class Measurement:
    available: bool = True
    note: str = ''                       # 'not available (...)', 'error: ...', or check statuses
    wall: list = field(default_factory=list)
    cpu: list = field(default_factory=list)          # self + children, per run
    cpu_children: list = field(default_factory=list)
    self_peak_mb: float | None = None    # peak RSS added by the measuring process
    retained_mb: float | None = None     # RSS still held after the runs (vs. before)
    children_peak_mb: float | None = None  # largest ru_maxrss among the children
    tracemalloc_peak_mb: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def unavailable(cls, why: str) -> 'Measurement':
        return cls(available=False, note=f'not available ({why})')

    @property
    def ok(self) -> bool:
        return self.available and bool(self.wall)

    def summary(self) -> dict:
        if not self.ok:
            return {'available': False, 'note': self.note}
        return {
            'available': True, 'note': self.note, 'runs': len(self.wall),
            'wall_median': statistics.median(self.wall), 'wall_max': max(self.wall),
            'cpu_median': statistics.median(self.cpu), 'cpu_max': max(self.cpu),
            'peak_mb': (self.self_peak_mb or 0.0) + (self.children_peak_mb or 0.0),
            'self_peak_mb': self.self_peak_mb, 'children_peak_mb': self.children_peak_mb,
            'retained_mb': self.retained_mb, 'tracemalloc_peak_mb': self.tracemalloc_peak_mb,
            'children_hidden': bool(self.extra.get('children_below_parent_peak')),
        }


def measure(fn, repeat: int, warmup: int = 0, between=None, tracemalloc_run: bool = False) -> Measurement:
    """Run ``fn`` ``warmup`` times unmeasured, then ``repeat`` times measured.

    Memory: VmHWM is reset before the first (warm-up or measured) call, so ``self_peak_mb`` is the
    highest RSS reached by any call minus the RSS before it; children's peak is ``ru_maxrss`` of
    RUSAGE_CHILDREN (this process is fresh, so only ``fn``'s children count).
    """
    m = Measurement()
    rss0 = _proc_status_kb('VmRSS')
    can_reset = _reset_peak_rss()
    try:
        for index in range(warmup):
            if between:
                between()
            s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            fn()
            if index == 0:
                s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
                m.extra['first_wall'] = time.perf_counter() - t0
                m.extra['first_cpu'] = _cpu(s1) - _cpu(s0) + _cpu(c1) - _cpu(c0)
        for _ in range(repeat):
            if between:
                between()
            s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            result = fn()
            t1 = time.perf_counter()
            s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            m.wall.append(t1 - t0)
            m.cpu_children.append(_cpu(c1) - _cpu(c0))
            m.cpu.append(_cpu(s1) - _cpu(s0) + m.cpu_children[-1])
            if isinstance(result, dict):
                m.extra.update(result)
    except Exception as e:  # report, never crash the whole benchmark
        m.note = f'error: {type(e).__name__}: {e}'[:500]
    hwm = _proc_status_kb('VmHWM')
    m.self_peak_mb = (hwm - rss0) / 1024 if can_reset else None
    m.retained_mb = (_proc_status_kb('VmRSS') - rss0) / 1024
    # A child's ru_maxrss starts at its parent's RSS high-water mark at fork/exec time (the kernel
    # carries the old mm's peak over exec). Only a value above this process's own peak is the
    # child's own; otherwise the children stayed below it and their size is unknown here.
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    m.extra['parent_peak_rss_mb'] = hwm / 1024
    if children > hwm + 1024 or not can_reset:
        m.children_peak_mb = children / 1024
    elif children:
        m.extra['children_below_parent_peak'] = True
    if tracemalloc_run and m.ok and not m.note.startswith('error'):
        import tracemalloc
        if between:
            between()
        tracemalloc.start()
        fn()
        m.tracemalloc_peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return m


# --------------------------------------------------------------------------- the baseline


def naive_tokenise(text: str) -> int:
    """The naive parser: every ``-A`` line through ``shlex.split`` (a line it cannot split, e.g. the
    cut-off last line of a crashed save, is skipped rather than aborting the measurement)."""
    n = 0
    for line in text.splitlines():
        if line.startswith('-A '):
            try:
                shlex.split(line)
            except ValueError:
                continue
            n += 1
    return n


def measure_baseline(backend: str, repeat: int, tracemalloc_run=False) -> Measurement:
    cmds = [[tool('ipv4', backend, 'save')], [tool('ipv6', backend, 'save')]]

    def once():
        rules, errors = 0, []
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, text=True, errors='replace', timeout=900)
            if r.returncode != 0:  # keep going: a naive check would tokenise what it got
                errors.append(f'{cmd[0]} exited {r.returncode} after {len(r.stdout):,} bytes'
                              + (f': {r.stderr.strip()[:200]}' if r.stderr.strip() else ''))
            rules += naive_tokenise(r.stdout)
        return {'rules_seen': rules, 'save_errors': errors}

    m = measure(once, repeat, tracemalloc_run=tracemalloc_run)
    if m.extra.get('save_errors') and not m.note:
        m.note = 'SAVE FAILED: ' + '; '.join(m.extra['save_errors'])
    return m


# --------------------------------------------------------------------------- the check


def measure_check_run(instance: dict, repeat: int = 5, tracemalloc_run=False, diagnose=False, sync_repeat: int | None = None) -> Measurement:
    """One check run (both families, collection included) through the Agent API.

    Adjust here if the check's class or config changes.
    """
    import datadog_checks.base  # noqa: F401  the Agent has this loaded already: not counted
    from datadog_checks.base.stubs import aggregator

    rss_before_check = _proc_status_kb('VmRSS')
    try:
        from datadog_checks.loopback_traffic import LoopbackTrafficCheck
    except ImportError as e:
        return Measurement.unavailable(str(e))
    check = LoopbackTrafficCheck('loopback_traffic', {}, [instance])
    outcome = {}

    def once():
        error = check.run()  # '' on success, else a JSON list of errors
        statuses = sorted(f'{t[5:]}={sc.status}' + (f' ({sc.message[:160]})' if sc.status else '')
                          for sc in aggregator.service_checks('loopback_traffic.compliance')
                          for t in sc.tags if t.startswith('rule:'))
        outcome.update(error=error[:300] if error else '', statuses=statuses)
        return {}

    m = measure(once, repeat, warmup=1, between=aggregator.reset, tracemalloc_run=tracemalloc_run)
    m.extra['rss_check_import_mb'] = (_proc_status_kb('VmRSS') - rss_before_check) / 1024
    state = getattr(check, 'state', None)
    if m.ok and state is not None and hasattr(state, 'evaluated'):
        # The same runs as if the generation had changed since the last one and the change notifications
        # could not tell what changed (lost): everything read again; what the check keeps by content
        # (chains whose bytes are the same, their decoded rules and walks) is reused.
        def forget():
            aggregator.reset()
            state.evaluated.clear()
            if hasattr(state, 'kernel'):
                state.kernel.ruleset = None  # read the kernel's ruleset again, as after a change
                state.kernel.chains_generation = None  # that the notifications cannot vouch for

        changed = measure(once, repeat, between=forget)
        m.extra['changed_wall'] = changed.wall
        m.extra['changed_cpu'] = changed.cpu
    if m.ok and state is not None and hasattr(state, 'kernel'):
        kernel = state.kernel.ruleset
        if kernel is not None:
            m.extra['floor'] = measure_floor([key for key in kernel.rules], repeat)
        sync = kube_proxy_sync(instance)
        if sync is not None:
            # A real sync between runs: kube-proxy rewrites filter KUBE-SERVICES and nat KUBE-SERVICES and
            # KUBE-NODEPORTS (new rule handles, a new generation); what the check kept from the last run
            # is what it may reuse.
            synced = measure(once, sync_repeat or repeat, between=lambda: (aggregator.reset(), sync()))
            m.extra['sync_wall'] = synced.wall
            m.extra['sync_cpu'] = synced.cpu
    if diagnose and m.ok:
        aggregator.reset()
        m.extra.update(diagnose_run(once))
    if not m.note:
        m.note = ('run error: ' + outcome['error']) if outcome.get('error') else ' '.join(outcome.get('statuses', []))
    return m


def measure_floor(chains: list, repeat: int) -> dict:
    """The physical floor: a bare netlink dump of the rules of the chains the verdict needed (the
    ones the check read), every reply received and dropped undecoded. Beside it, in the same rounds,
    the least a first run must add to it in Python, whatever it then does with what it read: the
    chain listing (every chain of every table, the only way to find the base chains on the hooks)
    bare, then with each chain message read for its table, name and hook, and the same rule dumps
    with each rule message split into its attributes (no rule built, decoded or walked)."""
    from datadog_checks.loopback_traffic import netlink
    from datadog_checks.loopback_traffic.nf_tables import FAMILY_NAMES

    numbers = {name: number for number, name in FAMILY_NAMES.items()}
    requests = [(numbers[family], netlink._attr_string(netlink.NFTA_RULE_TABLE, table) + netlink._attr_string(netlink.NFTA_RULE_CHAIN, chain))
                for family, table, chain in chains]

    def ignore(*_):
        return None

    def dumps(reader, handle) -> None:
        for family, attrs in requests:
            reader.request(netlink.NFT_MSG_GETRULE, netlink.NFT_MSG_NEWRULE, handle, family=family, attrs=attrs)

    def listing(reader, handle) -> None:
        reader.request(netlink.NFT_MSG_GETCHAIN, netlink.NFT_MSG_NEWCHAIN, handle)

    def each_chain_read(reader) -> None:
        names = netlink.name_cache()
        listing(reader, lambda _family, data, start, end: netlink._chain_identity(data, start, end, names))

    def each_rule_read(reader) -> None:
        names = netlink.name_cache()
        dumps(reader, lambda _family, data, start, end: netlink.rule_fields(data, start, end, names))

    ways = {'wall': lambda reader: dumps(reader, ignore), 'listing': lambda reader: listing(reader, ignore),
            'listing_read': each_chain_read, 'dumps_read': each_rule_read}
    walls: dict = {name: [] for name in ways}
    for _ in range(max(repeat, 1)):
        for name, way in ways.items():  # interleaved: the machine's noise falls on all alike
            with netlink.NetlinkReader() as reader:
                start = time.perf_counter()
                way(reader)
                walls[name].append(time.perf_counter() - start)
    found = {name: statistics.median(values) for name, values in walls.items()}
    # The least a first run costs: the listing with its messages read, the dumps with theirs.
    found['least'] = found['listing_read'] + found['dumps_read']
    return {**found, 'chains': len(chains)}


# The chains kube-proxy's iptables mode writes in full at every sync, whatever changed (the
# per-service chains that did not change are left alone since its partial syncs).
SYNCED_CHAINS = (('filter', 'KUBE-SERVICES'), ('nat', 'KUBE-SERVICES'), ('nat', 'KUBE-NODEPORTS'))
# How many services have one endpoint replaced at each sync (pods come and go): kube-proxy then
# rewrites the service's chain to jump to a new endpoint chain and deletes the old one.
CHURNED_SERVICES = 10


def _listing(backend: str, table: str, chain: str) -> list:
    listing = subprocess.run([tool('ipv4', backend), '-t', table, '-S', chain], capture_output=True, text=True)
    return [line for line in listing.stdout.splitlines() if line.startswith('-A ')] if listing.returncode == 0 else []


class EndpointChurn:
    """At each sync, one endpoint of each of ``CHURNED_SERVICES`` services replaced by a new one."""

    def __init__(self, backend: str, services_rules: list) -> None:
        self.backend = backend
        names = [m.group(1) for m in (re.search(r'-j (KUBE-SVC-\w+)', line) for line in services_rules) if m]
        self.services = {name: _listing(backend, 'nat', name) for name in dict.fromkeys(names[:CHURNED_SERVICES])}
        self.services = {name: rules for name, rules in self.services.items() if rules and 'KUBE-SEP-' in rules[-1]}
        self.endpoints = {}
        for rules in self.services.values():
            old = re.search(r'-j (KUBE-SEP-\w+)', rules[-1]).group(1)
            self.endpoints[old] = _listing(backend, 'nat', old)
        self.replaced = 0

    def next(self):
        """(chains declared, rules, chains deleted) of the nat table for the next sync."""
        declared, rules, deleted = [], [], []
        for service, service_rules in self.services.items():
            old = re.search(r'-j (KUBE-SEP-\w+)', service_rules[-1]).group(1)
            old_address = re.search(r'-> ([\d.]+):', service_rules[-1]).group(1)
            self.replaced += 1
            address = f'10.250.{self.replaced // 250 % 250}.{self.replaced % 250 + 1}'
            new = 'KUBE-SEP-' + hashlib.sha256(f'{service}/{old}/{address}'.encode()).hexdigest()[:16].upper()
            service_rules[-1] = service_rules[-1].replace(old, new).replace(old_address, address)
            self.endpoints[new] = [line.replace(old, new).replace(old_address, address) for line in self.endpoints.pop(old)]
            declared += [service, new, old]  # the old one flushed, then deleted
            rules += service_rules + self.endpoints[new]
            deleted.append(old)
        return declared, rules, deleted


def kube_proxy_sync(instance: dict):
    """A function that does what a kube-proxy sync does (``SYNCED_CHAINS`` rewritten in full, the
    endpoint churn of ``CHURNED_SERVICES`` services), the way it does it (one ``iptables-restore
    --noflush`` per table), then sends traffic; or None where the ruleset has none of those chains."""
    backend = 'legacy' if 'legacy' in ' '.join(instance.get('iptables_save_command', [])) else 'nft'
    texts = {}
    for table, chain in SYNCED_CHAINS:
        rules = _listing(backend, table, chain)
        if rules:
            texts.setdefault(table, []).append((chain, rules))
    if not texts:
        return None
    services = [(m.group(1), int(m.group(2))) for _, rules in sum(texts.values(), []) for line in rules
                for m in [re.match(r'-A KUBE-SERVICES -d (\S+)/32 -p tcp .*?--dport (\d+)', line)] if m]
    reached = services[::max(1, len(services) // TRAFFIC_SERVICES)] if TRAFFIC_SERVICES else []
    churn = EndpointChurn(backend, dict(texts.get('nat', [])).get('KUBE-SERVICES', []))

    def restore_text() -> str:
        out = []
        for table, chains in texts.items():
            declared, rules, deleted = churn.next() if table == 'nat' else ([], [], [])
            out.append('*{}\n'.format(table) + ''.join(':{} - [0:0]\n'.format(chain) for chain in [c for c, _ in chains] + declared)
                       + ''.join(line + '\n' for _, chain_rules in chains for line in chain_rules)
                       + ''.join(line + '\n' for line in rules) + ''.join('-X {}\n'.format(chain) for chain in deleted) + 'COMMIT\n')
        return ''.join(out)

    def sync():
        subprocess.run([tool('ipv4', backend, 'restore'), '--noflush'], input=restore_text(), text=True, check=True)
        connect_to(reached)

    return sync


# How many services get a connection after each sync: on a live node, packets move the counters of
# the rules kube-proxy has just written before the check reads them.
TRAFFIC_SERVICES = 500


def connect_to(services) -> None:
    """One connection attempt to each (address, port), over this namespace's loopback (the route
    ``route_services_over_lo`` adds): its first packet walks nat OUTPUT and its KUBE-SERVICES rule."""
    for address, port in services:
        with socket.socket() as s:
            s.setblocking(False)
            s.connect_ex((address, port))


def route_services_over_lo(ns: str) -> None:
    """Inside the benchmark's own namespace only: cluster IPs routed over its loopback, so that the
    sync's traffic leaves no namespace."""
    assert ns.startswith(NS_PREFIX)
    subprocess.run(['ip', 'netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up'], check=True, timeout=30)
    subprocess.run(['ip', 'netns', 'exec', ns, 'ip', 'route', 'replace', '10.96.0.0/12', 'dev', 'lo'], check=True, timeout=30)


def diagnose_run(fn) -> dict:
    """One extra, unmeasured run: which commands ran and how long each took, and a profile."""
    import cProfile
    import io
    import pstats

    commands = []
    real_init, real_wait = subprocess.Popen.__init__, subprocess.Popen.wait

    def init(self, args, *a, **kw):
        self._lt_bench = (time.perf_counter(), args)
        real_init(self, args, *a, **kw)

    def wait(self, *a, **kw):
        rc = real_wait(self, *a, **kw)
        info = getattr(self, '_lt_bench', None)
        if info:
            commands.append({'cmd': ' '.join(map(str, info[1])), 'secs': time.perf_counter() - info[0], 'rc': rc})
            self._lt_bench = None
        return rc

    subprocess.Popen.__init__, subprocess.Popen.wait = init, wait
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        fn()
        profiler.disable()
    finally:
        subprocess.Popen.__init__, subprocess.Popen.wait = real_init, real_wait
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats('tottime').print_stats(15)
    return {'commands': commands, 'profile_tottime': buf.getvalue()[-6000:]}


# --------------------------------------------------------------------------- offline


def measure_offline(path: str, family: str = 'ipv4', repeat: int = 5, tracemalloc_run=False) -> Measurement:
    """Read (streaming: only the evaluated tables are kept), parse and evaluate a saved ruleset file:
    what the check does with ``ruleset_files``.

    Adjust here if the parser/evaluator API changes (this mirrors ``pipeline.run_rule``).
    """
    try:
        from datadog_checks.loopback_traffic.saves import read_file
        from datadog_checks.loopback_traffic.config import DEFAULT_MAX_OUTPUT_BYTES
        from datadog_checks.loopback_traffic.evaluator import Source, evaluate
        from datadog_checks.loopback_traffic.parser import EVALUATED_TABLES, parse_ruleset
        from datadog_checks.loopback_traffic.requirements import rule_for_family
    except ImportError as e:
        return Measurement.unavailable(str(e))
    rule = rule_for_family(family)

    def once():
        text = read_file(path, DEFAULT_MAX_OUTPUT_BYTES)
        ruleset = parse_ruleset(text, tables=EVALUATED_TABLES)
        result = evaluate(rule, [Source(ruleset)])
        return {'status': getattr(result.status, 'name', str(result.status)),
                'error': getattr(result, 'error', None)}

    m = measure(once, repeat, warmup=1, tracemalloc_run=tracemalloc_run)
    if not m.note and m.extra:
        m.note = m.extra.get('status', '') + (f" ({m.extra['error']})" if m.extra.get('error') else '')
    return m


def measure_offline_baseline(path: str, repeat: int) -> Measurement:
    def once():
        with open(path, encoding='utf-8', errors='replace') as f:
            return {'rules_seen': naive_tokenise(f.read())}
    return measure(once, repeat)


# --------------------------------------------------------------------------- probes


GNU_TIME = '/usr/bin/time'


def run_cmd(argv, timeout=900, stdin_path=None) -> dict:
    """Run one command: wall, its own CPU and peak RSS, exit code, output size, stderr.

    CPU and peak RSS come from GNU time when it is installed: a child forked from this (big) Python
    process would inherit its RSS as ``ru_maxrss`` floor, a child forked from ``time`` does not.
    """
    use_time = os.path.exists(GNU_TIME)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile('r', prefix='lt-bench-time-') as tfile:
        full = [GNU_TIME, '-f', '%M %U %S', '-o', tfile.name, '--'] + list(argv) if use_time else list(argv)
        stdin = open(stdin_path, 'rb') if stdin_path else subprocess.DEVNULL
        try:
            t0 = time.perf_counter()
            p = subprocess.Popen(full, stdin=stdin, stdout=out, stderr=err)
            timer = threading.Timer(timeout, p.kill)
            timer.start()
            try:
                _, status, ru = os.wait4(p.pid, 0)
            finally:
                timer.cancel()
            wall = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if stdin_path:
                stdin.close()
        out.seek(0)
        data = out.read()
        err.seek(0)
        errtext = err.read().decode(errors='replace').strip()
        # CPU: wait4 of the direct child includes what it reaped (time's child), at 1 us resolution
        cpu, maxrss_mb, signal_note = _cpu(ru), ru.ru_maxrss / 1024, ''
        if use_time:
            tlines = [line.strip() for line in tfile.read().splitlines() if line.strip()]
            if tlines:
                try:
                    maxrss_mb = int(tlines[-1].split()[0]) / 1024
                except ValueError:
                    pass
                signal_note = ' '.join(t for t in tlines[:-1] if 'signal' in t)
    return {'cmd': ' '.join(argv), 'rc': p.returncode, 'wall': wall, 'cpu': cpu,
            'maxrss_mb': maxrss_mb, 'out_lines': data.count(b'\n'), 'out_bytes': len(data),
            'stderr': (errtext + (' [' + signal_note + ']' if signal_note else ''))[:400],
            'stdout_head': data[:160].decode(errors='replace')}


def probe_commands(backend: str) -> list:
    cmds = []
    for fam in ('ipv4', 'ipv6'):
        save, ipt = tool(fam, backend, 'save'), tool(fam, backend)
        cmds += [
            [save], [save, '-t', 'filter'], [save, '-t', 'nat'], [save, '-t', 'raw'], [save, '-t', 'security'],
            [ipt, '-S'], [ipt, '-t', 'filter', '-S', 'INPUT'], [ipt, '-t', 'filter', '-S', 'OUTPUT'],
            [ipt, '-t', 'filter', '-S', 'KUBE-FIREWALL'], [ipt, '-t', 'filter', '-S', 'NO-SUCH-CHAIN'],
            [ipt, '-t', 'raw', '-S'], [ipt, '-t', 'mangle', '-S'], [ipt, '-t', 'security', '-S'],
            [ipt, '-t', 'nat', '-S'],
        ]
    if backend == 'nft':
        cmds += [['nft', '-t', 'list', 'chain', 'ip', 'filter', 'INPUT'], ['nft', '-t', 'list', 'table', 'ip', 'filter'],
                 ['nft', 'list', 'table', 'ip', 'raw'], ['nft', 'list', 'tables']]
    return cmds


def table_state(backend: str) -> str:
    if backend == 'nft':
        # not `nft list tables`: nft 1.0.6 fetches the whole ruleset for it (86 s at k8s-100k)
        present = []
        for fam in ('ip', 'ip6'):
            for name in ('raw', 'mangle', 'filter', 'nat', 'security'):
                try:
                    r = subprocess.run(['nft', 'list', 'table', fam, name], capture_output=True, timeout=300)
                except subprocess.TimeoutExpired:
                    present.append(f'{fam} {name}?')
                    continue
                if r.returncode == 0:
                    present.append(f'{fam} {name}')
        return ', '.join(present)
    names = []
    for fam in ('ip', 'ip6'):
        try:
            with open(f'/proc/net/{fam}_tables_names') as f:
                names.append(f'{fam}: ' + ','.join(f.read().split()))
        except OSError as e:
            names.append(f'{fam}: {e}')
    return ' | '.join(names)


def run_probes(backend: str, repeat: int) -> dict:
    before = table_state(backend)
    results = []
    for argv in probe_commands(backend):
        runs = [run_cmd(argv)]
        if runs[0]['wall'] < 5:  # slow ones (whole nat tables at scale) once is enough
            runs += [run_cmd(argv) for _ in range(repeat - 1)]
        first = dict(runs[0])
        first['wall'] = statistics.median(r['wall'] for r in runs)
        first['cpu'] = statistics.median(r['cpu'] for r in runs)
        first['walls'] = [r['wall'] for r in runs]
        results.append(first)
    return {'tables_before': before, 'tables_after': table_state(backend), 'commands': results}


# --------------------------------------------------------------------------- inside the namespace


def inside_main(args) -> int:
    if args.inside == 'baseline':
        out = asdict(measure_baseline(args.backend, args.repeat, args.tracemalloc))
    elif args.inside == 'check':
        out = asdict(measure_check_run(check_instance(args.backend), args.repeat, args.tracemalloc, args.diagnose, args.sync_repeat))
    elif args.inside == 'offline':
        out = asdict(measure_offline(args.file, args.family, args.repeat, args.tracemalloc))
    elif args.inside == 'offline-baseline':
        out = asdict(measure_offline_baseline(args.file, args.repeat))
    elif args.inside == 'probes':
        out = run_probes(args.backend, args.repeat)
    elif args.inside == 'tables':
        out = {'tables': table_state(args.backend)}
    else:
        raise SystemExit(f'unknown --inside {args.inside}')
    with open(args.out, 'w') as f:
        json.dump(out, f)
    return 0


def run_inside(ns: str | None, mode: str, workdir: str, timeout: float, **kw) -> dict:
    """Re-execute this script (in namespace ``ns`` if given) for one measurement."""
    out = os.path.join(workdir, f'{mode}-{os.getpid()}-{time.monotonic_ns()}.json')
    argv = [sys.executable, os.path.abspath(__file__), '--inside', mode, '--out', out]
    for k, v in kw.items():
        if v is True:
            argv.append('--' + k.replace('_', '-'))
        elif v not in (None, False):
            argv += ['--' + k.replace('_', '-'), str(v)]
    if ns:
        argv = ['ip', 'netns', 'exec', ns] + argv
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'available': False, 'note': f'error: timed out after {timeout:.0f} s'}
    if r.returncode != 0 or not os.path.exists(out):
        return {'available': False, 'note': f'error: exit {r.returncode}: {r.stderr.strip()[-400:]}'}
    with open(out) as f:
        return json.load(f)


def summarise(raw: dict) -> dict:
    if 'wall' not in raw:
        return {'available': False, 'note': raw.get('note', '')}
    m = Measurement(**{k: raw[k] for k in Measurement.__dataclass_fields__ if k in raw})
    s = m.summary()
    s['extra'] = raw.get('extra', {})
    return s


# --------------------------------------------------------------------------- namespaces


_namespaces: set = set()


def ns_create(name: str) -> None:
    subprocess.run(['ip', 'netns', 'add', name], check=True, timeout=30)
    _namespaces.add(name)


def ns_delete(name: str) -> None:
    subprocess.run(['ip', 'netns', 'del', name], timeout=60)
    _namespaces.discard(name)


def _on_signal(signum, frame):
    raise KeyboardInterrupt(f'signal {signum}')


# --------------------------------------------------------------------------- output


def fmt_t(v) -> str:
    if v is None:
        return '-'
    return f'{v * 1000:.1f}ms' if v < 1 else f'{v:.2f}s'


def fmt_mb(v) -> str:
    return '-' if v is None else f'{v:.1f}MB'


def ratio(a: dict, b: dict, key: str) -> str:
    if not (a.get('available') and b.get('available')) or not b.get(key):
        return 'n/a'
    if key == 'peak_mb' and (b[key] < 1 or b.get('children_hidden') or a.get('children_hidden')):
        return 'n/a'  # tiny, or the children's share is unknown on one side
    return f'{a[key] / b[key]:.3f}'


def cells(s: dict) -> list:
    if not s.get('available'):
        note = s.get('note', 'n/a')
        short = 'not available' if note.startswith('not available') else note[:40]
        return [short, '', '']
    return [fmt_t(s['wall_median']) + f' (max {fmt_t(s["wall_max"])})', fmt_t(s['cpu_median']),
            fmt_mb(s['peak_mb']) + ('*' if s.get('children_hidden') else '')]


def _ms(seconds: float) -> str:
    return f'{seconds * 1000:.1f} ms' if seconds < 1 else f'{seconds:.2f} s'


def print_table(headers, rows) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    print('  '.join(str(h).ljust(w) for h, w in zip(headers, widths)))
    print('  '.join('-' * w for w in widths))
    for r in rows:
        print('  '.join(str(c).ljust(w) for c, w in zip(r, widths)))


def _multiple(value: float, floor) -> str:
    return f'{value / floor:.1f}x' if floor else '-'


def report(data: dict) -> None:
    print('\n== One check run inside a namespace (both families, collection included); '
          'medians, CPU = self + children, peak = RSS added + largest child')
    rows = []
    for r in data['results']:
        b, c = r['baseline'], r['check']
        load = r['load']
        rows.append([r['preset'], r['backend'], f'{r["rules"]:,} / {r["filter_rules"]:,}',
                     f'{load["ipv4"]["wall"]:.2f}+{load["ipv6"]["wall"]:.2f}s' if len(load) == 2 else 'failed',
                     *cells(b), *cells(c),
                     ratio(c, b, 'wall_median'), ratio(c, b, 'cpu_median'), ratio(c, b, 'peak_mb')])
    print_table(['preset', 'backend', 'rules / filter', 'load v4+v6', 'baseline wall', 'CPU', 'peak',
                 'check wall', 'CPU', 'peak', 'wall x', 'CPU x', 'peak x'], rows)
    print('\n== The same check: its first run (nothing kept yet), runs after a new generation with the same rules '
          '(notifications lost: everything read again, what is kept by content reused), after a kube-proxy sync; wall / CPU, medians')
    rows = []
    for r in data['results']:
        extra = r['check'].get('extra', {}) if r['check'].get('available', True) else {}
        if 'first_wall' not in extra:
            continue
        changed = (f'{_ms(statistics.median(extra["changed_wall"]))} / {_ms(statistics.median(extra["changed_cpu"]))}'
                   if extra.get('changed_wall') else '-')
        synced = (f'{_ms(statistics.median(extra["sync_wall"]))} / {_ms(statistics.median(extra["sync_cpu"]))}'
                  if extra.get('sync_wall') else '-')
        floor = extra.get('floor', {}).get('wall')
        rows.append([r['preset'], r['backend'], f'{_ms(extra["first_wall"])} / {_ms(extra["first_cpu"])}', changed, synced,
                     f'{_ms(floor)} ({extra["floor"]["chains"]} chains)' if floor else '-',
                     _multiple(extra['first_wall'], floor),
                     _multiple(statistics.median(extra['sync_wall']), floor) if extra.get('sync_wall') else '-',
                     *(_multiple(extra['floor'][part], floor) if floor and part in extra['floor'] else '-'
                       for part in ('listing', 'listing_read', 'dumps_read', 'least'))])
    print_table(['preset', 'backend', 'first run', 'changed, unnotified', 'after a sync', 'floor', 'first x', 'sync x',
                 'listing x', 'listing read x', 'dumps read x', 'least x'], rows)
    print('  floor = the rule dumps of the chains the check read, bare; listing = every chain listed, bare; '
          'listing read / dumps read = the same with each message read for its fields (the least Python can do '
          'with them); least = listing read + dumps read, the least a first run costs before any rule is built, '
          'decoded or walked')
    print('  * = the child processes stayed below the measuring process\'s own RSS, so their peak is not '
          'included (see the per-command maxrss of the listing commands)')
    notes = [(r['preset'], r['backend'], w, r[w]['note']) for r in data['results'] for w in ('baseline', 'check')
             if r[w].get('note') and r[w].get('available')]
    for p, b, w, n in notes:
        print(f'  {p}/{b} {w}: {n}')
    for r in data['results']:
        if r.get('tables_after_check') != r.get('tables_before_check'):
            print(f'  {r["preset"]}/{r["backend"]}: tables present before the check runs: {r.get("tables_before_check")}; '
                  f'after: {r.get("tables_after_check")}')
    for r in data['results']:
        for w in ('baseline', 'check'):
            if not r[w].get('available') and r[w].get('note', '').startswith('error'):
                print(f'  {r["preset"]}/{r["backend"]} {w}: {r[w]["note"]}')

    if data['offline']:
        print('\n== Offline: parse + evaluate a saved IPv4 file (read included) vs. read + shlex per -A line')
        rows = []
        for o in data['offline']:
            rows.append([o['preset'], f'{o["bytes"] / 1e6:.1f}MB', f'{o["lines"]:,}', f'{o["rules"]:,}',
                         *cells(o['baseline']), *cells(o['check']),
                         ratio(o['check'], o['baseline'], 'wall_median'), ratio(o['check'], o['baseline'], 'cpu_median')])
        print_table(['preset', 'file', 'lines', 'rules', 'naive wall', 'CPU', 'peak',
                     'offline wall', 'CPU', 'peak', 'wall x', 'CPU x'], rows)
        for o in data['offline']:
            if o['check'].get('note') and not o['check'].get('available', True) and 'error' in o['check']['note']:
                print(f'  {o["preset"]}: {o["check"]["note"]}')

    for pr in data['probes']:
        print(f'\n== Listing commands, {pr["preset"]} / {pr["backend"]} (median of {pr["repeat"]}, 1 run if >5 s; '
              f'tables before: {pr["tables_before"]}; after: {pr["tables_after"]})')
        rows = [[c['cmd'], fmt_t(c['wall']), fmt_t(c['cpu']), fmt_mb(c['maxrss_mb']), c['rc'], f'{c["out_lines"]:,}',
                 (c['stderr'].splitlines() or [''])[0][:70]] for c in pr['commands']]
        print_table(['command', 'wall', 'CPU', 'maxrss', 'rc', 'lines', 'stderr (first line)'], rows)


# --------------------------------------------------------------------------- main


def machine_info() -> dict:
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001
            return f'? ({e})'
    return {'date': datetime.datetime.now().isoformat(timespec='seconds'), 'kernel': platform.release(),
            'python': platform.python_version(), 'cpus': os.cpu_count(),
            'iptables': out(['iptables-nft', '--version']), 'nft': out(['nft', '--version']),
            'loadavg': open('/proc/loadavg').read().split()[:3],
            'git_head': out(['git', '-C', HERE, 'rev-parse', '--short', 'HEAD']),
            'check_code_modified': bool(subprocess.run(['git', '-C', HERE, 'status', '--porcelain', '--', '../loopback_traffic'],
                                                       capture_output=True, text=True).stdout.strip())}


def chosen_preset(spec: str) -> 'generate.Preset':
    """``NAME``, or ``NAME:POSITION`` with the CIS loopback rules at another position (top, bottom, none)."""
    name, _, position = spec.partition(':')
    if name not in generate.PRESETS:
        raise KeyError(f'unknown preset {name!r}')
    if not position:
        return generate.PRESETS[name]
    if position not in generate.CIS_POSITIONS:
        raise ValueError(f'the CIS position must be one of {", ".join(generate.CIS_POSITIONS)}, not {position!r}')
    return dataclasses.replace(generate.PRESETS[name].with_cis(position), name=f'{name}-cis-{position}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--presets', default=','.join(generate.PRESETS),
                    help='comma-separated, NAME or NAME:CIS_POSITION (e.g. k8s-100k:bottom; default: all)')
    ap.add_argument('--backends', default='nft,legacy')
    ap.add_argument('--repeat', type=int, default=5, help='measured check runs (after one warm-up)')
    ap.add_argument('--sync-repeat', type=int, help='measured runs after a kube-proxy sync (default: --repeat); Python\'s full collections come every few syncs')
    ap.add_argument('--baseline-repeat', type=int, default=3, help='measured baseline runs (slow at scale)')
    ap.add_argument('--probes', default='k8s-100k',
                    help="presets whose listing commands are probed ('all', 'none', or a list)")
    ap.add_argument('--probe-repeat', type=int, default=3)
    ap.add_argument('--no-offline', action='store_true', help='skip the offline measurement')
    ap.add_argument('--tracemalloc', action='store_true', help='one extra traced run per measurement')
    ap.add_argument('--diagnose', action='store_true',
                    help='one extra check run recording the commands it ran (and their time) and a profile (JSON)')
    ap.add_argument('--keep-files', metavar='DIR', help='also write the generated rulesets here')
    ap.add_argument('--timeout', type=float, default=1800, help='seconds per load/measurement step')
    ap.add_argument('--json', metavar='PATH', help='write all results as JSON')
    # internal: measuring inside a namespace
    ap.add_argument('--inside', help=argparse.SUPPRESS)
    ap.add_argument('--out', help=argparse.SUPPRESS)
    ap.add_argument('--backend', help=argparse.SUPPRESS)
    ap.add_argument('--file', help=argparse.SUPPRESS)
    ap.add_argument('--family', default='ipv4', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inside:
        return inside_main(args)

    if os.geteuid() != 0:
        ap.error('needs root (network namespaces)')
    try:
        presets = [chosen_preset(spec) for spec in args.presets.split(',') if spec]
    except (KeyError, ValueError) as error:
        ap.error(f'--presets: {error}')
    backends = [b for b in args.backends.split(',') if b]
    for b in backends:
        if b not in BACKENDS:
            ap.error(f'unknown backend {b}')
    probe_set = ({p.name for p in presets} if args.probes == 'all' else set()
                 if args.probes == 'none' else set(args.probes.split(',')))
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    data = {'meta': machine_info() | {'args': vars(args)}, 'results': [], 'offline': [], 'probes': []}
    workdir = tempfile.mkdtemp(prefix='lt-bench-')
    try:
        for preset in presets:
            texts = {fam: preset.text(fam) for fam in generate.FAMILIES}
            st = {fam: generate.stats(texts[fam]) for fam in generate.FAMILIES}
            paths = {}
            for fam, text in texts.items():
                paths[fam] = os.path.join(args.keep_files or workdir, f'{preset.name}.{fam}.save')
                os.makedirs(os.path.dirname(paths[fam]), exist_ok=True)
                with open(paths[fam], 'w') as f:
                    f.write(text)
            print(f'# {preset.name}: ipv4 {st["ipv4"]["rules"]:,} rules ({st["ipv4"]["filter_rules"]:,} filter, '
                  f'{st["ipv4"]["lines"]:,} lines, {st["ipv4"]["bytes"] / 1e6:.1f} MB); ipv6 {st["ipv6"]["rules"]:,} '
                  f'rules ({st["ipv6"]["filter_rules"]:,} filter)', flush=True)

            if not args.no_offline:
                off = {'preset': preset.name, 'file': paths['ipv4'], 'bytes': st['ipv4']['bytes'],
                       'lines': st['ipv4']['lines'], 'rules': st['ipv4']['rules']}
                off['baseline'] = summarise(run_inside(None, 'offline-baseline', workdir, args.timeout,
                                                       file=paths['ipv4'], repeat=args.baseline_repeat))
                off['check'] = summarise(run_inside(None, 'offline', workdir, args.timeout, file=paths['ipv4'],
                                                    family='ipv4', repeat=args.repeat, tracemalloc=args.tracemalloc))
                data['offline'].append(off)
                print(f'  offline: naive {cells(off["baseline"])}  parse+evaluate {cells(off["check"])}', flush=True)

            for backend in backends:
                ns = f'{NS_PREFIX}{os.getpid()}-{preset.name}-{backend}'
                res = {'preset': preset.name, 'backend': backend, 'namespace': ns,
                       'rules': st['ipv4']['rules'] + st['ipv6']['rules'],
                       'filter_rules': st['ipv4']['filter_rules'] + st['ipv6']['filter_rules'],
                       'stats': st, 'load': {}}
                res['baseline'] = res['check'] = {'available': False, 'note': 'error: not run'}
                ns_create(ns)
                try:
                    for fam in generate.FAMILIES:
                        res['load'][fam] = run_cmd(['ip', 'netns', 'exec', ns, tool(fam, backend, 'restore')],
                                                   timeout=args.timeout, stdin_path=paths[fam])
                        if res['load'][fam]['rc'] != 0:
                            raise RuntimeError(f'loading {preset.name} {fam} with {backend} failed: '
                                               f'{res["load"][fam]["stderr"]}')
                    route_services_over_lo(ns)
                    print(f'  {backend}: loaded in {res["load"]["ipv4"]["wall"]:.2f}+{res["load"]["ipv6"]["wall"]:.2f} s',
                          flush=True)
                    res['baseline'] = summarise(run_inside(ns, 'baseline', workdir, args.timeout, backend=backend,
                                                           repeat=args.baseline_repeat, tracemalloc=args.tracemalloc))
                    print(f'  {backend}: baseline {cells(res["baseline"])} {res["baseline"].get("note", "")}', flush=True)
                    res['tables_before_check'] = run_inside(ns, 'tables', workdir, 600, backend=backend).get('tables')
                    res['check'] = summarise(run_inside(ns, 'check', workdir, args.timeout, backend=backend,
                                                        repeat=args.repeat, tracemalloc=args.tracemalloc,
                                                        diagnose=args.diagnose, sync_repeat=args.sync_repeat))
                    for c in res['check'].get('extra', {}).get('commands', []):
                        print(f'    {c["secs"] * 1000:8.1f} ms  rc={c["rc"]}  {c["cmd"]}', flush=True)
                    res['tables_after_check'] = run_inside(ns, 'tables', workdir, 600, backend=backend).get('tables')
                    if res['tables_after_check'] != res['tables_before_check']:
                        print(f'  {backend}: the check changed the tables present: {res["tables_before_check"]} -> '
                              f'{res["tables_after_check"]}', flush=True)
                    print(f'  {backend}: check {cells(res["check"])} {res["check"].get("note", "")}', flush=True)
                    if preset.name in probe_set:
                        pr = run_inside(ns, 'probes', workdir, args.timeout * 2, backend=backend,
                                        repeat=args.probe_repeat)
                        if 'commands' in pr:
                            data['probes'].append({'preset': preset.name, 'backend': backend,
                                                   'repeat': args.probe_repeat, **pr})
                        else:
                            print(f'  {backend}: probes failed: {pr.get("note")}')
                except Exception as e:  # noqa: BLE001  record, clean up, go on with the next one
                    res['error'] = f'{type(e).__name__}: {e}'
                    print(f'  {backend}: ERROR {res["error"]}', flush=True)
                finally:
                    ns_delete(ns)
                data['results'].append(res)
    finally:
        for ns in list(_namespaces):
            ns_delete(ns)
        if not args.keep_files:
            subprocess.run(['rm', '-rf', workdir], timeout=60)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(data, f, indent=1, default=str)
    report(data)
    return 0


if __name__ == '__main__':
    sys.exit(main())
