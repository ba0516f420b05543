"""Running a command: no shell, a deadline, a bound on its output, nothing left behind. Pure plumbing:
knows nothing of rulesets.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import IO, Callable, Dict, List, Protocol, Sequence, cast

_READ_CHUNK = 1 << 16


class CollectionError(Exception):
    """The ruleset could not be read. ``str()`` is a message a person can act on."""


@dataclass(frozen=True)
class CommandOutput:
    stdout: str
    stderr: str
    returncode: int


def command_line(argv: Sequence[str]) -> str:
    return ' '.join(argv)


def _kill_group(process: "subprocess.Popen[bytes]") -> None:
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
    process: "subprocess.Popen[bytes]"
    sinks: Dict[str, _Sink]
    sizes: Dict[str, int]
    open_streams: int = 2


def _start(argv: Sequence[str], not_found_hint: str) -> "subprocess.Popen[bytes]":
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
                    assert process.stdout is not None and process.stderr is not None  # both are pipes
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
                    cast(IO[bytes], key.fileobj).close()  # registered above: a pipe
                    command = running[index]
                    command.open_streams -= 1
                    if command.open_streams == 0:
                        results[index] = _finish(command, deadline, timeout)
                        del running[index]
        finally:
            for command in running.values():
                for pipe in (command.process.stdout, command.process.stderr):
                    if pipe is not None:
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


