"""Collecting only what the evaluation reads gives the same results as a full iptables-save."""
import importlib.util
import os
import sys
import time

import pytest

from datadog_checks.loopback_traffic.applicability import ApplicabilityChecker
from datadog_checks.loopback_traffic.collect import CollectionError, collect, read_file
from datadog_checks.loopback_traffic.config import parse_options
from datadog_checks.loopback_traffic.parser import EVALUATED_TABLES, parse_ruleset
from datadog_checks.loopback_traffic.pipeline import InstanceState, run_rule
from datadog_checks.loopback_traffic.results import Status

from .netns import netns, require_tools  # noqa: F401
from .rulesets import filter_table

_GENERATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'generate.py')
_spec = importlib.util.spec_from_file_location('loopback_traffic_benchmark_generate', _GENERATE)
generate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = generate
_spec.loader.exec_module(generate)


def options(ns, collection, family, **more):
    prefix = ns.argv_prefix()
    instance = {
        'applicability': 'always',
        'collection': collection,
        'families': [family],
        'iptables_save_command': prefix + ['iptables-save'],
        'ip6tables_save_command': prefix + ['ip6tables-save'],
        'iptables_legacy_save_command': prefix + ['iptables-legacy-save'],
        'ip6tables_legacy_save_command': prefix + ['ip6tables-legacy-save'],
    }
    instance.update(more)
    return parse_options(instance)


def expensive_tables(family):
    """An instance state in which listing whole tables was just found slow (as on a Kubernetes
    node): the next runs list only the path chains and the user chains they reach."""
    state = InstanceState()
    state.listing.record_whole_listing(family, 10.0, time.monotonic())
    return state


def evaluate_with(ns, collection, family, state=None, expect_error=False, **more):
    opts = options(ns, collection, family, **more)
    outcome = run_rule(opts, family, ApplicabilityChecker(opts), state=state)
    if not expect_error:
        assert outcome.result.error is None, outcome.result.error
    return outcome


PRESETS = [
    ('cis', None),
    ('cis', 'bottom'),
    ('ufw', None),
    ('ufw', 'top'),
    ('k8s-1k', None),
    ('k8s-1k', 'bottom'),
    ('k8s-1k', 'none'),
]


@pytest.mark.parametrize('strategy', ['tables', 'chains'])
@pytest.mark.parametrize('family', ['ipv4', 'ipv6'])
@pytest.mark.parametrize('preset, cis_position', PRESETS)
def test_listing_gives_the_same_result_as_a_full_save(netns, preset, cis_position, family, strategy):
    chosen = generate.PRESETS[preset]
    if cis_position is not None:
        chosen = chosen.with_cis(cis_position)
    netns.restore(chosen.text(family), family)
    full = evaluate_with(netns, 'save', family)
    listed = evaluate_with(netns, 'listing', family, expensive_tables(family) if strategy == 'chains' else None)
    assert listed.result == full.result
    assert listed.result.rules_on_path == full.result.rules_on_path
    assert '-S' in listed.origins[0] and '-S' not in full.origins[0]


@pytest.mark.parametrize('strategy', ['tables', 'chains'])
def test_listing_with_both_backends(netns, strategy):
    netns.restore(generate.PRESETS['k8s-1k'].text('ipv4'), 'ipv4')
    netns.restore(filter_table('-A INPUT -i lo -p udp -j DROP'), 'ipv4', 'legacy')
    full = evaluate_with(netns, 'save', 'ipv4')
    listed = evaluate_with(netns, 'listing', 'ipv4', expensive_tables('ipv4') if strategy == 'chains' else None)
    assert listed.result == full.result
    assert len(listed.origins) == 2 and listed.result.requirement('input_accept_lo').deviations[0].where.ruleset == 'legacy'


def test_native_base_chains_are_seen_by_whole_table_listings(netns):
    """A base chain added with nft to an iptables table: the chain listings cannot see it, a whole
    table listing can (UNKNOWN). Slow hosts list whole tables every `table_listing_interval`."""
    require_tools('nft')
    netns.restore(generate.PRESETS['cis'].text('ipv4'), 'ipv4')
    netns.run(['nft', 'add chain ip filter extra { type filter hook input priority 5; policy accept; }'], check=True)
    netns.run(['nft', 'add rule ip filter extra iif lo drop'], check=True)
    saved = evaluate_with(netns, 'save', 'ipv4', expect_error=True).result
    assert saved.status is Status.UNKNOWN and 'native nftables' in saved.error
    whole = evaluate_with(netns, 'auto', 'ipv4', expect_error=True).result
    assert whole.status is Status.UNKNOWN and 'native nftables' in whole.error
    state = expensive_tables('ipv4')
    between = evaluate_with(netns, 'auto', 'ipv4', state).result
    assert between.status is Status.PASS  # what the chain listings show: the limit the interval bounds
    due = evaluate_with(netns, 'auto', 'ipv4', expensive_tables('ipv4'), expect_error=True, table_listing_interval=0).result
    assert due.status is Status.UNKNOWN and 'native nftables' in due.error


@pytest.mark.parametrize('cis_position, listed', [('top', False), ('bottom', True)])
def test_chain_listings_skip_the_chains_no_loopback_packet_reaches(netns, cis_position, listed):
    """With the CIS rules first, every loopback class is decided before kube-proxy's jumps: the
    service chains are not listed. With them last, the classes walk through them: they are."""
    netns.restore(generate.PRESETS['k8s-1k'].with_cis(cis_position).text('ipv4'), 'ipv4')
    state = expensive_tables('ipv4')
    (collected,) = collect(options(netns, 'listing', 'ipv4'), 'ipv4', history=state.listing)
    listed_chains = {line.split()[1] for text, _ in collected.pieces for line in text.splitlines() if line.startswith(('-N ', '-P '))}
    assert {'INPUT', 'OUTPUT', 'PREROUTING', 'POSTROUTING'} <= listed_chains
    assert ('KUBE-SERVICES' in listed_chains) is listed
    assert ('KUBE-FIREWALL' in listed_chains) is listed


def test_a_whole_save_keeps_only_the_evaluated_tables_as_it_streams_in(netns):
    """`collection: save` reads the whole iptables-save, nat included, but holds only the tables it
    evaluates: the nat table's lines are dropped as they pass (their line numbers are kept)."""
    text = generate.PRESETS['k8s-1k'].text('ipv4')
    netns.restore(text, 'ipv4')
    (collected,) = collect(options(netns, 'save', 'ipv4'), 'ipv4')
    ((kept, _),) = collected.pieces
    saved = netns.run(['iptables-save'], check=True).stdout
    assert '*nat' in saved and '-A KUBE-SVC-' in saved
    assert '*nat' in kept and '-A KUBE-SVC-' not in kept and '*filter' in kept
    assert kept.count('\n') == saved.count('\n')
    assert len(kept) < len(saved) // 2


def test_a_saved_file_is_read_keeping_only_the_evaluated_tables(tmp_path):
    text = generate.PRESETS['k8s-1k'].text('ipv4')
    path = tmp_path / 'rules.v4'
    path.write_text(text)
    collected = read_file(str(path), 10**9)
    ((kept, _),) = collected.pieces
    assert '-A KUBE-SVC-' in text and '-A KUBE-SVC-' not in kept
    assert parse_ruleset(kept, tables=EVALUATED_TABLES) == parse_ruleset(text, tables=EVALUATED_TABLES)
    with pytest.raises(CollectionError, match='larger than 1000 bytes'):
        read_file(str(path), 1000)


def test_chain_listings_remember_the_user_chains_of_the_last_run(netns):
    """The user chains one run needed are listed with the path chains on the next run; the answer
    stays the full save's when the ruleset changes under them (chains gone, or no longer reached)."""
    state = expensive_tables('ipv4')
    netns.restore(generate.PRESETS['k8s-1k'].with_cis('bottom').text('ipv4'), 'ipv4')
    first = evaluate_with(netns, 'listing', 'ipv4', state)
    assert ('filter', 'KUBE-SERVICES') in state.listing.user_chains['ipv4']
    second = evaluate_with(netns, 'listing', 'ipv4', state)
    assert first.result == second.result == evaluate_with(netns, 'save', 'ipv4').result
    for layout in (generate.PRESETS['cis'], generate.PRESETS['k8s-1k'], generate.PRESETS['k8s-1k'].with_cis('bottom')):
        netns.restore(layout.text('ipv4'), 'ipv4')
        listed, full = evaluate_with(netns, 'listing', 'ipv4', state), evaluate_with(netns, 'save', 'ipv4')
        assert listed.result == full.result
        assert listed.result.rules_on_path == full.result.rules_on_path
    assert ('filter', 'KUBE-SERVICES') in state.listing.user_chains['ipv4']


@pytest.mark.parametrize('backend', ['nft', 'legacy'])
def test_an_unchanged_ruleset_read_by_save_reuses_the_last_result(netns, backend):
    """iptables-save stamps its output with the time; the stamp is not part of the ruleset, so the
    next run of an unchanged ruleset reuses the result instead of evaluating it again."""
    netns.restore(generate.PRESETS['k8s-1k'].text('ipv4'), 'ipv4', backend)
    state = InstanceState()
    collection = 'save' if backend == 'nft' else 'auto'
    more = {} if backend == 'nft' else {'iptables_save_command': netns.argv_prefix() + ['iptables-legacy-save']}
    first = evaluate_with(netns, collection, 'ipv4', state, **more)
    time.sleep(1.1)  # a later timestamp
    second = evaluate_with(netns, collection, 'ipv4', state, **more)
    assert second.result is first.result
    netns.restore(filter_table('-A INPUT -i lo -j ACCEPT'), 'ipv4', backend)
    assert evaluate_with(netns, collection, 'ipv4', state, **more).result is not first.result
