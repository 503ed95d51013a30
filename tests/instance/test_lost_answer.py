"""A GameServerSet write is judged by what the GameServerSet shows, never by how the request seemed to end.

bench/chaos.py's `kube:timeout` (the apiserver's answers held 30 s, then the connections closed) left install
batches live in their GameServerSet and missing or FREE in PostgreSQL (docs/chaos.md). The write had landed; its
answer was lost with the connection, and aiohttp, under kubernetes_asyncio, sent the PUT again on a new one (it
repeats idempotent methods once when a connection closes before the answer): 409, the first copy having moved the
resourceVersion. The allocator took the 409 for "not written" and forgot the intent, and planned the same installs
again on new ids.

Here the same interleaving is forced, in this process, on the test bed's real apiserver and controllers: the step
is held at its named fault point `install.after_intent` (the intent committed, the PUT not yet sent) while the
test delivers that PUT's first copy, the exact body the step is about to send; released, the step's own PUT is the
second copy, and is answered 409. The second test holds a resume step there and cancels it while its write could
still be on its way: the reconciler must fence that write before calling it lost. (A user's resume now runs in the
template's shielded up batch, services/instance/ups.py, so its caller's deadline no longer cancels the step; the
step is cancelled itself here, as shutdown cancels an unshielded one such as the idle culler's pause.)
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from aigc_gateway.db import Database
from aigc_gateway.errors import Aborted
from aigc_gateway.identity import Principal
from aigc_gateway.kube import GSS, Kube
from aigc_gateway.names import TemplateRef
from aigc_gateway.okg import FENCE_ANNOTATION
from aigc_gateway.services.instance import allocator, faults, templates
from aigc_gateway.services.instance.allocator import Op, Plan, Spec
from aigc_gateway.services.instance.consistency import ConsistencyChecker
from aigc_gateway.services.instance.lifecycle import Lifecycle
from aigc_gateway.services.instance.models import IntentRow
from aigc_gateway.services.instance.slots import SlotStore, slots_of

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, create_template, held

pytestmark = pytest.mark.testbed


async def pending(db: Database, ref: TemplateRef) -> list[IntentRow]:
    async with db.session() as session:
        return await SlotStore(db).intents(session, ref)


async def slots(db: Database, ref: TemplateRef) -> dict[int, tuple[str, str | None]]:
    async with db.session() as session:
        return {i: (r.slot, r.owner) for i, r in (await SlotStore(db).load(session, ref)).items()}


async def test_an_install_answered_409_after_it_landed_is_recorded_not_planned_again(
        testbed: Testbed, game: Game, database: Database, kube: Kube, lifecycle: Lifecycle,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    await create_template(game, testbed)
    ref = TemplateRef(game.namespace, SAMPLE)
    monkeypatch.setenv(faults.HOLD_ENV, "install.after_intent")
    monkeypatch.setenv(faults.HOLD_DIR_ENV, str(tmp_path))
    install: asyncio.Task[Any] = asyncio.create_task(lifecycle.install(ref, "bob"))
    await held(monkeypatch, tmp_path, "install.after_intent", install)

    # The PUT's first copy reaches the apiserver and is applied; its answer is lost with the connection.
    (intent,) = await pending(database, ref)
    plan = Plan.from_json(intent.plan)
    assert plan.after is not None and plan.id == 0
    landed = await kube.replace(GSS, ref.namespace, templates.with_spec(await kube.get(GSS, ref.namespace, SAMPLE),
                                                                        plan.after))
    assert templates.spec_of(ref, landed) == plan.after
    # Released, the step sends its copy, conditioned on the version it read: 409.
    (tmp_path / "install.after_intent.release").touch()
    effect = await install

    assert isinstance(effect, dict) and effect["row"]["id"] == 0  # bob got the id his write brought up
    assert await slots(database, ref) == {0: ("LIVE", "bob")}
    assert await pending(database, ref) == []
    gss = await kube.get(GSS, ref.namespace, SAMPLE)
    assert templates.spec_of(ref, gss) == plan.after  # planned once: no second id started for bob
    checker = ConsistencyChecker(lifecycle, lifecycle.cluster, lifecycle.store)
    assert [(f.id, f.code) for f in await checker.check(ref)] == []


async def test_a_write_whose_caller_gave_up_is_fenced_before_it_is_called_lost(
        testbed: Testbed, game: Game, database: Database, kube: Kube, lifecycle: Lifecycle,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    await create_template(game, testbed)
    ref = TemplateRef(game.namespace, SAMPLE)
    carol = Principal("carol")
    installed = await lifecycle.install(ref, "carol")
    iref = ref.instance(int(installed["row"]["id"]))
    await lifecycle.pause(iref, carol)

    async def quiet() -> bool:  # her pod gone and the controller done: nothing else writes the object now
        gss = await kube.get(GSS, ref.namespace, SAMPLE)
        return (templates.settled(gss) and not (gss.get("status") or {}).get("currentReplicas")
                and iref.id not in await game.pods(SAMPLE))
    await wait_for(quiet, 120, what="carol's pod gone and the controller done")

    monkeypatch.setenv(faults.HOLD_ENV, "resume.after_intent")
    monkeypatch.setenv(faults.HOLD_DIR_ENV, str(tmp_path))
    def plan_resume(spec: Spec, rows: dict[int, Any]) -> Plan:
        return allocator.plan_resume(ref, spec, slots_of(rows), iref.id)

    resume: asyncio.Task[Any] = asyncio.create_task(lifecycle.step(ref, Op.RESUME, plan_resume))
    await held(monkeypatch, tmp_path, "resume.after_intent", resume)
    (intent,) = await pending(database, ref)
    plan = Plan.from_json(intent.plan)
    assert plan.after is not None
    read = await kube.get(GSS, ref.namespace, SAMPLE)  # the version the held write is conditioned on
    # The step is given up while the write may be on its way: the intent stays.
    resume.cancel()
    with pytest.raises(asyncio.CancelledError):
        await resume
    assert [i.id for i in await pending(database, ref)] == [intent.id]

    # The reconciler's pass: (R, X) does not show the write, and the object is still at the version the write
    # was conditioned on. Called lost now, the write arriving later would still land.
    assert (await kube.get(GSS, ref.namespace, SAMPLE))["metadata"]["resourceVersion"] == \
        read["metadata"]["resourceVersion"]
    await lifecycle.tidy(ref)
    assert await pending(database, ref) == []

    # The write arrives late: refused.
    with pytest.raises(Aborted):
        await kube.replace(GSS, ref.namespace, templates.with_spec(read, plan.after))
    fenced = await kube.get(GSS, ref.namespace, SAMPLE)
    assert FENCE_ANNOTATION in (fenced["metadata"].get("annotations") or {})  # what moved the version on
    assert await slots(database, ref) == {iref.id: ("PAUSED", "carol")}
    assert templates.spec_of(ref, await kube.get(GSS, ref.namespace, SAMPLE)) == plan.before
    checker = ConsistencyChecker(lifecycle, lifecycle.cluster, lifecycle.store)
    assert [(f.id, f.code) for f in await checker.check(ref)] == []
    # Her next resume is served as usual.
    resumed = await lifecycle.resume(iref, carol)
    assert resumed["row"]["slot"] == "LIVE"
