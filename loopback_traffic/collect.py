"""Getting the rulesets of one family, from the best source the host allows:

- the kernel (the default): nf_tables over netlink, read in one generation (iptables-nft's tables and
  every native table), plus the legacy xtables where the namespace holds them (one legacy save);
- one whole save output per backend, where netlink cannot be used (``use_sudo``, a wrapped command,
  ``collection: save``): it cannot show native nftables tables;
- a saved file (``ruleset_files``) or the CLI's input.

Knows nothing of the evaluation: every failure is a :class:`CollectionError` whose message says
what happened and how to fix it.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import BinaryIO, Dict, Iterable, List, Optional, Tuple

from .config import LEGACY, NFT, Options
from .netlink import NetlinkError, NetlinkReader, RulesetKeptChanging, read_consistent
from .nf_tables import KernelRule, KernelRuleset, KernelSet, KernelTable
from .namespaces import in_network_namespace
from .runner import CollectionError, command_line
from .saves import legacy_tables_present, read_file, read_stream as read_saved_stream, run_save, save_command, tool_kind, uses_netlink

KERNEL = 'kernel'
# nf_tables families whose chains can see IPv4 or IPv6 packets on the loopback paths.
_PACKET_FAMILIES = ('ip', 'ip6', 'inet', 'netdev')
_READ_ATTEMPTS = 5


@dataclass(frozen=True)
class Collected:
    """One ruleset: the kernel's nf_tables (``kernel``), or the text of one save output or file."""

    backend: str  # KERNEL, NFT (the default save tools) or LEGACY
    origin: str  # the source, for messages
    text: str = ''
    kernel: Optional[KernelRuleset] = None


def collected_text(text: str, origin: str) -> Collected:
    return Collected(NFT, origin, text)


def read_stream(stream: BinaryIO, origin: str, max_output_bytes: Optional[int] = None) -> Collected:
    return collected_text(read_saved_stream(stream, origin, max_output_bytes), origin)


class KernelCache:
    """The last nf_tables ruleset one check instance read: while the generation id stays the same
    (the common case every 15 s), it is the ruleset the kernel runs, and nothing more is read."""

    def __init__(self) -> None:
        self.ruleset: Optional[KernelRuleset] = None


def _read_tables(reader: NetlinkReader) -> KernelRuleset:
    """Everything the loopback paths can meet, as of one moment (``read_consistent`` checks that)."""
    tables = [table for table in reader.tables() if table.family in _PACKET_FAMILIES]
    chains = tuple(chain for chain in reader.chains() if chain.family in _PACKET_FAMILIES)
    with_base = {(chain.family, chain.table) for chain in chains if chain.is_base and chain.hook != 'forward'}
    read = [table for table in tables if (table.family, table.name) in with_base and not table.dormant]
    read_names = {(table.family, table.name) for table in read}
    rules: Dict[Tuple[str, str, str], List[KernelRule]] = {}
    for table in read:
        for rule in reader.rules(table.family, table.name):
            rules.setdefault((rule.family, rule.table, rule.chain), []).append(rule)
    for chain in chains:
        if (chain.family, chain.table) in read_names:
            rules.setdefault((chain.family, chain.table, chain.name), [])
    return KernelRuleset(
        generation=0,
        tables=tuple(tables),
        chains=chains,
        rules={key: tuple(value) for key, value in rules.items()},
        sets=dict(_read_sets(reader, read)),
    )


def _read_sets(reader: NetlinkReader, tables: Iterable[KernelTable]) -> Iterable[Tuple[Tuple[str, str, str], KernelSet]]:
    for table in tables:
        for kernel_set in reader.sets(table.family, table.name):
            elements = tuple(reader.set_elements(table.family, table.name, kernel_set.name))
            key = (table.family, table.name, kernel_set.name)
            yield key, KernelSet(
                kernel_set.family,
                kernel_set.table,
                kernel_set.name,
                kernel_set.flags,
                kernel_set.key_type,
                kernel_set.key_length,
                kernel_set.data_type,
                kernel_set.data_length,
                elements,
            )


def _netlink_failure(error: NetlinkError) -> CollectionError:
    if isinstance(error, RulesetKeptChanging):
        return CollectionError('{} (read {} times; the next run reads it again)'.format(error, _READ_ATTEMPTS))
    if error.errno in (errno.EPERM, errno.EACCES):
        return CollectionError(
            'reading nf_tables over netlink was refused: {} (run the Agent with CAP_NET_ADMIN, or set `use_sudo: true` '
            'to read one iptables-save output through sudo)'.format(error)
        )
    return CollectionError('reading nf_tables over netlink failed: {}'.format(error))


def read_kernel(options: Options, cache: KernelCache) -> KernelRuleset:
    """The kernel's nf_tables ruleset, read in one generation; the last one while it is unchanged."""
    try:
        reader = NetlinkReader(options.timeout, options.max_output_bytes)
        in_network_namespace(options.network_namespace, reader.open)
        with reader:
            last = cache.ruleset
            if last is not None and reader.generation() == last.generation:
                return last
            generation, ruleset = read_consistent(reader, _read_tables, attempts=_READ_ATTEMPTS)
    except NetlinkError as error:
        raise _netlink_failure(error)
    cache.ruleset = KernelRuleset(generation, ruleset.tables, ruleset.chains, ruleset.rules, ruleset.sets)
    return cache.ruleset


# What iptables-nft-save and ip6tables-nft-save print on standard error beside legacy tables.
LEGACY_TABLES_WARNING = 'legacy tables present'


def _save(options: Options, backend: str, command: Tuple[str, ...]) -> Tuple[Collected, bool]:
    """One whole save, and whether the tool warned that legacy tables exist beside it."""
    output = run_save(options, command)
    return Collected(backend, command_line(save_command(options, command)), output.stdout), LEGACY_TABLES_WARNING in output.stderr


def _legacy(options: Options, family: str, warned: bool = False) -> List[Collected]:
    """The legacy xtables, where the judged namespace lists them, where the check cannot tell, or
    where a save tool warned of them."""
    if legacy_tables_present(options, family) is False and not warned:
        return []
    return [_save(options, LEGACY, options.save_commands[(family, LEGACY)])[0]]


def _nft_variant(command: Tuple[str, ...]) -> Optional[Tuple[str, ...]]:
    """``iptables-nft-save`` beside a configured ``iptables-legacy-save`` (same wrapper), if installed."""
    variant = command[-1].replace('legacy', 'nft')
    if variant == command[-1] or tool_kind(variant) != NFT:
        return None
    return command[:-1] + (variant,)


def _from_saves(options: Options, family: str) -> List[Collected]:
    """One whole save per backend: the configured tool's, and the other backend's."""
    main = options.save_commands[(family, NFT)]
    if tool_kind(main[-1]) != LEGACY:
        collected, warned = _save(options, NFT, main)
        return [collected] + _legacy(options, family, warned)
    # The configured tool is the legacy variant: the nf_tables rules are not in its output.
    variant = _nft_variant(main)
    return [_save(options, LEGACY, main)[0]] + ([_save(options, NFT, variant)[0]] if variant else [])


def collect(options: Options, family: str, given: Optional[Collected] = None, cache: Optional[KernelCache] = None) -> List[Collected]:
    """The rulesets of one family that the kernel runs side by side."""
    if given is not None:
        return [given]
    path = options.ruleset_files.get(family)
    if path is not None:
        return [collected_text(read_file(path, options.max_output_bytes), path)]
    if not uses_netlink(options, family):
        return _from_saves(options, family)
    kernel = read_kernel(options, cache if cache is not None else KernelCache())
    return [Collected(KERNEL, 'nf_tables (netlink)', kernel=kernel)] + _legacy(options, family)


__all__ = ['CollectionError', 'Collected', 'KernelCache', 'KERNEL', 'collect', 'collected_text', 'read_stream', 'uses_netlink']
