"""A request-id claim whose outcome could not be written (the database link went down between the call's claim and
its finish, as in a PostgreSQL restart) does not block the retry for as long as its replica lives: the retry that
reaches the same replica takes it over at once; a retry reaching another replica still waits for the live holder
(it cannot know the call is over). Found by bench/chaos.py's pg-restart: every retry of an interrupted
DeleteInstance was ABORTED "still in progress" until the client gave up."""
from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest
from sqlalchemy.engine import make_url

from aigc_gateway.db import Database
from aigc_gateway.errors import GatewayError
from aigc_gateway.idempotency import IdempotencyStore
from aigc_gateway.replicas import ReplicaRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from toxic import Toxiproxy  # noqa: E402


@pytest.fixture
def toxiproxy(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Toxiproxy(tmp_path / "toxiproxy.log") as server:
        yield server


async def test_a_claim_whose_finish_failed_is_taken_over_by_its_own_replica(database_url: str, toxiproxy) -> None:
    url = make_url(database_url)
    link = toxiproxy.proxy("pg", f"{url.host}:{url.port or 5432}")
    proxied = url.set(host="127.0.0.1", port=link.port).render_as_string(hide_password=False)
    db, other_db = Database(proxied, pool_size=2), Database(database_url, pool_size=2)
    # The holder's liveness (heartbeat row and session lock) on a link of its own that stays up: this test is
    # about a live replica whose finish write was lost, not about a replica that looks dead.
    liveness_db = Database(database_url, pool_size=2)
    store = IdempotencyStore(db, ReplicaRegistry(liveness_db, 10.0))
    other = IdempotencyStore(other_db, ReplicaRegistry(other_db, 10.0))
    try:
        claim, stored = await store.claim("Svc.Delete", "alice", "rid-1", b"req")
        assert stored is None and claim.attempt == 0
        link.enable(False)  # every connection closed, new ones refused
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises for a lost connection
            await store.finish(claim, grpc.StatusCode.UNAVAILABLE, b"")
        link.enable(True)

        with pytest.raises(GatewayError) as waited:  # another replica: the holder is alive, so it waits
            await other.claim("Svc.Delete", "alice", "rid-1", b"req")
        assert waited.value.code == grpc.StatusCode.ABORTED

        retry, stored = await store.claim("Svc.Delete", "alice", "rid-1", b"req")
        assert stored is None and retry.attempt == 1 and retry.holder == claim.holder
        with pytest.raises(GatewayError):  # and now it runs: a second retry waits for it
            await store.claim("Svc.Delete", "alice", "rid-1", b"req")
        await store.finish(retry, grpc.StatusCode.OK, b"done")
        again, stored = await other.claim("Svc.Delete", "alice", "rid-1", b"req")
        assert stored is not None and stored.payload == b"done"
    finally:
        await store.close()
        await other.close()
        await db.close()
        await other_db.close()
        await liveness_db.close()
