"""What the check knows of the iptables save tools: their commands (sudo, wrappers, legacy variants),
running them, explaining their failures, reading saved files, and where the legacy xtables are.
"""
from __future__ import annotations

import os
import shutil
import stat
from typing import BinaryIO, List, Optional, Sequence

from .config import LEGACY, NFT, Options
from .parser import UnreadTablesFilter
from .requirements import IPV4
from .namespaces import read_proc_net
from .runner import CollectionError, CommandOutput, command_line, run_commands

_READ_CHUNK = 1 << 16


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


def save_command(options: Options, command: Sequence[str]) -> List[str]:
    return ['sudo', '-n'] + list(command) if options.use_sudo else list(command)


def run_save(options: Options, command: Sequence[str]) -> CommandOutput:
    """A whole save, exactly as configured (the README's sudoers line allows it with no
    arguments); of the output only the tables' lines and the tools' warnings are kept as it
    streams in (timestamps are dropped, so that an unchanged ruleset gives the same text)."""
    argv = save_command(options, command)
    (output,) = run_commands([argv], options.timeout, options.max_output_bytes, stdout_sink=UnreadTablesFilter)
    if output.returncode != 0:
        raise CollectionError(_explain_failure(argv, output, options.use_sudo))
    return output


def is_wrapped(options: Options, family: str, backend: str) -> bool:
    """A save command run through another program (``nsenter ... iptables-save``): it may read
    another network namespace than the check's own."""
    return len(options.save_commands[(family, backend)]) > 1


def uses_netlink(options: Options, family: str) -> bool:
    """Netlink reads with the check's own privileges, in its namespace or in ``network_namespace``;
    through sudo or a configured wrapper command, or with ``collection: save``, the save tools are used."""
    if options.collection != 'auto' or options.use_sudo:
        return False
    return options.network_namespace is not None or not is_wrapped(options, family, NFT)


def legacy_tables_present(options: Options, family: str) -> Optional[bool]:
    """Whether the judged namespace holds legacy xtables: the kernel lists them in
    ``/proc/net/ip_tables_names`` (``ip6_tables_names``) of that namespace. None when the check
    cannot read that namespace's list (a wrapped command may enter another one)."""
    if options.network_namespace is None and is_wrapped(options, family, NFT):
        return None
    name = 'ip_tables_names' if family == IPV4 else 'ip6_tables_names'
    try:
        return bool(read_proc_net(options.network_namespace, name, options.proc_path).split())
    except FileNotFoundError:
        return False  # the module is not loaded: no legacy table exists
    except (OSError, CollectionError):
        return None


def read_file(path: str, max_output_bytes: int) -> str:
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


def read_stream(stream: BinaryIO, origin: str, max_output_bytes: Optional[int] = None) -> str:
    """A saved ruleset read from ``stream`` to its end, keeping only the evaluated tables as it streams in."""
    kept, size = UnreadTablesFilter(), 0
    for chunk in iter(lambda: stream.read(_READ_CHUNK), b''):
        size += len(chunk)
        if max_output_bytes is not None and size > max_output_bytes:
            raise CollectionError('saved ruleset {} is larger than {} bytes (option `max_output_bytes`)'.format(origin, max_output_bytes))
        kept.feed(chunk)
    return kept.value().decode('utf-8', 'surrogateescape')


def tool_kind(name: str) -> Optional[str]:
    """Which backend an iptables binary is (NFT or LEGACY; None when it cannot tell): the Debian
    alternatives point to xtables-nft-multi or xtables-legacy-multi."""
    found = shutil.which(name)
    if not found:
        return None
    binary = os.path.basename(os.path.realpath(found))
    return NFT if 'nft' in binary else LEGACY if 'legacy' in binary else None


def unusable_commands(options: Options) -> List[str]:
    """The configured programs the check will run that do not exist or are not executable, one
    message each (checked at start; the runs report UNKNOWN with the fix until they are there)."""
    programs = [
        options.save_commands[(family, NFT)][0]
        for family in options.families
        if family not in options.ruleset_files and not uses_netlink(options, family)
    ]
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
