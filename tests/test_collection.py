"""Collecting only what the evaluation reads gives the same results as a full iptables-save."""
import importlib.util
import os
import sys

import pytest

from datadog_checks.loopback_traffic.applicability import ApplicabilityChecker
from datadog_checks.loopback_traffic.config import parse_options
from datadog_checks.loopback_traffic.pipeline import run_rule

from .netns import netns  # noqa: F401
from .rulesets import filter_table

_GENERATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'generate.py')
_spec = importlib.util.spec_from_file_location('loopback_traffic_benchmark_generate', _GENERATE)
generate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = generate
_spec.loader.exec_module(generate)


def options(ns, collection, family):
    prefix = ns.argv_prefix()
    return parse_options(
        {
            'applicability': 'always',
            'collection': collection,
            'families': [family],
            'iptables_save_command': prefix + ['iptables-save'],
            'ip6tables_save_command': prefix + ['ip6tables-save'],
            'iptables_legacy_save_command': prefix + ['iptables-legacy-save'],
            'ip6tables_legacy_save_command': prefix + ['ip6tables-legacy-save'],
        }
    )


def evaluate_with(ns, collection, family):
    opts = options(ns, collection, family)
    outcome = run_rule(opts, family, ApplicabilityChecker(opts))
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


@pytest.mark.parametrize('family', ['ipv4', 'ipv6'])
@pytest.mark.parametrize('preset, cis_position', PRESETS)
def test_listing_gives_the_same_result_as_a_full_save(netns, preset, cis_position, family):
    chosen = generate.PRESETS[preset]
    if cis_position is not None:
        chosen = chosen.with_cis(cis_position)
    netns.restore(chosen.text(family), family)
    full = evaluate_with(netns, 'save', family)
    listed = evaluate_with(netns, 'listing', family)
    assert listed.result == full.result
    assert listed.result.rules_on_path == full.result.rules_on_path
    assert '-S' in listed.origins[0] and '-S' not in full.origins[0]


def test_listing_with_both_backends(netns):
    netns.restore(generate.PRESETS['k8s-1k'].text('ipv4'), 'ipv4')
    netns.restore(filter_table('-A INPUT -i lo -p udp -j DROP'), 'ipv4', 'legacy')
    full = evaluate_with(netns, 'save', 'ipv4')
    listed = evaluate_with(netns, 'listing', 'ipv4')
    assert listed.result == full.result
    assert len(listed.origins) == 2 and listed.result.requirement('input_accept_lo').deviations[0].where.ruleset == 'legacy'
