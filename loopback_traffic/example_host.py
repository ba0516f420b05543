"""``--example nftables-host``: a bundled nftables.conf, judged as the kernel runs it.

A native nftables ruleset has no saved text the check reads (the iptables tools cannot print it), so
the example is loaded with ``nft -f`` into a network namespace of its own (``lt-example-<pid>``), read
back from the kernel over netlink there (the ``network_namespace`` path, as in a container), and the
namespace is deleted afterwards, also on failure. This host's own ruleset is never read or changed.
Needs root, ``ip`` and ``nft``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from .runner import CollectionError, run_command

NAMESPACE_PREFIX = 'lt-example-'
_TIMEOUT = 30.0
_OUTPUT_LIMIT = 1 << 20


class ExampleUnavailable(Exception):
    """The example cannot be loaded here; the message says why and what works instead."""


def _run(argv: list[str]) -> None:
    try:
        done = run_command(argv, _TIMEOUT, _OUTPUT_LIMIT, 'install iproute2 and nftables')
    except CollectionError as error:
        raise ExampleUnavailable(str(error))
    if done.returncode != 0:
        raise ExampleUnavailable('{} failed: {}'.format(' '.join(argv), (done.stderr.strip() or done.stdout.strip())[:300]))


@contextlib.contextmanager
def loaded_in_a_namespace(ruleset_file: str) -> Iterator[str]:
    """The path of a new network namespace holding ``ruleset_file`` (an ``nft -f`` file), deleted on exit."""
    if os.geteuid() != 0:
        raise ExampleUnavailable(
            'this example loads its nftables ruleset into a throwaway network namespace, which needs root '
            '(sudo loopback-traffic --example nftables-host); without root try --example compliant'
        )
    name = '{}{}'.format(NAMESPACE_PREFIX, os.getpid())
    _run(['ip', 'netns', 'add', name])
    try:
        _run(['ip', 'netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up'])
        _run(['ip', 'netns', 'exec', name, 'nft', '-f', ruleset_file])
        yield os.path.join('/run/netns', name)
    finally:
        with contextlib.suppress(ExampleUnavailable):
            _run(['ip', 'netns', 'del', name])
