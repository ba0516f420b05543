"""Getting the ruleset text: running the save tools (timeout, sudo, size limit) or reading saved files.

Every failure is a :class:`CollectionError` whose message says what happened and how to fix it.
"""
from __future__ import annotations

import os
import selectors
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Dict, FrozenSet, List, Optional, Protocol, Sequence, Tuple

from .config import LEGACY, NFT, Options
from .evaluator import EXTENSION_TARGETS, reach
from .model import BUILTIN_CHAINS
from .parser import EVALUATED_TABLES, ParseError, UnreadTablesFilter, merge_rulesets, parse_ruleset
from .requirements import IPV4, REQUIREMENTS, rule_for_family

LEGACY_TABLES_WARNING = 'iptables-legacy tables present'
_READ_CHUNK = 1 << 16


class CollectionError(Exception):
    """The ruleset could not be read. ``str()`` is a message a person can act on."""


@dataclass(frozen=True)
class CommandOutput:
    stdout: str
    stderr: str
    returncode: int


@dataclass(frozen=True)
class Collected:
    """One ruleset (one backend of one family) as text pieces: whole ``iptables-save`` output
    (table None) or ``iptables -t TABLE -S [CHAIN]`` listings (table given)."""

    backend: str  # NFT (the default tools) or LEGACY
    origin: str  # the command or file, for messages
    pieces: Tuple[Tuple[str, Optional[str]], ...]


def collected_text(text: str, origin: str) -> Collected:
    return Collected(NFT, origin, ((text, None),))


def command_line(argv: Sequence[str]) -> str:
    return ' '.join(argv)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


_NOT_FOUND_HINT = 'install the iptables package or set the command path'


_MAX_PARALLEL = 8


def run_command(
    argv: Sequence[str], timeout: float, max_output_bytes: int, not_found_hint: str = _NOT_FOUND_HINT
) -> CommandOutput:
    """Run ``argv`` (no shell) with a deadline and a bound on the output it may produce."""
    return run_commands([argv], timeout, max_output_bytes, not_found_hint)[0]


class _Sink(Protocol):
    def feed(self, data: bytes) -> None: ...

    def value(self) -> bytes: ...


class _Everything:
    """Keeps every byte of a stream."""

    def __init__(self) -> None:
        self._chunks: List[bytes] = []

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)

    def value(self) -> bytes:
        return b''.join(self._chunks)


@dataclass
class _Running:
    argv: Sequence[str]
    process: subprocess.Popen
    sinks: Dict[str, _Sink]
    sizes: Dict[str, int]
    open_streams: int = 2


def _start(argv: Sequence[str], not_found_hint: str) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=dict(os.environ, LC_ALL='C'),
        )
    except FileNotFoundError:
        if argv[0] == 'sudo':
            not_found_hint = 'install sudo, or set `use_sudo: false` and give the Agent CAP_NET_ADMIN'
        raise CollectionError('{} was not found: {}'.format(argv[0], not_found_hint))
    except PermissionError:
        raise CollectionError('{} is not executable by the Agent user'.format(argv[0]))
    except OSError as error:
        raise CollectionError('cannot run {}: {}'.format(command_line(argv), error.strerror or error))


def run_commands(
    argvs: Sequence[Sequence[str]],
    timeout: float,
    max_output_bytes: int,
    not_found_hint: str = _NOT_FOUND_HINT,
    stdout_sink: Callable[[], _Sink] = _Everything,
) -> List[CommandOutput]:
    """Run commands (no shell), up to eight at a time, all within one deadline, each bounded in the
    output it may produce; their outputs in the order given (standard output as ``stdout_sink``
    keeps it, as it streams in).

    ``get_subprocess_output`` has neither bound, so this reads the pipes itself; on timeout, overflow
    or error every process group still running is killed and reaped: no child or zombie is left.
    """
    deadline = time.monotonic() + timeout
    waiting = list(enumerate(argvs))
    waiting.reverse()
    running: Dict[int, _Running] = {}
    results: Dict[int, CommandOutput] = {}
    with selectors.DefaultSelector() as selector:
        try:
            while waiting or running:
                while waiting and len(running) < _MAX_PARALLEL:
                    index, argv = waiting.pop()
                    process = _start(argv, not_found_hint)
                    running[index] = _Running(argv, process, {'out': stdout_sink(), 'err': _Everything()}, {'out': 0, 'err': 0})
                    selector.register(process.stdout, selectors.EVENT_READ, (index, 'out'))
                    selector.register(process.stderr, selectors.EVENT_READ, (index, 'err'))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _timed_out(next(iter(running.values())).argv, timeout)
                for key, _ in selector.select(remaining):
                    index, stream = key.data
                    if _read_into(running[index], stream, key.fd, max_output_bytes):
                        continue
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    command = running[index]
                    command.open_streams -= 1
                    if command.open_streams == 0:
                        results[index] = _finish(command, deadline, timeout)
                        del running[index]
        finally:
            for command in running.values():
                for pipe in (command.process.stdout, command.process.stderr):
                    pipe.close()
                if command.process.returncode is None:
                    _kill_group(command.process)
    return [results[index] for index in range(len(argvs))]


def _timed_out(argv: Sequence[str], timeout: float) -> CollectionError:
    return CollectionError('{} did not finish within {:g} s (option `timeout`)'.format(command_line(argv), timeout))


def _read_into(command: _Running, stream: str, fd: int, max_output_bytes: int) -> bool:
    """Read what a pipe has; False at its end."""
    data = os.read(fd, _READ_CHUNK)
    if not data:
        return False
    command.sizes[stream] += len(data)
    if command.sizes[stream] > max_output_bytes:
        raise CollectionError(
            '{} printed more than {} bytes (option `max_output_bytes`)'.format(command_line(command.argv), max_output_bytes)
        )
    command.sinks[stream].feed(data)
    return True


def _finish(command: _Running, deadline: float, timeout: float) -> CommandOutput:
    try:
        command.process.wait(max(deadline - time.monotonic(), 0.001))
    except subprocess.TimeoutExpired:
        raise _timed_out(command.argv, timeout)
    return CommandOutput(
        command.sinks['out'].value().decode('utf-8', 'surrogateescape'),
        command.sinks['err'].value().decode('utf-8', 'replace'),
        command.process.returncode,
    )


def _explain_failure(argv: Sequence[str], output: CommandOutput, use_sudo: bool) -> str:
    stderr = output.stderr.strip()
    first = stderr.splitlines()[0] if stderr else 'no error message'
    name = command_line(argv)
    if 'a password is required' in stderr or 'sudo: a terminal is required' in stderr:
        return '{} failed: sudo would ask for a password; allow the exact command with NOPASSWD in sudoers (see README)'.format(name)
    if 'Permission denied' in stderr or 'you must be root' in stderr or 'Operation not permitted' in stderr:
        hint = 'allow it in sudoers (see README)' if use_sudo else 'set `use_sudo: true` and allow it in sudoers, or give the Agent CAP_NET_ADMIN'
        return '{} was refused: {} ({})'.format(name, first, hint)
    if 'incompatible' in stderr:
        return "{} failed: {} (native nftables rules; inspect them with 'nft list ruleset')".format(name, first)
    if 'Address family not supported' in stderr or 'Table does not exist' in stderr:
        return '{} failed: {} (this family is off in the kernel: set `applicability: auto` or remove it from `families`)'.format(name, first)
    return '{} exited with status {}: {}'.format(name, output.returncode, first)


def save_command(options: Options, family: str, backend: str) -> List[str]:
    argv = list(options.save_commands[(family, backend)])
    return ['sudo', '-n'] + argv if options.use_sudo else argv


def run_saves(options: Options, family: str, backend: str, tables: Sequence[Optional[str]] = (None,)) -> List[CommandOutput]:
    """The save command, whole (table None) or once per table (``-t TABLE``), side by side; of a
    whole save only the evaluated tables are kept as it streams in."""
    argvs = [save_command(options, family, backend) + (['-t', table] if table else []) for table in tables]
    outputs = run_commands(argvs, options.timeout, options.max_output_bytes, stdout_sink=UnreadTablesFilter)
    for argv, output in zip(argvs, outputs):
        if output.returncode != 0:
            raise CollectionError(_explain_failure(argv, output, options.use_sudo))
    return outputs


def read_file(path: str, max_output_bytes: int) -> Collected:
    try:
        # O_NONBLOCK: a FIFO must not block the check; it is refused below as not a regular file.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CollectionError('saved ruleset {} does not exist (option `ruleset_files`)'.format(path))
    except PermissionError:
        raise CollectionError('saved ruleset {} is not readable by the Agent user'.format(path))
    except OSError as error:
        raise CollectionError('cannot read saved ruleset {}: {}'.format(path, error.strerror or error))
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        what = 'a directory, not a file' if stat.S_ISDIR(mode) else 'not a regular file'
        raise CollectionError('saved ruleset {} is {} (option `ruleset_files`)'.format(path, what))
    with os.fdopen(descriptor, 'rb') as saved:
        try:
            return read_stream(saved, path, max_output_bytes)
        except OSError as error:
            raise CollectionError('cannot read saved ruleset {}: {}'.format(path, error.strerror or error))


def read_stream(stream: BinaryIO, origin: str, max_output_bytes: Optional[int] = None) -> Collected:
    """A saved ruleset read from ``stream`` to its end, keeping only the evaluated tables as it streams in."""
    kept, size = UnreadTablesFilter(), 0
    for chunk in iter(lambda: stream.read(_READ_CHUNK), b''):
        size += len(chunk)
        if max_output_bytes is not None and size > max_output_bytes:
            raise CollectionError('saved ruleset {} is larger than {} bytes (option `max_output_bytes`)'.format(origin, max_output_bytes))
        kept.feed(chunk)
    return collected_text(kept.value().decode('utf-8', 'surrogateescape'), origin)


EVALUATED_TABLE_NAMES = ('raw', 'mangle', 'filter', 'security')
# The chains on the evaluated paths, by table (spec section 2).
PATH_CHAINS = {
    table: tuple(sorted({hook.chain for requirement in REQUIREMENTS for hook in requirement.path if hook.table == table}))
    for table in EVALUATED_TABLE_NAMES
}
# Listing whole tables is how iptables-nft reveals native base chains, and it costs about what a few
# chain listings cost, until the family holds tens of thousands of chains (a Kubernetes node's nat
# table): then every table listing pays for reading them all.
CHEAP_TABLE_LISTING_SECONDS = 0.05
# nat cannot drop, and its rules are never read (a Kubernetes node's service chains are there), but
# native nftables rules in it can: its built-in chains are listed to hear the tool call them incompatible.
_NAT_CHAINS = tuple(('nat', chain) for chain in BUILTIN_CHAINS['nat'])
_NO_SUCH_CHAIN = ('No chain/target/match by that name', 'does not exist', "doesn't exist")


@dataclass
class ListingHistory:
    """What one check instance learnt about listing this host's tables, per family: when the tables
    were last listed whole and what that cost, the user chains the last chain listings needed, and
    the last answer of which chains to list next. Never shared between instances."""

    whole_listing_cost: Dict[str, float] = field(default_factory=dict)
    whole_listing_at: Dict[str, float] = field(default_factory=dict)
    user_chains: Dict[str, Tuple[Tuple[str, str], ...]] = field(default_factory=dict)
    discovered: Dict[str, Tuple[tuple, FrozenSet[Tuple[str, str]]]] = field(default_factory=dict)

    def whole_listing_due(self, family: str, interval: float, now: float) -> bool:
        cost = self.whole_listing_cost.get(family)
        if cost is None or cost <= CHEAP_TABLE_LISTING_SECONDS:
            return True
        return now - self.whole_listing_at[family] >= interval

    def record_whole_listing(self, family: str, cost: float, now: float) -> None:
        self.whole_listing_cost[family] = cost
        self.whole_listing_at[family] = now


def listing_command(options: Options, family: str, backend: str) -> Optional[List[str]]:
    """The ``iptables`` command next to a configured ``iptables-save`` (same prefix, ``-save`` dropped)."""
    argv = save_command(options, family, backend)
    if not argv[-1].endswith('-save'):
        return None
    return argv[:-1] + [argv[-1][: -len('-save')], '-w', '5']


def _no_such_chain(chain: str, stderr: str) -> bool:
    # A jump target that is no chain: legacy says so; iptables-nft says "chain `X' in table `filter' is
    # incompatible" for a chain it does not have and for one it cannot show, so that answer is only
    # taken for a user chain (a path chain is built in and always exists) whose listing failed.
    return any(text in stderr for text in _NO_SUCH_CHAIN) or "chain `{}' in table".format(chain) in stderr


def _list(
    base: List[str], options: Options, requests: Sequence[Tuple[str, Optional[str]]], with_nat: bool = False
) -> List[Tuple[str, Optional[str], CommandOutput]]:
    """``iptables -t TABLE -S [CHAIN]`` for each (table, chain), side by side (``with_nat``: the nat
    chains with them); a user chain that turns out not to exist (an extension target after all)
    gives no listing."""
    requests = list(requests) + (list(_NAT_CHAINS) if with_nat else [])
    argvs = [base + ['-t', table, '-S'] + ([chain] if chain else []) for table, chain in requests]
    listings = []
    for argv, (table, chain), output in zip(argvs, requests, run_commands(argvs, options.timeout, options.max_output_bytes)):
        if output.returncode == 0:
            if table in PATH_CHAINS:
                listings.append((table, chain, output))
        elif not (chain and table in PATH_CHAINS and chain not in BUILTIN_CHAINS[table] and _no_such_chain(chain, output.stderr)):
            raise CollectionError(_explain_failure(argv, output, options.use_sudo))
    return listings


def _list_chains(base: List[str], options: Options, family: str, history: ListingHistory) -> List[Tuple[str, CommandOutput]]:
    """The path chains, then round by round the user chains the loopback classes reach from them
    (``evaluator.reach``), each round side by side. A chain that only packets of no class can
    reach (a Kubernetes node's service chains behind an accept of lo) is never listed. The user
    chains the last run needed are listed with the path chains, not a round later."""
    path: List[Tuple[str, Optional[str]]] = [(table, chain) for table in EVALUATED_TABLE_NAMES for chain in PATH_CHAINS[table]]
    requests = path + list(history.user_chains.get(family, ()))
    seen = set(requests)
    listings: List[Tuple[str, Optional[str], CommandOutput]] = []
    while requests:
        listings.extend(_list(base, options, requests, with_nat=not listings))
        wanted = _discover(family, listings, history)
        requests = sorted(request for request in wanted if request[1] not in EXTENSION_TARGETS and request not in seen)
        seen.update(requests)
    history.user_chains[family] = tuple(
        (table, chain) for table, chain, _ in listings if chain is not None and chain not in BUILTIN_CHAINS[table]
    )
    return [(table, output) for table, _, output in listings]


def _discover(family: str, listings: Sequence[Tuple[str, Optional[str], CommandOutput]], history: ListingHistory) -> FrozenSet[Tuple[str, str]]:
    """The chains that rules the loopback classes reach jump to and no listing declares yet. The
    same listings as last time give the same answer, without parsing them again."""
    key = tuple((table, chain, output.stdout) for table, chain, output in listings)
    last = history.discovered.get(family)
    if last is not None and last[0] == key:
        return last[1]
    try:
        ruleset = merge_rulesets([parse_ruleset(output.stdout, tables=EVALUATED_TABLES, listing_table=table) for table, _, output in listings])
    except ParseError:
        return frozenset()  # the pipeline parses the listings again and reports the error
    wanted = reach(rule_for_family(family), ruleset).undeclared
    history.discovered[family] = (key, wanted)
    return wanted


def list_rules(
    options: Options, family: str, backend: str = NFT, history: Optional[ListingHistory] = None
) -> List[Tuple[str, CommandOutput]]:
    """Only what the evaluation reads, with the nf_tables ``iptables``: on a Kubernetes node this
    skips the nat table and the service chains, which is almost all of it.

    The four evaluated tables are listed whole (``iptables -t TABLE -S``) when that is cheap, or when
    ``table_listing_interval`` has passed; otherwise only their path chains and the user chains they
    reach (``iptables -t TABLE -S CHAIN``), which stays cheap whatever the size of the other tables.
    """
    base = listing_command(options, family, backend)
    if base is None:
        raise CollectionError('cannot derive a listing command from {}'.format(command_line(save_command(options, family, backend))))
    history = history if history is not None else ListingHistory()
    now = time.monotonic()
    if not history.whole_listing_due(family, options.table_listing_interval, now):
        return _list_chains(base, options, family, history)
    listings = _list(base, options, [(table, None) for table in EVALUATED_TABLE_NAMES], with_nat=True)
    history.record_whole_listing(family, time.monotonic() - now, now)
    return [(table, output) for table, _, output in listings]


def tool_kind(name: str) -> Optional[str]:
    """Which backend an iptables binary is (NFT or LEGACY; None when it cannot tell): the Debian
    alternatives point to xtables-nft-multi or xtables-legacy-multi. Listing a table with the legacy
    variant loads its kernel module, which creates the table: the check must not change the
    firewall, so only the nft variant is used for listings."""
    found = shutil.which(name)
    if not found:
        return None
    binary = os.path.basename(os.path.realpath(found))
    return NFT if 'nft' in binary else LEGACY if 'legacy' in binary else None


def _legacy_tables(options: Options, family: str) -> Optional[List[str]]:
    """The evaluated tables that exist in the legacy backend, from /proc (None if it cannot be read)."""
    names = os.path.join(options.proc_path, 'net', 'ip_tables_names' if family == IPV4 else 'ip6_tables_names')
    try:
        with open(names) as names_file:
            present = set(names_file.read().split())
    except OSError:
        return None
    return [table for table in EVALUATED_TABLE_NAMES if table in present]


def _collect_backend(options: Options, family: str, backend: str, history: Optional[ListingHistory]) -> Tuple[Collected, bool]:
    """One backend's ruleset, and whether the tool said that legacy tables are present too."""
    configured = options.save_commands[(family, backend)]
    kind = LEGACY if backend == LEGACY else tool_kind(configured[-1])
    listing = listing_command(options, family, backend)
    # With sudo, only the save commands the README's sudoers line allows are run.
    automatic = options.collection == 'auto' and kind == NFT and not options.use_sudo
    if listing is not None and kind != LEGACY and (automatic or options.collection == 'listing'):
        listings = list_rules(options, family, backend, history)
        pieces = tuple((output.stdout, table) for table, output in listings)
        warned = any(LEGACY_TABLES_WARNING in output.stderr for _, output in listings)
        return Collected(backend, command_line(listing) + ' -S', pieces), warned
    # A wrapped command (nsenter ...) may read another namespace than the /proc the check sees.
    tables = _legacy_tables(options, family) if kind == LEGACY and (backend == LEGACY or len(configured) == 1) else None
    if tables:
        # Only the tables that exist, side by side: reading one does not read the (large) nat
        # table, takes no lock, and never creates a table that was not there.
        outputs = run_saves(options, family, backend, tables)
        origin = command_line(save_command(options, family, backend)) + ' -t ' + ','.join(tables)
        return Collected(backend, origin, tuple((output.stdout, None) for output in outputs)), False
    (output,) = run_saves(options, family, backend)
    origin = command_line(save_command(options, family, backend))
    return Collected(backend, origin, ((output.stdout, None),)), LEGACY_TABLES_WARNING in output.stderr


def collect(
    options: Options, family: str, given: Optional[Collected] = None, history: Optional[ListingHistory] = None
) -> List[Collected]:
    """The rulesets of one family: ``given``, the saved file, or the live ruleset plus, when the tool
    warns that legacy tables are present, the legacy ruleset."""
    if given is not None:
        return [given]
    path = options.ruleset_files.get(family)
    if path is not None:
        return [read_file(path, options.max_output_bytes)]
    main, legacy_present = _collect_backend(options, family, NFT, history)
    if not legacy_present:
        return [main]
    return [main, _collect_backend(options, family, LEGACY, history)[0]]


def unusable_commands(options: Options) -> List[str]:
    """The configured programs the check will run that do not exist or are not executable, one
    message each (checked at start; the runs report UNKNOWN with the fix until they are there)."""
    programs = [options.save_commands[(family, NFT)][0] for family in options.families if family not in options.ruleset_files]
    if options.use_sudo and programs:
        programs.insert(0, 'sudo')
    problems = []
    for program in dict.fromkeys(programs):
        # Behind sudo the program runs as root: it need only exist.
        mode = os.F_OK if options.use_sudo and program != 'sudo' else os.X_OK
        if shutil.which(program, mode=mode) is None:
            problems.append('{} is not an existing executable{}'.format(program, '' if os.path.isabs(program) else ' on the PATH'))
    return problems


def iptables_command(family: str, backend: str) -> str:
    """The command that changes the rules of a family and backend, for remediation messages."""
    base = 'iptables' if family == IPV4 else 'ip6tables'
    return base + '-legacy' if backend == LEGACY else base
