"""The HTTP worker processes (``auth.http_workers``) and the hot-path caches that made them worth having.

Pure parts first (owner map replication, the denied-audit budget, settings crossing the pipe), then the
real thing: the auth service with two worker processes on one port, real PostgreSQL and the real
oidc-provider, checked for what must not change with workers: the same decisions, a pause and a
revocation refused by every worker within a second, activity and audit still written; and for what
workers add: a crashed worker is replaced, workers do not outlive their parent, metrics add up."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
import pytest
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import delete, insert, select, update

from aigc_gateway.api.v1 import auth_pb2, auth_pb2_grpc
from aigc_gateway.config import Settings
from aigc_gateway.db.models import AuditEventRow, InstanceRow
from aigc_gateway.services.auth.checker import DeniedBudget
from aigc_gateway.services.auth.ownermap import InstanceKey, OwnerMap, Route
from aigc_gateway.services.auth.routes import RouteIndex, RoutePattern
from aigc_gateway.services.auth.sources import OwnershipFollower
from aigc_gateway.services.auth.workers import WorkerPool, _plain
from aigc_gateway.sessions import SessionStore, hash_session_id

from .stack import DOMAIN, AuthStack, start_auth_stack

COOKIE = "aigc_session"
HOST1, HOST2 = f"instances1-cpu.{DOMAIN}", f"instances2-cpu.{DOMAIN}"
FRESH_CONNECTIONS = 16  # SO_REUSEPORT spreads connections by hash: 16 new ones miss one of 2 workers with p≈3e-5


# -- pure parts -------------------------------------------------------------------------------------------


def test_a_replica_fed_by_events_decides_like_the_original() -> None:
    source, replica = OwnerMap(), OwnerMap()
    a, b, c = InstanceKey("ns", "cpu", 1), InstanceKey("ns", "cpu", 2), InstanceKey("ns", "sd", 1)
    source.set_routes(a, {Route("h1.x")})
    source.set_owner(a, "alice")
    for event in source.snapshot():
        replica.apply(event)
    source.subscribe(replica.apply)
    source.set_routes(b, {Route("h2.x")})
    source.set_owner(b, "bob")
    source.set_routes(c, {Route("sd.x", "/sd1")})
    source.set_owner(c, "carol")
    source.set_owner(a, None)  # paused
    source.set_routes(b, {Route("h2.x"), Route("h2b.x")})
    for host, path in (("h1.x", "/"), ("h2.x", "/"), ("h2b.x", "/q"), ("sd.x", "/sd1/x"), ("sd.x", "/sd10"), ("no.x", "/")):
        found = source.lookup(host, path)
        assert replica.lookup(host, path) == found, (host, path)
        if isinstance(found, InstanceKey):
            assert replica.owner(found) == source.owner(found)
    assert replica.owner(a) is None and replica.owner(c) == "carol"
    # Two instances claiming one route admit nobody, in the replica too.
    source.set_routes(c, {Route("h2.x")})
    assert replica.lookup("h2.x", "/") == source.lookup("h2.x", "/") and not isinstance(source.lookup("h2.x", "/"),
                                                                                         InstanceKey)


async def test_a_full_reread_applies_and_sends_only_what_changed(database) -> None:
    now = datetime.now(UTC)
    async with database.session() as session:
        await session.execute(insert(InstanceRow), [
            {"namespace": "ns", "template": "cpu", "id": i, "slot": "LIVE", "owner": f"u{i}", "orphaned": False,
             "created_at": now, "updated_at": now, "state_changed_at": now} for i in range(100)])
    owners = OwnerMap()
    follower = OwnershipFollower(database, owners, RouteIndex(owners))  # its LISTEN not started: nothing heard
    await follower.resync()
    assert [owners.owner(InstanceKey("ns", "cpu", i)) for i in (0, 99)] == ["u0", "u99"]
    events: list = []
    owners.subscribe(events.append)
    await follower.resync()  # the periodic re-read, nothing changed
    assert events == []

    async def change(ident: int, **values: object) -> None:
        async with database.session() as session:
            await session.execute(update(InstanceRow).where(InstanceRow.id == ident).values(**values))

    # Changed with no notification heard: a pause, another owner, a row gone.
    await change(7, slot="PAUSED")
    await change(8, owner="someone-else")
    async with database.session() as session:
        await session.execute(delete(InstanceRow).where(InstanceRow.id == 9))
    await follower.resync()
    assert sorted(events) == [["o", "ns", "cpu", 7, None], ["o", "ns", "cpu", 8, "someone-else"],
                              ["o", "ns", "cpu", 9, None]]
    # What the row path applied (a notification's row) is what the next re-read compares with: not sent twice;
    # and a row the row path saw that the table no longer says is put back by the re-read.
    events.clear()
    await change(10, owner="x")
    follower._apply(InstanceKey("ns", "cpu", 10), "LIVE", "x", False)  # as _row_loop applies the row it read
    follower._apply(InstanceKey("ns", "cpu", 11), "LIVE", "stale", False)  # a row read that was undone since
    await follower.resync()
    assert events == [["o", "ns", "cpu", 10, "x"], ["o", "ns", "cpu", 11, "stale"], ["o", "ns", "cpu", 11, "u11"]]
    assert owners.owner(InstanceKey("ns", "cpu", 11)) == "u11"


def test_a_large_map_with_shared_hosts_answers_every_route() -> None:
    # 20,000 instances (filling it scanned every claim per insert before: minutes; now per host), ten
    # path-routed instances per host among them.
    owners = OwnerMap()
    for i in range(20_000):
        route = Route(f"sd{i // 10}.x", f"/sd{i}") if i % 2 else Route(f"i{i}.x")
        owners.set_routes(InstanceKey("ns", f"t{i % 10}", i), {route})
    assert owners.lookup("i19998.x", "/") == InstanceKey("ns", "t8", 19998)
    assert owners.lookup("sd1999.x", "/sd19999/x") == InstanceKey("ns", "t9", 19999)
    assert owners.lookup("sd1999.x", "/sd19997") == InstanceKey("ns", "t7", 19997)
    assert owners.lookup("sd1999.x", "/sd1999") is None
    owners.drop_routes(InstanceKey("ns", "t9", 19999))
    assert owners.lookup("sd1999.x", "/sd19999") is None and owners.lookup("sd1999.x", "/sd19997") is not None


def test_denied_audit_budget_samples_a_flood_across_the_minute() -> None:
    budget = DeniedBudget(per_minute=60, burst=3)  # one a second, bursts of three
    flood = [budget.admit(60.0 + i * 0.01) for i in range(100)]  # a flood of 100 in one second
    assert [admitted for admitted, _ in flood].count(True) == 3
    assert budget.admit(61.5)[0] is True  # refilled at one a second
    assert budget.admit(61.6)[0] is False
    steady = sum(budget.admit(62.0 + i * 0.1)[0] for i in range(570))  # the rest of the minute, 10 a second
    assert 55 <= steady <= 58  # about one a second: within the audit log's 60 a minute
    _, carried = budget.admit(121.0)  # next minute: last minute's suppressed count handed back once
    assert carried == 97 + 1 + (570 - steady)
    assert budget.admit(121.5)[1] == 0


def test_settings_cross_the_pipe_with_their_secrets_and_aliases() -> None:
    settings = Settings.model_validate({
        "domain": "x.test", "database": {"url": "postgresql+asyncpg://u:pw@db/x"},
        "logging": {"json": False}, "auth": {"session_keys": ["k" * 40, "old" * 14], "http_workers": 3}})
    again = Settings.model_validate(json.loads(json.dumps(_plain(settings.model_dump(by_alias=True)))))
    assert again == settings
    assert [k.get_secret_value() for k in again.auth.session_keys] == ["k" * 40, "old" * 14]
    assert again.database.url.get_secret_value() == "postgresql+asyncpg://u:pw@db/x"
    assert again.logging.json_format is False


# -- the session cache's database reads ---------------------------------------------------------------


async def test_concurrent_checks_of_a_cold_session_share_one_read(database) -> None:
    store = SessionStore(database)
    session_id, _ = await store.create(user="alice", ttl_seconds=600)
    store._clear()  # as after a (re)connection of the LISTEN connection
    records = await asyncio.gather(*(store.get(session_id) for _ in range(20)))
    assert all(r is not None and r.user == "alice" for r in records)
    assert len({id(r) for r in records}) == 1  # one row read, one record, shared


async def test_cold_reads_of_different_sessions_share_one_query(database) -> None:
    from sqlalchemy import event

    store = SessionStore(database)
    session_ids = [(await store.create(user=f"user{n}", ttl_seconds=600))[0] for n in range(5)]
    store._clear()
    selects: list[str] = []

    def executed(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if "FROM auth_sessions" in statement:
            selects.append(statement)

    event.listen(database.engine.sync_engine, "before_cursor_execute", executed)
    try:
        records = await asyncio.gather(*(store.get(s) for s in session_ids))
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", executed)
    assert [r.user if r else None for r in records] == [f"user{n}" for n in range(5)]
    assert len(selects) == 1


async def test_a_read_overtaken_by_a_revocation_is_not_cached(database) -> None:
    store, other = SessionStore(database), SessionStore(database)  # two processes' stores
    session_id, _ = await store.create(user="alice", ttl_seconds=600)
    store._clear()
    reading = asyncio.create_task(store.get(session_id))
    await asyncio.sleep(0)  # the read is in flight
    await other.revoke(session_id)
    store._heard(f"s:{hash_session_id(session_id)}")  # what its LISTEN connection delivers
    await reading  # raced the revocation: may say either; but it must not be remembered
    assert store.cached(hash_session_id(session_id)) is False
    assert await store.get(session_id) is None


# -- the auth service with worker processes ---------------------------------------------------------------


@pytest.fixture
async def stack(start_gateway, start_oidc_provider, database_url, issuer):
    s = await start_auth_stack(start_gateway=start_gateway, start_oidc_provider=start_oidc_provider,
                               database_url=database_url, issuer=issuer, http_workers=2,
                               accounts={"root": {"roles": ["admin"], "email": "root@aigc.test"}})
    assert s.service.workers is not None and len(s.service.workers.pids) == 2
    s.service.index.set_template("ns", "cpu", RoutePattern(f"instances<id>-cpu.{DOMAIN}"))
    await s.set_instance("cpu", 1, "LIVE", "alice")
    await s.set_instance("cpu", 2, "LIVE", "bob")
    await s.wait_owner("cpu", 2, "bob")
    yield s
    await s.db.close()


async def statuses(stack: AuthStack, url: str, cookie: str | None, n: int = FRESH_CONNECTIONS, *,
                   rh: str = "") -> list[int]:
    """``n`` checks, each on a new connection (so that both workers answer some); ``rh``: the routed host
    (default: the URL's own, an honest request)."""
    headers = {"X-Original-URL": url, **({"Cookie": f"{COOKIE}={cookie}"} if cookie else {})}
    out = []
    for _ in range(n):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            # rh: the host nginx routed on, the URL's own (an honest request).
            async with http.get(f"http://127.0.0.1:{stack.auth_port}/auth?rh={rh or urlsplit(url).hostname}",
                                headers=headers) as r:
                out.append(r.status)
    return out


async def within_a_second(stack: AuthStack, url: str, cookie: str | None, expected: int) -> float:
    """Seconds until every worker answers ``expected``, printed against the product's 1 s promise; the
    bar is generous (30 s) so that a loaded machine does not fail what only measures it."""
    started = time.monotonic()
    while set(await statuses(stack, url, cookie)) != {expected}:
        assert time.monotonic() - started < 30, f"not every worker answers {expected} 30 s later"
    elapsed = time.monotonic() - started
    print(f"workers: every worker answers {expected} after {elapsed:.3f} s (promise: 1 s)")
    return elapsed


async def sign_in(stack: AuthStack, browser, user: str) -> str:
    b = browser()
    await b.sign_in(stack.url(f"dashboard.{DOMAIN}", "/sign-in"), user)  # through the workers
    value = b.cookie(COOKIE)
    assert value
    return value


def checks_total(outcome: str, family: str = "checks", label: str = "outcome") -> float:
    match = re.search(rf'^aigc_auth_{family}_total{{{label}="{outcome}"}} (\S+)$', generate_latest(REGISTRY).decode(),
                      re.M)
    return float(match.group(1)) if match else 0.0


async def test_workers_decide_like_one_process_and_their_counts_reach_metrics(stack, browser) -> None:
    before = checks_total("allow")
    refused_before = checks_total("ROUTED_HOST_MISMATCH", "refusals", "reason")
    again_before = checks_total("again", "answers", "way")
    alice = await sign_in(stack, browser, "alice")
    # Request line naming bob's host, Host header alice's: refused by every worker, and counted.
    assert set(await statuses(stack, f"http://{HOST1}/", alice, rh=HOST2)) == {403}
    assert set(await statuses(stack, f"http://{HOST1}/x", alice)) == {200}
    assert set(await statuses(stack, f"http://{HOST2}/", alice)) == {403}
    assert set(await statuses(stack, f"http://{HOST1}/", None)) == {401}
    assert set(await statuses(stack, f"http://{HOST1}@{HOST2}/", alice, 4)) == {403}
    # Each worker sends its totals every 2 s; this process's /metrics adds them up (both workers served).
    deadline = time.monotonic() + 10
    while checks_total("allow") - before < FRESH_CONNECTIONS or len(stack.service.workers.metrics.live) < 2 \
            or checks_total("ROUTED_HOST_MISMATCH", "refusals", "reason") - refused_before < FRESH_CONNECTIONS \
            or checks_total("again", "answers", "way") - again_before < FRESH_CONNECTIONS:  # repeats: answered again
        assert time.monotonic() < deadline, "the workers' check counts did not reach this process's metrics"
        await asyncio.sleep(0.2)
    served = [v["checks"].get("allow", 0) for v in stack.service.workers.metrics.live.values()]
    assert all(n > 0 for n in served), f"one worker answered nothing: {served}"
    # Each worker froze its start-up heap (no full collection traverses it) and reports its runtime probe.
    runtime = [v["runtime"] for v in stack.service.workers.metrics.live.values()]
    assert all(r["frozen"] > 10_000 and r["cpu_s"] > 0 for r in runtime), runtime


async def test_a_pause_and_a_revocation_reach_every_worker_within_a_second(stack, browser) -> None:
    alice = await sign_in(stack, browser, "alice")
    assert set(await statuses(stack, f"http://{HOST1}/", alice)) == {200}
    await stack.set_instance("cpu", 1, "PAUSED", "alice")  # the instance service's write + NOTIFY
    await within_a_second(stack, f"http://{HOST1}/", alice, 403)
    await stack.set_instance("cpu", 1, "LIVE", "alice")
    await within_a_second(stack, f"http://{HOST1}/", alice, 200)

    admin = await sign_in(stack, browser, "root")
    stub = auth_pb2_grpc.AuthServiceStub(stack.gateway.channel("auth"))
    reply = await stub.RevokeUserSessions(auth_pb2.RevokeUserSessionsRequest(user="alice"),
                                          metadata=(("cookie", f"{COOKIE}={admin}"),))
    assert reply.revoked_count == 1
    # Each worker hears the revocation on its own LISTEN connection (its session cache is its own).
    await within_a_second(stack, f"http://{HOST1}/", alice, 401)


async def test_a_crashed_worker_is_replaced_and_fed(stack, browser) -> None:
    pool = stack.service.workers
    alice = await sign_in(stack, browser, "alice")
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    await stack.set_instance("cpu", 1, "PAUSED", "alice")  # changed while the worker is down
    deadline = time.monotonic() + 60
    while len(pool.pids) < 2 or victim in pool.pids:
        assert time.monotonic() < deadline, "the worker was not started again"
        await asyncio.sleep(0.1)
    await stack.wait_owner("cpu", 1, None)
    assert set(await statuses(stack, f"http://{HOST1}/", alice)) == {403}  # from the new worker's first copy
    await stack.set_instance("cpu", 1, "LIVE", "alice")
    await stack.wait_owner("cpu", 1, "alice")
    assert set(await statuses(stack, f"http://{HOST1}/", alice)) == {200}  # and the changes after it


async def test_stopping_flushes_the_workers_activity_and_audit(stack, browser) -> None:
    alice = await sign_in(stack, browser, "alice")
    assert set(await statuses(stack, f"http://{HOST1}/", alice, 4)) == {200}
    assert set(await statuses(stack, f"http://{HOST2}/", alice, 1)) == {403}
    pids = stack.service.workers.pids
    await stack.service.workers.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    async with stack.db.session() as session:
        rows = {r.id: r.last_access_at for r in (await session.execute(
            select(InstanceRow).where(InstanceRow.template == "cpu"))).scalars()}
        denied = (await session.execute(select(AuditEventRow).where(
            AuditEventRow.action == "AuthService.Check"))).scalars().all()
    assert rows[1] is not None and rows[2] is None
    assert [(e.actor, e.error_code) for e in denied] == [("alice", "PERMISSION_DENIED")]


async def test_workers_do_not_outlive_their_parent(database_url, tmp_path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        from aigc_gateway.config import Settings
        from aigc_gateway.services.auth.ownermap import OwnerMap
        from aigc_gateway.services.auth.workers import WorkerPool

        async def main():
            settings = Settings.model_validate({{
                "database": {{"url": {database_url!r}}}, "kubernetes": {{"kubeconfig": "/nonexistent"}},
                "auth": {{"http_listen": "127.0.0.1:0", "session_keys": ["k" * 40], "cookie_secure": False}}}})
            pool = WorkerPool(settings, OwnerMap(), 2)
            await pool.start()
            print(" ".join(map(str, pool.pids)), flush=True)
            await asyncio.Event().wait()

        asyncio.run(main())
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 120)  # type: ignore[union-attr]
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2
    finally:
        parent.kill()  # no chance to stop anything: the workers see their stdin close
        parent.wait()
    deadline = time.monotonic() + 20
    for pid in pids:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            try:  # reap if it became our child (it does not; it is re-parented to init)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            assert time.monotonic() < deadline, f"worker {pid} outlived its parent"
            await asyncio.sleep(0.1)


async def test_a_taken_port_fails_the_start_loudly(database_url) -> None:
    settings = Settings.model_validate({"database": {"url": database_url}, "auth": {"session_keys": ["k" * 40]}})
    with socket.socket() as taken:  # someone else's listener, without SO_REUSEPORT
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings.auth.http_listen = f"127.0.0.1:{port}"
        pool = WorkerPool(settings, OwnerMap(), 2)
        with pytest.raises(OSError):
            await pool.start()
        assert pool.pids == []


async def test_a_session_past_its_lifetime_is_served_while_read_again_in_the_background(database) -> None:
    from aigc_gateway import session_store as module

    store = SessionStore(database)
    store.start()
    assert await store.listener.wait_live(10)
    session_id, record = await store.create(user="alice", ttl_seconds=600)
    id_hash = hash_session_id(session_id)
    assert await store.get(session_id) is not None
    # Revoked behind the cache's back (as if the notification were lost), then the lifetime runs out.
    async with database.session() as session:
        await session.execute(module.update(module.AuthSessionRow).where(
            module.AuthSessionRow.id_hash == id_hash).values(revoked_at=module.datetime.now(module.UTC)))
    store._cache[id_hash] = (store._cache[id_hash][0], time.monotonic() - module.LIVE_CACHE_SECONDS - 1)
    assert store.cached(id_hash) == record  # still served, no wait for the database on this check...
    await store._refresher  # ...while it is read again, here awaited
    assert store.cached(id_hash) is None and await store.get(session_id) is None
    # Past the grace, or while LISTEN is down, nothing old is served: the check reads the row itself.
    store._cache[id_hash] = (record, time.monotonic() - module.LIVE_CACHE_SECONDS - module.REFRESH_GRACE_SECONDS)
    assert store.cached(id_hash) is False
    await store.listener.close()
    store._cache[id_hash] = (record, time.monotonic() - module.BLIND_CACHE_SECONDS - 0.01)
    assert store.cached(id_hash) is False
    await store.close()


async def test_sessions_presented_lately_are_read_again_before_their_lifetime_runs_out(database, monkeypatch) -> None:
    from aigc_gateway import session_store as module

    monkeypatch.setattr(module, "KEEP_WARM_SECONDS", 0.05)
    monkeypatch.setattr(module, "REFRESH_COALESCE_SECONDS", 0.0)
    store = SessionStore(database)
    store.start()
    assert await store.listener.wait_live(10)
    made = {user: await store.create(user=user, ttl_seconds=600) for user in ("alice", "bob", "carol")}
    ids = {user: hash_session_id(session_id) for user, (session_id, _) in made.items()}
    # alice's and bob's sessions revoked behind the cache's back (as if the notifications were lost)
    async with database.session() as session:
        await session.execute(module.update(module.AuthSessionRow).where(
            module.AuthSessionRow.id_hash.in_([ids["alice"], ids["bob"]])).values(
            revoked_at=module.datetime.now(module.UTC)))
    store._refresher = None
    now = time.monotonic()
    for user, (_, record) in made.items():  # every row close to its lifetime...
        store._put(ids[user], record, now - module.LIVE_CACHE_SECONDS + 0.5)
    # ...alice and carol presented five minutes ago, bob eleven: he is not kept warm
    store._used.update({ids["alice"]: now - 300, ids["carol"]: now - 300, ids["bob"]: now - 660})

    async def refreshed() -> None:  # the keep-warm pass queues the re-read; nobody presents a cookie
        while store._refresher is None:
            await asyncio.sleep(0.01)
        await store._refresher

    await asyncio.wait_for(refreshed(), 30)
    assert store._cache[ids["alice"]][0] is None  # revoked: known now, before alice's next check
    assert store._cache[ids["carol"]][0] is made["carol"][1]  # the same record, stamped again
    assert store._cache[ids["carol"]][1] > now
    assert store._cache[ids["bob"]][0] is made["bob"][1]  # not read: his next check past the grace reads it
    assert ids["bob"] not in store._used
    await store.close()


async def test_activity_is_written_again_only_once_it_moved_on_by_a_minute(database) -> None:
    from aigc_gateway.services.auth.activity import ActivityRecorder

    activity = ActivityRecorder(database, resolution_seconds=60.0)
    busy, other = InstanceKey("ns", "cpu", 1), InstanceKey("ns", "cpu", 2)
    activity.touch(busy, 1000.0)
    assert await activity.flush() == 1
    activity.touch(busy, 1030.0)  # every click of a busy instance...
    activity.touch(other, 1030.0)
    assert await activity.flush() == 1  # ...is not a row update: only the instance not written yet is
    activity.touch(busy, 1061.0)
    assert await activity.flush() == 1


async def test_activity_writes_every_row_of_every_slice_and_never_moves_a_time_back(database, monkeypatch) -> None:
    from datetime import UTC, datetime

    from aigc_gateway.services.auth import activity as module

    monkeypatch.setattr(module, "FLUSH_SLICE", 2)  # five rows: three transactions
    now, later = datetime.now(UTC), datetime(2100, 1, 1, tzinfo=UTC)
    async with database.session() as session:
        for ident in range(1, 6):
            session.add(InstanceRow(namespace="ns", template="cpu", id=ident, slot="LIVE", owner=f"user{ident}",
                                    orphaned=False, created_at=now, updated_at=now, state_changed_at=now,
                                    last_access_at=later if ident == 3 else None))
    activity = module.ActivityRecorder(database)
    for ident in (5, 3, 1, 4, 2):
        activity.touch(InstanceKey("ns", "cpu", ident), now.timestamp())
    assert await activity.flush() == 5
    async with database.session() as session:
        rows = {r.id: r.last_access_at for r in (await session.execute(select(InstanceRow))).scalars()}
    assert rows == {1: now, 2: now, 3: later, 4: now, 5: now}


def test_default_worker_count_honours_a_container_cpu_limit(tmp_path) -> None:
    from aigc_gateway.services.auth.workers import default_worker_count

    cpus = len(os.sched_getaffinity(0))
    limit = tmp_path / "cpu.max"
    limit.write_text("max 100000\n")
    assert default_worker_count(str(limit)) == cpus
    limit.write_text("150000 100000\n")  # 1.5 CPUs: two workers (or fewer CPUs when the mask says so)
    assert default_worker_count(str(limit)) == min(cpus, 2)
    limit.write_text("50000 100000\n")
    assert default_worker_count(str(limit)) == 1
    assert default_worker_count(str(tmp_path / "absent")) == cpus
