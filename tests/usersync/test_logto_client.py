"""The Logto client against the contract double: token, retries, paging, custom-data writes."""
from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from aigc_gateway.services.usersync.logto import (
    LogtoAuthError,
    LogtoClient,
    LogtoSettings,
    LogtoUnavailable,
    LogtoUserNotFound,
    parse_retry_after,
    refresh_margin,
)
from tests.doubles.logto import LogtoDouble


def make_client(double: LogtoDouble, **overrides) -> LogtoClient:
    values = dict(endpoint=double.url, app_id=double.app_id, app_secret=double.app_secret, timeout=2.0,
                  max_attempts=4, max_retry_seconds=5.0, backoff_initial=0.05, backoff_max=0.2)
    values.update(overrides)
    return LogtoClient(LogtoSettings(**values))


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now.timestamp()) == 30.0
    assert refresh_margin(3600) == 60.0 and refresh_margin(4) == 1.0


async def test_token_needs_basic_credentials(logto: LogtoDouble) -> None:
    logto.add_user("u1")
    bad = make_client(logto, app_secret="wrong")
    try:
        with pytest.raises(LogtoAuthError):
            await bad.get_custom_data("u1")
    finally:
        await bad.close()
    async with httpx.AsyncClient() as raw:
        assert (await raw.get(f"{logto.url}/api/users/u1")).status_code == 401
        resp = await raw.post(f"{logto.url}/oidc/token", auth=(logto.app_id, logto.app_secret), data={
            "grant_type": "client_credentials", "resource": "https://other/api", "scope": "all"})
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_target"


class _Clock:
    """The client's monotonic clock, moved by the test: token lifetimes decided by the test, not by load."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


async def test_token_is_cached_and_renewed_before_expiry(logto: LogtoDouble, monkeypatch) -> None:
    from aigc_gateway.services.usersync import logto as module

    clock = _Clock()
    monkeypatch.setattr(module, "time", clock)
    logto.add_user("u1")
    logto.token_ttl = 3600  # renewed 60 s before it expires
    client = make_client(logto)
    try:
        for _ in range(3):
            await client.get_custom_data("u1")
        assert logto.token_requests == 1
        clock.now += 3600 - 60 - 1  # one second before the renewal is due: the cached token still serves
        await client.get_custom_data("u1")
        assert logto.token_requests == 1
        clock.now += 2  # past it: renewed before the server would refuse it
        await client.get_custom_data("u1")
        assert logto.token_requests == 2
        assert all(status == 200 for _, path, status in logto.requests if path.startswith("/api/"))
    finally:
        await client.close()


async def test_one_token_refresh_at_a_time(logto: LogtoDouble) -> None:
    logto.add_user("u1")
    client = make_client(logto)
    try:
        await asyncio.gather(*(client.get_custom_data("u1") for _ in range(20)))
        assert logto.token_requests == 1
        logto.expire_tokens()  # revoked server-side: every request gets 401 once, one renewal serves them all
        await asyncio.gather(*(client.get_custom_data("u1") for _ in range(10)))
        assert logto.token_requests == 2
    finally:
        await client.close()


async def test_429_retried_after_retry_after(logto: LogtoDouble) -> None:
    logto.add_user("u1", custom_data={"a": 1})
    client = make_client(logto)
    try:
        await client.token()
        logto.fail_next(2, status=429, retry_after="0.3")
        started = time.monotonic()
        assert await client.get_custom_data("u1") == {"a": 1}
        assert time.monotonic() - started >= 0.6  # both waits honoured the server's Retry-After
        statuses = [s for _, p, s in logto.requests if p.startswith("/api/users/u1")]
        assert statuses == [429, 429, 200]
    finally:
        await client.close()


@pytest.mark.parametrize("mode", ["refuse", "503"])
async def test_down_is_unavailable_then_recovers(logto: LogtoDouble, mode: str) -> None:
    logto.add_user("u1")
    client = make_client(logto, max_attempts=3)
    try:
        await client.token()
        await logto.go_down(mode)
        with pytest.raises(LogtoUnavailable) as err:
            await client.get_custom_data("u1")
        assert err.value.retry_after and err.value.reason == "LOGTO_UNAVAILABLE"
        if mode == "503":
            assert [s for _, p, s in logto.requests if p.startswith("/api/")][-3:] == [503, 503, 503]
        await logto.come_up()
        assert await client.get_custom_data("u1") == {}
    finally:
        await client.close()


async def test_paging_reads_every_user(logto: LogtoDouble) -> None:
    ids = {logto.add_user(f"user-{i:03d}") for i in range(230)}
    client = make_client(logto, page_size=100)
    try:
        seen = [u["id"] async for u in client.iter_users()]
        assert sorted(seen) == sorted(ids) and len(seen) == 230
        pages = [p for m, p, _ in logto.requests if p.startswith("/api/users?")]
        assert pages == [f"/api/users?page={n}&page_size=100" for n in (1, 2, 3)]
        users, total = await client.list_users_page(3, 100)
        assert total == 230 and len(users) == 30
    finally:
        await client.close()
    async with httpx.AsyncClient() as raw:
        token = (await raw.post(f"{logto.url}/oidc/token", auth=(logto.app_id, logto.app_secret), data={
            "grant_type": "client_credentials", "resource": logto.resource, "scope": "all"})).json()["access_token"]
        resp = await raw.get(f"{logto.url}/api/users", params={"page": 1, "page_size": 101},
                             headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 400  # Logto caps page_size at 100
        resp = await raw.get(f"{logto.url}/api/users", params={"page": 0}, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 400  # pages count from 1


async def test_merge_stores_null_and_replace_removes(logto: LogtoDouble) -> None:
    logto.add_user("u1", custom_data={"keep": "x", "ns-a": {"Name": "a", "Namespace": "ns", "ID": "1"}})
    client = make_client(logto)
    try:
        merged = await client.merge_custom_data("u1", {"ns-a": None, "ns-b": {"ID": "2"}})
        assert merged == {"keep": "x", "ns-a": None, "ns-b": {"ID": "2"}}  # null is stored, not a removal
        await client.replace_custom_data("u1", {"keep": "x"})
        assert logto.custom_data("u1") == {"keep": "x"}
        with pytest.raises(LogtoUserNotFound):
            await client.get_custom_data("nobody")
    finally:
        await client.close()


async def test_user_lock_serialises_one_user_only(logto: LogtoDouble) -> None:
    client = make_client(logto)
    order: list[str] = []

    async def hold(user: str, tag: str, delay: float) -> None:
        async with client.user_lock(user):
            order.append(f"{tag}+")
            await asyncio.sleep(delay)
            order.append(f"{tag}-")

    try:
        await asyncio.gather(hold("u1", "a", 0.1), hold("u1", "b", 0.0), hold("u2", "c", 0.0))
        assert order.index("a-") < order.index("b+")  # same user: one after the other
        assert order.index("c+") < order.index("a-")  # another user is not held up
        assert not client._user_locks  # no lock kept for idle users
    finally:
        await client.close()


async def test_a_retry_after_beyond_the_budget_is_not_slept(logto: LogtoDouble) -> None:
    logto.add_user("u1")
    client = make_client(logto, max_retry_seconds=2.0)
    try:
        await client.token()
        logto.fail_next(1, status=429, retry_after="120")
        started = time.monotonic()
        with pytest.raises(LogtoUnavailable) as err:
            await client.get_custom_data("u1")
        assert time.monotonic() - started < 60  # gave up at once instead of waiting two minutes
        assert err.value.retry_after == 120.0  # and says when to come back
        assert await client.get_custom_data("u1") == {}
    finally:
        await client.close()
