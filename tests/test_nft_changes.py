"""The kernel's nf_tables change notifications: what changed between two generations.

The log (pure) on built notification bytes: it answers only what it can prove. Then, in ``lt-``
namespaces, the check kept across runs as the Agent keeps it: after a change, only the chains whose
rules changed are dumped again, a walk given none of them is not redone, and whatever the
notifications cannot prove (a structural change, lost notifications) is read again in full; each
verdict checked against the kernel with real packets.
"""
from __future__ import annotations

import struct
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datadog_checks.loopback_traffic import netlink
from datadog_checks.loopback_traffic.collect import KernelCache
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
    log.feed(message(NEWCHAIN, IP, name(1, 'nat') + name(3, 'KUBE-SEP-NEW')) + rule_changed('nat', 'KUBE-SEP-NEW') + generation(2))
    found = log.between(1, 2)
    assert isinstance(found, Changes) and found.chain_set and not found.structure and not found.rules_only
    assert found.touches(('ip', 'nat', 'KUBE-SEP-NEW')) and not found.touches(('ip', 'nat', 'KUBE-SERVICES'))
    assert Changes(frozenset({('ip', 'nat', 'KUBE-SERVICES')})).rules_only


def test_a_chain_gone_without_being_deleted_was_renamed():
    log = started(1)
    log.feed(message(5, IP, name(1, 'filter') + name(3, 'OLD')) + message(NEWCHAIN, IP, name(1, 'filter') + name(3, 'NEW')) + generation(2))
    found = log.between(1, 2)
    assert isinstance(found, Changes) and found.deleted == {('ip', 'filter', 'OLD')}
    assert found.explains_gone([('ip', 'filter', 'OLD')])
    assert not found.explains_gone([('ip', 'filter', 'OTHER')])  # gone, never deleted: renamed
    table_gone = Changes(tables=frozenset({('ip', 'filter')}), structure=True)
    assert table_gone.explains_gone([('ip', 'filter', 'OTHER')])


@pytest.mark.parametrize('bad', [
    message(40, IP, b''),  # a type this log does not know
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


def test_chains_added_and_deleted_keep_the_walks_given_none_of_them(netns, counted_dumps):
    """kube-proxy adds and deletes chains as endpoints come and go: the chain index is read again,
    and a walk that none of the changed chains was given is kept."""
    netns.restore(LOCHAIN_RULESET, 'ipv4')
    state = InstanceState()
    first = evaluate_with(netns, 'ipv4', state=state).result
    netns.run(['iptables', '-N', 'KUBE-SEP-NEW'], check=True)
    netns.run(['iptables', '-A', 'KUBE-SEP-NEW', '-j', 'DROP'], check=True)
    counted_dumps.clear()
    state.evaluated.clear()
    assert evaluate_with(netns, 'ipv4', state=state).result is first and counted_dumps == []
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
    state.kernel.watch = ChangeWatch(rcvbuf=4096)  # the kernel's smallest buffer: a large change overflows it
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
