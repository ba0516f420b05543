"""Getting the ruleset text: running the save tools (timeout, sudo, size limit) or reading saved files.

Every failure is a :class:`CollectionError` whose message says what happened and how to fix it.
"""
from __future__ import annotations

import os
import selectors
import signal
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
class CollectedText:
    """The text of one ruleset, where it came from, and the command that changes it."""

    text: str
    origin: str  # the command line or the file path, for messages
    backend: str  # NFT (the default tools) or LEGACY
    stderr: str = ''


def command_line(argv: Sequence[str]) -> str:
    return ' '.join(argv)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def run_command(argv: Sequence[str], timeout: float, max_output_bytes: int) -> CommandOutput:
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
        raise CollectionError('{} was not found: install the iptables package or set the command path'.format(argv[0]))
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
        return '{} failed: {} (is this family disabled in the kernel?)'.format(name, first)
    return '{} exited with status {}: {}'.format(name, output.returncode, first)


def save_command(options: Options, family: str, backend: str) -> List[str]:
    argv = list(options.save_commands[(family, backend)])
    return ['sudo', '-n'] + argv if options.use_sudo else argv


def run_save(options: Options, family: str, backend: str) -> CollectedText:
    argv = save_command(options, family, backend)
    output = run_command(argv, options.timeout, options.max_output_bytes)
    if output.returncode != 0:
        raise CollectionError(_explain_failure(argv, output, options.use_sudo))
    return CollectedText(output.stdout, command_line(argv), backend, output.stderr)


def read_file(path: str, max_output_bytes: int) -> CollectedText:
    try:
        with open(path, 'rb') as saved:
            data = saved.read(max_output_bytes + 1)
    except FileNotFoundError:
        raise CollectionError('saved ruleset {} does not exist (option `ruleset_files`)'.format(path))
    except IsADirectoryError:
        raise CollectionError('saved ruleset {} is a directory, not a file (option `ruleset_files`)'.format(path))
    except PermissionError:
        raise CollectionError('saved ruleset {} is not readable by the Agent user'.format(path))
    except OSError as error:
        raise CollectionError('cannot read saved ruleset {}: {}'.format(path, error.strerror or error))
    if len(data) > max_output_bytes:
        raise CollectionError('saved ruleset {} is larger than {} bytes (option `max_output_bytes`)'.format(path, max_output_bytes))
    return CollectedText(data.decode('utf-8', 'surrogateescape'), path, NFT)


def collect_texts(options: Options, family: str, given: Optional[CollectedText] = None) -> List[CollectedText]:
    """The ruleset texts of one family: ``given`` text, the saved file, or the save tool's output plus,
    when it warns that legacy tables are present, the legacy save tool's output."""
    if given is not None:
        return [given]
    path = options.ruleset_files.get(family)
    if path is not None:
        return [read_file(path, options.max_output_bytes)]
    main = run_save(options, family, NFT)
    texts = [main]
    if LEGACY_TABLES_WARNING in main.stderr:
        texts.append(run_save(options, family, LEGACY))
    return texts


def iptables_command(family: str, backend: str) -> str:
    """The command that changes the rules of a family and backend, for remediation messages."""
    base = 'iptables' if family == IPV4 else 'ip6tables'
    return base + '-legacy' if backend == LEGACY else base
