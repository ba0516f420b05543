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
import os
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import BinaryIO, Callable, Dict, FrozenSet, Hashable, Iterable, List, NamedTuple, Optional, Tuple

from .config import LEGACY, NFT, Options
from .ipset import IpsetError, IpsetReader
from .ipset_contents import MATCH_SET, NOT_IN_A_SAVED_RULESET, SetsOnDemand, SetsRead
from .netlink import ChainIndex, KnownRules, NetlinkError, NetlinkReader, RulesetKeptChanging, Vanished, read_consistent, told_rules
from .nf_tables import ChainKey, ChainNames, ChainRules, KernelChain, KernelRule, KernelRuleset, KernelSet, KernelTable
from .nft_changes import NOTHING_CHANGED, Changes, ChangeWatch
from .namespaces import current_namespace, in_network_namespace
from .runner import CollectionError, command_line
from .saves import is_wrapped, legacy_tables_present, read_file, read_stream as read_saved_stream, run_save, save_command, tool_kind, uses_netlink

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
    walked: object = field(default=None, compare=False)  # what the walk returned while the kernel was read
    sets: Optional[SetsRead] = None  # the ipsets its set matches name, where it has any
    namespace: Optional[Tuple[int, int]] = None  # the kernel's: the network namespace it was read in

    @cached_property
    def identity(self) -> Tuple[object, ...]:
        """Equal for the same ruleset: the same text, or the same nf_tables generation, with the
        same contents of the ipsets it uses (computed once: a run compares it twice)."""
        sets = self.sets.identity if self.sets is not None else None
        if self.kernel is not None:
            return (self.backend, self.origin, self.namespace, self.kernel.generation, sets)
        return (self.backend, self.origin, _COUNTERS.sub('', self.text), sets)


# The packet and byte counters of a save (``:INPUT ACCEPT [12:3456]``), which change with every packet
# and mean nothing to the verdict.
_COUNTERS = re.compile(r'\[\d+:\d+\]')


def collected_text(text: str, origin: str) -> Collected:
    """A saved ruleset (a file, the CLI's input): the ipsets' contents are not in it."""
    sets = SetsRead(unread=NOT_IN_A_SAVED_RULESET) if MATCH_SET in text else None
    return Collected(NFT, origin, text, sets=sets)


def read_stream(stream: BinaryIO, origin: str, max_output_bytes: Optional[int] = None) -> Collected:
    return collected_text(read_saved_stream(stream, origin, max_output_bytes), origin)


# The evaluation of one family, run while the kernel's ruleset is being read: the chains its walks
# enter are read as they are entered, all in one generation. What it returns is kept with the read.
Walk = Callable[[KernelRuleset], object]


class _Attempt(NamedTuple):
    """One try at reading the kernel in one generation."""

    generation: int
    changes: Optional[Changes]  # what changed since the chains the cache holds were read; None: unknown
    losses: int  # the change watch's count of lost notifications when the try began
    read: Dict[ChainKey, KnownRules]
    earlier_changes: Optional[Changes] = None  # what changed since the chains held as ``_earlier`` were read


class Walked(NamedTuple):
    """What one walk returned, the ipsets it used (None: none) and the chains it was given."""

    value: object
    sets: Optional[SetsRead]
    chains: FrozenSet[ChainKey]


class KernelCache:
    """The nf_tables ruleset one check instance read, as far as it was read, with what the walk of
    each family returned: while the generation id stays the same (the common case every 15 s) it is
    the ruleset the kernel runs, and nothing more is read for a family that was walked on it.

    When the generation changed, the kernel's change notifications (:class:`.ChangeWatch`) tell which
    chains' rules changed since the chains held here were read: only those are dumped again, and
    not those they tell rewritten whole (:meth:`.Changes.rewrite_of`). Where the notifications
    cannot prove it, every chain is dumped, and one whose bytes are the same keeps its parsed rules
    (and what was decoded of them)."""

    def __init__(self) -> None:
        self.namespace: Optional[Tuple[int, int]] = None  # the network namespace read (namespaces.current_namespace)
        self._start_over()

    def _start_over(self) -> None:
        """Nothing read, nothing followed."""
        self.ruleset: Optional[KernelRuleset] = None
        self.walked: Dict[Tuple[str, Hashable], Walked] = {}  # (family, walk key) -> that walk, on ``ruleset``
        self.watch = ChangeWatch(follow=self._holds)
        self.chains: Dict[ChainKey, KnownRules] = {}  # the chains' rules as the kernel held them at ``chains_generation``
        self.chains_generation: Optional[int] = None
        self._earlier: Dict[ChainKey, KnownRules] = {}  # an older generation's, compared by their bytes only
        self._earlier_changes: Optional[Changes] = None  # what changed from ``_earlier``'s generation to ``chains_generation``
        self._attempt = _Attempt(0, None, 0, {})

    def enter(self, namespace: Optional[Tuple[int, int]]) -> None:
        """The read about to start is of ``namespace``. Where it is not the one read before (the
        ``network_namespace`` path now names another namespace), what was read there and the watch
        that followed it are forgotten: another namespace's generation ids are not this one's."""
        held = self.ruleset is not None or bool(self.chains) or self.watch.watching  # some chains' rules alone, too
        if namespace != self.namespace and (held or self.namespace is not None):
            self.close()
            self._start_over()
        self.namespace = namespace

    @property
    def changes(self) -> Optional[Changes]:
        """What changed since ``chains_generation``, for the try under way (None: unknown)."""
        return self._attempt.changes

    def begin(self, generation: int) -> None:
        """A try at reading generation ``generation`` starts."""
        losses = self.watch.losses()
        if self.chains_generation is None:
            changes: Optional[Changes] = None
        elif generation == self.chains_generation:
            changes = NOTHING_CHANGED
        else:
            changes = self.watch.changes(self.chains_generation, generation)
            if changes is not None and self.ruleset is not None and self.ruleset.changes_silently:
                changes = replace(changes, structure=True)  # its tables and sets are read again
        earlier = self._earlier_changes
        self._attempt = _Attempt(generation, changes, losses, {}, earlier.merged(changes) if earlier is not None and changes is not None else None)

    def _holds(self, key: ChainKey) -> bool:
        """Whether the rules of chain ``key`` are held here: the watch keeps what its notifications tell of them."""
        return key in self.chains or key in self._earlier

    def advance(self, reader: NetlinkReader, generation: int) -> None:
        """Where the notifications prove that only rules changed since the ruleset held here was read
        (or regular chains were added or deleted too: the notifications name them), it
        becomes the ruleset of ``generation``, less the chains whose rules changed; so do the walks
        that were given none of those chains (a walk is a function of the chains it was given, the
        tables, base chains and sets, and the ipsets it used, which the caller checks)."""
        last = self.ruleset
        if last is None or last.generation != self.chains_generation or last.generation == generation:
            return
        losses = self.watch.losses()
        changes = self.watch.changes(last.generation, generation)
        if changes is None or changes.structure or last.changes_silently:
            return
        chain_names, newest, bound = last.chain_names, last.newest_chains, last.bound_chains
        if changes.chain_set or (bound and changes.chains):
            if changes.may_rename(last.newest_chains):
                return
            # kube-proxy adds and deletes endpoint chains at most syncs: the notifications name them.
            # A chain bound to a rule goes with it unannounced: where there is one, the index is read.
            after = None if bound else changes.chain_index_after(last.chain_names, last.newest_chains, {(table.family, table.name) for table in last.tables})
            if after is not None:
                chain_names, newest = after
            else:
                index = _chain_index_at(reader, last, generation)
                if index is None or not changes.explains_gone(last.chain_names.not_in(index.names)):
                    return
                chain_names, newest, bound = index.names, index.newest, index.bound
        touches = changes.touches
        # The changed chains' last reads stay at hand: a chain rewritten as it was keeps its rules.
        self._earlier = {key: rules for key, rules in self.chains.items() if touches(key)}
        self._earlier_changes = changes
        self.chains = {key: rules for key, rules in self.chains.items() if not touches(key)}
        kept = {key: rules for key, rules in last.rules.items() if not touches(key)}
        self.ruleset = replace(last, generation=generation, rules=ChainRules(kept), chain_names=chain_names, newest_chains=newest, bound_chains=bound)
        self.walked = {key: walked for key, walked in self.walked.items() if not any(touches(chain) for chain in walked.chains)}
        self.chains_generation = generation
        self.watch.read_done(generation, losses)

    def forget_changes(self) -> None:
        """The try under way cannot follow the changes chain by chain: every chain is dumped."""
        self._attempt = self._attempt._replace(changes=None, earlier_changes=None)

    def chain_rules(self, reader: NetlinkReader, key: ChainKey) -> Tuple[KernelRule, ...]:
        attempt = self._attempt
        found = attempt.read.get(key)
        if found is None:
            held = self.chains.get(key)
            if held is not None and attempt.changes is not None and not attempt.changes.touches(key):
                found = held
            else:
                found = self._told(key, held) or reader.chain_rules(*key, known=held or self._earlier.get(key))
            attempt.read[key] = found
        return found.rules

    def _told(self, key: ChainKey, held: Optional[KnownRules]) -> Optional[KnownRules]:
        """The chain's rules as the change notifications told them, where they told them in full
        (:meth:`.Changes.rewrite_of`): no dump then."""
        attempt = self._attempt
        changes = attempt.changes
        if held is None:
            held, changes = self._earlier.get(key), attempt.earlier_changes
        if held is None or changes is None:
            return None
        told = changes.rewrite_of(key, [rule.handle for rule in held.rules])
        return told_rules(key[0], told, held) if told is not None else None

    def read_done(self) -> None:
        """The try under way read one generation: what it read is what the next one compares with."""
        attempt = self._attempt
        if attempt.generation == self.chains_generation:
            self.chains.update(attempt.read)
            self._forget_earlier_read_again()
        elif attempt.changes is None:
            self._earlier, self.chains = self.chains, dict(attempt.read)
            self._earlier_changes = None
        else:
            self._earlier, self._earlier_changes = {}, None
            self.chains = {key: rules for key, rules in self.chains.items() if not attempt.changes.touches(key)}
            self.chains.update(attempt.read)
        self.chains_generation = attempt.generation
        self.watch.read_done(attempt.generation, attempt.losses)
        self.watch.size_for(sum(len(known.rules) for known in self.chains.values()))

    def _forget_earlier_read_again(self) -> None:
        """The older reads of the chains read since, and what the notifications told of them, are
        not needed any more (the rules told are held until the next run otherwise)."""
        self._earlier = {key: rules for key, rules in self._earlier.items() if key not in self.chains}
        changes = self._earlier_changes
        if not self._earlier or changes is None:
            self._earlier_changes = None
        elif changes.rewrites:
            self._earlier_changes = replace(changes, rewrites={key: told for key, told in changes.rewrites.items() if key in self._earlier})

    def close(self) -> None:
        self.watch.close()


def _start(reader: NetlinkReader, cache: KernelCache, generation: int) -> Tuple[KernelRuleset, Dict[ChainKey, Tuple[KernelRule, ...]]]:
    """The tables, the chains, the base chains' rules and the sets; or, in the same generation, what
    the cache holds; or, where only rules changed since, what it holds with those rules read again."""
    last = cache.ruleset
    if last is not None and last.generation == generation:
        return last, {key: last.rules[key] for key in last.rules}
    if last is not None and last.generation == cache.chains_generation and cache.changes is not None and cache.changes.rules_only and not last.bound_chains:
        return replace(last, generation=generation, rules={}), _base_chain_rules(reader, cache, last.chains)
    tables = _packet_tables(reader)
    index = _of_tables(reader.chain_index(), tables)
    changes = cache.changes
    if last is not None and changes is not None and (changes.may_rename(last.newest_chains) or not changes.explains_gone(last.chain_names.not_in(index.names))):
        cache.forget_changes()  # a chain was renamed: the rules jumping to it now print another name
    read = _base_chain_rules(reader, cache, index.base)
    sets: Dict[Tuple[str, str, str], KernelSet] = {}
    for family, table in sorted({(key[0], key[1]) for key in read}):
        sets.update(_read_sets(reader, family, table))
    return KernelRuleset(generation, tables, index.base, {}, sets, index.names, index.newest, index.bound), read


def _chain_index_at(reader: NetlinkReader, last: KernelRuleset, generation: int) -> Optional[_Index]:
    """The chain index of ``last``'s tables, read at ``generation``; None where the base chains are
    no longer ``last``'s or the generation moved during the read."""
    index = _of_tables(reader.chain_index(), last.tables)
    if index.base != last.chains or reader.generation() != generation:
        return None
    return index


def _packet_tables(reader: NetlinkReader) -> Tuple[KernelTable, ...]:
    """The tables that take part in the packets' path: of the families that see IP packets, not dormant."""
    return tuple(table for table in reader.tables() if table.family in _PACKET_FAMILIES and not table.dormant)


class _Index(NamedTuple):
    """The chain index within the tables on the packets' path."""

    base: Tuple[KernelChain, ...]
    names: ChainNames
    newest: Dict[Tuple[str, str], int]
    bound: FrozenSet[ChainKey]


def _of_tables(index: ChainIndex, tables: Iterable[KernelTable]) -> _Index:
    """The chain index's base chains, chain names, newest handles and bound chains in ``tables``."""
    names = {(table.family, table.name) for table in tables}
    return _Index(
        tuple(chain for chain in index.base if (chain.family, chain.table) in names),
        index.names.within(names),
        {table: handle for table, handle in index.newest.items() if table in names},
        frozenset(key for key in index.bound if (key[0], key[1]) in names),
    )


def _silent_state_unchanged(reader: NetlinkReader, last: KernelRuleset) -> bool:
    """Whether what may change unannounced, in the same generation (a table that went with its
    owner, set elements that timed out or that packets added), is as ``last`` read it."""
    if _packet_tables(reader) != last.tables:
        return False
    sets: Dict[Tuple[str, str, str], KernelSet] = {}
    try:
        for family, table in sorted({(chain.family, chain.table) for chain in last.chains if chain.hook != 'forward'}):
            sets.update(_read_sets(reader, family, table))
    except Vanished:
        return False
    return sets == dict(last.sets)


def _base_chain_rules(reader: NetlinkReader, cache: KernelCache, chains: Iterable[KernelChain]) -> Dict[ChainKey, Tuple[KernelRule, ...]]:
    return {(c.family, c.table, c.name): cache.chain_rules(reader, (c.family, c.table, c.name)) for c in chains if c.hook != 'forward'}


def _read_sets(reader: NetlinkReader, family: str, table: str) -> Iterable[Tuple[Tuple[str, str, str], KernelSet]]:
    for found in reader.sets(family, table):
        elements = tuple(reader.set_elements(family, table, found.name))
        yield (family, table, found.name), replace(found, elements=elements)


def _chain_rules(reader: NetlinkReader, cache: KernelCache, key: ChainKey) -> Tuple[KernelRule, ...]:
    """One chain's rules, read when a walk enters it: `timeout` bounds each such read, not the walk
    (which on a large node takes longer than the kernel's part of it)."""
    reader.renew_deadline()
    return cache.chain_rules(reader, key)


def _read_walking(reader: NetlinkReader, cache: KernelCache, walk: Walk, ipsets: SetsOnDemand) -> Tuple[KernelRuleset, object]:
    """The ruleset as far as ``walk`` enters it, and what ``walk`` returned; one generation if the
    generation id is the same before and after (``read_consistent`` checks it)."""
    generation = reader.generation()
    cache.begin(generation)
    start, read = _start(reader, cache, generation)
    rules = ChainRules(read, lambda key: _chain_rules(reader, cache, key), start.chain_names)
    ruleset = replace(start, rules=rules, ipsets=ipsets)
    try:
        value = walk(ruleset)
    finally:
        rules.close()
    reader.renew_deadline()  # for the generation id read after the walk
    return ruleset, value


def _netlink_failure(error: NetlinkError) -> CollectionError:
    if isinstance(error, RulesetKeptChanging):
        return CollectionError('{} (read {} times; the next run reads it again)'.format(error, _READ_ATTEMPTS))
    if error.errno in (errno.EPERM, errno.EACCES):
        return CollectionError(
            'reading nf_tables over netlink was refused: {} (run the Agent with CAP_NET_ADMIN, or set `use_sudo: true` '
            'to read one iptables-save output through sudo)'.format(error)
        )
    return CollectionError('reading nf_tables over netlink failed: {}'.format(error))


def read_ipsets(options: Options) -> SetsRead:
    """Every ipset of the judged namespace with its members, or why they could not be read."""
    try:
        reader = IpsetReader(options.timeout, options.max_output_bytes)
        in_network_namespace(options.network_namespace, reader.open)
        with reader:
            return SetsRead(reader.sets())
    except (IpsetError, CollectionError) as error:  # CollectionError: the namespace could not be entered
        return SetsRead(unread='the ipsets could not be read: {}'.format(error))


def _sets_unchanged(options: Options, used: Optional[SetsRead]) -> bool:
    """Whether the ipsets a walk used (None: it used none) hold what they held then."""
    return used is None or read_ipsets(options).identity == used.identity


def read_kernel(
    options: Options, cache: KernelCache, family: str, walk: Optional[Walk] = None, walk_key: Hashable = None
) -> Tuple[KernelRuleset, object, Optional[SetsRead]]:
    """The kernel's nf_tables ruleset as far as the walk of ``family`` enters it (every chain
    without ``walk``), read in one generation, what the walk returned and the ipsets it used (read
    when a rule first needs them, and again after the walk: the read counts where they agree); while
    the generation and those ipsets are unchanged, the last read."""
    walk = walk if walk is not None else _every_chain
    key = (family, walk_key)  # several compliance rules walk one family: each walk's result is its own
    try:
        reader = NetlinkReader(options.timeout, options.max_output_bytes)
        in_network_namespace(options.network_namespace, lambda: _open(cache, reader))
        with reader:
            current = reader.generation()
            cache.advance(reader, current)
            last = cache.ruleset
            if last is not None and current == last.generation and last.changes_silently and not _silent_state_unchanged(reader, last):
                cache.walked, cache.ruleset = {}, None  # read again: the walks were of another state
                last = None
            earlier = cache.walked.get(key)
            if last is not None and earlier is not None and current == last.generation and _sets_unchanged(options, earlier.sets):
                return last, earlier.value, earlier.sets
            generation, (ruleset, value), used = _read_with_sets(options, reader, cache, walk)
    except NetlinkError as error:
        raise _netlink_failure(error)
    if last is None or last.generation != generation:
        cache.walked = {}
    cache.read_done()
    cache.ruleset = replace(ruleset, generation=generation)
    cache.walked[key] = Walked(value, used, frozenset(ruleset.rules))
    return cache.ruleset, value, used


def _open(cache: KernelCache, reader: NetlinkReader) -> None:
    """The change watch first: it must be subscribed before the read whose generation it follows."""
    cache.enter(current_namespace())
    cache.watch.open()
    reader.open()


def _read_with_sets(
    options: Options, reader: NetlinkReader, cache: KernelCache, walk: Walk
) -> Tuple[int, Tuple[KernelRuleset, object], Optional[SetsRead]]:
    for _ in range(_READ_ATTEMPTS):
        ipsets = SetsOnDemand(lambda: read_ipsets(options))
        generation, read = read_consistent(reader, lambda current: _read_walking(current, cache, walk, ipsets), attempts=_READ_ATTEMPTS)
        if _sets_unchanged(options, ipsets.read):
            return generation, read, ipsets.read
        reader.renew_deadline()
    raise CollectionError('the ipsets that the rules use kept changing while the rules were read (read {} times; the next run reads them again)'.format(_READ_ATTEMPTS))


_NOTHING = 'nothing'


def _nothing(ruleset: KernelRuleset) -> None:
    """A walk that enters no chain: the tables and base chains are read, nothing more."""


def _every_chain(ruleset: KernelRuleset) -> None:
    for key in ruleset.chain_names:
        ruleset.rules.get(key)


# What iptables-nft-save and ip6tables-nft-save print on standard error beside legacy tables.
LEGACY_TABLES_WARNING = 'legacy tables present'


def _save(options: Options, family: str, backend: str, command: Tuple[str, ...]) -> Tuple[Collected, bool]:
    """One whole save with the ipsets its rules use, and whether the tool warned that legacy tables
    exist beside it."""
    output = run_save(options, command)
    collected = Collected(backend, command_line(save_command(options, command)), output.stdout)
    if MATCH_SET in collected.text:
        collected = replace(collected, sets=_sets_beside_save(options, family, backend))
    return collected, LEGACY_TABLES_WARNING in output.stderr


def _sets_beside_save(options: Options, family: str, backend: str) -> SetsRead:
    """The ipsets of the namespace a save read: read by the check itself, just after the save (no
    moment is shared with it). Not where the save ran through a wrapper, which may have entered
    another namespace."""
    if options.network_namespace is None and is_wrapped(options, family, backend):
        return SetsRead(unread='the rules were read through a wrapper command, in a namespace the check cannot read the ipsets of')
    return read_ipsets(options)


def _legacy(options: Options, family: str, warned: bool = False) -> List[Collected]:
    """The legacy xtables, where the judged namespace lists them, where the check cannot tell, or
    where a save tool warned of them."""
    if legacy_tables_present(options, family) is False and not warned:
        return []
    return [_save(options, family, LEGACY, options.save_commands[(family, LEGACY)])[0]]


def _nft_variant(command: Tuple[str, ...]) -> Optional[Tuple[str, ...]]:
    """``iptables-nft-save`` beside a save tool that is the legacy variant (``iptables-legacy-save``,
    or ``iptables-save`` where the alternative points to legacy), through the same wrapper, if installed."""
    directory, name = os.path.split(command[-1])
    variant = name.replace('legacy', 'nft') if 'legacy' in name else name.replace('-save', '-nft-save')
    if variant == name or tool_kind(os.path.join(directory, variant)) != NFT:
        return None
    return command[:-1] + (os.path.join(directory, variant),)


def _from_saves(options: Options, family: str) -> List[Collected]:
    """One whole save per backend: the configured tool's, and the other backend's."""
    main = options.save_commands[(family, NFT)]
    if tool_kind(main[-1]) != LEGACY:
        collected, warned = _save(options, family, NFT, main)
        return [collected] + _legacy(options, family, warned)
    # The configured tool is the legacy variant: the nf_tables rules are not in its output.
    variant = _nft_variant(main)
    return [_save(options, family, LEGACY, main)[0]] + ([_save(options, family, NFT, variant)[0]] if variant else [])


# The evaluation of one family on the kernel's nf_tables ruleset and the rulesets beside it (the legacy
# xtables, read first): run while the kernel is read, so that it reads the chains it enters.
WalkBeside = Callable[[KernelRuleset, Tuple[Collected, ...]], object]


def collect(
    options: Options,
    family: str,
    given: Optional[Collected] = None,
    cache: Optional[KernelCache] = None,
    walk: Optional[WalkBeside] = None,
    walk_key: Hashable = None,
) -> List[Collected]:
    """The rulesets of one family that the kernel runs side by side (of nf_tables, what ``walk`` enters,
    with the legacy rulesets beside it; ``walk_key`` names what the walk computes, so that its result is
    reused for the same walk of the same legacy rulesets only)."""
    if given is not None:
        return [given]
    path = options.ruleset_files.get(family)
    if path is not None:
        return [collected_text(read_file(path, options.max_output_bytes), path)]
    if not uses_netlink(options, family):
        return _from_saves(options, family)
    kernel_cache = cache if cache is not None else KernelCache()
    try:
        beside = tuple(_legacy(options, family))
    except CollectionError:
        read_kernel(options, kernel_cache, family, _nothing, _NOTHING)  # where the kernel refuses too, its refusal is the cause
        raise
    walk_kernel: Optional[Walk] = (lambda kernel: walk(kernel, beside)) if walk is not None else None
    key = (walk_key, tuple(piece.identity for piece in beside))
    kernel, walked, sets = read_kernel(options, kernel_cache, family, walk_kernel, key)
    return [Collected(KERNEL, 'nf_tables (netlink)', kernel=kernel, walked=walked, sets=sets, namespace=kernel_cache.namespace)] + list(beside)


__all__ = ['CollectionError', 'Collected', 'KernelCache', 'KERNEL', 'collect', 'collected_text', 'read_stream', 'uses_netlink']
