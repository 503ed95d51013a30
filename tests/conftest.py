"""Shared pytest plugins: the Kubernetes test bed, PostgreSQL, a token issuer, gateway servers; and the order of
the tests that restart a part of the shared test bed."""
from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.plugins.testbed",
    "tests.plugins.postgres",
    "tests.plugins.oidc",
    "tests.plugins.gateway",
    "tests.plugins.auth_stack",
    "tests.plugins.logto",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``restarts_testbed`` run last. A real kube-apiserver restart (tests/chaos/test_restarts.py) leaves
    the controllers relisting and re-electing for a while after /readyz, and in one full run the tests after it on
    the same bed met a controller that had not caught up; last, it can disturb nobody."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_testbed") is not None)  # stable: order kept
