"""Getting the ruleset text: running the save tools (timeout, sudo, size limit) or reading saved files.

Every failure is a :class:`CollectionError` whose message says what happened and how to fix it.
"""
from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .config import LEGACY, NFT, Options
from .requirements import IPV4

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


def run_command(
    argv: Sequence[str], timeout: float, max_output_bytes: int, not_found_hint: str = _NOT_FOUND_HINT
) -> CommandOutput:
    """Run ``argv`` (no shell) with a deadline and a bound on the output it may produce.

    ``get_subprocess_output`` has neither, so this reads the pipes itself; on timeout or overflow the
    whole process group is killed and reaped, so no child or zombie is left behind.
    """
    name = command_line(argv)
    try:
        process = subprocess.Popen(
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
        raise CollectionError('cannot run {}: {}'.format(name, error.strerror or error))
    stdout, stderr = _read_bounded(process, name, timeout, max_output_bytes)
    return CommandOutput(
        stdout.decode('utf-8', 'surrogateescape'), stderr.decode('utf-8', 'replace'), process.returncode
    )


def _read_bounded(process: subprocess.Popen, name: str, timeout: float, max_output_bytes: int) -> Tuple[bytes, bytes]:
    deadline = time.monotonic() + timeout
    chunks = {process.stdout: [], process.stderr: []}  # type: ignore[dict-item]
    sizes = {process.stdout: 0, process.stderr: 0}
    with selectors.DefaultSelector() as selector:
        for stream in chunks:
            selector.register(stream, selectors.EVENT_READ)
        try:
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _kill_group(process)
                    raise CollectionError('{} did not finish within {:g} s (option `timeout`)'.format(name, timeout))
                for key, _ in selector.select(remaining):
                    data = os.read(key.fd, _READ_CHUNK)
                    if not data:
                        selector.unregister(key.fileobj)
                        continue
                    sizes[key.fileobj] += len(data)
                    if sizes[key.fileobj] > max_output_bytes:
                        _kill_group(process)
                        raise CollectionError(
                            '{} printed more than {} bytes (option `max_output_bytes`)'.format(name, max_output_bytes)
                        )
                    chunks[key.fileobj].append(data)
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                process.wait(remaining)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                raise CollectionError('{} did not finish within {:g} s (option `timeout`)'.format(name, timeout))
        finally:
            for stream in chunks:
                stream.close()
            if process.returncode is None:
                _kill_group(process)
    return b''.join(chunks[process.stdout]), b''.join(chunks[process.stderr])


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


def run_save(options: Options, family: str, backend: str, table: Optional[str] = None) -> Tuple[str, CommandOutput]:
    argv = save_command(options, family, backend) + (['-t', table] if table else [])
    output = run_command(argv, options.timeout, options.max_output_bytes)
    if output.returncode != 0:
        raise CollectionError(_explain_failure(argv, output, options.use_sudo))
    return command_line(argv), output


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
            data = saved.read(max_output_bytes + 1)
        except OSError as error:
            raise CollectionError('cannot read saved ruleset {}: {}'.format(path, error.strerror or error))
    if len(data) > max_output_bytes:
        raise CollectionError('saved ruleset {} is larger than {} bytes (option `max_output_bytes`)'.format(path, max_output_bytes))
    return collected_text(data.decode('utf-8', 'surrogateescape'), path)


# Targets that are never user chains: no need to ask for their rules.
_EXTENSION_TARGETS = frozenset(
    'ACCEPT DROP REJECT RETURN QUEUE NFQUEUE LOG NFLOG ULOG MARK CONNMARK CT NOTRACK AUDIT TRACE CLASSIFY DSCP TOS '
    'TTL HL TCPMSS SECMARK CONNSECMARK MASQUERADE SNAT DNAT REDIRECT TPROXY TEE SET CHECKSUM IDLETIMER LED HMARK '
    'SYNPROXY NETMAP CLUSTERIP RATEEST'.split()
)
_SMALL_TABLES = ('raw', 'mangle', 'security')
EVALUATED_TABLE_NAMES = ('raw', 'mangle', 'filter', 'security')
_LISTED_CHAINS = ('INPUT', 'OUTPUT')
_MAX_LISTED_CHAINS = 8
_NO_SUCH_CHAIN = ('No chain/target/match by that name', 'does not exist', "doesn't exist")
_JUMP = re.compile(r' -[jg] (\S+)')


def listing_command(options: Options, family: str, backend: str) -> Optional[List[str]]:
    """The ``iptables`` command next to a configured ``iptables-save`` (same prefix, ``-save`` dropped)."""
    argv = save_command(options, family, backend)
    if not argv[-1].endswith('-save'):
        return None
    return argv[:-1] + [argv[-1][: -len('-save')], '-w', '5']


def _no_such_chain(chain: str, stderr: str) -> bool:
    # A jump target that is no chain: legacy says so; iptables-nft says "chain `X' in table `filter' is
    # incompatible" for a chain it does not have and for one it cannot show, so that answer is only
    # taken for a chain that no listing has declared (see list_rules) and never for a built-in chain.
    if chain in _LISTED_CHAINS:
        return False
    return any(text in stderr for text in _NO_SUCH_CHAIN) or "chain `{}' in table".format(chain) in stderr


def _list(base: List[str], options: Options, table: str, chain: Optional[str] = None) -> CommandOutput:
    argv = base + ['-t', table, '-S'] + ([chain] if chain else [])
    output = run_command(argv, options.timeout, options.max_output_bytes)
    if output.returncode != 0 and not (chain and _no_such_chain(chain, output.stderr)):
        raise CollectionError(_explain_failure(argv, output, options.use_sudo))
    return output


def list_rules(options: Options, family: str, backend: str = NFT) -> List[Tuple[str, CommandOutput]]:
    """Only what the evaluation reads: the small tables whole, and from ``filter`` the INPUT and
    OUTPUT chains and the user chains they reach, one ``iptables -t filter -S CHAIN`` at a time. On a
    Kubernetes node this skips the ``nat`` table and the service chains, which is almost all of it."""
    base = listing_command(options, family, backend)
    if base is None:
        raise CollectionError('cannot derive a listing command from {}'.format(command_line(save_command(options, family, backend))))
    listings = [(table, _list(base, options, table)) for table in _SMALL_TABLES]
    filter_listings: List[Tuple[str, CommandOutput]] = []
    pending = list(_LISTED_CHAINS)
    seen = set(pending)
    while pending:
        if len(seen) > _MAX_LISTED_CHAINS:
            # Many small chains (ufw has ~35): one listing of the whole table costs less than a process each.
            return listings + [('filter', _list(base, options, 'filter'))]
        chain = pending.pop()
        output = _list(base, options, 'filter', chain)
        if output.returncode != 0:
            continue  # an extension target after all
        filter_listings.append(('filter', output))
        for target in _JUMP.findall(output.stdout):
            if target not in seen and target not in _EXTENSION_TARGETS:
                seen.add(target)
                pending.append(target)
    return listings + filter_listings


def _is_nft_tool(name: str) -> bool:
    """Whether an iptables binary is the nf_tables variant (the Debian alternatives point to
    xtables-nft-multi or xtables-legacy-multi). Listing a table with the legacy variant loads its
    kernel module, which creates the table: the check must not change the firewall, so only the nft
    variant is used for listings."""
    found = shutil.which(name)
    return bool(found) and 'nft' in os.path.basename(os.path.realpath(found))


def _legacy_tables(options: Options, family: str) -> Optional[List[str]]:
    """The evaluated tables that exist in the legacy backend, from /proc (None if it cannot be read)."""
    names = os.path.join(options.proc_path, 'net', 'ip_tables_names' if family == IPV4 else 'ip6_tables_names')
    try:
        with open(names) as names_file:
            present = set(names_file.read().split())
    except OSError:
        return None
    return [table for table in EVALUATED_TABLE_NAMES if table in present]


def _collect_backend(options: Options, family: str, backend: str) -> Tuple[Collected, bool]:
    """One backend's ruleset, and whether the tool said that legacy tables are present too."""
    listing = listing_command(options, family, backend)
    if options.collection == 'listing' and backend == NFT and listing is not None and _is_nft_tool(listing[-3]):
        listings = list_rules(options, family, backend)
        pieces = tuple((output.stdout, table) for table, output in listings)
        warned = any(LEGACY_TABLES_WARNING in output.stderr for _, output in listings)
        return Collected(backend, command_line(listing) + ' -S', pieces), warned
    tables = _legacy_tables(options, family) if backend == LEGACY else None
    if tables:  # none listed: /proc may be another namespace's (a wrapped command); read everything
        # Only the tables that exist, one at a time: reading one does not read the (large) nat table,
        # takes no lock, and never creates a table that was not there.
        saves = [run_save(options, family, backend, table) for table in tables]
        origin = command_line(save_command(options, family, backend)) + ' -t ' + ','.join(tables)
        return Collected(backend, origin, tuple((output.stdout, None) for _, output in saves)), False
    origin, output = run_save(options, family, backend)
    return Collected(backend, origin, ((output.stdout, None),)), LEGACY_TABLES_WARNING in output.stderr


def collect(options: Options, family: str, given: Optional[Collected] = None) -> List[Collected]:
    """The rulesets of one family: ``given``, the saved file, or the live ruleset plus, when the tool
    warns that legacy tables are present, the legacy ruleset."""
    if given is not None:
        return [given]
    path = options.ruleset_files.get(family)
    if path is not None:
        return [read_file(path, options.max_output_bytes)]
    main, legacy_present = _collect_backend(options, family, NFT)
    if not legacy_present:
        return [main]
    return [main, _collect_backend(options, family, LEGACY)[0]]


def iptables_command(family: str, backend: str) -> str:
    """The command that changes the rules of a family and backend, for remediation messages."""
    base = 'iptables' if family == IPV4 else 'ip6tables'
    return base + '-legacy' if backend == LEGACY else base
