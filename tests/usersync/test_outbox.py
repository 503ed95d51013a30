"""Outbox delivery to Logto (real PostgreSQL, the Logto double): format, order, outages, restarts, replicas."""
from __future__ import annotations

import asyncio
import random

from sqlalchemy import select, update

from aigc_gateway.db.models import AuditEventRow, UserSyncOutboxRow
from aigc_gateway.services.usersync.models import MirrorEntryRow
from tests.plugins.kube import wait_for

from .support import NS, Standalone, drained, entry, install, outbox, outbox_rows, settings_for, uninstall, usersync_of


async def test_installs_and_uninstalls_of_three_users_are_mirrored_in_the_original_format(
        start_gateway, database, database_url, issuer, logto) -> None:
    for user in ("alice", "bob", "carol"):
        logto.add_user(user, custom_data={"theme": "dark"})
    await start_gateway("usersync", settings=settings_for(database_url, issuer, logto))

    await install(database, "alice", "sd-cpu", 0)
    await install(database, "bob", "sd-cpu", 1)
    await install(database, "carol", "sd-gpu", 0)
    await install(database, "alice", "comfyui", 0, namespace="team-b")
    await drained(database)
    assert logto.custom_data("alice") == {"theme": "dark", "aigc-sd-cpu": entry("sd-cpu", 0),
                                          "team-b-comfyui": entry("comfyui", 0, "team-b")}
    assert logto.custom_data("bob") == {"theme": "dark", "aigc-sd-cpu": entry("sd-cpu", 1)}
    assert logto.custom_data("carol") == {"theme": "dark", "aigc-sd-gpu": entry("sd-gpu", 0)}

    await uninstall(database, "alice", "sd-cpu", 0)
    await uninstall(database, "carol", "sd-gpu", 0)
    await drained(database)
    # The key is gone — not stored as null, which is all a shallow-merge PATCH could do.
    assert logto.custom_data("alice") == {"theme": "dark", "team-b-comfyui": entry("comfyui", 0, "team-b")}
    assert logto.custom_data("carol") == {"theme": "dark"}
    assert logto.custom_data("bob") == {"theme": "dark", "aigc-sd-cpu": entry("sd-cpu", 1)}
    removals = [w for w in logto.writes if w.user in ("alice", "carol") and w.kind == "replace"]
    assert removals and all(None not in w.result.values() for w in removals)

    async with database.session() as session:
        mirror = {(m.user, m.namespace, m.template): m.instance_id
                  for m in (await session.execute(select(MirrorEntryRow))).scalars()}
        audits = list((await session.execute(select(AuditEventRow).where(
            AuditEventRow.action == "UserSync.WriteCustomData"))).scalars())
    assert mirror == {("alice", "team-b", "comfyui"): 0, ("bob", NS, "sd-cpu"): 1}
    assert {a.resource for a in audits} == {"users/alice", "users/bob", "users/carol"}
    assert any(a.details.get("removed") == ["aigc-sd-gpu"] and a.actor == "service:usersync" for a in audits)


async def test_logto_down_during_ten_installs_then_all_appear_in_order(
        start_gateway, database, database_url, issuer, logto) -> None:
    logto.add_user("alice")
    logto.add_user("bob")
    await start_gateway("usersync", settings=settings_for(database_url, issuer, logto))
    await logto.go_down("refuse")
    for n in range(10):
        await install(database, "alice", f"tpl-{n}", 0)
    # bob's one key goes through install, uninstall, install: only order makes the last one win
    await install(database, "bob", "tpl-0", 1)
    await uninstall(database, "bob", "tpl-0", 1)
    await install(database, "bob", "tpl-0", 4)

    async def retried() -> bool:
        rows = await outbox_rows(database)
        return all(r.delivered_at is None for r in rows) and any(r.attempts >= 2 for r in rows)

    await wait_for(retried, timeout=20, what="failed delivery attempts while Logto is down")
    assert logto.custom_data("alice") == {} and logto.custom_data("bob") == {}
    assert all("Logto is unavailable" in r.last_error for r in await outbox_rows(database) if r.attempts)

    await logto.come_up()
    await drained(database)
    assert logto.custom_data("alice") == {f"aigc-tpl-{n}": entry(f"tpl-{n}", 0) for n in range(10)}
    assert logto.custom_data("bob") == {"aigc-tpl-0": entry("tpl-0", 4)}
    assert all(r.last_error == "" for r in await outbox_rows(database))


async def test_outbox_survives_a_restart_of_usersync(start_gateway, database, database_url, issuer, logto) -> None:
    logto.add_user("alice")
    settings = settings_for(database_url, issuer, logto)
    first = await start_gateway("usersync", settings=settings)
    await logto.go_down("503")
    await install(database, "alice", "sd-cpu", 2)
    await wait_for(lambda: outbox_rows(database), timeout=5)
    await wait_for(lambda: _attempted(database), timeout=20, what="a failed attempt")
    await first.close()  # usersync stops with the row undelivered
    await logto.come_up()
    assert logto.custom_data("alice") == {}
    await start_gateway("usersync", settings=settings)
    await drained(database)
    assert logto.custom_data("alice") == {"aigc-sd-cpu": entry("sd-cpu", 2)}


async def _attempted(database) -> bool:
    return any(r.attempts for r in await outbox_rows(database))


async def test_two_replicas_deliver_each_user_in_order(start_gateway, database, database_url, issuer, logto) -> None:
    users = [f"user-{n}" for n in range(6)]
    for user in users:
        logto.add_user(user)
    # Every row of one user's key carries a larger id than the one before: any out-of-order write shows.
    expected: dict[str, dict[str, int | None]] = {u: {} for u in users}
    rng = random.Random(7)
    for step in range(1, 25):
        for user in users:
            template = f"tpl-{rng.randrange(3)}"
            value = None if rng.random() < 0.3 else step
            await outbox(database, user, template, value)
            expected[user][f"{NS}-{template}"] = value
    # Two replicas: two processes' worth of engines, Logto clients and listeners, one database.
    await asyncio.gather(*(start_gateway("usersync", settings=settings_for(database_url, issuer, logto,
                                                                           delivery_batch_size=3)) for _ in "ab"))
    await drained(database, timeout=60)
    for user in users:
        want = {k: entry(k.split("-", 1)[1], v) for k, v in expected[user].items() if v is not None}
        assert logto.custom_data(user) == want
        last_seen: dict[str, int] = {}
        for write in (w for w in logto.writes if w.user == user):
            for key, value in write.result.items():
                if value is not None:
                    assert int(value["ID"]) >= last_seen.get(key, -1), f"{user} {key} went back in time"
                    last_seen[key] = int(value["ID"])


async def test_rows_of_a_user_unknown_to_logto_are_abandoned_and_audited(
        start_gateway, database, database_url, issuer, logto) -> None:
    logto.add_user("alice")
    await start_gateway("usersync", settings=settings_for(database_url, issuer, logto))
    await outbox(database, "ghost", "sd-cpu", 1)
    await install(database, "alice", "sd-cpu", 0)
    await drained(database)
    ghost = await outbox_rows(database, "ghost")
    assert ghost[0].last_error.startswith("abandoned: ")
    assert logto.custom_data("alice") == {"aigc-sd-cpu": entry("sd-cpu", 0)}  # other users are not held up
    async with database.session() as session:
        failures = list((await session.execute(select(AuditEventRow).where(
            AuditEventRow.resource == "users/ghost"))).scalars())
    assert [f.outcome for f in failures] == ["FAILURE"]


async def test_429_is_waited_out_and_redelivery_changes_nothing(
        start_gateway, database, database_url, issuer, logto) -> None:
    logto.add_user("alice")
    logto.fail_next(3, status=429, retry_after="0.2")
    gateway = await start_gateway("usersync", settings=settings_for(database_url, issuer, logto))
    await install(database, "alice", "sd-cpu", 0)
    await drained(database)
    assert logto.custom_data("alice") == {"aigc-sd-cpu": entry("sd-cpu", 0)}
    assert [s for _, p, s in logto.requests if p.startswith("/api/")].count(429) == 3
    writes = len(logto.writes)
    # At least once: a row delivered again (a crash before the commit) writes nothing new.
    async with database.session() as session:
        await session.execute(update(UserSyncOutboxRow).values(delivered_at=None))
    usersync_of(gateway).delivery.kick()
    await drained(database)
    assert len(logto.writes) == writes
    assert logto.custom_data("alice") == {"aigc-sd-cpu": entry("sd-cpu", 0)}


async def test_a_user_held_by_another_replica_is_skipped_not_waited_for(
        database, database_url, issuer, logto) -> None:
    from aigc_gateway.locks import try_transaction_lock
    from aigc_gateway.services.usersync.customdata import user_lock_name

    logto.add_user("alice")
    logto.add_user("bob")
    await outbox(database, "alice", "sd-cpu", 1)
    await outbox(database, "bob", "sd-cpu", 2)
    async with Standalone(settings_for(database_url, issuer, logto)) as usersync:
        delivery = usersync.delivery
        async with try_transaction_lock(database, user_lock_name("alice")) as held:  # "another replica" delivering alice
            assert held is not None
            outcome = await delivery.deliver_user("alice")
            assert outcome.skipped and outcome.rows == 0
            result = await delivery.run_once()
            assert result.delivered == 1  # bob only
            assert logto.custom_data("alice") == {}
        assert (await delivery.deliver_user("alice")).rows == 1
        assert logto.custom_data("alice") == {"aigc-sd-cpu": entry("sd-cpu", 1)}
        assert delivery.delivered_rows == 2


async def test_a_committed_change_wakes_the_delivery_before_the_next_poll(
        start_gateway, database, database_url, issuer, logto, monkeypatch) -> None:
    from aigc_gateway.services.usersync import outbox as module

    # The loop's idle wait, observed: the test commits only once the loop is asleep for its minute-long
    # poll (not mid-pass), and learns whether the wait ended by a wake-up or by its timeout.
    idle, ends = asyncio.Event(), []
    wait = module.wait_event

    async def observed(event: asyncio.Event, timeout: float) -> bool:
        idle.set()
        woken = await wait(event, timeout)
        ends.append(woken)
        return woken
    monkeypatch.setattr(module, "wait_event", observed)
    logto.add_user("alice")
    logto.add_user("bob")
    await install(database, "alice", "sd-cpu", 0)
    await start_gateway("usersync", settings=settings_for(database_url, issuer, logto, delivery_poll_seconds=60))
    await drained(database)  # the first pass at start
    await asyncio.wait_for(idle.wait(), 30)  # the loop now sleeps for a minute unless woken
    before = len(ends)
    await install(database, "bob", "sd-cpu", 1)  # commits with pg_notify('aigc_instances', ...)
    await drained(database, timeout=15)
    assert logto.custom_data("bob") == {"aigc-sd-cpu": entry("sd-cpu", 1)}
    assert ends[before] is True  # the wait ended by a wake-up, not by the 60 s poll
