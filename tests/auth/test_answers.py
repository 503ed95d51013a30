"""``/auth`` answered again (services/auth/answers.py): a repeated check gets its earlier answer only while
nothing it was decided from has changed, and still leaves what a check leaves.

Real PostgreSQL (the session rows, the audit log, the activity table); the owner map is fed directly, as
its adapters feed it. Each test compares with a check decided afresh (the same inputs through a second
:class:`Answers` that remembers nothing), which is what the remembered answer must equal."""
from __future__ import annotations

import asyncio
import random
import time

import pytest
from sqlalchemy import event, select

from aigc_gateway import audit
from aigc_gateway import sessions as sessions_module
from aigc_gateway.config import Settings
from aigc_gateway.db.models import AuditEventRow
from aigc_gateway.services.auth import checker as checker_module
from aigc_gateway.services.auth.activity import ActivityRecorder
from aigc_gateway.services.auth.answers import ANSWERS, MAX_REMEMBERED_INPUT, Answers
from aigc_gateway.services.auth.checker import AccessChecker
from aigc_gateway.services.auth.cookies import gateway_cookie_names
from aigc_gateway.services.auth.ownermap import InstanceKey, OwnerMap, Route
from aigc_gateway.sessions import SessionCookieAuthenticator

COOKIE = "aigc_session"
ALICE_URL, BOB_URL = "https://i1.aigc.test/app?x=1", "https://i2.aigc.test/"
A, B = InstanceKey("ns", "cpu", 1), InstanceKey("ns", "cpu", 2)


def given_again() -> float:
    """Answers given again so far in this process (``aigc_auth_answers_total{way="again"}``)."""
    return ANSWERS.labels("again")._value.get()


class Scene:
    def __init__(self, database, *, limit: int = 1000):
        settings = Settings.model_validate({"database": {"url": database.url}, "auth": {"session_keys": ["k" * 40]}})
        self.database = database
        self.sessions = SessionCookieAuthenticator(settings, database)
        self.owners = OwnerMap()
        self.owners.set_routes(A, {Route("i1.aigc.test")})
        self.owners.set_routes(B, {Route("i2.aigc.test")})
        self.owners.set_owner(A, "alice")
        self.owners.set_owner(B, "bob")
        self.activity = ActivityRecorder(database)
        self.audit_log = audit.AuditLog(database, "auth")
        self.checker = AccessChecker(self.owners, self.sessions, None, self.activity, self.audit_log)
        kwargs = {"cookie_name": COOKIE, "gateway_cookies": gateway_cookie_names(COOKIE), "behind_traefik": False}
        self.answers = Answers(self.checker, self.sessions, limit=limit, **kwargs)
        self.fresh = Answers(self.checker, self.sessions, limit=0, **kwargs)  # remembers nothing: never "again"

    async def start(self) -> Scene:
        """The session store listening, as in the service: rows are cached for their live lifetime."""
        self.sessions.store.start()
        assert await self.sessions.store.listener.wait_live(10)
        return self

    async def sign_in(self, user: str, ttl: int = 600) -> tuple[str, str]:
        """A session of ``user`` (its cookie value, its id), read once so that the cache holds it."""
        session_id, record = await self.sessions.store.create(user=user, ttl_seconds=ttl)
        value = self.sessions.cookie.issue(session_id, user, int(record.expires_at.timestamp()))
        assert await self.sessions.principal(value) is not None  # the app's check: reads and caches
        return value, session_id

    async def revoke(self, session_id: str) -> None:
        """Sign-out, and its notification heard back (which drops the row from the cache once more)."""
        store = self.sessions.store
        epoch, deadline = store._epoch, time.monotonic() + 10
        await store.revoke(session_id)  # counts one invalidation, hearing its notification another
        while store._epoch < epoch + 2:
            assert time.monotonic() < deadline, "the revocation's notification never came"
            await asyncio.sleep(0.01)

    def check(self, url: str | None, cookie: str | None = None, *, rh: str | None = "", method: str = "GET",
              fresh: bool = False, **extra: str):
        headers = [(b"x-original-method", method.encode())]
        if url is not None:
            headers.append((b"x-original-url", url.encode()))
        if cookie is not None:
            headers.append((b"cookie", f"{COOKIE}={cookie}; theme=dark".encode()))
        headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
        if rh == "":
            rh = url.split("/")[2] if url and url.count("/") >= 2 else None
        scope = {"type": "http", "method": "GET", "path": "/auth", "headers": headers,
                 "query_string": f"rh={rh}".encode() if rh is not None else b""}
        return (self.fresh if fresh else self.answers)(scope)

    def both(self, *args, **kwargs):
        """The answer given (maybe again) and the answer decided afresh: they must be the same."""
        given_ = self.check(*args, **kwargs)
        assert given_ == self.check(*args, fresh=True, **kwargs)
        return given_


@pytest.fixture
async def scene(database):
    s = await Scene(database).start()
    yield s
    await s.sessions.close()


async def test_a_repeated_check_is_answered_again_and_still_counted(scene: Scene) -> None:
    alice, _ = await scene.sign_in("alice")
    first = scene.both(ALICE_URL, alice)
    assert first[0] == 200 and b"x-auth-request-user: alice\r\n" in first[1] and b"cookie: theme=dark\r\n" in first[1]
    scene.activity._seen.clear()
    counted = given_again()
    again = scene.both(ALICE_URL, alice)
    assert again is first and given_again() == counted + 1
    assert scene.activity._seen.keys() == {A}  # the last access is recorded for an answer given again too
    # Only the inputs that decide are the key: another method or an unrelated header is the same check...
    assert scene.both(ALICE_URL, alice, method="POST", user_agent="x") is first
    # ...while any deciding input that differs is decided again: the query is part of the URL.
    assert scene.both(ALICE_URL + "&y=2", alice) is not first


async def test_an_owner_change_is_seen_at_the_next_check(scene: Scene) -> None:
    alice, _ = await scene.sign_in("alice")
    assert scene.both(ALICE_URL, alice)[0] == 200
    scene.owners.set_owner(A, None)  # paused
    assert scene.both(ALICE_URL, alice)[0] == 403
    scene.owners.set_owner(A, "alice")  # resumed
    assert scene.both(ALICE_URL, alice)[0] == 200
    scene.owners.set_routes(A, {Route("other.aigc.test")})  # the route moved
    assert scene.both(ALICE_URL, alice)[0] == 403
    scene.owners.set_routes(A, {Route("i1.aigc.test")})
    scene.owners.set_known(False)  # the owners cannot be vouched for
    assert scene.both(ALICE_URL, alice)[:3:2] == (403, b"OWNERS_UNKNOWN\n")


async def test_a_revoked_or_expired_session_is_seen_at_the_next_check(scene: Scene, monkeypatch) -> None:
    alice, alice_id = await scene.sign_in("alice")
    bob, _ = await scene.sign_in("bob")
    assert scene.both(ALICE_URL, alice)[0] == 200 and scene.both(BOB_URL, bob)[0] == 200
    await scene.revoke(alice_id)
    # The cache no longer holds alice's row: declined (the app's check reads it), then 401 from the cache.
    assert scene.check(ALICE_URL, alice) is None
    assert await scene.sessions.principal(alice) is None
    assert scene.both(ALICE_URL, alice)[0] == 401
    assert scene.both(BOB_URL, bob)[0] == 200
    # The cookie's own expiry passes (the row would outlive it): 401 at the next check.
    expires = scene.sessions.cookie.read(bob).expires
    monkeypatch.setattr(sessions_module.time, "time", lambda: expires + 1.0)
    assert scene.both(BOB_URL, bob)[0] == 401


async def test_what_must_wait_is_declined_and_not_remembered(scene: Scene) -> None:
    session_id, record = await scene.sessions.store.create(user="carol", ttl_seconds=600)
    carol = scene.sessions.cookie.issue(session_id, "carol", int(record.expires_at.timestamp()))
    scene.sessions.store._cache.clear()  # as after a restart: the row must be read
    assert scene.check(ALICE_URL, carol) is None
    assert scene.check(ALICE_URL, None, authorization="Bearer abc") is None  # a token to verify
    assert scene.answers._remembered == {}
    assert await scene.sessions.principal(carol) is not None  # what the app's check does
    assert scene.both(ALICE_URL, carol)[0] == 403  # carol does not own alice's instance


async def test_denials_given_again_are_audited_with_their_own_method(scene: Scene, monkeypatch) -> None:
    monkeypatch.setattr(checker_module, "AUDIT_GATHER_SECONDS", 3600.0)  # drain() must not wait for it
    bob, _ = await scene.sign_in("bob")
    first = scene.check(ALICE_URL, bob, method="GET")
    assert first[0] == 403 and scene.check(ALICE_URL, bob, method="DELETE") is first
    await scene.checker.drain()
    async with scene.database.session() as session:
        rows = (await session.execute(select(AuditEventRow).where(
            AuditEventRow.action == "AuthService.Check").order_by(AuditEventRow.id))).scalars().all()
    assert [(r.actor, r.details["method"], r.details["host"]) for r in rows] == \
        [("bob", "GET", "i1.aigc.test"), ("bob", "DELETE", "i1.aigc.test")]


async def test_a_burst_of_denials_is_written_in_one_statement_and_one_queued_meanwhile_after_it(
        scene: Scene, monkeypatch) -> None:
    """A transaction costs the worker's loop about a millisecond however few rows it writes, so the denials
    queued together share one INSERT; one queued while that write is held in flight gets a write of its
    own after it, and none is lost."""
    monkeypatch.setattr(checker_module, "AUDIT_GATHER_SECONDS", 0.0)
    bob, _ = await scene.sign_in("bob")
    inserts: list[int] = []

    def executed(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO audit_events"):
            inserts.append(len(parameters) if executemany else 1)

    writing, release = asyncio.Event(), asyncio.Event()
    real_write = scene.audit_log.write

    async def held_write(events: list) -> None:
        writing.set()
        await release.wait()
        await real_write(events)

    monkeypatch.setattr(scene.audit_log, "write", held_write)
    event.listen(scene.database.engine.sync_engine, "before_cursor_execute", executed)
    try:
        for method in ("GET", "POST", "PUT", "DELETE"):  # queued together, before the writer runs
            assert scene.check(ALICE_URL, bob, method=method)[0] == 403
        await writing.wait()  # the first write took all four and is held
        monkeypatch.setattr(scene.audit_log, "write", real_write)
        for method in ("PATCH", "HEAD"):
            assert scene.check(ALICE_URL, bob, method=method)[0] == 403
        release.set()
        await scene.checker.drain()
    finally:
        event.remove(scene.database.engine.sync_engine, "before_cursor_execute", executed)
    assert sorted(inserts) == [2, 4]
    async with scene.database.session() as session:
        rows = (await session.execute(select(AuditEventRow).where(
            AuditEventRow.action == "AuthService.Check"))).scalars().all()
    assert sorted(r.details["method"] for r in rows) == sorted(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
    assert {(r.actor, r.outcome, r.error_code) for r in rows} == {("bob", "DENIED", "PERMISSION_DENIED")}


async def test_the_routed_host_is_part_of_what_is_remembered(scene: Scene) -> None:
    alice, _ = await scene.sign_in("alice")
    assert scene.both(ALICE_URL, alice)[0] == 200
    # The same headers with another routed host (a request line naming bob's instance): refused.
    assert scene.both(ALICE_URL, alice, rh="i2.aigc.test")[:3:2] == (403, b"ROUTED_HOST_MISMATCH\n")
    assert scene.both(ALICE_URL, alice, rh=None)[:3:2] == (403, b"ROUTED_HOST_MISSING\n")
    # A second X-Original-URL (which one did the proxy route?) is another key, and refused.
    assert scene.both(ALICE_URL, alice, x_original_url=ALICE_URL)[0] == 403


async def test_at_most_limit_answers_are_kept_the_oldest_dropped_first(database) -> None:
    scene = await Scene(database, limit=3).start()
    alice, _ = await scene.sign_in("alice")
    urls = [f"https://i1.aigc.test/{n}" for n in range(5)]
    for url in urls:
        assert scene.check(url, alice)[0] == 200
    def kept() -> list[str]:
        return [dict(zip(key[1::2], key[2::2], strict=True))[b"x-original-url"].decode()
                for key in scene.answers._remembered]

    assert kept() == urls[2:]
    # Outsized inputs are decided each time and never remembered (a flood of 256 KiB heads is no memory flood).
    huge = "https://i1.aigc.test/" + "x" * MAX_REMEMBERED_INPUT
    assert scene.both(huge, alice)[0] == 200 and scene.check(huge, alice)[0] == 200
    assert kept() == urls[2:]
    await scene.sessions.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_answers_given_again_equal_fresh_decisions_whatever_happens_between(database, seed: int) -> None:
    """A model check: a seeded random interleaving of checks (three users, a forged cookie and none, on four
    URLs) and of the changes a check depends on (owners, routes, known, revocations and new sign-ins); every
    answer the remembering Answers gives must equal the one decided afresh."""
    rng = random.Random(seed)
    scene = await Scene(database).start()
    users = {u: await scene.sign_in(u) for u in ("alice", "bob", "carol")}
    cookies: list[str | None] = [users["alice"][0], users["bob"][0], users["carol"][0], "forged", None]
    urls = [ALICE_URL, BOB_URL, "https://i3.aigc.test/", "not a url"]
    outcomes: dict[int, int] = {}
    counted = given_again()
    for _ in range(400):
        if rng.random() < 0.1:
            key = rng.choice((A, B))
            kind = rng.randrange(4)
            if kind == 0:
                scene.owners.set_owner(key, rng.choice((None, "alice", "bob", "carol")))
            elif kind == 1:
                scene.owners.set_routes(key, {Route(rng.choice(("i1.aigc.test", "i2.aigc.test", "i3.aigc.test")))})
            elif kind == 2:
                scene.owners.set_known(rng.random() < 0.7)
            else:
                n = rng.randrange(3)
                user = ("alice", "bob", "carol")[n]
                await scene.revoke(users[user][1])
                if rng.random() < 0.5:  # signed in again: a new cookie (the old one stays revoked)
                    users[user] = await scene.sign_in(user)
                    cookies[n] = users[user][0]
            continue
        cookie, url = rng.choice(cookies), rng.choice(urls)
        answer = scene.check(url, cookie)
        if answer is None:  # a revoked session's row to read: what the app's check does
            await scene.sessions.principal(cookie)
            answer = scene.check(url, cookie)
        assert answer is not None and answer == scene.check(url, cookie, fresh=True)
        outcomes[answer[0]] = outcomes.get(answer[0], 0) + 1
    assert set(outcomes) == {200, 401, 403}, outcomes
    assert given_again() - counted >= 50  # the answers given again were many, between changes of every kind
    await scene.sessions.close()
