"""POST /webhooks/logto on a running usersync server: signature, age, replay, and User.Deleted."""
from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from aigc_gateway.db.models import AuditEventRow
from aigc_gateway.services.usersync.models import WebhookDeliveryRow
from aigc_gateway.services.usersync.signature import Refused, check_age, subject_user, verify_signature

from .support import instances, own, settings_for, usersync_of


def test_signature_and_age_checks() -> None:
    key, body = b"k" * 32, b'{"event":"User.Deleted"}'
    good = hmac.new(key, body, hashlib.sha256).hexdigest()
    verify_signature(key, body, good)
    verify_signature(key, body, "sha256=" + good.upper())  # Logto versions that prefix the digest
    for header, code in ((None, "SIGNATURE_MISSING"), ("", "SIGNATURE_MISSING"), (good[:-1] + "0", "BAD_SIGNATURE"),
                         (hmac.new(b"other", body, hashlib.sha256).hexdigest(), "BAD_SIGNATURE")):
        with pytest.raises(Refused) as err:
            verify_signature(key, body, header)
        assert err.value.code == code and err.value.status == 401
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert check_age({"createdAt": "2026-01-01T11:58:00.000Z"}, now, timedelta(minutes=5)).minute == 58
    for created in ("2026-01-01T11:54:59Z", "2026-01-01T12:02:00Z", "yesterday", None):
        with pytest.raises(Refused):
            check_age({"createdAt": created}, now, timedelta(minutes=5))
    assert subject_user({"data": {"id": "u1"}, "params": {"userId": "u2"}}) == "u1"
    assert subject_user({"params": {"userId": "u2"}}) == "u2" and subject_user({"userId": "u3"}) == "u3"


async def _started(start_gateway, database_url, issuer, logto, **usersync):
    gateway = await start_gateway("usersync", settings=settings_for(database_url, issuer, logto, **usersync))
    return f"http://127.0.0.1:{usersync_of(gateway).webhooks.port}/webhooks/logto"


async def _post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=body, headers=headers)


async def _count(database, model) -> int:
    async with database.session() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar())


async def test_signed_user_deleted_marks_paused_instances_orphaned(
        start_gateway, database, database_url, issuer, logto) -> None:
    url = await _started(start_gateway, database_url, issuer, logto)
    logto.add_user("alice")
    await own(database, "sd-cpu", 3, "alice", "PAUSED")
    await own(database, "sd-gpu", 0, "alice", "PAUSED")
    await own(database, "sd-cpu", 0, "bob", "LIVE")
    body, headers = logto.webhook("User.Deleted", "alice")
    response = await _post(url, body, headers)
    assert response.status_code == 200, response.text
    assert response.json()["orphaned"] == ["namespaces/aigc/templates/sd-cpu/instances/3",
                                           "namespaces/aigc/templates/sd-gpu/instances/0"]
    rows = await instances(database)
    assert rows[("aigc", "sd-cpu", 3)].orphaned and rows[("aigc", "sd-gpu", 0)].orphaned
    assert rows[("aigc", "sd-cpu", 3)].slot == "PAUSED"  # the disk stays
    assert not rows[("aigc", "sd-cpu", 0)].orphaned  # bob is untouched
    async with database.session() as session:
        event = (await session.execute(select(AuditEventRow).where(
            AuditEventRow.action == "UserSync.Webhook", AuditEventRow.outcome == "SUCCESS"))).scalar_one()
    assert event.resource == "users/alice" and event.details["policy"] == "pause"

    replay = await _post(url, body, headers)
    assert replay.status_code == 409 and replay.json()["code"] == "REPLAYED"


async def test_bad_signature_replay_and_stale_deliveries_are_refused_and_change_nothing(
        start_gateway, database, database_url, issuer, logto) -> None:
    url = await _started(start_gateway, database_url, issuer, logto)
    logto.add_user("alice")
    await own(database, "sd-cpu", 3, "alice", "PAUSED")
    before = {k: (r.slot, r.owner, r.orphaned) for k, r in (await instances(database)).items()}

    body, headers = logto.webhook("User.Deleted", "alice", key="not-the-signing-key")
    bad = await _post(url, body, headers)
    tampered_body, good_headers = logto.webhook("User.Deleted", "alice")
    tampered = await _post(url, tampered_body.replace(b"alice", b"alicf"), good_headers)
    unsigned = await _post(url, tampered_body, {"content-type": "application/json"})
    stale_body, stale_headers = logto.webhook("User.Deleted", "alice",
                                              created_at=datetime.now(UTC) - timedelta(hours=1))
    stale = await _post(url, stale_body, stale_headers)
    assert [(r.status_code, r.json()["code"]) for r in (bad, tampered, unsigned, stale)] == [
        (401, "BAD_SIGNATURE"), (401, "BAD_SIGNATURE"), (401, "SIGNATURE_MISSING"), (400, "STALE")]
    assert {k: (r.slot, r.owner, r.orphaned) for k, r in (await instances(database)).items()} == before
    assert await _count(database, WebhookDeliveryRow) == 0

    # A replay of an acknowledged event is refused too, and changes nothing.
    created_body, created_headers = logto.webhook("User.Created", "carol")
    first = await _post(url, created_body, created_headers)
    again = await _post(url, created_body, created_headers)
    assert first.status_code == 200 and first.json()["outcome"] == "acknowledged"
    assert again.status_code == 409
    assert await _count(database, WebhookDeliveryRow) == 1
    assert {k: (r.slot, r.owner, r.orphaned) for k, r in (await instances(database)).items()} == before
    async with database.session() as session:
        denied = list((await session.execute(select(AuditEventRow.error_code).where(
            AuditEventRow.action == "UserSync.Webhook", AuditEventRow.outcome == "DENIED"))).scalars())
    assert sorted(denied) == ["BAD_SIGNATURE", "BAD_SIGNATURE", "REPLAYED", "SIGNATURE_MISSING", "STALE"]


async def test_user_deleted_while_the_instance_service_is_down_is_refused_for_a_retry(
        start_gateway, database, database_url, issuer, logto) -> None:
    """The running instance must be paused first; the instance service is not running (its port is closed):
    503, nothing kept, so Logto's retry of the same delivery is handled rather than refused as a replay."""
    url = await _started(start_gateway, database_url, issuer, logto)
    await own(database, "sd-cpu", 1, "alice", "LIVE")
    await own(database, "sd-gpu", 2, "alice", "PAUSED")
    body, headers = logto.webhook("User.Deleted", "alice")
    for _ in range(2):
        response = await _post(url, body, headers)
        assert response.status_code == 503 and response.json()["code"] == "ACTION_FAILED"
    rows = await instances(database)
    assert not rows[("aigc", "sd-cpu", 1)].orphaned and not rows[("aigc", "sd-gpu", 2)].orphaned
    assert await _count(database, WebhookDeliveryRow) == 0


async def test_without_a_signing_key_no_webhook_listener_is_started(
        start_gateway, database_url, issuer, logto) -> None:
    gateway = await start_gateway("usersync", settings=settings_for(database_url, issuer, logto,
                                                                    webhook_signing_key=""))
    assert usersync_of(gateway).webhooks.server is None


async def test_an_oversized_body_is_refused_and_nothing_is_kept(start_gateway, database, database_url, issuer,
                                                                logto) -> None:
    url = await _started(start_gateway, database_url, issuer, logto)
    body, headers = logto.webhook("User.Deleted", "alice")
    response = await _post(url, body + b" " * (256 * 1024), headers)
    assert response.status_code == 413 and response.json()["code"] == "TOO_LARGE"
    assert await _count(database, WebhookDeliveryRow) == 0
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).status_code == 405  # POST only, as before
