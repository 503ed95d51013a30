"""usersync calls survive a crash (issue 20): `aigc-gateway serve usersync` is held at the named point after a
call's effect (a Logto write, or its committed transaction) and before its stored outcome, shown to keep its
claim while alive, killed there with SIGKILL, and the same request retried on a second process: it answers
with what the first attempt did (never "nothing changed", "no drift" or "not disputed" because the first
attempt's effect is there now); replaying it again gives the same bytes. Points are forced, never timed.
The Logto Management API is the double (tests/doubles/logto.py), PostgreSQL and the apiserver are real.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from aigc_gateway.api.v1 import usersync_pb2, usersync_pb2_grpc
from aigc_gateway.db import Database
from aigc_gateway.services.usersync import faults  # noqa: F401  (registers the points held at)
from tests.doubles.logto import LogtoDouble

from ..instance.conftest import create_template
from ..plugins.gateway import TEST_SERVICE_TOKEN, bearer
from ..plugins.kube import Game, api_client
from ..plugins.logto import usersync_config
from ..plugins.oidc import Issuer
from ..plugins.testbed import Testbed
from ..served import LEASE, ServiceProcess, held_then_killed, launch, write_config
from .support import NS, dispute, drained, entry, install, own

pytestmark = pytest.mark.testbed  # ResolveDisputedInstance reads the GameServerSet

Stub = usersync_pb2_grpc.UserSyncServiceStub


@pytest.fixture
async def usersync_process(tmp_path: Path, database_url: str, issuer: Issuer, testbed: Testbed,
                           logto: LogtoDouble) -> AsyncIterator[Callable[[], ServiceProcess]]:
    made: list[ServiceProcess] = []

    def make() -> ServiceProcess:
        made.append(write_config(tmp_path, "usersync", len(made), {
            "database": {"url": database_url, "pool_size": 5},
            "oidc": {"issuer": issuer.url, "audience": [issuer.audience]},
            "service_identity": {"token": TEST_SERVICE_TOKEN},
            "kubernetes": {"kubeconfig": str(testbed.kubeconfig)},
            "logging": {"level": "INFO", "json": True},
            "usersync": usersync_config(logto),
        }))
        return made[-1]

    yield make
    for process in made:
        await process.stop()


async def crash_and_retry(usersync_process: Callable[[], ServiceProcess], point: str, hold_dir: Path,
                          method: str, message: Any, admin: Any,
                          before: Callable[[Stub], Awaitable[None]] | None = None) -> Any:
    """The other process serves first (``before`` runs on it), then the held one gets the call."""
    held, other = usersync_process(), usersync_process()
    b = Stub(await launch(other))
    if before is not None:
        await before(b)
    a = Stub(await launch(held, hold=point, hold_dir=hold_dir))

    def send(stub: Stub) -> Awaitable[Any]:
        return getattr(stub, method)(message, metadata=admin)
    answer, seconds, waited = await held_then_killed(held, send(a), point, hold_dir, lambda: send(b))
    print(f"{method} killed at {point}: answered {seconds:.2f}s after the kill ({waited} in-progress answers; "
          f"lease {LEASE}s)")
    again = await send(b)
    assert again.SerializeToString(deterministic=True) == answer.SerializeToString(deterministic=True)
    return answer


def admin_of(issuer: Issuer) -> Any:
    return bearer(issuer.mint("root", roles=["admin"]))


async def test_sync_user_killed_after_its_logto_write_answers_what_it_changed(
        tmp_path: Path, database: Database, issuer: Issuer, logto: LogtoDouble, usersync_process) -> None:
    logto.add_user("alice", custom_data={"lang": "en"})
    await own(database, "sd-cpu", 0, "alice")  # no outbox row: only SyncUser writes the entry
    answer = await crash_and_retry(usersync_process, "usersync.sync.after_write", tmp_path, "SyncUser",
                                   usersync_pb2.SyncUserRequest(user="users/alice", request_id="sync-1"),
                                   admin_of(issuer))
    assert answer.changed and [(c.user, c.key, c.id) for c in answer.changes] == [("alice", f"{NS}-sd-cpu", 0)]
    assert logto.custom_data("alice") == {"lang": "en", f"{NS}-sd-cpu": entry("sd-cpu", 0)}


async def test_cleanup_killed_after_queueing_answers_the_users_it_queued(
        tmp_path: Path, database: Database, issuer: Issuer, logto: LogtoDouble, usersync_process) -> None:
    """The users are found from the mirror only (the rows were purged first); the survivor delivers the
    removals, which empties the mirror, before the retry: it still answers both users."""
    for user in ("u1", "u2"):
        logto.add_user(user, custom_data={"lang": "en"})

    async def installed(_: Stub) -> None:
        await install(database, "u1", "sd-cpu", 0)
        await install(database, "u2", "sd-cpu", 1)
        await drained(database)
        await own(database, "sd-cpu", 0, None, "RELEASING")
        await own(database, "sd-cpu", 1, None, "RELEASING")

    answer = await crash_and_retry(usersync_process, "usersync.cleanup.after_queue", tmp_path, "CleanupTemplate",
                                   usersync_pb2.CleanupTemplateRequest(template=f"namespaces/{NS}/templates/sd-cpu",
                                                                       request_id="cleanup-1"),
                                   admin_of(issuer), installed)
    assert list(answer.users) == ["u1", "u2"]
    await drained(database)
    assert logto.custom_data("u1") == logto.custom_data("u2") == {"lang": "en"}


async def test_reconcile_killed_after_a_repair_answers_the_drift_it_found(
        tmp_path: Path, database: Database, issuer: Issuer, logto: LogtoDouble, usersync_process) -> None:
    logto.add_user("alice", custom_data={"lang": "en"})
    logto.add_user("bob", custom_data={"lang": "de"})
    await own(database, "sd-cpu", 0, "alice")
    answer = await crash_and_retry(usersync_process, "usersync.reconcile.after_write", tmp_path, "Reconcile",
                                   usersync_pb2.ReconcileRequest(request_id="reconcile-1"), admin_of(issuer))
    assert (answer.users_checked, answer.repaired_count) == (2, 1)
    assert [(d.user, d.key, d.id) for d in answer.drift] == [("alice", f"{NS}-sd-cpu", 0)]
    assert logto.custom_data("alice") == {"lang": "en", f"{NS}-sd-cpu": entry("sd-cpu", 0)}


async def test_import_killed_after_a_template_answers_what_it_imported(
        tmp_path: Path, database: Database, issuer: Issuer, logto: LogtoDouble, testbed: Testbed,
        k8s_namespace: str, usersync_process) -> None:
    """Killed after the first template's rows were committed: the retry reports them imported (not unchanged)
    and imports the second template itself."""
    ns = k8s_namespace
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, ns)
        for name in ("sd-a", "sd-b"):
            await create_template(game, testbed, name, replicas=1)  # id 0 runs
    logto.add_user("alice", custom_data={f"{ns}-sd-a": entry("sd-a", 0, ns)})
    logto.add_user("bob", custom_data={f"{ns}-sd-b": entry("sd-b", 0, ns)})
    answer = await crash_and_retry(usersync_process, "usersync.import.after_template", tmp_path, "ImportFromLogto",
                                   usersync_pb2.ImportFromLogtoRequest(request_id="import-1"), admin_of(issuer))
    assert answer.users_scanned == 2
    assert [(e.user, e.template, e.id) for e in answer.imported] == [("alice", "sd-a", 0), ("bob", "sd-b", 0)]
    assert not answer.unchanged and not answer.conflicts


async def test_resolve_killed_after_its_commit_answers_the_decision(
        tmp_path: Path, database: Database, issuer: Issuer, logto: LogtoDouble, usersync_process) -> None:
    """The template is gone (no GameServerSet): the id goes to nobody and gets no slot."""
    await dispute(database, "sd-gone", 3, ["carol", "dave"])
    name = f"namespaces/{NS}/templates/sd-gone/instances/3"
    answer = await crash_and_retry(usersync_process, "usersync.resolve.after_commit", tmp_path,
                                   "ResolveDisputedInstance",
                                   usersync_pb2.ResolveDisputedInstanceRequest(name=name, request_id="resolve-1"),
                                   admin_of(issuer))
    assert (answer.name, answer.owner, answer.slot, list(answer.claimants)) == (name, "", "", ["carol", "dave"])
