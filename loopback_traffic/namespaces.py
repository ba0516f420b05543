"""Doing one thing inside another network namespace (``network_namespace``: a containerised Agent
judging its host, ``/host/proc/1/ns/net``), without moving the Agent: a short-lived thread enters
the namespace, does it and ends. A netlink socket opened there stays bound to that namespace.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Callable, List, Optional, Tuple, TypeVar

from .runner import CollectionError

CLONE_NEWNET = 0x40000000
T = TypeVar('T')


def _setns(fd: int) -> None:
    setns = getattr(os, 'setns', None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def in_network_namespace(path: Optional[str], action: Callable[[], T]) -> T:
    """``action()`` run in the network namespace at ``path`` (``None``: here)."""
    if path is None:
        return action()
    results: List[T] = []
    errors: List[BaseException] = []

    def enter_and_run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as error:
            errors.append(CollectionError('cannot open the network namespace {} (option `network_namespace`): {}'.format(path, error.strerror)))
            return
        try:
            _setns(fd)
        except OSError as error:
            errors.append(
                CollectionError(
                    'cannot enter the network namespace {} (option `network_namespace`): {} (the Agent needs CAP_SYS_ADMIN '
                    'and the host PID namespace)'.format(path, error.strerror)
                )
            )
            return
        finally:
            os.close(fd)
        try:
            results.append(action())
        except BaseException as error:  # handed to the caller's thread
            errors.append(error)

    thread = threading.Thread(target=enter_and_run, name='loopback_traffic-netns', daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def current_namespace() -> Optional[Tuple[int, int]]:
    """(device, inode) of the calling thread's network namespace, which names it while it lives;
    None where /proc cannot tell."""
    try:
        found = os.stat('/proc/thread-self/ns/net')
    except OSError:
        return None
    return found.st_dev, found.st_ino


def read_proc_net(path: Optional[str], name: str, proc_path: str) -> str:
    """A file of ``/proc/net`` as the namespace at ``path`` shows it (None: ``proc_path/net``, the
    check's own or the host's). Raises OSError."""

    def read() -> str:
        # /proc/thread-self/net shows the namespace of the calling thread: the one it entered.
        base = '/proc/thread-self/net' if path is not None else os.path.join(proc_path, 'net')
        with open(os.path.join(base, name)) as found:
            return found.read()

    return in_network_namespace(path, read)
