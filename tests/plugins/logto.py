"""pytest plugin: the Logto Management API contract double (tests/doubles/logto.py), started per test.

- ``logto``: a running :class:`~tests.doubles.logto.LogtoDouble` on a free port (tokens live an hour
  unless a test changes ``logto.token_ttl``).
- ``usersync_config(logto, **overrides)``: the ``usersync`` settings section pointing at it, with short
  retry and poll times so that outage tests run in seconds.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.doubles.logto import LogtoDouble

TEST_SIGNING_KEY = "test-webhook-signing-key-" + "k" * 16


def usersync_config(double: LogtoDouble, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "http_listen": "127.0.0.1:0",
        "logto_endpoint": double.url,
        "logto_app_id": double.app_id,
        "logto_app_secret": double.app_secret,
        "webhook_signing_key": double.signing_key,
        "logto_timeout_seconds": 2.0,
        "logto_max_attempts": 3,
        "logto_retry_budget_seconds": 2.0,
        "delivery_poll_seconds": 0.1,
        "delivery_max_backoff_seconds": 0.5,
        "reconcile_interval_seconds": 0,
    }
    section.update(overrides)
    return section


@pytest.fixture
async def logto() -> AsyncIterator[LogtoDouble]:
    double = LogtoDouble(signing_key=TEST_SIGNING_KEY)
    await double.start()
    yield double
    await double.stop()
