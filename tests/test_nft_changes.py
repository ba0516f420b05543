"""The kernel's nf_tables change notifications: what changed between two generations.

The log (pure) on built notification bytes: it answers only what it can prove. Then, in ``lt-``
namespaces, the check kept across runs as the Agent keeps it: after a change, only the chains whose
rules changed are dumped again, a walk given none of them is not redone, and whatever the
notifications cannot prove (a structural change, lost notifications) is read again in full; each
verdict checked against the kernel with real packets.
"""
from __future__ import annotations

import errno
import socket
import struct
import time
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datadog_checks.loopback_traffic import netlink
from datadog_checks.loopback_traffic.collect import KernelCache
from datadog_checks.loopback_traffic.namespaces import in_network_namespace
from datadog_checks.loopback_traffic.nf_tables import ChainNames, ChainRules, KernelRuleset
from datadog_checks.loopback_traffic.nft_changes import NOT_YET, NOTHING_CHANGED, UNKNOWN, ChangeLog, Changes, ChangeWatch, next_generation
from datadog_checks.loopback_traffic.pipeline import InstanceState
from datadog_checks.loopback_traffic.requirements import INPUT_ACCEPT_LO, INPUT_DROP_LOOPBACK_SOURCE
from datadog_checks.loopback_traffic.results import Status

from .netns import netns, probe_loopback, probe_spoofed_loopback_source, netns_pair  # noqa: F401
from .rulesets import filter_table
from .test_collection import evaluate_with

IP, INET = 2, 1
NEWTABLE, DELTABLE, NEWCHAIN, NEWRULE, DELRULE, NEWSETELEM, NEWGEN = 0, 2, 3, 6, 8, 12, 15


def nla(kind: int, value: bytes) -> bytes:
    return struct.pack('=HH', 4 + len(value), kind) + value + b'\0' * (-len(value) % 4)


def name(kind: int, value: str) -> bytes:
    return nla(kind, value.encode() + b'\0')


def message(kind: int, family: int, attrs: bytes, subsystem: int = 10) -> bytes:
    body = struct.pack('=BBH', family, 0, 0) + attrs
    return struct.pack('=IHHII', 16 + len(body), (subsystem << 8) | kind, 0, 0, 0) + body


def rule_changed(table: str, chain: str, family: int = IP, kind: int = NEWRULE) -> bytes:
    return message(kind, family, name(1, table) + name(2, chain) + nla(3, struct.pack('>Q', 9)))


def chain_made(table: str, chain: str, handle: int, family: int = IP) -> bytes:
    return message(NEWCHAIN, family, name(1, table) + nla(2, struct.pack('>Q', handle)) + name(3, chain))


def generation(number: int) -> bytes:
    return message(NEWGEN, 0, nla(1, struct.pack('>I', number)))


def started(at: int) -> ChangeLog:
    """A log whose watch was subscribed before a full read that saw generation ``at``."""
    log = ChangeLog()
    log.overflowed()  # nothing before the subscription is vouched for
    log.restart(at, log.losses)
    return log


def test_rule_changes_are_told_per_chain_and_merged_over_generations():
    log = started(5)
    log.feed(rule_changed('filter', 'KUBE-SERVICES', kind=DELRULE) + rule_changed('filter', 'KUBE-SERVICES') + generation(6))
    log.feed(rule_changed('nat', 'KUBE-SVC-A', family=IP) + generation(7))
    assert log.between(5, 6) == Changes(frozenset({('ip', 'filter', 'KUBE-SERVICES')}))
    both = log.between(5, 7)
    assert isinstance(both, Changes) and not both.structure
    assert both.chains == {('ip', 'filter', 'KUBE-SERVICES'), ('ip', 'nat', 'KUBE-SVC-A')}
    assert both.touches(('ip', 'nat', 'KUBE-SVC-A')) and not both.touches(('ip', 'filter', 'INPUT'))
    assert log.between(6, 7) == Changes(frozenset({('ip', 'nat', 'KUBE-SVC-A')}))
    assert log.between(7, 7) is NOTHING_CHANGED


def test_a_generation_whose_notifications_have_not_all_arrived_is_waited_for():
    log = started(5)
    log.feed(rule_changed('filter', 'INPUT'))  # transaction 6 under way: its NEWGEN not received yet
    assert log.between(5, 6) == NOT_YET
    log.feed(generation(6))
    assert log.between(5, 6) == Changes(frozenset({('ip', 'filter', 'INPUT')}))


def test_transactions_the_read_already_saw_are_left_out():
    log = ChangeLog()
    log.overflowed()
    log.feed(rule_changed('filter', 'OLD') + generation(4) + rule_changed('filter', 'SEEN') + generation(5))
    log.restart(5, log.losses)  # the full read saw generation 5
    log.feed(rule_changed('filter', 'NEW') + generation(6))
    assert log.between(5, 6) == Changes(frozenset({('ip', 'filter', 'NEW')}))


def test_a_missing_generation_makes_the_answer_unknown():
    log = started(5)
    log.feed(rule_changed('filter', 'INPUT') + generation(7))  # 6 never announced
    assert log.between(5, 7) == UNKNOWN


def test_a_loss_is_unknown_until_a_read_begun_after_it_and_only_for_later_transactions():
    log = started(5)
    log.feed(rule_changed('filter', 'INPUT') + generation(6))
    log.overflowed()  # the socket said ENOBUFS
    assert log.between(5, 6) == UNKNOWN
    began = log.losses
    log.feed(rule_changed('filter', 'FORWARD') + generation(7))
    log.restart(7, began)  # a full read, begun after the loss was seen, saw generation 7
    log.feed(rule_changed('filter', 'OUTPUT') + generation(8))
    assert log.between(7, 8) == Changes(frozenset({('ip', 'filter', 'OUTPUT')}))
    assert log.between(5, 8) == UNKNOWN  # the loss may have hidden a change after 5


def test_a_loss_during_the_read_keeps_the_log_unknown():
    log = started(5)
    began = log.losses
    log.overflowed()  # lost while the read was under way: it may have hidden transaction 7
    log.feed(rule_changed('filter', 'OUTPUT') + generation(8))
    log.restart(6, began)
    assert log.between(6, 8) == UNKNOWN


@pytest.mark.parametrize('notification, touched', [
    (message(NEWTABLE, INET, name(1, 'hostfw')), ('inet', 'hostfw', 'input')),
    (message(DELTABLE, IP, name(1, 'filter')), ('ip', 'filter', 'INPUT')),
    (message(NEWCHAIN, IP, name(1, 'filter') + name(3, 'INPUT') + nla(0x8004, nla(1, struct.pack('>I', 1)))), ('ip', 'filter', 'INPUT')),
    (message(NEWSETELEM, INET, name(1, 'hostfw') + name(2, 'allowed')), None),
])
def test_anything_beyond_rules_is_a_structural_change(notification, touched):
    log = started(1)
    log.feed(notification + generation(2))
    found = log.between(1, 2)
    assert isinstance(found, Changes) and found.structure
    if touched is not None:
        assert found.touches(touched)


def test_regular_chains_added_or_deleted_change_the_chain_set_only():
    log = started(1)
    log.feed(chain_made('nat', 'KUBE-SEP-NEW', 90) + rule_changed('nat', 'KUBE-SEP-NEW') + generation(2))
    found = log.between(1, 2)
    assert isinstance(found, Changes) and found.chain_set and not found.structure and not found.rules_only
    assert not found.may_rename({('ip', 'nat'): 89})  # made after the chains read: a new chain
    assert found.may_rename({('ip', 'nat'): 90})  # a chain that existed: renamed (or otherwise changed)
    assert found.touches(('ip', 'nat', 'KUBE-SEP-NEW')) and not found.touches(('ip', 'nat', 'KUBE-SERVICES'))
    assert Changes(frozenset({('ip', 'nat', 'KUBE-SERVICES')})).rules_only


def test_chains_added_and_deleted_give_the_chain_index_after_them():
    log = started(1)
    log.feed(chain_made('nat', 'KUBE-SEP-NEW', 90) + message(5, IP, name(1, 'nat') + name(3, 'KUBE-SEP-OLD')) + generation(2))
    log.feed(chain_made('mangle', 'OTHER', 7) + generation(3))
    found = log.between(1, 3)
    assert isinstance(found, Changes) and found.added == {('ip', 'nat', 'KUBE-SEP-NEW'), ('ip', 'mangle', 'OTHER')}
    before = ChainNames({('ip', 'nat'): {'KUBE-SEP-OLD', 'KUBE-SERVICES'}})
    names, newest = found.chain_index_after(before, {('ip', 'nat'): 80}, {('ip', 'nat')})  # mangle is not on the path
    assert names == {('ip', 'nat', 'KUBE-SEP-NEW'), ('ip', 'nat', 'KUBE-SERVICES')} and newest == {('ip', 'nat'): 90}
    # Made and deleted (in either order): which came last is not in the merged changes.
    log.feed(message(5, IP, name(1, 'nat') + name(3, 'KUBE-SEP-NEW')) + generation(4))
    assert log.between(1, 4).chain_index_after(before, {('ip', 'nat'): 80}, {('ip', 'nat')}) is None
    # Made, then renamed (its handle again, another name): the first name is gone, unannounced.
    renamed = started(1)
    renamed.feed(chain_made('nat', 'KUBE-SEP-NEW', 90) + generation(2))
    renamed.feed(chain_made('nat', 'KUBE-SEP-OTHER', 90) + generation(3))
    assert not renamed.between(1, 3).may_rename({('ip', 'nat'): 80})  # made after the read: not a rename of a chain held
    assert renamed.between(1, 3).chain_index_after(before, {('ip', 'nat'): 80}, {('ip', 'nat')}) is None
    # A chain bound to a rule (NFT_CHAIN_BINDING): it will go with the rule, unannounced.
    binding = started(1)
    binding.feed(message(NEWCHAIN, IP, name(1, 'nat') + nla(2, struct.pack('>Q', 91)) + name(3, '__chain91') + nla(10, struct.pack('>I', 4))) + generation(2))
    assert binding.between(1, 2).bound and binding.between(1, 2).chain_index_after(before, {('ip', 'nat'): 80}, {('ip', 'nat')}) is None


def test_a_chain_gone_without_being_deleted_was_renamed():
    log = started(1)
    log.feed(message(5, IP, name(1, 'filter') + name(3, 'OLD')) + chain_made('filter', 'NEW', 12) + generation(2))
    found = log.between(1, 2)
    assert isinstance(found, Changes) and found.deleted == {('ip', 'filter', 'OLD')}
    assert found.explains_gone([('ip', 'filter', 'OLD')])
    assert not found.explains_gone([('ip', 'filter', 'OTHER')])  # gone, never deleted: renamed
    table_gone = Changes(tables=frozenset({('ip', 'filter')}), structure=True)
    assert table_gone.explains_gone([('ip', 'filter', 'OTHER')])


@pytest.mark.parametrize('bad', [
    message(40, IP, b''),  # a type this log does not know
    message(NEWCHAIN, IP, name(1, 'filter') + name(3, 'NEW')),  # a regular chain made, without its handle
    message(NEWRULE, IP, name(1, 'filter')),  # a rule change without its chain
    rule_changed('filter', 'INPUT')[:-3],  # truncated
    message(NEWRULE, IP, b'', subsystem=1),  # another subsystem
])
def test_a_notification_the_log_cannot_read_makes_the_answer_unknown(bad):
    log = started(1)
    log.feed(bad + generation(2))
    assert log.between(1, 2) == UNKNOWN


def test_generation_ids_wrap_around_skipping_zero():
    assert next_generation(0xFFFFFFFF) == 1
    log = started(0xFFFFFFFF)
    log.feed(rule_changed('filter', 'INPUT') + generation(1))
    assert log.between(0xFFFFFFFF, 1) == Changes(frozenset({('ip', 'filter', 'INPUT')}))


_CHAINS = ['INPUT', 'OUTPUT', 'LOCHAIN', 'KUBE-SERVICES']


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_CHAINS), max_size=3), min_size=1, max_size=8), st.data())
def test_between_is_the_union_of_the_transactions_in_between(transactions, data):
    log = started(100)
    for offset, chains in enumerate(transactions, start=101):
        log.feed(b''.join(rule_changed('filter', chain) for chain in chains) + generation(offset))
    last = 100 + len(transactions)
    since = data.draw(st.integers(100, last))
    until = data.draw(st.integers(since, last))
    expected = {('ip', 'filter', chain) for chains in transactions[since - 100 : until - 100] for chain in chains}
    assert log.between(since, until) == Changes(frozenset(expected))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 5))
def test_any_bytes_leave_the_log_answering(garbage, until):
    log = started(0)
    log.feed(garbage)
    assert log.between(0, until) in (UNKNOWN, NOT_YET) or isinstance(log.between(0, until), Changes)


# --------------------------------------------------------------------------- real kernel, kept across runs

LOCHAIN_RULESET = filter_table(
    '-A INPUT -j LOCHAIN', '-A INPUT -s 127.0.0.0/8 ! -i lo -j DROP', '-A LOCHAIN -i lo -j ACCEPT',
    '-A OUTPUT -o lo -j ACCEPT', '-A FORWARD -j SIDE', '-A SIDE -j RETURN', chains=['LOCHAIN', 'SIDE'], input_policy='DROP', output_policy='DROP',
)


@pytest.fixture
def counted_dumps(monkeypatch):
    dumped: List[tuple] = []
    real = netlink.NetlinkReader.chain_rules

    def counting(self, *key, **known):
        dumped.append(key)
        return real(self, *key, **known)

    monkeypatch.setattr(netlink.NetlinkReader, 'chain_rules', counting)
    return dumped


def test_after_a_change_only_the_changed_chain_is_dumped_and_the_kernel_agrees(netns, counted_dumps):
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    assert evaluate_with(netns, 'ipv4', state=state).result.status is Status.PASS
    assert ('ip', 'filter', 'LOCHAIN') in counted_dumps and state.kernel.watch.watching
    counted_dumps.clear()
    netns.run(['iptables', '-I', 'LOCHAIN', '1', '-i', 'lo', '-p', 'udp', '-j', 'DROP'], check=True)
    result = evaluate_with(netns, 'ipv4', state=state).result
    assert counted_dumps == [('ip', 'filter', 'LOCHAIN')]  # INPUT and OUTPUT are as they were: not dumped
    accept = result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is Status.PARTIAL and (accept.deciding.chain, accept.deciding.index) == ('LOCHAIN', 2)  # the ACCEPT behind the new DROP
    assert not probe_loopback(netns, 'ipv4', 'udp') and probe_loopback(netns, 'ipv4', 'icmp')
    counted_dumps.clear()
    netns.run(['iptables', '-D', 'LOCHAIN', '1'], check=True)
    assert evaluate_with(netns, 'ipv4', state=state).result.status is Status.PASS
    assert counted_dumps == [('ip', 'filter', 'LOCHAIN')] and probe_loopback(netns, 'ipv4', 'udp')


def test_a_walk_given_none_of_the_changed_chains_is_not_redone(netns, counted_dumps):
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    first = evaluate_with(netns, 'ipv4', state=state).result
    read_at = state.kernel.ruleset.generation
    counted_dumps.clear()
    netns.run(['iptables', '-I', 'SIDE', '1', '-i', 'lo', '-j', 'DROP'], check=True)  # behind FORWARD: no loopback packet gets there
    state.evaluated.clear()
    again = evaluate_with(netns, 'ipv4', state=state).result
    assert again is first and counted_dumps == []
    assert state.kernel.ruleset.generation != read_at  # the cache follows the kernel's generation
    assert probe_loopback(netns, 'ipv4', 'udp')


def test_a_structural_change_is_read_again_and_unchanged_chains_are_not_dumped(netns, counted_dumps):
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    assert evaluate_with(netns, 'ipv4', state=state).result.status is Status.PASS
    counted_dumps.clear()
    netns.run(['nft', 'add table inet hostfw; add chain inet hostfw in { type filter hook input priority 10; }; add rule inet hostfw in iif lo drop'],
              check=True)
    accept = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert accept.status is Status.FAIL and (accept.deciding.table, accept.deciding.chain) == ('inet hostfw', 'in')
    assert ('ip', 'filter', 'LOCHAIN') not in counted_dumps and ('inet', 'hostfw', 'in') in counted_dumps
    assert not probe_loopback(netns, 'ipv4', 'udp')


@pytest.fixture
def index_reads(monkeypatch):
    """How often the chain index (every chain of every table) is dumped."""
    reads: List[int] = []
    real = netlink.NetlinkReader.chain_index

    def counting(self, *args, **kwargs):
        reads.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(netlink.NetlinkReader, 'chain_index', counting)
    return reads


def test_chains_added_and_deleted_keep_the_walks_given_none_of_them(netns, counted_dumps, index_reads):
    """kube-proxy adds and deletes chains as endpoints come and go: the notifications name them (the
    chain index is not dumped again), and a walk that none of the changed chains was given is kept."""
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    first = evaluate_with(netns, 'ipv4', state=state).result
    netns.run(['iptables', '-N', 'KUBE-SEP-NEW'], check=True)
    netns.run(['iptables', '-A', 'KUBE-SEP-NEW', '-j', 'DROP'], check=True)
    counted_dumps.clear()
    index_reads.clear()
    state.evaluated.clear()
    assert evaluate_with(netns, 'ipv4', state=state).result is first and counted_dumps == [] and index_reads == []
    assert ('ip', 'filter', 'KUBE-SEP-NEW') in state.kernel.ruleset.chain_names
    # Then a jump to it from a chain the walk was given: that walk is redone, the new chain read.
    netns.run(['iptables', '-I', 'LOCHAIN', '1', '-i', 'lo', '-j', 'KUBE-SEP-NEW'], check=True)
    accept = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert sorted(counted_dumps) == [('ip', 'filter', 'KUBE-SEP-NEW'), ('ip', 'filter', 'LOCHAIN')]
    assert accept.status is Status.FAIL and (accept.deciding.chain, accept.deciding.index) == ('KUBE-SEP-NEW', 1)
    assert not probe_loopback(netns, 'ipv4', 'udp')
    netns.run(['iptables', '-D', 'LOCHAIN', '1'], check=True)
    netns.run(['iptables', '-F', 'KUBE-SEP-NEW'], check=True)
    netns.run(['iptables', '-X', 'KUBE-SEP-NEW'], check=True)
    counted_dumps.clear()
    assert evaluate_with(netns, 'ipv4', state=state).result.status is Status.PASS
    assert counted_dumps == [('ip', 'filter', 'LOCHAIN')] and ('ip', 'filter', 'KUBE-SEP-NEW') not in state.kernel.ruleset.chain_names
    assert probe_loopback(netns, 'ipv4', 'udp')
    assert index_reads == [] and state.kernel.ruleset.chain_names == _fresh(netns).chain_names
    # The newest handle the table gave stays the deleted chain's: a chain made later has a larger one,
    # a chain renamed (told by its handle) a smaller one.
    newest = state.kernel.ruleset.newest_chains[('ip', 'filter')]
    assert newest > _fresh(netns).newest_chains[('ip', 'filter')]
    netns.run(['iptables', '-E', 'LOCHAIN', 'LOCHAIN2'], check=True)
    index_reads.clear()
    assert evaluate_with(netns, 'ipv4', state=state).result == evaluate_with(netns, 'ipv4').result
    assert index_reads and ('ip', 'filter', 'LOCHAIN2') in state.kernel.ruleset.chain_names


def _fresh(netns):
    """The ruleset a new check instance reads."""
    state = InstanceState()
    evaluate_with(netns, 'ipv4', state=state)
    return state.kernel.ruleset


@pytest.mark.parametrize('commands', [
    # made, then deleted (which came last cannot be told from the changes merged), and another made
    [['-N', 'KUBE-SEP-A'], ['-X', 'KUBE-SEP-A'], ['-N', 'KUBE-SEP-B']],
    # made since the read, then renamed: its handle twice, under two names
    [['-N', 'KUBE-SEP-A'], ['-E', 'KUBE-SEP-A', 'KUBE-SEP-B']],
], ids=['made-and-deleted', 'made-and-renamed'])
def test_chain_changes_the_notifications_cannot_order_are_told_by_the_chain_index(netns, index_reads, commands):
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    evaluate_with(netns, 'ipv4', state=state)
    for command in commands:
        netns.run(['iptables'] + command, check=True)
    index_reads.clear()
    state.evaluated.clear()
    evaluate_with(netns, 'ipv4', state=state)
    names = state.kernel.ruleset.chain_names
    assert index_reads == [1] and ('ip', 'filter', 'KUBE-SEP-A') not in names and ('ip', 'filter', 'KUBE-SEP-B') in names
    assert names == _fresh(netns).chain_names


def test_a_renamed_chain_is_read_again_under_its_new_name(netns, counted_dumps):
    """A rename is announced under the new name only, and the rules jumping to the chain are not
    announced at all, though they now print the new name: every chain is read again."""
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    assert evaluate_with(netns, 'ipv4', state=state).result.status is Status.PASS
    netns.run(['iptables', '-E', 'LOCHAIN', 'RENAMED'], check=True)
    netns.run(['iptables', '-I', 'RENAMED', '1', '-i', 'lo', '-j', 'DROP'], check=True)
    counted_dumps.clear()
    accept = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert ('ip', 'filter', 'INPUT') in counted_dumps
    assert accept.status is Status.FAIL and (accept.deciding.chain, accept.deciding.index) == ('RENAMED', 1)
    assert evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO) == accept  # what a new check instance says
    assert not probe_loopback(netns, 'ipv4', 'udp')


def test_lost_notifications_fall_back_to_reading_every_chain(netns, counted_dumps):
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    state.kernel.watch = ChangeWatch(smallest=4096, largest=4096)  # the kernel's smallest buffer: a large change overflows it
    assert evaluate_with(netns, 'ipv4', state=state).result.status is Status.PASS
    counted_dumps.clear()
    many = ''.join('-A SIDE -d 10.0.{}.{}/32 -j REJECT\n'.format(i // 250, i % 250) for i in range(600))
    netns.run(['iptables-restore', '--noflush'], input='*filter\n:SIDE - [0:0]\n' + many + 'COMMIT\n', check=True)
    netns.run(['iptables', '-I', 'INPUT', '1', '-s', '127.0.0.0/8', '!', '-i', 'lo', '-j', 'ACCEPT'], check=True)
    result = evaluate_with(netns, 'ipv4', state=state).result
    assert state.kernel.watch.log.losses > 1  # the overflow was seen (the first loss is the subscription's)
    assert ('ip', 'filter', 'INPUT') in counted_dumps and ('ip', 'filter', 'LOCHAIN') in counted_dumps  # everything read again
    spoof = result.requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert spoof.status is Status.FAIL and (spoof.deciding.chain, spoof.deciding.index) == ('INPUT', 1)
    counted_dumps.clear()
    netns.run(['iptables', '-D', 'INPUT', '1'], check=True)  # a small change after the full read: told again
    assert evaluate_with(netns, 'ipv4', state=state).result.status is Status.PASS
    assert counted_dumps == [('ip', 'filter', 'INPUT')]


def test_the_spoofing_drop_removed_between_runs_is_seen_with_real_packets(netns_pair, counted_dumps):
    pair = netns_pair
    pair.receiver.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    assert evaluate_with(pair.receiver, 'ipv4', state=state).result.requirement(INPUT_DROP_LOOPBACK_SOURCE).status is Status.PASS
    assert not probe_spoofed_loopback_source(pair, 'ipv4')
    counted_dumps.clear()
    pair.receiver.run(['iptables', '-I', 'INPUT', '1', '-s', '127.0.0.0/8', '!', '-i', 'lo', '-j', 'ACCEPT'], check=True)
    spoof = evaluate_with(pair.receiver, 'ipv4', state=state).result.requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert counted_dumps == [('ip', 'filter', 'INPUT')]
    assert spoof.status is Status.FAIL and (spoof.deciding.chain, spoof.deciding.index) == ('INPUT', 1)
    assert probe_spoofed_loopback_source(pair, 'ipv4')


def test_the_watch_is_closed_when_the_agent_cancels_the_check(netns):
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    cache = KernelCache()
    state = InstanceState(kernel=cache)
    evaluate_with(netns, 'ipv4', state=state)
    assert cache.watch.watching
    cache.close()
    assert not cache.watch.watching
    netns.run(['iptables', '-I', 'LOCHAIN', '1', '-i', 'lo', '-j', 'DROP'], check=True)
    assert evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO).status is Status.FAIL


def test_the_watch_makes_room_for_a_rewrite_of_the_rules_held(netns):
    from datadog_checks.loopback_traffic.namespaces import in_network_namespace

    watch = ChangeWatch(smallest=1 << 20, largest=8 << 20)
    in_network_namespace('/run/netns/' + netns.name, watch.open)
    assert watch.watching and watch.rcvbuf == 1 << 20
    watch.size_for(2000)  # 2.4 MB of notifications if every rule were rewritten
    assert watch.rcvbuf == 2000 * 1200
    watch.size_for(10 ** 6)
    assert watch.rcvbuf == 8 << 20
    assert watch._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * (8 << 20)  # as the kernel keeps it
    watch.close()


def test_notifications_not_sent_by_the_kernel_are_ignored(netns):
    """Another process with CAP_NET_ADMIN can send to the watch's socket: a forged transaction
    (here, an empty one with the next generation id) must not stand for the kernel's."""
    watch = ChangeWatch()
    in_network_namespace('/run/netns/' + netns.name, watch.open)
    reader = netlink.NetlinkReader()
    in_network_namespace('/run/netns/' + netns.name, reader.open)
    before = reader.generation()
    watch.read_done(before, watch.losses())
    forger = in_network_namespace('/run/netns/' + netns.name, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER))
    forger.bind((0, 0))
    forger.sendto(generation(next_generation(before)), (watch._sock.getsockname()[0], 0))
    netns.run(['iptables', '-N', 'FORGED'], check=True)
    changes = watch.changes(before, reader.generation())
    assert changes is not None and ('ip', 'filter', 'FORGED') in changes.chains
    forger.close()
    reader.close()
    watch.close()


def test_a_watch_that_cannot_subscribe_answers_unknown(monkeypatch):
    """Without CAP_NET_ADMIN (or without netlink) there is no watch: every change is read in full."""
    def refused(*args, **kwargs):
        raise PermissionError(1, 'Operation not permitted')

    monkeypatch.setattr('socket.socket', refused)
    watch = ChangeWatch()
    watch.open()
    assert not watch.watching
    assert watch.changes(5, 6) is None and watch.changes(5, 5) is None
    watch.read_done(6, watch.losses())  # harmless
    watch.close()


# --------------------------------------------------------------------------- a kept instance says what a new one says


def accept_lo(ns, family='ipv4', state=None):
    found = evaluate_with(ns, family, state=state).result.requirement(INPUT_ACCEPT_LO)
    return found.status, (found.deciding.table, found.deciding.chain, found.deciding.index) if found.deciding else None


def test_a_chain_renamed_and_its_old_name_reused_is_read_again(netns):
    """INPUT jumps to LOCHAIN. LOCHAIN is renamed OLD (INPUT's rule now prints `jump OLD`, with no
    notification for INPUT) and a new LOCHAIN is made: no chain name is gone, so the rename is not
    noticed and the kept INPUT still jumps to `LOCHAIN`."""
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    assert accept_lo(netns, state=state)[0] is Status.PASS
    netns.run(['iptables', '-E', 'LOCHAIN', 'OLD'], check=True)
    netns.run(['iptables', '-I', 'OLD', '1', '-i', 'lo', '-j', 'DROP'], check=True)
    netns.run(['iptables', '-N', 'LOCHAIN'], check=True)
    netns.run(['iptables', '-A', 'LOCHAIN', '-i', 'lo', '-j', 'ACCEPT'], check=True)
    kept = accept_lo(netns, state=state)
    fresh = accept_lo(netns)
    assert not probe_loopback(netns, 'ipv4', 'udp')  # the kernel: INPUT -> OLD -> DROP
    assert fresh[0] is Status.FAIL
    assert kept == fresh, 'kept {} vs fresh {}'.format(kept, fresh)


def test_chains_that_swap_names_are_read_again(netns):
    """The same without a new chain: LOCHAIN and SIDE swap names (three renames). Every name is still
    there, INPUT's `jump LOCHAIN` now prints `jump SIDE`; the kept INPUT still says LOCHAIN."""
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    assert accept_lo(netns, state=state)[0] is Status.PASS
    for old, new in (('LOCHAIN', 'TMP'), ('SIDE', 'LOCHAIN'), ('TMP', 'SIDE')):
        netns.run(['iptables', '-E', old, new], check=True)
    netns.run(['iptables', '-I', 'SIDE', '1', '-i', 'lo', '-j', 'DROP'], check=True)  # the old LOCHAIN, which INPUT jumps to
    netns.run(['iptables', '-I', 'LOCHAIN', '1', '-i', 'lo', '-j', 'ACCEPT'], check=True)
    kept = accept_lo(netns, state=state)
    fresh = accept_lo(netns)
    assert not probe_loopback(netns, 'ipv4', 'udp')
    assert fresh[0] is Status.FAIL
    assert kept == fresh, 'kept {} vs fresh {}'.format(kept, fresh)


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _owned_table_dropping_lo(netns):
    """LOCHAIN_RULESET, and a table owned by an ``nft -i`` process that drops lo input; a kept
    instance that judged it."""
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    owner = netns.spawn(['nft', '-i'], stdin_pipe=True)
    owner.stdin.write('add table ip own { flags owner; }\n'
                      'add chain ip own in { type filter hook input priority -5; }\n'
                      'add rule ip own in iif lo drop\n')
    owner.stdin.flush()
    _wait_for(lambda: 'own' in netns.run(['nft', 'list', 'tables']).stdout)
    state = InstanceState()
    assert accept_lo(netns, state=state)[0] is Status.FAIL
    return owner, state


def _release(netns, owner):
    owner.stdin.close()
    owner.wait(10)
    _wait_for(lambda: 'own' not in netns.run(['nft', 'list', 'tables']).stdout)


def test_an_owned_table_gone_with_its_owner_unannounced_is_seen_at_the_next_change(netns):
    """A table with `flags owner` goes away with its owner's socket: no notification, no new generation.
    A later change of rules only (behind FORWARD) makes the kept ruleset the new generation's,
    the released table's chain still in it."""
    owner, state = _owned_table_dropping_lo(netns)
    gen_before = state.kernel.ruleset.generation
    _release(netns, owner)
    fresh_state = InstanceState()
    accept_lo(netns, state=fresh_state)
    assert fresh_state.kernel.ruleset.generation == gen_before  # released without a transaction
    netns.run(['iptables', '-A', 'SIDE', '-j', 'RETURN'], check=True)  # a rule change only, on a chain no loopback packet reaches
    kept = accept_lo(netns, state=state)
    fresh = accept_lo(netns)
    assert probe_loopback(netns, 'ipv4', 'udp')
    assert fresh[0] is Status.PASS
    assert kept == fresh, 'kept {} vs fresh {}'.format(kept, fresh)


def test_a_set_element_that_times_out_unannounced_is_seen_at_the_next_change(netns):
    """An element added with a timeout goes away by itself: no notification, no new generation.
    After a later change of rules only, the kept ruleset still holds the set as first read."""
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    netns.run(['nft', 'add table ip t; add set ip t s { type ipv4_addr; flags interval, timeout; }; '
               'add chain ip t in { type filter hook input priority -5; }; add rule ip t in iif lo ip saddr @s drop; '
               'add element ip t s { 127.0.0.0/8 timeout 3s }'], check=True)
    state = InstanceState()
    first = accept_lo(netns, state=state)
    assert first[0] is Status.FAIL, first
    time.sleep(4)
    assert '127.0.0.0/8' not in netns.run(['nft', 'list', 'set', 'ip', 't', 's']).stdout
    netns.run(['iptables', '-A', 'SIDE', '-j', 'RETURN'], check=True)
    kept = accept_lo(netns, state=state)
    fresh = accept_lo(netns)
    assert probe_loopback(netns, 'ipv4', 'udp')
    assert kept == fresh, 'kept {} vs fresh {} (first {})'.format(kept, fresh, first)


def test_set_elements_that_time_out_are_seen_in_the_same_generation(netns):
    """Elements that time out leave their set unannounced and the generation as it was: where the
    ruleset has such sets (or owned tables), each run reads the tables and sets again."""
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    netns.run(['nft', 'add table ip t; add chain ip t in { type filter hook input priority -5; }; '
                      'add set ip t s { type ipv4_addr; flags interval, timeout; }; '
                      'add element ip t s { 127.0.0.0/8 timeout 2s }; add rule ip t in iif lo ip saddr @s drop'], check=True)
    state = InstanceState()
    assert accept_lo(netns, state=state)[0] is Status.FAIL and not probe_loopback(netns, 'ipv4', 'udp')
    generation = state.kernel.ruleset.generation
    _wait_for(lambda: '127.0.0.0/8' not in netns.run(['nft', 'list', 'set', 'ip', 't', 's']).stdout)
    state.evaluated.clear()
    kept = accept_lo(netns, state=state)
    assert state.kernel.ruleset.generation == generation  # nothing announced it
    # What a new instance says: an empty set whose elements come and go may still drop part of it.
    assert kept == accept_lo(netns) and kept[0] is Status.PARTIAL and probe_loopback(netns, 'ipv4', 'udp')


def test_an_owned_table_gone_with_its_owner_is_seen_in_the_same_generation(netns):
    owner, state = _owned_table_dropping_lo(netns)
    _release(netns, owner)
    state.evaluated.clear()
    kept = accept_lo(netns, state=state)
    assert kept == accept_lo(netns) and kept[0] is Status.PASS and probe_loopback(netns, 'ipv4', 'udp')


class _FakeSocket:
    """What recv gives, one step per drain: a list of datagrams or OSError, ended by 'would block'."""

    def __init__(self):
        self.steps = []  # each: a list of bytes / OSError, given in order until it is used up

    def recvfrom(self, size):
        return self._recv(size), (0, 1 << 6)  # from the kernel, to NFNLGRP_NFTABLES

    def _recv(self, size):
        while self.steps and not self.steps[0]:
            self.steps.pop(0)
            raise BlockingIOError()
        if not self.steps:
            raise BlockingIOError()
        item = self.steps[0].pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def close(self):
        pass


def test_advance_keeps_a_loss_seen_after_its_changes_were_proven():
    """KernelCache.advance takes the watch's count of losses, then asks it for the changes, and
    passes that count to read_done (which drains once more): a loss seen by that last drain
    happened after the changes were proven and must not be forgiven. Here transaction 7 (a rule in
    INPUT and one in LOCHAIN) commits during it; the INPUT notification is lost (ENOBUFS), the
    LOCHAIN one and NEWGEN 7 arrive later. The next run must not be told only LOCHAIN changed."""

    cache = KernelCache()
    sock = _FakeSocket()
    cache.watch._sock = sock
    cache.watch.wait = 0
    cache.watch.log = started(5)
    input_key, lochain, side = ('ip', 'filter', 'INPUT'), ('ip', 'filter', 'LOCHAIN'), ('ip', 'filter', 'SIDE')
    cache.ruleset = KernelRuleset(5, rules=ChainRules({input_key: (), lochain: (), side: ()}))
    cache.chains_generation = 5
    sock.steps = [
        [],  # drained by watch.losses()
        [rule_changed('filter', 'SIDE') + generation(6)],  # drained by watch.changes(5, 6)
        [OSError(errno.ENOBUFS, 'No buffer space available')],  # drained by read_done: transaction 7 overflowed
        [rule_changed('filter', 'LOCHAIN') + generation(7)],  # the rest of transaction 7, at the next run
    ]
    cache.advance(None, 6)  # only rules changed: no reader needed
    assert cache.ruleset.generation == 6
    told = cache.watch.changes(6, 7)
    assert told is None, 'told {} although the INPUT notification of transaction 7 was lost'.format(told)


LOCHAIN6_RULESET = LOCHAIN_RULESET.replace('127.0.0.0/8', '::1/128')


def _summary(ns, family, state=None):
    result = evaluate_with(ns, family, state=state).result
    return tuple((r.requirement, r.status, (r.deciding.table, r.deciding.chain, r.deciding.index) if r.deciding else None)
                 for r in result.requirements)


_STEPS = [
    ('ip6tables rule in a regular chain', [['ip6tables', '-I', 'LOCHAIN', '1', '-i', 'lo', '-p', 'udp', '-j', 'DROP']]),
    ('inet table with a verdict map to a regular chain', [['nft', 'add table inet t; add chain inet t lo_drop; add rule inet t lo_drop drop; '
                                                            'add chain inet t in { type filter hook input priority -5; }; '
                                                            'add map inet t m { type ifname : verdict; }; add rule inet t in iifname vmap @m']]),
    ('a map element jumping to the dropping chain', [['nft', 'add element inet t m { "lo" : jump lo_drop }']]),
    ('the dropping chain emptied (rules only)', [['nft', 'flush chain inet t lo_drop']]),
    ('the dropping chain drops again (rules only)', [['nft', 'add rule inet t lo_drop drop']]),
    ('a chain binding', [['nft', 'add rule inet t in jump { iif lo udp dport 9 drop; }']]),
    ('the map element removed', [['nft', 'delete element inet t m { "lo" }']]),
    ('table made dormant', [['nft', 'add table inet t { flags dormant; }']]),
    ('table woken', [['nft', 'add table inet t']]),
    ('table deleted and made again in one transaction', [['nft', 'delete table inet t; add table inet t; add chain inet t d; add rule inet t d iif lo drop; '
                                                           'add chain inet t in { type filter hook input priority -5; }; add rule inet t in jump d']]),
    ('the made-again chain emptied', [['nft', 'flush chain inet t d']]),
    ('a chain deleted and made again in one transaction', [['nft', 'flush chain inet t in; delete chain inet t d; add chain inet t d; '
                                                             'add rule inet t d iif lo drop; add rule inet t in jump d']]),
    ('delete the table (nft 1.0.6 has no destroy)', [['nft', 'delete table inet t']]),
    ('iptables-restore without --noflush', [['iptables-restore']]),  # input below
    ('netdev ingress on lo', [['nft', 'add table netdev n; add chain netdev n ing { type filter hook ingress device lo priority 0; }; '
                                       'add chain netdev n sub; add rule netdev n ing jump sub']]),
    ('netdev regular chain drops (rules only)', [['nft', 'add rule netdev n sub drop']]),
    ('policy changed', [['iptables', '-P', 'INPUT', 'ACCEPT']]),
    ('flush ruleset and restore', [['nft', 'flush ruleset'], ['iptables-restore'], ['ip6tables-restore']]),
    ('ip6tables regular chain changed after the flush', [['ip6tables', '-I', 'LOCHAIN', '1', '-i', 'lo', '-j', 'DROP']]),
]


def test_kept_and_fresh_agree_through_a_series_of_changes(netns):
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    netns.restore(LOCHAIN6_RULESET, 'ipv6')
    state = InstanceState()
    for family in ('ipv4', 'ipv6'):
        _summary(netns, family, state)
    restored = LOCHAIN_RULESET.replace('-A LOCHAIN -i lo -j ACCEPT', '-A LOCHAIN -i lo -p udp -j DROP\n-A LOCHAIN -i lo -j ACCEPT')
    differ = []
    for what, commands in _STEPS:
        for command in commands:
            text = {'iptables-restore': restored, 'ip6tables-restore': LOCHAIN6_RULESET}.get(command[0])
            netns.run(command, input=text, check=True)
        for family in ('ipv4', 'ipv6'):
            kept, fresh = _summary(netns, family, state), _summary(netns, family)
            if kept != fresh:
                differ.append((what, family, kept, fresh))
    assert not differ, '\n'.join('{} ({}): kept {} fresh {}'.format(*d) for d in differ)


def _chains_given_to(monkeypatch, method: str) -> List[str]:
    """The names of the chains each call of the chain walker's ``method`` is given, in order."""
    from datadog_checks.loopback_traffic import evaluator

    given: List[str] = []
    real = getattr(evaluator._ChainWalker, method)

    def counting(self, chain, *args):
        given.append(chain.name)
        return real(self, chain, *args)

    monkeypatch.setattr(evaluator._ChainWalker, method, counting)
    return given


@pytest.fixture
def scans(monkeypatch):
    """The chains the evaluator scans rule by rule (a walk found again scans none)."""
    return _chains_given_to(monkeypatch, '_scan_rules')


def _handles(ns, chain):
    listing = ns.run(['nft', '-a', 'list', 'chain', 'ip', 'filter', chain], check=True).stdout
    return [int(line.rsplit('# handle ', 1)[1]) for line in listing.splitlines() if '# handle ' in line and 'chain ' not in line]


def test_a_chain_rewritten_as_it_was_keeps_its_walks_and_gets_its_new_handles(netns, scans):
    """kube-proxy rewrites its big chains at every sync (iptables-restore --noflush): the same rules
    under new handles. What was decoded and walked of them is kept; the positions name the new handles."""
    ruleset = LOCHAIN_RULESET.replace('-A LOCHAIN -i lo -j ACCEPT', '-A LOCHAIN -i lo -p udp -j DROP\n-A LOCHAIN -i lo -j ACCEPT')
    netns.restore(ruleset, 'ipv4')
    state = InstanceState()
    before = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert before.status is Status.PARTIAL and [d.where.handle for d in before.deviations] == _handles(netns, 'LOCHAIN')[:1]
    scans.clear()
    rewrite = '*filter\n:LOCHAIN - [0:0]\n-A LOCHAIN -i lo -p udp -j DROP\n-A LOCHAIN -i lo -j ACCEPT\nCOMMIT\n'
    read = state.kernel.chains[('ip', 'filter', 'LOCHAIN')].rules
    netns.run(['iptables-restore', '--noflush'], input=rewrite, check=True)
    handles = _handles(netns, 'LOCHAIN')
    assert handles != [d.where.handle for d in before.deviations] + [before.deciding.handle]
    after = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert scans == []  # every walk found again
    assert state.kernel.chains[('ip', 'filter', 'LOCHAIN')].rules is read and [rule.handle for rule in read] == handles  # not built again
    assert (after.status, after.deciding.index, [d.where.index for d in after.deviations]) == (
        before.status, before.deciding.index, [d.where.index for d in before.deviations])
    assert [d.where.handle for d in after.deviations] + [after.deciding.handle] == handles
    assert after == evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO)  # a new instance
    assert [d.where.handle for d in evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO).deviations] == handles[:1]
    assert not probe_loopback(netns, 'ipv4', 'udp') and probe_loopback(netns, 'ipv4', 'icmp')
    # Rewritten with one rule different: walked again.
    netns.run(['iptables-restore', '--noflush'], input=rewrite.replace('-p udp ', '-p icmp '), check=True)
    again = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert 'LOCHAIN' in scans and again.deviations[0].where.text == '-A LOCHAIN -i lo -p icmp -j DROP'


@pytest.fixture
def summarised(monkeypatch):
    """The chains the evaluator summarises afresh (a summary found again is not)."""
    return _chains_given_to(monkeypatch, '_summarise')


SERVICES_RULESET = filter_table(
    '-A INPUT -j SVCS', '-A INPUT -i lo -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP',
    '-A SVCS -p udp -j SVC-A', '-A SVCS -p tcp -j SVC-B',
    '-A SVC-A -m statistic --mode random --probability 0.5 -j SEP-A1', '-A SVC-A -j SEP-A2', '-A SEP-A1 -p udp -j DROP', '-A SEP-A2 -p udp -j DROP',
    '-A SVC-B -j SEP-B1', '-A SEP-B1 -p tcp -j RETURN', '-A OUTPUT -o lo -j ACCEPT',
    chains=['SVCS', 'SVC-A', 'SVC-B', 'SEP-A1', 'SEP-A2', 'SEP-B1'], input_policy='DROP', output_policy='DROP',
)


def _replace_endpoint(ns, service, rules, old, new, endpoint_rules):
    """What kube-proxy does when a pod is replaced: a new endpoint chain, the service chain rewritten
    to jump to it, the old one flushed and deleted, in one iptables-restore --noflush."""
    lines = ['*filter', ':{} - [0:0]'.format(service), ':{} - [0:0]'.format(new), ':{} - [0:0]'.format(old)]  # declared: flushed
    lines += ['-A {} {}'.format(service, rule.replace(old, new)) for rule in rules]
    lines += ['-A {} {}'.format(new, rule) for rule in endpoint_rules] + ['-X {}'.format(old), 'COMMIT', '']
    ns.run(['iptables-restore', '--noflush'], input='\n'.join(lines), check=True)


def test_an_endpoint_replaced_like_for_like_leaves_the_callers_walks_standing(netns, scans, summarised):
    """A service chain rewritten to jump to a new endpoint chain like the one it replaces gives a view
    equal to the one it gave: the chains that call it are not scanned again, and where its summary
    says what it said, not summarised again either. What the kept instance says is what a new one
    says, and what the kernel does."""
    netns.restore(SERVICES_RULESET, 'ipv4')
    state = InstanceState()
    before = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert before.status is Status.PARTIAL and sorted(d.where.chain for d in before.deviations) == ['SEP-A1', 'SEP-A2']
    scans.clear()
    _replace_endpoint(netns, 'SVC-A', ['-m statistic --mode random --probability 0.5 -j SEP-A1', '-j SEP-A2'], 'SEP-A1', 'SEP-A3', ['-p udp -j DROP'])
    after = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert sorted(set(scans)) == ['SEP-A3', 'SVC-A']  # SVCS and INPUT: their kept views stand
    assert sorted(d.where.chain for d in after.deviations) == ['SEP-A2', 'SEP-A3']
    assert after == evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO)
    assert not probe_loopback(netns, 'ipv4', 'udp') and probe_loopback(netns, 'ipv4', 'icmp')
    # An endpoint that decides nothing, replaced: the summaries of the callers are found again too.
    scans.clear()
    summarised.clear()
    _replace_endpoint(netns, 'SVC-B', ['-j SEP-B1'], 'SEP-B1', 'SEP-B2', ['-p tcp -j RETURN'])
    again = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert sorted(set(scans)) == ['SEP-B2', 'SVC-B'] and sorted(set(summarised)) == ['SEP-B2', 'SVC-B']
    assert again == after == evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO)
    assert not probe_loopback(netns, 'ipv4', 'udp') and probe_loopback(netns, 'ipv4', 'icmp')


def _packets_counted(ns, chain):
    listing = ns.run(['nft', 'list', 'chain', 'ip', 'filter', chain], check=True).stdout
    return [int(line.split('counter packets ', 1)[1].split()[0]) for line in listing.splitlines() if 'counter packets ' in line]


def test_a_chain_rewritten_as_it_was_keeps_its_rules_while_traffic_counts(netns, scans):
    """On a live node, packets move the counters of the rules kube-proxy rewrote before the check
    reads them again. The counts are not what the rules mean: what was read, decoded and walked of
    the rules is kept all the same."""
    ruleset = LOCHAIN_RULESET.replace('-A LOCHAIN -i lo -j ACCEPT', '-A LOCHAIN -i lo -p udp -j DROP\n-A LOCHAIN -i lo -j ACCEPT')
    netns.restore(ruleset, 'ipv4')
    state = InstanceState()
    before = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    read = state.kernel.chains[('ip', 'filter', 'LOCHAIN')].rules
    scans.clear()
    netns.run(['iptables-restore', '--noflush'], input='*filter\n:LOCHAIN - [0:0]\n-A LOCHAIN -i lo -p udp -j DROP\n-A LOCHAIN -i lo -j ACCEPT\nCOMMIT\n', check=True)
    assert not probe_loopback(netns, 'ipv4', 'udp') and probe_loopback(netns, 'ipv4', 'icmp')  # the kernel's verdict
    assert all(_packets_counted(netns, 'LOCHAIN'))  # both rules counted packets since the rewrite
    after = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert scans == [] and state.kernel.chains[('ip', 'filter', 'LOCHAIN')].rules is read  # nothing read or walked again
    assert [rule.handle for rule in read] == _handles(netns, 'LOCHAIN')
    assert (after.status, after.deciding.index) == (before.status, before.deciding.index) == (Status.PARTIAL, 2)
    assert after == evaluate_with(netns, 'ipv4').result.requirement(INPUT_ACCEPT_LO)  # what a new instance says
    # Counted again with nothing rewritten, and the notifications not believed: every chain is read
    # again, and the counts alone make none of them new rules.
    assert probe_loopback(netns, 'ipv4', 'icmp')
    state.kernel.chains_generation = None
    state.evaluated.clear()
    kept = evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO)
    assert state.kernel.chains[('ip', 'filter', 'LOCHAIN')].rules is read and kept == after


def _generation(path):
    def read():
        with netlink.NetlinkReader() as reader:
            return reader.generation()

    return in_network_namespace(path, read)


def test_a_namespace_path_that_names_another_namespace_is_read_afresh(netns, tmp_path):
    """The Agent keeps its check instance while the path ``network_namespace`` gives comes to name
    another namespace (a container restarted, its namespace mounted there again). What was read and
    followed in the first is not the second's, however alike their generation ids."""
    from .netns import Netns

    link = tmp_path / 'judged'
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    with Netns() as other:
        other.restore(LOCHAIN_RULESET.replace('-A LOCHAIN -i lo -j ACCEPT', '-A LOCHAIN -i lo -j DROP'), 'ipv4')
        first, second = '/run/netns/' + netns.name, '/run/netns/' + other.name
        for pad in range(abs(_generation(first) - _generation(second))):  # empty tables: the same ids, the same verdicts
            (netns if _generation(first) < _generation(second) else other).run(['nft', 'add', 'table', 'ip', 'lt_pad{}'.format(pad)], check=True)
        assert _generation(first) == _generation(second)
        link.symlink_to(first)
        state = InstanceState()
        before = evaluate_with(netns, 'ipv4', state=state, network_namespace=str(link)).result.requirement(INPUT_ACCEPT_LO)
        assert before.status is Status.PASS and probe_loopback(netns, 'ipv4', 'udp')
        link.unlink()
        link.symlink_to(second)
        after = evaluate_with(other, 'ipv4', state=state, network_namespace=str(link)).result.requirement(INPUT_ACCEPT_LO)
        assert after.status is Status.FAIL and not probe_loopback(other, 'ipv4', 'udp')
        assert after == evaluate_with(other, 'ipv4').result.requirement(INPUT_ACCEPT_LO)  # what a new instance says
        assert state.kernel.watch.watching  # a watch of the namespace now named


@pytest.mark.parametrize('then', [['nft', 'add chain inet t y'], None], ids=['then-a-chain-made', 'rules-only'])
def test_a_chain_bound_to_a_rule_goes_with_it_from_the_chain_index(netns, then):
    """A chain bound to a rule (``jump { ... }``) goes with the rule, and no notification says so
    (found by a review): where the ruleset holds one, the chain index is read again, whatever changed."""
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    netns.run(['nft', 'add table inet t; add chain inet t in { type filter hook input priority -5; }'], check=True)
    state = InstanceState()
    evaluate_with(netns, 'ipv4', state=state)
    netns.run(['nft', 'add rule inet t in jump { iif lo ip protocol udp drop; }'], check=True)
    assert evaluate_with(netns, 'ipv4', state=state).result.requirement(INPUT_ACCEPT_LO).status is not Status.PASS
    assert not probe_loopback(netns, 'ipv4', 'udp')
    bound = {key for key in state.kernel.ruleset.chain_names if key[2].startswith('__chain')}
    assert bound and bound == set(state.kernel.ruleset.bound_chains)
    netns.run(['nft', 'flush chain inet t in'], check=True)  # the bound chain goes with the rule
    if then:
        netns.run(then, check=True)
    kept = evaluate_with(netns, 'ipv4', state=state).result
    fresh = _fresh(netns)
    assert not bound & fresh.chain_names and state.kernel.ruleset.chain_names == fresh.chain_names
    assert kept == evaluate_with(netns, 'ipv4').result and kept.requirement(INPUT_ACCEPT_LO).status is Status.PASS
    assert probe_loopback(netns, 'ipv4', 'udp')
