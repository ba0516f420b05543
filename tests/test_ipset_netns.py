"""ipset matches judged from the sets' contents, in lt- namespaces: each set made with the real
`ipset`, each ruleset loaded with the real restore tool and read the way the check reads it (over
netlink in the namespace, and through the save tool with the sets read in that namespace), and
each verdict checked against what the kernel does to real packets."""
import pytest

from datadog_checks.loopback_traffic.pipeline import InstanceState
from datadog_checks.loopback_traffic.requirements import INPUT_ACCEPT_LO, INPUT_DROP_LOOPBACK_SOURCE, OUTPUT_ACCEPT_LO
from datadog_checks.loopback_traffic.results import Status
from datadog_checks.loopback_traffic.report import explanation

from .netns import netns, netns_pair, probe_loopback, probe_spoofed_loopback_source, require_tools  # noqa: F401
from .rulesets import filter_table, table
from .test_collection import evaluate_with, namespace_path

PASS, PARTIAL, FAIL = Status.PASS, Status.PARTIAL, Status.FAIL
COLLECTIONS = ['auto', 'save']

_ACCEPT_LO = ('-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT')


def make_sets(ns, *commands):
    require_tools('ipset')
    for command in commands:
        ns.run(['ipset'] + command.split(), check=True)


def judged(ns, collection, family='ipv4', state=None):
    """Over netlink in the namespace, or its save tool with the sets read in that namespace."""
    more = {'network_namespace': namespace_path(ns)} if collection == 'save' else {}
    return evaluate_with(ns, family, collection, state=state, **more).result


def status(result, requirement):
    return result.requirement(requirement).status


def deciding_index(result, requirement):
    return result.requirement(requirement).deciding.index


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_anti_spoofing_through_an_ipset_of_the_loopback_network_passes(netns_pair, collection):
    receiver = netns_pair.receiver
    make_sets(receiver, 'create lt-loop hash:net', 'add lt-loop 127.0.0.0/8')
    receiver.restore(filter_table(_ACCEPT_LO[0], '-A INPUT -m set --match-set lt-loop src -j DROP', _ACCEPT_LO[1]), 'ipv4')
    assert not probe_spoofed_loopback_source(netns_pair, 'ipv4')
    assert probe_loopback(receiver, 'ipv4', 'udp')
    result = judged(receiver, collection)
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is PASS
    assert deciding_index(result, INPUT_DROP_LOOPBACK_SOURCE) == 2
    assert 'lt-loop' in result.requirement(INPUT_DROP_LOOPBACK_SOURCE).deciding.text  # the name, not the kernel's index
    assert status(result, INPUT_ACCEPT_LO) is PASS


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_an_ipset_of_two_halves_covers_the_loopback_network(netns_pair, collection):
    receiver = netns_pair.receiver
    make_sets(receiver, 'create lt-halves hash:net', 'add lt-halves 127.0.0.0/9', 'add lt-halves 127.128.0.0/9')
    receiver.restore(filter_table(_ACCEPT_LO[0], '-A INPUT -m set --match-set lt-halves src -j DROP', _ACCEPT_LO[1]), 'ipv4')
    for source in ('127.0.0.1', '127.200.0.1'):
        assert not probe_spoofed_loopback_source(netns_pair, 'ipv4', source=source)
    assert status(judged(receiver, collection), INPUT_DROP_LOOPBACK_SOURCE) is PASS


@pytest.mark.parametrize('collection', COLLECTIONS)
@pytest.mark.parametrize(
    'sets, match',
    [
        pytest.param(('create lt-s hash:net', 'add lt-s 10.0.0.0/8'), '--match-set lt-s src', id='another-network'),
        # the kernel's match fails for a set of more dimensions than the match gives directions
        pytest.param(('create lt-s hash:net,port', 'add lt-s 127.0.0.0/8,udp:9'), '--match-set lt-s src', id='more-dimensions'),
        # with --return-nomatch a hash:net set's ordinary members do not match
        pytest.param(('create lt-s hash:net', 'add lt-s 127.0.0.0/8'), '--match-set lt-s src --return-nomatch', id='return-nomatch'),
    ],
)
def test_a_set_that_does_not_take_the_spoofed_packets_fails(netns_pair, collection, sets, match):
    receiver = netns_pair.receiver
    make_sets(receiver, *sets)
    receiver.restore(filter_table(_ACCEPT_LO[0], '-A INPUT -m set {} -j DROP'.format(match), _ACCEPT_LO[1]), 'ipv4')
    assert probe_spoofed_loopback_source(netns_pair, 'ipv4')
    result = judged(receiver, collection)
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is FAIL
    assert result.requirement(INPUT_DROP_LOOPBACK_SOURCE).deciding.is_policy


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_a_nomatch_member_takes_part_of_the_class_out(netns_pair, collection):
    """The set accepts 127.128.0.0/9 only (127.0.0.0/9 is a nomatch hole); the DROP below takes the rest."""
    receiver = netns_pair.receiver
    make_sets(receiver, 'create lt-holes hash:net', 'add lt-holes 127.0.0.0/8', 'add lt-holes 127.0.0.0/9 nomatch')
    receiver.restore(
        filter_table(_ACCEPT_LO[0], '-A INPUT -m set --match-set lt-holes src -j ACCEPT', '-A INPUT -s 127.0.0.0/8 -j DROP', _ACCEPT_LO[1]),
        'ipv4',
    )
    assert not probe_spoofed_loopback_source(netns_pair, 'ipv4', source='127.0.0.1')
    assert probe_spoofed_loopback_source(netns_pair, 'ipv4', source='127.200.0.1')
    result = judged(receiver, collection)
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is PARTIAL
    assert deciding_index(result, INPUT_DROP_LOOPBACK_SOURCE) == 3
    assert [d.where.index for d in result.requirement(INPUT_DROP_LOOPBACK_SOURCE).deviations] == [2]
    receiver.run(['ipset', 'del', 'lt-holes', '127.0.0.0/9'], check=True)  # no hole: the set accepts every spoofed packet
    assert probe_spoofed_loopback_source(netns_pair, 'ipv4', source='127.0.0.1')
    result = judged(receiver, collection)
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is FAIL
    assert deciding_index(result, INPUT_DROP_LOOPBACK_SOURCE) == 2


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_a_net_and_interface_set_drops_everything_arriving_on_lo(netns, collection):
    """hash:net,iface `src,src`: the interface is the one the packet arrived on."""
    make_sets(netns, 'create lt-netif hash:net,iface', 'add lt-netif 127.0.0.0/8,lo')
    netns.restore(filter_table('-A INPUT -m set --match-set lt-netif src,src -j DROP', *_ACCEPT_LO), 'ipv4')
    assert not probe_loopback(netns, 'ipv4', 'udp')
    result = judged(netns, collection)
    assert status(result, INPUT_ACCEPT_LO) is FAIL
    assert deciding_index(result, INPUT_ACCEPT_LO) == 1
    assert status(result, OUTPUT_ACCEPT_LO) is PASS


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_a_list_set_matches_what_its_member_sets_match(netns_pair, collection):
    receiver = netns_pair.receiver
    make_sets(
        receiver, 'create lt-a hash:net', 'add lt-a 10.0.0.0/8', 'create lt-b hash:ip', 'add lt-b 127.0.0.1',
        'create lt-c hash:net', 'add lt-c 127.0.0.0/8', 'create lt-list list:set', 'add lt-list lt-a', 'add lt-list lt-b',
    )
    receiver.restore(filter_table(_ACCEPT_LO[0], '-A INPUT -m set --match-set lt-list src -j DROP', _ACCEPT_LO[1]), 'ipv4')
    assert not probe_spoofed_loopback_source(netns_pair, 'ipv4', source='127.0.0.1')
    assert probe_spoofed_loopback_source(netns_pair, 'ipv4', source='127.0.0.2')
    assert status(judged(receiver, collection), INPUT_DROP_LOOPBACK_SOURCE) is FAIL  # the rest of 127.0.0.0/8 gets the policy
    receiver.run(['ipset', 'add', 'lt-list', 'lt-c'], check=True)
    assert not probe_spoofed_loopback_source(netns_pair, 'ipv4', source='127.0.0.2')
    assert status(judged(receiver, collection), INPUT_DROP_LOOPBACK_SOURCE) is PASS


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_ipv6_anti_spoofing_through_an_inet6_set(netns, collection):
    make_sets(netns, 'create lt-loop6 hash:net family inet6', 'add lt-loop6 ::1', 'create lt-other6 hash:net family inet6', 'add lt-other6 fd00::/8')
    text = filter_table(
        '-A INPUT -i lo -j ACCEPT',
        '-A INPUT -m set --match-set lt-other6 src -j ACCEPT',
        '-A INPUT -m set --match-set lt-loop6 src -j DROP',
        '-A OUTPUT -o lo -j ACCEPT',
    )
    netns.restore(text, 'ipv6')
    assert probe_loopback(netns, 'ipv6', 'udp')
    result = judged(netns, collection, 'ipv6')
    assert status(result, INPUT_DROP_LOOPBACK_SOURCE) is PASS
    assert deciding_index(result, INPUT_DROP_LOOPBACK_SOURCE) == 3


@pytest.mark.parametrize('collection', COLLECTIONS)
def test_a_set_changed_behind_unchanged_rules_is_judged_again(netns_pair, collection):
    """The rules stay the same (the same nf_tables generation, the same save text); the set's
    members change between runs of one check instance."""
    receiver = netns_pair.receiver
    make_sets(receiver, 'create lt-loop hash:net', 'add lt-loop 127.0.0.0/8')
    receiver.restore(filter_table(_ACCEPT_LO[0], '-A INPUT -m set --match-set lt-loop src -j DROP', _ACCEPT_LO[1]), 'ipv4')
    state = InstanceState()
    assert status(judged(receiver, collection, state=state), INPUT_DROP_LOOPBACK_SOURCE) is PASS
    assert status(judged(receiver, collection, state=state), INPUT_DROP_LOOPBACK_SOURCE) is PASS
    receiver.run(['ipset', 'flush', 'lt-loop'], check=True)
    assert probe_spoofed_loopback_source(netns_pair, 'ipv4')
    assert status(judged(receiver, collection, state=state), INPUT_DROP_LOOPBACK_SOURCE) is FAIL
    receiver.run(['ipset', 'add', 'lt-loop', '127.0.0.0/8'], check=True)
    assert not probe_spoofed_loopback_source(netns_pair, 'ipv4')
    assert status(judged(receiver, collection, state=state), INPUT_DROP_LOOPBACK_SOURCE) is PASS


def test_a_save_through_a_wrapper_keeps_the_set_some_and_says_why(netns_pair):
    """The save tool runs through `ip netns exec` (a wrapper): the check cannot tell which namespace's
    sets it would have to read, so the set match stays some and the deviation says why."""
    receiver = netns_pair.receiver
    make_sets(receiver, 'create lt-loop hash:net', 'add lt-loop 127.0.0.0/8')
    receiver.restore(filter_table(_ACCEPT_LO[0], '-A INPUT -m set --match-set lt-loop src -j DROP', _ACCEPT_LO[1]), 'ipv4')
    result = evaluate_with(receiver, 'ipv4', 'save').result
    requirement = result.requirement(INPUT_DROP_LOOPBACK_SOURCE)
    assert requirement.status is FAIL  # the policy decides the bulk: the set is not known to hold it
    assert requirement.deciding.is_policy
    (why,) = requirement.uncertain
    assert why.startswith('ipset lt-loop: ') and 'wrapper command' in why
    assert why in explanation(requirement)


@pytest.mark.parametrize('where', ['INPUT', 'LOCHAIN'])
def test_sets_used_beside_a_legacy_ruleset_are_judged_again_when_they_change(netns, where):
    """A legacy mangle OUTPUT at the priority of iptables-nft's leaves the mark unknown, so the lo
    input walk reaches a set rule (in INPUT, or in a chain only that combined walk enters): the chain
    is read, and the set's change between runs of one instance is seen."""
    require_tools('iptables-legacy-restore')
    make_sets(netns, 'create lt-s hash:net', 'add lt-s 10.0.0.0/8')
    netns.restore(table('mangle', ['-A OUTPUT -j MARK --set-xmark 0x1/0x1']), 'ipv4', 'legacy')
    set_rule = '-A {} -i lo -m set --match-set lt-s src -j DROP'.format(where)
    rules = [set_rule] if where == 'INPUT' else ['-A INPUT -i lo -j LOCHAIN', set_rule]
    netns.restore(
        table('mangle', ['-A OUTPUT -j MARK --set-xmark 0x0/0x1'])
        + filter_table(
            '-A INPUT -s 127.0.0.0/8 ! -i lo -j DROP', '-A INPUT -m mark --mark 0x0/0x1 -j ACCEPT', *rules,
            '-A OUTPUT -o lo -j ACCEPT', chains=[] if where == 'INPUT' else ['LOCHAIN'],
        ),
        'ipv4',
    )
    state = InstanceState()
    assert probe_loopback(netns, 'ipv4', 'udp')
    assert status(judged(netns, 'auto', state=state), INPUT_ACCEPT_LO) is PASS
    netns.run(['ipset', 'add', 'lt-s', '127.0.0.0/8'], check=True)
    assert not probe_loopback(netns, 'ipv4', 'udp')
    result = judged(netns, 'auto', state=state)
    assert status(result, INPUT_ACCEPT_LO) is FAIL
    deciding = result.requirement(INPUT_ACCEPT_LO).deciding
    assert (deciding.ruleset, deciding.chain, deciding.index) == (('', 'INPUT', 3) if where == 'INPUT' else ('', 'LOCHAIN', 1))
