"""Request ids survive a crash (issue 20): `aigc-gateway serve instance` is held at each named point between
a call's replay claim and its stored outcome, shown to keep its claim while alive, killed there with SIGKILL,
and the same request retried on a second process: it is taken over within the replica lease and answered
with what the first attempt did, once; replaying it again gives the same bytes.

The points are forced (AIGC_GATEWAY_HOLD and a file barrier), never timed; the kill-to-answer time is printed.
"""
from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.services.instance import faults  # noqa: F401  (registers the points held at)

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from ..served import LEASE, launch, retry_until_answered, wait_file
from .conftest import SAMPLE, Client, State, create_template

pytestmark = pytest.mark.testbed

NAME = "namespaces/{ns}/templates/" + SAMPLE + "/instances/0"

# Every point a call of each method passes between its claim and its stored outcome.
POINTS = {
    "CreateInstance": ["call.after_claim", "install.after_intent", "install.after_gss_write",
                       "install.after_commit", "call.before_finish"],
    "PauseInstance": ["call.after_claim", "pause.after_intent", "pause.after_gss_write", "pause.after_commit",
                      "call.before_finish"],
    "ResumeInstance": ["call.after_claim", "resume.after_intent", "resume.after_gss_write", "resume.after_commit",
                       "call.before_finish"],
    "DeleteInstance": ["call.after_claim", "uninstall.after_intent", "uninstall.after_gss_write",
                       "uninstall.after_commit", "uninstall.after_disk_delete", "uninstall.after_release",
                       "call.before_finish"],
    "RestartInstance": ["call.after_claim", "restart.after_effect", "restart.after_pod_delete",
                        "call.before_finish"],
}
CASES = [(m, p) for m, points in POINTS.items() for p in points]


def request(method: str, ns: str, request_id: str) -> Any:
    name = NAME.format(ns=ns)
    return {
        "CreateInstance": lambda: instance_pb2.CreateInstanceRequest(
            parent=f"namespaces/{ns}/templates/{SAMPLE}", request_id=request_id),
        "PauseInstance": lambda: instance_pb2.PauseInstanceRequest(name=name, request_id=request_id),
        "ResumeInstance": lambda: instance_pb2.ResumeInstanceRequest(name=name, request_id=request_id),
        "DeleteInstance": lambda: instance_pb2.DeleteInstanceRequest(name=name, request_id=request_id),
        "RestartInstance": lambda: instance_pb2.RestartInstanceRequest(name=name, request_id=request_id),
    }[method]()


def send(c: Client, user: str, method: str, message: Any) -> Awaitable[instance_pb2.Instance]:
    return getattr(c.stub, method)(message, metadata=c.md(user))


async def rows(db: Database, ns: str) -> list[tuple[int, str, str | None]]:
    async with db.session() as session:
        found = await session.execute(select(InstanceRow).where(InstanceRow.namespace == ns)
                                      .order_by(InstanceRow.id))
        return [(r.id, r.slot, r.owner) for r in found.scalars()]


@pytest.mark.parametrize(("method", "point"), CASES, ids=[f"{m}-{p}" for m, p in CASES])
async def test_killed_at_point_then_retried_elsewhere(method: str, point: str, tmp_path: Path, testbed: Testbed,
                                                     game: Game, service_process, client_for,
                                                     database: Database) -> None:
    await create_template(game, testbed)
    held, other = await service_process(), await service_process()
    b = client_for(await launch(other))
    name = NAME.format(ns=game.namespace)
    if method != "CreateInstance":
        await b.install("alice")
        await b.wait_state("alice", name, State.RUNNING)
    if method == "ResumeInstance":
        await b.pause("alice", name)
        await b.wait_state("alice", name, State.PAUSED)
    pod_before = (await game.pods(SAMPLE)).get(0)

    a = client_for(await launch(held, hold=point, hold_dir=tmp_path))
    message = request(method, game.namespace, f"req-{method}")
    first = asyncio.ensure_future(send(a, "alice", method, message))
    await wait_file(tmp_path / f"{point}.reached", held)

    # Alive, however long it takes: the retry is told to come back, and nothing runs a second time.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await send(b, "alice", method, message)
    assert err.value.code() == grpc.StatusCode.ABORTED and "in progress" in (err.value.details() or "")

    assert held.proc is not None
    held.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError):
        await first
    answer, waited = await retry_until_answered(lambda: send(b, "alice", method, message))
    print(f"{method} killed at {point}: answered {time.monotonic() - killed:.2f}s after the kill "
          f"({waited} in-progress answers; lease {LEASE}s)")

    # What the first attempt did (or, if it had done nothing yet, what it would have done), once.
    assert (answer.name, answer.owner) == (name, "alice")
    expected = {"CreateInstance": None, "PauseInstance": None, "ResumeInstance": None,
                "DeleteInstance": State.UNINSTALLING, "RestartInstance": None}[method]
    if expected is not None:
        assert answer.state == expected
    found = await rows(database, game.namespace)
    slot = {"CreateInstance": "LIVE", "PauseInstance": "PAUSED", "ResumeInstance": "LIVE",
            "RestartInstance": "LIVE"}.get(method)
    # A delete answers once the disk is gone (release_wait_seconds 30 on the test bed): the id is FREE.
    assert found == ([(0, slot, "alice")] if slot else [(0, "FREE", None)])
    spec = (await game.get_gss(SAMPLE))["spec"]
    assert spec["replicas"] == (1 if slot == "LIVE" else 0)  # one install, never two
    if method == "RestartInstance" and point != "call.after_claim":
        # The pod the first attempt chose was deleted; its successor was not deleted by the retry.
        async def replaced() -> bool:
            pod = (await game.pods(SAMPLE)).get(0)
            return pod is not None and pod.metadata.uid != pod_before.metadata.uid
        await wait_for(replaced, 60, what="a new pod for 0")

    # The stored outcome replays byte for byte, on either process.
    again = await send(b, "alice", method, message)
    assert again.SerializeToString(deterministic=True) == answer.SerializeToString(deterministic=True)
    await b.wait_consistent(60)


async def test_alice_delete_never_answers_with_bobs_install_of_her_id(tmp_path: Path, testbed: Testbed, game: Game,
                                                                    service_process, client_for,
                                                                    database: Database) -> None:
    """Alice's DeleteInstance has freed id 0 and is held before it answers; bob's install takes id 0; alice's
    answer (and its replay) still describes her instance, never bob's."""
    await create_template(game, testbed)
    held, other = await service_process(), await service_process()
    b = client_for(await launch(other))
    name = NAME.format(ns=game.namespace)
    mine = await b.install("alice")
    await b.wait_state("alice", name, State.RUNNING)

    point = "uninstall.after_release"
    a = client_for(await launch(held, hold=point, hold_dir=tmp_path))
    delete = instance_pb2.DeleteInstanceRequest(name=name, request_id="alice-delete")
    first = asyncio.ensure_future(send(a, "alice", "DeleteInstance", delete))
    await wait_file(tmp_path / f"{point}.reached", held)
    assert await rows(database, game.namespace) == [(0, "FREE", None)]

    bob = await b.install("bob")
    assert (bob.id, bob.owner) == (0, "bob")
    (tmp_path / f"{point}.release").write_text("")
    answer = await first

    assert (answer.name, answer.owner, answer.state) == (name, "alice", State.UNINSTALLING)
    assert answer.create_time == mine.create_time
    for c in (a, b):
        replay = await send(c, "alice", "DeleteInstance", delete)
        assert replay.SerializeToString(deterministic=True) == answer.SerializeToString(deterministic=True)
    assert (await b.get("bob", name)).owner == "bob"
    await b.wait_consistent(60)
