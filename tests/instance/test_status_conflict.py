"""A write refused (409) only because the controller wrote the GameServerSet's status after it settled is sent again
at once on the new version, not planned again (templates.only_status_moved, Lifecycle._write).

After a write settles, kruise-game still writes the status as the pods come up (currentReplicas, updatedReplicas,
readyReplicas): every one of those versions refuses the next step's write conditioned on the version it read. Planned
again, each refusal cost the step another settle, resolve, plan and backoff under the template lock: a third of the
lock's time in bench/kill_storm.py. The interleaving is forced here: the step is held at `install.after_intent` (its
intent committed, the PUT not sent) while the test writes the status, as the controller does, and another party's
annotation; released, the PUT is refused, and the step sends it again on the version read after the refusal.
"""
from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from aigc_gateway.db import Database
from aigc_gateway.kube import GSS, Kube
from aigc_gateway.names import TemplateRef
from aigc_gateway.okg import FENCE_ANNOTATION, RESERVE_ANNOTATION
from aigc_gateway.services.instance import faults, templates
from aigc_gateway.services.instance.allocator import Plan
from aigc_gateway.services.instance.consistency import ConsistencyChecker
from aigc_gateway.services.instance.lifecycle import Lifecycle
from aigc_gateway.services.instance.slots import SlotStore

from ..plugins.kube import Game
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, create_template, held

NOTE = "example.com/note"


def _gss(**status: Any) -> dict[str, Any]:
    return {"metadata": {"uid": "u1", "generation": 7, "resourceVersion": "100",
                         "annotations": {RESERVE_ANNOTATION: "0,2", FENCE_ANNOTATION: "intent 1"}},
            "spec": {"replicas": 3, "reserveGameServerIds": [0, 2]},
            "status": {"observedGeneration": 7, "replicas": 3, "readyReplicas": 2} | status}


def test_only_a_status_or_metadata_change_lets_a_refused_write_go_again_as_planned() -> None:
    read = _gss()
    moved = copy.deepcopy(read)
    moved["metadata"]["resourceVersion"] = "101"
    moved["status"]["readyReplicas"] = 3
    moved["metadata"]["annotations"][NOTE] = "someone's"
    assert templates.only_status_moved(read, moved)

    for change in ("spec", "generation", "fence", "uid", "deleting", "unsettled"):
        other = copy.deepcopy(moved)
        meta = other["metadata"]
        if change == "spec":
            other["spec"]["reserveGameServerIds"] = [0, 2, 5]
        elif change == "generation":
            meta["generation"] = 8
        elif change == "fence":
            meta["annotations"][FENCE_ANNOTATION] = "intent 2"
        elif change == "uid":
            meta["uid"] = "u2"
        elif change == "deleting":
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        else:
            other["status"]["replicas"] = 2  # the controller has not finished with the last write
        assert not templates.only_status_moved(read, other), change


@pytest.mark.testbed
async def test_an_install_refused_by_a_status_write_is_sent_again_without_planning_again(
        testbed: Testbed, game: Game, database: Database, kube: Kube, lifecycle: Lifecycle,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    await create_template(game, testbed)
    ref = TemplateRef(game.namespace, SAMPLE)
    await lifecycle.install(ref, "alice")
    retries = REGISTRY.get_sample_value("aigc_instance_allocator_retries_total") or 0.0
    conflicts = REGISTRY.get_sample_value("aigc_instance_allocator_conflicts_total") or 0.0

    monkeypatch.setenv(faults.HOLD_ENV, "install.after_intent")
    monkeypatch.setenv(faults.HOLD_DIR_ENV, str(tmp_path))
    install: asyncio.Task[Any] = asyncio.create_task(lifecycle.install(ref, "bob"))
    await held(monkeypatch, tmp_path, "install.after_intent", install)
    async with database.session() as session:
        (intent,) = await SlotStore(database).intents(session, ref)
    plan = Plan.from_json(intent.plan)
    assert plan.after is not None

    # What the controller does after a write settled (a status count), and another party's annotation: both move
    # the version the held PUT is conditioned on, neither the spec nor the fence.
    read = await kube.get(GSS, ref.namespace, SAMPLE)
    status = read.get("status") or {}
    await kube.request("PATCH", GSS.path(ref.namespace, SAMPLE, "status"), content_type="application/merge-patch+json",
                       body={"status": {"maintainingReplicas": int(status.get("maintainingReplicas") or 0) + 1}})
    await kube.patch(GSS, ref.namespace, SAMPLE, {"metadata": {"annotations": {NOTE: "kept"}}})
    (tmp_path / "install.after_intent.release").touch()
    effect = await install

    assert effect["row"]["id"] == plan.id and effect["row"]["owner"] == "bob"  # the id planned before the 409
    gss = await kube.get(GSS, ref.namespace, SAMPLE)
    assert templates.spec_of(ref, gss) == plan.after
    assert gss["metadata"]["annotations"][NOTE] == "kept"  # the copy sent again was built from the new version
    # At least the 409 forced here: kruise-game's own status writes, which this test does not control, can refuse a
    # copy sent again too (each is sent again the same way). The outcome under test is that none was planned again.
    assert (REGISTRY.get_sample_value("aigc_instance_allocator_conflicts_total") or 0.0) >= conflicts + 1
    assert (REGISTRY.get_sample_value("aigc_instance_allocator_retries_total") or 0.0) == retries  # not planned again
    async with database.session() as session:
        assert await SlotStore(database).intents(session, ref) == []
        rows = await SlotStore(database).load(session, ref)
    assert {i: (r.slot, r.owner) for i, r in rows.items()} == {0: ("LIVE", "alice"), plan.id: ("LIVE", "bob")}
    checker = ConsistencyChecker(lifecycle, lifecycle.cluster, lifecycle.store)
    assert [(f.id, f.code) for f in await checker.check(ref)] == []


