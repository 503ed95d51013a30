"""bench/chaos.py's faults on the links between the services: DeleteTemplate's hand-off under a broken link.

The one operation that crosses from one service to another over gRPC is the template service's forced
DeleteTemplate: after the GameServerSet and its disks are gone it calls UserSyncService.CleanupTemplate (the
owners' Logto keys of the template) and then InstanceService.PurgeInstances (the template's ownership rows)
(services/template/handoff.py). The chaos bed runs the template service with both links through toxiproxy
(`grpc-template-usersync`, `grpc-template-instance`). The other service-to-service call, usersync's
User.Deleted policy calling InstanceService.PauseInstance/DeleteInstance, is not exercised here.

Per fault: a template of its own with two owned instances; the fault starts, the admin's forced DeleteTemplate
is sent, and the fault lasts until the template's Kubernetes objects are gone (so that the hand-off meets it)
and the fault's length after. The right outcomes, as the contract says: the delete answers OK with no warning
(the hand-off got through, late), or OK with CLEANUP_INCOMPLETE warnings (the hand-off did not complete; the
Kubernetes side is gone) and the client's forced DeleteTemplate after the link is back resumes and completes
it; a retryable status is resent with the same request_id (the documented retry). Half-done is a failure:
after the last answer, no ownership row of the template may be left and no owner may keep its Logto key.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc

HANDOFF_LINKS = ("grpc-template-instance", "grpc-template-usersync")
HANDOFF_KINDS = ("latency", "reset", "timeout", "down")


class HandoffLoad:
    """One template per fault, deleted through the template service while the fault is on."""

    def __init__(self, bed: Any):
        self.bed = bed
        self.count = 0
        self.template = ""
        self.task: asyncio.Task[None] | None = None
        self.cleared = asyncio.Event()
        self.back_at = 0.0

    async def prepare(self) -> None:
        """A template of this fault's own and an instance of it for two of the load's users."""
        from aigc_gateway.api.v1 import instance_pb2
        from aigc_gateway.kube import GSS
        from tests.plugins.kube import load_sample

        bed = self.bed
        self.count += 1
        self.template = f"chaos-h{self.count}-{uuid.uuid4().hex[:4]}"
        obj = load_sample("stable-diffusion-cpu", bed.domain, bed.namespace, rename=self.template)
        for conf in obj["spec"]["network"]["networkConf"]:
            if conf["name"] == "Host":
                conf["value"] = conf["value"].replace("instances<id>-", f"{self.template}-<id>-")
        await bed.kube.create(GSS, bed.namespace, obj)
        parent = f"namespaces/{bed.namespace}/templates/{self.template}"
        for user in bed.users[:2]:
            rid = uuid.uuid4().hex
            deadline = time.monotonic() + 90
            while True:  # a template just made may not be in the instance service's watch cache yet
                try:
                    await bed.admin_instances.CreateInstance(
                        instance_pb2.CreateInstanceRequest(parent=parent, request_id=rid),
                        metadata=(("authorization", f"Bearer {bed.bearer(user)}"),), timeout=60)
                    break
                except grpc.aio.AioRpcError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"install on {self.template} for {user}: {exc.code().name} "
                                           f"{exc.details()}") from None
                    await asyncio.sleep(0.5)
        self.cleared.clear()

    async def during(self, step: Any) -> None:
        """Start the delete (the fault is on) and return once the template's Kubernetes objects are gone."""
        self.task = asyncio.create_task(self._delete(step))
        deadline = time.monotonic() + 120
        while not self.task.done() and time.monotonic() < deadline:
            if not await self._objects_left():
                return
            await asyncio.sleep(0.3)

    def link_back(self) -> None:
        self.back_at = time.monotonic()
        self.cleared.set()

    async def finish(self, step: Any) -> None:
        """Wait for the delete (and its resumption) to end; record what was left half-done."""
        assert self.task is not None
        await self.task
        left = await self._rows_left()
        if left:
            step.half_done.append(f"{self.template}: {left} ownership row(s) left")

    async def _objects_left(self) -> bool:
        from aigc_gateway.errors import NotFound
        from aigc_gateway.kube import GSS

        try:
            await self.bed.kube.get(GSS, self.bed.namespace, self.template)
            return True
        except NotFound:
            pass
        from aigc_gateway.kube import PVC

        claims = (await self.bed.kube.list(PVC, self.bed.namespace))["items"]
        return any(self.template in (c.get("metadata") or {}).get("name", "") for c in claims)

    async def _rows_left(self) -> int:
        from sqlalchemy import func, select

        from aigc_gateway.db.models import InstanceRow

        async with self.bed.db.session() as session:
            return int(await session.scalar(select(func.count()).select_from(InstanceRow).where(
                InstanceRow.namespace == self.bed.namespace, InstanceRow.template == self.template)) or 0)

    async def _delete(self, step: Any) -> None:
        """The admin's forced delete with the documented retry; resumed once the link is back when it answers
        CLEANUP_INCOMPLETE."""
        from kill_storm import RETRYABLE, _reason

        from aigc_gateway.api.v1 import template_pb2

        bed = self.bed
        name = f"namespaces/{bed.namespace}/templates/{self.template}"
        meta = (("authorization", f"Bearer {bed.admin_bearer()}"),)
        step.attempted += 1
        started, budget, tries, resumed = time.monotonic(), step.seconds + 150, 0, False
        rid = uuid.uuid4().hex
        while True:
            tries += 1
            try:
                reply = await bed.template_stub.DeleteTemplate(template_pb2.DeleteTemplateRequest(
                    name=name, force=True, request_id=rid), metadata=meta,
                    timeout=max(5.0, budget - (time.monotonic() - started)))
            except grpc.aio.AioRpcError as exc:
                if resumed and exc.code() == grpc.StatusCode.NOT_FOUND:
                    # Nothing left to resume: the call the template service saw fail had run on the far side
                    # (only its answer was lost), or another attempt finished it. finish() checks the rows.
                    step.ok += 1
                    step.notes.append(f"DeleteTemplate resumed: NOT_FOUND, nothing left to do ({tries} call(s), "
                                      f"{time.monotonic() - started:.1f} s)")
                    return
                if exc.code() not in RETRYABLE:
                    why = _reason(exc) or exc.code().name
                    step.refused[f"DeleteTemplate {why}"] = step.refused.get(f"DeleteTemplate {why}", 0) + 1
                    step.failed += 1
                    step.failures.append(f"DeleteTemplate {self.template}: {why} {exc.details()[:120]}")
                    return
                if tries == 2:
                    step.retried += 1
                if time.monotonic() - started > budget:
                    step.failed += 1
                    step.failures.append(f"DeleteTemplate {self.template}: {exc.code().name} {exc.details()[:120]}")
                    return
                await asyncio.sleep(0.25)
                continue
            incomplete = [w for w in reply.warnings if w.reason == "CLEANUP_INCOMPLETE"]
            if not incomplete:
                step.ok += 1
                after = f", {time.monotonic() - self.back_at:.1f} s after the link was back" if resumed else ""
                step.notes.append(f"DeleteTemplate {'resumed, then ' if resumed else ''}complete "
                                  f"({tries} call(s), {time.monotonic() - started:.1f} s{after})")
                return
            if not resumed:
                step.notes.append("DeleteTemplate answered CLEANUP_INCOMPLETE: " +
                                  ", ".join(f"{w.field} ({w.description.split(';')[0][:160]})" for w in incomplete))
            if time.monotonic() - started > budget:
                step.failed += 1
                step.failures.append(f"DeleteTemplate {self.template}: still CLEANUP_INCOMPLETE after the budget")
                return
            # The contract's resumption: the same forced delete, a new request (the old id replays its answer),
            # once the link is back.
            await self.cleared.wait()
            if not resumed:
                step.retried += 1
            resumed, rid = True, uuid.uuid4().hex
            await asyncio.sleep(0.25)
