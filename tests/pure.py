"""pytest plugin: run only the pure tests, the ones that need no network namespace.

    python -m pytest -p tests.pure tests

CI runs these on every Python the Agent embeds (3.12, 3.13) besides the full suite on the main one.
A test is a namespace test when it asks for the ``netns`` or ``netns_pair`` fixture (tests/netns.py)
or lives in a module that drives the namespace harness directly; those are deselected (pytest reports
how many), everything else runs as usual.
"""
from __future__ import annotations

from typing import List

import pytest

#: The fixtures of tests/netns.py that create namespaces.
NAMESPACE_FIXTURES = frozenset({'netns', 'netns_pair'})
#: Modules whose tests create namespaces without those fixtures (or test the harness itself).
NAMESPACE_MODULES = frozenset({'test_netns_harness.py', 'test_netns_core.py'})


def needs_namespaces(item: pytest.Item) -> bool:
    if item.path.name in NAMESPACE_MODULES:
        return True
    return bool(NAMESPACE_FIXTURES.intersection(getattr(item, 'fixturenames', ())))


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    selected = [item for item in items if not needs_namespaces(item)]
    deselected = [item for item in items if needs_namespaces(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def pytest_report_header(config: pytest.Config) -> str:
    return 'tests.pure: namespace tests deselected (pure tests only)'
