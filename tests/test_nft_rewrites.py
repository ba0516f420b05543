"""Chains the change notifications tell in full: a chain rewritten whole is not dumped again.

kube-proxy rewrites its big chains at every sync (``iptables-restore --noflush`` with ``:CHAIN -
[0:0]`` and the chain's rules appended): every rule deleted, every rule added, each announced with
the rule then before it. Where the notifications prove the chain's rules in order
(:class:`Rewrite`), the rules told are the chain's, and its dump is skipped.

First the log, on built notification bytes; then a model of how the kernel links, unlinks and
announces a transaction's rules, against which anything the log says must hold; then, in ``lt-``
namespaces, the real kernel: through many random batches of rewrites and edits, every chain the
cache holds is what a fresh dump gives (handles and positions included), rewrites are told rather
than dumped, and the verdict agrees with real packets.
"""
from __future__ import annotations

import random
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datadog_checks.loopback_traffic import netlink
from datadog_checks.loopback_traffic.collect import KernelCache, read_kernel
from datadog_checks.loopback_traffic.nft_changes import ChangeLog, Changes
from datadog_checks.loopback_traffic.pipeline import InstanceState
from datadog_checks.loopback_traffic.requirements import INPUT_ACCEPT_LO
from datadog_checks.loopback_traffic.results import Status

from .netns import netns, probe_loopback  # noqa: F401
from .rulesets import filter_table
from .test_collection import evaluate_with, options
from .test_nft_changes import IP, NEWCHAIN, DELTABLE, generation, message, name, nla

NEWRULE, DELRULE = 6, 8
CHAIN = ('ip', 'filter', 'KUBE-SERVICES')
OTHER = ('ip', 'filter', 'OTHER')


def rule_told(handle: int, position: Optional[int] = None, kind: int = NEWRULE, chain: str = 'KUBE-SERVICES', body: bytes = b'') -> bytes:
    """A rule notification as the kernel sends it: table, chain, handle, the position where the
    kernel gives one, the expressions."""
    attrs = name(1, 'filter') + name(2, chain) + nla(3, struct.pack('>Q', handle))
    if position is not None:
        attrs += nla(6, struct.pack('>Q', position))
    attrs += nla(0x8004, body or b'rule %d\0' % handle)
    return message(kind, IP, attrs)


def following(*keys: Tuple[str, str, str], at: int = 10) -> ChangeLog:
    log = ChangeLog(follow=set(keys).__contains__)
    log.overflowed()
    log.restart(at, log.losses)
    return log


def told_handles(changes: Changes, held: Sequence[int], key: Tuple[str, str, str] = CHAIN) -> Optional[List[int]]:
    rules = changes.rewrite_of(key, held)
    return None if rules is None else [fields[2] for fields in rules]


def between(log: ChangeLog, since: int, until: int) -> Changes:
    found = log.between(since, until)
    assert isinstance(found, Changes)
    return found


def kube_proxy_rewrite(held: Sequence[int], new: Sequence[int], chain: str = 'KUBE-SERVICES') -> bytes:
    """The notifications of ``iptables-restore --noflush`` rewriting a chain: each rule it had
    deleted, then each new one, with the rule before it, but the first and the last."""
    told = b''.join(rule_told(handle, kind=DELRULE, chain=chain) for handle in held)
    for index, handle in enumerate(new):
        inner = 0 < index < len(new) - 1
        told += rule_told(handle, new[index - 1] if inner else None, chain=chain)
    return told


def test_a_chain_rewritten_whole_is_told_in_order():
    log = following(CHAIN)
    log.feed(kube_proxy_rewrite([2, 3, 4], [7, 8, 9]) + rule_told(5, kind=DELRULE, chain='OTHER') + generation(11))
    changes = between(log, 10, 11)
    assert changes.touches(CHAIN) and changes.touches(OTHER)
    assert told_handles(changes, [2, 3, 4]) == [7, 8, 9]
    rules = changes.rewrite_of(CHAIN, [2, 3, 4])
    assert rules is not None and [fields[4] for fields in rules] == [b'rule %d\0' % h for h in (7, 8, 9)]
    assert told_handles(changes, [2, 3]) is None  # the rules held were not those the kernel deleted
    assert told_handles(changes, [2, 3, 4, 5]) is None
    assert told_handles(changes, [5], OTHER) is None  # not followed


@pytest.mark.parametrize('held, notifications, told', [
    ([2], rule_told(2, kind=DELRULE) + rule_told(7), [7]),
    ([2, 3], rule_told(2, kind=DELRULE) + rule_told(3, kind=DELRULE), []),  # flushed
    ([2], rule_told(2, kind=DELRULE) + rule_told(7) + rule_told(8, 7), [7, 8]),
    ([2], rule_told(2, kind=DELRULE) + rule_told(7) + rule_told(8, 7) + rule_told(9), [7, 8, 9]),  # the last names none
    ([2], rule_told(2, kind=DELRULE) + rule_told(2), [2]),  # the only rule replaced: its handle stays
    ([], rule_told(7) + rule_told(8, 7), [7, 8]),  # an empty chain filled
])
def test_what_the_notifications_prove(held, notifications, told):
    log = following(CHAIN)
    log.feed(notifications + generation(11))
    assert told_handles(between(log, 10, 11), held) == told


@pytest.mark.parametrize('held, notifications', [
    pytest.param([2, 3], rule_told(7, 3), id='an insertion'),
    pytest.param([2], rule_told(2, kind=DELRULE) + rule_told(7) + rule_told(8), id='two rules naming none: either may be first'),
    pytest.param([2, 3], rule_told(2, kind=DELRULE), id='a rule deleted, one left'),
    pytest.param([2], rule_told(2, kind=DELRULE) + rule_told(7, 2) + rule_told(8), id='the first told after another rule'),
    pytest.param([2], rule_told(2, kind=DELRULE) + rule_told(7) + rule_told(8) + rule_told(9), id='a rule in the middle told with no position'),
    pytest.param([2], rule_told(2, kind=DELRULE) + rule_told(7) + rule_told(8, 2) + rule_told(9), id='a rule named after another'),
    pytest.param([2], rule_told(2, kind=DELRULE) + rule_told(7) + rule_told(8, 7) + rule_told(8, kind=DELRULE), id='a rule deleted after it was added'),
    pytest.param([2], rule_told(2, kind=DELRULE) + rule_told(7) + rule_told(7), id='a handle told twice'),
    pytest.param([2], rule_told(2, kind=DELRULE) + rule_told(2, kind=DELRULE) + rule_told(7), id='a rule deleted twice'),
    pytest.param([2], rule_told(2, kind=DELRULE) + rule_told(7) + message(DELTABLE, IP, name(1, 'filter')), id='its table deleted'),
    pytest.param([2], rule_told(2, kind=DELRULE) + rule_told(7) + message(NEWCHAIN, IP, name(1, 'filter') + nla(2, struct.pack('>Q', 40)) + name(3, 'KUBE-SERVICES')),
                 id='the chain made'),
    pytest.param([2], rule_told(2, kind=DELRULE) + rule_told(7)
                 + message(NEWCHAIN, IP, name(1, 'filter') + nla(2, struct.pack('>Q', 40)) + name(3, 'X'))
                 + message(NEWCHAIN, IP, name(1, 'filter') + nla(2, struct.pack('>Q', 40)) + name(3, 'Y')), id='a chain made under two names'),
])
def test_what_the_notifications_do_not_prove(held, notifications):
    log = following(CHAIN)
    log.feed(notifications + generation(11))
    changes = between(log, 10, 11)
    assert changes.touches(CHAIN) and told_handles(changes, held) is None


def test_rewrites_over_several_transactions_are_told_where_each_one_rewrote_the_chain():
    log = following(CHAIN, OTHER)
    log.feed(kube_proxy_rewrite([2, 3], [4, 5, 6]) + generation(11))
    log.feed(rule_told(40, chain='OTHER') + generation(12))  # another chain only
    assert told_handles(between(log, 10, 11), [2, 3]) == [4, 5, 6]
    assert told_handles(between(log, 10, 12), [2, 3]) == [4, 5, 6]
    log.feed(kube_proxy_rewrite([4, 5, 6], [7]) + generation(13))
    log.feed(rule_told(8, 7) + generation(14))  # an insertion
    assert told_handles(between(log, 10, 13), [2, 3]) == [7]
    assert told_handles(between(log, 11, 13), [4, 5, 6]) == [7]
    assert told_handles(between(log, 10, 13), [4, 5, 6]) is None  # the first rewrite deleted other rules
    assert told_handles(between(log, 10, 14), [2, 3]) is None
    assert told_handles(between(log, 10, 12), [], OTHER) == [40]  # an empty chain given a rule
    assert told_handles(between(log, 10, 12), [5], OTHER) is None  # a rule added to the one it had


def test_only_the_newest_rules_told_of_a_chain_are_kept():
    """A chain rewritten at every sync, runs failing meanwhile: what was told of it before the last
    rewrite is not kept (only its handles, to follow the chain); a read of that older generation dumps it."""
    log = following(CHAIN)
    log.feed(kube_proxy_rewrite([2, 3], [4, 5, 6]) + generation(11))
    log.feed(kube_proxy_rewrite([4, 5, 6], [7, 8, 9]) + generation(12))
    assert told_handles(between(log, 10, 12), [2, 3]) == [7, 8, 9]
    assert told_handles(between(log, 11, 12), [4, 5, 6]) == [7, 8, 9]
    assert told_handles(between(log, 10, 11), [2, 3]) is None
    assert all(rewrite.rules is None for _, changes in log._committed[:1] for rewrite in changes.rewrites[CHAIN])


def test_a_chain_made_and_renamed_meanwhile_leaves_the_rules_jumping_to_it_to_a_dump():
    """A rule prints the name its jump's chain has when it is read: a chain made, jumped to by the
    rules told, then renamed (and its name given to a new chain) makes them print another name than told."""
    def chain_made(chain: str, handle: int) -> bytes:
        return message(NEWCHAIN, IP, name(1, 'filter') + nla(2, struct.pack('>Q', handle)) + name(3, chain))

    log = following(CHAIN)
    log.feed(chain_made('X', 100) + rule_told(2, kind=DELRULE) + rule_told(7, body=b'jump X\0') + generation(11))
    log.feed(chain_made('Y', 100) + generation(12))  # iptables -E X Y
    log.feed(chain_made('X', 101) + generation(13))  # iptables -N X
    changes = between(log, 10, 13)
    assert not changes.may_rename({('ip', 'filter'): 50})  # X was made after the last read
    assert told_handles(changes, [2]) is None
    assert told_handles(between(log, 10, 11), [2]) == [7]


def test_a_chain_followed_only_from_a_later_transaction_is_not_told():
    held = {CHAIN}
    log = ChangeLog(follow=held.__contains__)
    log.overflowed()
    log.restart(10, log.losses)
    held.discard(CHAIN)
    log.feed(rule_told(7, 3) + generation(11))  # not followed: an insertion, its rules not kept
    held.add(CHAIN)
    log.feed(kube_proxy_rewrite([2, 3], [4, 5, 6]) + generation(12))
    assert told_handles(between(log, 10, 12), [2, 3]) is None
    assert told_handles(between(log, 11, 12), [2, 3]) == [4, 5, 6]


_EXPRESSIONS = nla(0x8004, b'\x10\x00\x01\x80' + b'x' * 12)
_LAYOUTS = {
    'as the kernel writes it': lambda h, p: name(1, 'filter') + name(2, 'KUBE-SERVICES') + nla(3, struct.pack('>Q', h)) + p + _EXPRESSIONS,
    'with userdata': lambda h, p: name(1, 'filter') + name(2, 'KUBE-SERVICES') + nla(3, struct.pack('>Q', h)) + p + _EXPRESSIONS + nla(7, b'\x00\x03abc'),
    'handle last': lambda h, p: name(1, 'filter') + name(2, 'KUBE-SERVICES') + p + _EXPRESSIONS + nla(3, struct.pack('>Q', h)),
    'chain first': lambda h, p: name(2, 'KUBE-SERVICES') + name(1, 'filter') + nla(3, struct.pack('>Q', h)) + p + _EXPRESSIONS,
}


@pytest.mark.parametrize('layout', sorted(_LAYOUTS))
def test_rules_told_are_read_as_a_dump_reads_them(layout):
    """The log reads kube-proxy's notifications the short way: whatever the layout, it reads what
    the dump's reader reads."""
    build = _LAYOUTS[layout]
    bodies = [build(7, b''), build(8, nla(6, struct.pack('>Q', 7))), build(9, b'')]
    log = following(CHAIN)
    log.feed(rule_told(2, kind=DELRULE) + b''.join(message(NEWRULE, IP, body) for body in bodies) + generation(11))
    told = between(log, 10, 11).rewrite_of(CHAIN, [2])
    assert told is not None and list(told) == [netlink.rule_fields(body, 0, len(body), netlink.name_cache()) for body in bodies]


def test_the_names_read_from_notifications_are_not_kept_beyond_their_transaction():
    """kube-proxy names new endpoint chains at every sync: what the log decodes of names must not
    grow with them over the Agent's life."""
    log = following(*(('ip', 'filter', 'SEP-{}'.format(number)) for number in range(50)))
    for number in range(50):
        body = name(1, 'filter') + name(2, 'SEP-{}'.format(number)) + nla(3, struct.pack('>Q', 7)) + _EXPRESSIONS + nla(7, b'\x00\x01x')
        log.feed(message(NEWRULE, IP, body) + generation(11 + number))  # userdata after the expressions: read the long way
    assert told_handles(between(log, 10, 60), [], ('ip', 'filter', 'SEP-49')) == [7]
    assert len(log._names) <= 2


# --------------------------------------------------------------------------- a model of the kernel


class _KernelModel:
    """How the kernel links, unlinks and announces one chain's rules in a transaction: a new rule is
    linked where it is asked for at once (a position may name a rule the transaction deletes: the
    kernel looks it up among all the rules linked); at commit, in the order asked, a new rule is
    announced with the rule then before it (none for the first and the last), a deleted one
    unlinked and announced."""

    def __init__(self, rules: Sequence[int]) -> None:
        self.linked = list(rules)
        self.active = set(rules)
        self.next_handle = max(rules, default=1) + 1
        self.asked: List[Tuple[str, int]] = []

    def new(self, place: int) -> None:
        handle, self.next_handle = self.next_handle, self.next_handle + 1
        self.linked.insert(place, handle)
        self.active.add(handle)
        self.asked.append(('new', handle))

    def delete(self, handle: int) -> None:
        self.active.discard(handle)
        self.asked.append(('delete', handle))

    def commit(self) -> bytes:
        told = b''
        for what, handle in self.asked:
            if what == 'delete':
                self.linked.remove(handle)
                told += rule_told(handle, kind=DELRULE)
            else:
                at = self.linked.index(handle)
                inner = 0 < at < len(self.linked) - 1
                told += rule_told(handle, self.linked[at - 1] if inner else None)
        self.asked = []
        return told


_OPERATION = st.one_of(
    st.tuples(st.just('append'), st.integers(0, 0)),
    st.tuples(st.just('insert'), st.integers(0, 20)),
    st.tuples(st.just('after'), st.integers(0, 20)),
    st.tuples(st.just('delete'), st.integers(0, 20)),
    st.tuples(st.just('flush'), st.integers(0, 0)),
)


@settings(max_examples=400, deadline=None)
@given(held=st.integers(0, 5), transactions=st.lists(st.lists(_OPERATION, max_size=8), min_size=1, max_size=3))
def test_what_is_told_is_what_the_kernel_model_holds(held, transactions):
    """Whatever the batches, the log tells the chain's rules exactly, or tells nothing."""
    model = _KernelModel(list(range(2, 2 + held)))
    start = list(model.linked)
    log = following(CHAIN)
    for number, operations in enumerate(transactions, start=11):
        for kind, where in operations:
            active = [handle for handle in model.linked if handle in model.active]
            if kind == 'append':
                model.new(len(model.linked))
            elif kind == 'insert':  # before a rule (or at the head)
                model.new(where % len(model.linked) if model.linked else 0)
            elif kind == 'after':  # after a rule (nft add rule ... position)
                model.new(where % len(model.linked) + 1 if model.linked else 0)
            elif kind == 'delete' and active:
                model.delete(active[where % len(active)])
            elif kind == 'flush':
                for handle in active:
                    model.delete(handle)
        log.feed(model.commit() + generation(number))
    told = told_handles(between(log, 10, 10 + len(transactions)), start)
    assert told is None or told == model.linked


def test_the_kernel_model_tells_a_kube_proxy_rewrite():
    """The test above can fail: the model's rewrite, done as kube-proxy does it, is told."""
    model = _KernelModel([2, 3, 4])
    for handle in (2, 3, 4):
        model.delete(handle)
    for _ in range(4):
        model.new(len(model.linked))
    log = following(CHAIN)
    log.feed(model.commit() + generation(11))
    assert told_handles(between(log, 10, 11), [2, 3, 4]) == model.linked == [5, 6, 7, 8]


# --------------------------------------------------------------------------- the real kernel


_CHAINS = ('A', 'B', 'C')


class _Batches:
    """Random ``iptables-restore --noflush`` batches over three chains, with the number of rules
    each chain has after them (the indexes the edits may name)."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.counts: Dict[str, int] = {chain: 0 for chain in _CHAINS}
        self.serial = 0

    def _rule(self) -> str:
        self.serial += 1
        address = '-s 10.{}.{}.{}/32'.format(self.serial // 65536 % 256, self.serial // 256 % 256, self.serial % 256)
        extra = self.random.choice(['', ' -p tcp --dport 80', ' -m comment --comment "ns/svc-{}:http"'.format(self.serial)])
        return '{}{} -j {}'.format(address, extra, self.random.choice(['ACCEPT', 'RETURN', 'DROP']))

    def lines(self, chain: str) -> Tuple[str, List[str]]:
        """What a batch does to ``chain``: ``rewrite`` (flushed, rules appended, as kube-proxy does;
        ``rewrite of two`` where two rules are), ``edit`` (one rule appended, inserted, deleted or replaced, or a rewrite with an insertion)
        or ``none``."""
        kind = self.random.choice(['rewrite', 'rewrite', 'edit', 'none'])
        count = self.counts[chain]
        if kind == 'none':
            return kind, []
        if kind == 'rewrite':
            rules = self.random.randrange(0, 7)
            self.counts[chain] = rules
            kind = 'rewrite of two' if rules == 2 else kind  # two rules that both name none: either may be first
            return kind, [':{} - [0:0]'.format(chain)] + ['-A {} {}'.format(chain, self._rule()) for _ in range(rules)]
        edit = self.random.choice(['append', 'insert', 'delete', 'replace', 'rewrite-insert'])
        if edit == 'rewrite-insert':
            rules = self.random.randrange(1, 6)
            lines = [':{} - [0:0]'.format(chain)] + ['-A {} {}'.format(chain, self._rule()) for _ in range(rules)]
            lines.append('-I {} {} {}'.format(chain, self.random.randrange(1, rules + 1), self._rule()))
            self.counts[chain] = rules + 1
            return kind, lines
        if edit == 'append' or count == 0:
            self.counts[chain] = count + 1
            return kind, ['-A {} {}'.format(chain, self._rule())]
        at = self.random.randrange(1, count + 1)
        if edit == 'insert':
            self.counts[chain] = count + 1
            return kind, ['-I {} {} {}'.format(chain, at, self._rule())]
        if edit == 'delete':
            self.counts[chain] = count - 1
            return kind, ['-D {} {}'.format(chain, at)]
        return kind, ['-R {} {} {}'.format(chain, at, self._rule())]


def _rules_of(cache: KernelCache) -> Dict[Tuple[str, str, str], List[tuple]]:
    return {key: [(rule.handle, rule.position, rule.raw_expressions, rule.userdata) for rule in known.rules] for key, known in cache.chains.items()}


def test_chains_told_by_the_notifications_are_what_a_dump_gives(netns, monkeypatch):
    """Through random batches (one to three transactions between reads), every chain held is what
    a fresh read gives, rule for rule, handles and positions included; a chain only rewritten is
    never dumped."""
    dumped: List[Tuple[str, str, str]] = []
    real = netlink.NetlinkReader.chain_rules

    def counting(self, *key, **known):
        dumped.append(key)
        return real(self, *key, **known)

    monkeypatch.setattr(netlink.NetlinkReader, 'chain_rules', counting)
    netns.restore(filter_table('-A INPUT -j A', '-A INPUT -j B', '-A OUTPUT -j C', chains=list(_CHAINS)), 'ipv4')
    opts = options(netns, 'ipv4')
    cache = KernelCache()
    read_kernel(opts, cache, 'ipv4')
    batches = _Batches(seed=20261202)
    told = 0
    for _ in range(40):
        kinds: Dict[str, set] = {chain: set() for chain in _CHAINS}
        for _ in range(batches.random.randrange(1, 4)):
            lines = []
            for chain in _CHAINS:
                kind, more = batches.lines(chain)
                kinds[chain].add(kind)
                lines += more
            netns.run(['iptables-restore', '--noflush'], input='*filter\n' + '\n'.join(lines) + '\nCOMMIT\n', check=True)
        dumped.clear()
        read_kernel(opts, cache, 'ipv4')
        by_the_cache = list(dumped)
        fresh = KernelCache()
        read_kernel(opts, fresh, 'ipv4')
        fresh.close()
        assert _rules_of(cache) == _rules_of(fresh)
        for chain in _CHAINS:
            if kinds[chain] <= {'rewrite', 'none'} and 'rewrite' in kinds[chain]:
                assert ('ip', 'filter', chain) not in by_the_cache
                told += 1
    assert told > 20
    cache.close()


LOCHAIN_RULESET = filter_table(
    '-A INPUT -j LOCHAIN', '-A INPUT -s 127.0.0.0/8 ! -i lo -j DROP', '-A LOCHAIN -i lo -j ACCEPT',
    '-A OUTPUT -o lo -j ACCEPT', chains=['LOCHAIN'], input_policy='DROP', output_policy='DROP',
)


def test_a_drop_rewritten_into_a_chain_is_told_and_the_kernel_agrees(netns, monkeypatch):
    dumped: List[tuple] = []
    real = netlink.NetlinkReader.chain_rules
    monkeypatch.setattr(netlink.NetlinkReader, 'chain_rules', lambda self, *key, **known: dumped.append(key) or real(self, *key, **known))
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    assert evaluate_with(netns, 'ipv4', state=state).result.status is Status.PASS
    read = state.kernel.chains[('ip', 'filter', 'LOCHAIN')].rules
    dumped.clear()
    rewrite = '*filter\n:LOCHAIN - [0:0]\n-A LOCHAIN -i lo -p udp -j DROP\n-A LOCHAIN -i lo -p tcp --dport 9 -j DROP\n-A LOCHAIN -i lo -j ACCEPT\nCOMMIT\n'
    netns.run(['iptables-restore', '--noflush'], input=rewrite, check=True)
    accept = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert dumped == []  # told by the notifications
    assert accept.status is Status.PARTIAL and (accept.deciding.chain, accept.deciding.index) == ('LOCHAIN', 3)
    assert accept == evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO)  # a new instance, which dumps
    assert not probe_loopback(netns, 'ipv4', 'udp') and probe_loopback(netns, 'ipv4', 'icmp')
    # Rewritten back as it was first: the same rule told, under a new handle.
    dumped.clear()
    netns.run(['iptables-restore', '--noflush'], input='*filter\n:LOCHAIN - [0:0]\n-A LOCHAIN -i lo -j ACCEPT\nCOMMIT\n', check=True)
    assert evaluate_with(netns, 'ipv4', state=state).result.status is Status.PASS and dumped == []
    assert read[0].raw_expressions == state.kernel.chains[('ip', 'filter', 'LOCHAIN')].rules[0].raw_expressions
    assert probe_loopback(netns, 'ipv4', 'udp')
