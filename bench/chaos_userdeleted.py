"""bench/chaos.py's fault on the usersync -> instance link: Logto's User.Deleted under a broken link.

usersync acts on a User.Deleted webhook by pausing each of the user's running instances through
InstanceService.PauseInstance (`user_deleted_policy: pause`, services/usersync/userdeleted.py) and marking every
instance of the user orphaned; when the instance service cannot be reached the delivery is answered 503 and nothing
is kept, so Logto's retry is accepted. The chaos bed's usersync reaches the instance service through toxiproxy
(`grpc-usersync-instance`).

Per fault: a user of its own (`chaos-leaver-N`) with an instance of each template; the fault starts and the
delivery is sent as Logto sends it (signed by the Logto double), resent on a 5xx, a refused connection or no
answer within 10 s (Logto's own request timeout), until it is answered 2xx, or 409 REPLAYED (an earlier copy
was acted on after its sender gave up). Right outcome: the user's instances end PAUSED and orphaned, none LIVE.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import grpc

USERDELETED_LINKS = ("grpc-usersync-instance",)
LEAVER = "chaos-leaver-"  # owners whose Logto user is deleted: no custom data to compare afterwards


class UserDeletedLoad:
    def __init__(self, bed: Any):
        self.bed = bed
        self.count = 0
        self.user = ""
        self.task: asyncio.Task[None] | None = None

    async def prepare(self) -> None:
        from aigc_gateway.api.v1 import instance_pb2

        bed = self.bed
        self.count += 1
        self.user = f"{LEAVER}{self.count}-{uuid.uuid4().hex[:4]}"
        bed.logto.add_user(self.user)
        for template in bed.templates:
            rid, deadline = uuid.uuid4().hex, time.monotonic() + 90
            while True:
                try:
                    await bed.admin_instances.CreateInstance(instance_pb2.CreateInstanceRequest(
                        parent=f"namespaces/{bed.namespace}/templates/{template}", request_id=rid),
                        metadata=(("authorization", f"Bearer {bed.bearer(self.user)}"),), timeout=60)
                    break
                except grpc.aio.AioRpcError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"install for {self.user}: {exc.code().name} {exc.details()}") from None
                    await asyncio.sleep(0.5)

    async def during(self, step: Any) -> None:
        self.task = asyncio.create_task(self._deliver(step))

    def link_back(self) -> None:
        pass  # Logto's retry does not wait for anything: it resends until answered

    async def finish(self, step: Any) -> None:
        from sqlalchemy import select

        from aigc_gateway.db.models import InstanceRow

        assert self.task is not None
        await self.task
        async with self.bed.db.session() as session:
            rows = (await session.execute(select(InstanceRow.template, InstanceRow.id, InstanceRow.slot,
                                                 InstanceRow.orphaned).where(
                InstanceRow.namespace == self.bed.namespace, InstanceRow.owner == self.user))).all()
        wrong = [f"{t}/{i} {slot} orphaned={o}" for t, i, slot, o in rows if slot == "LIVE" or not o]
        if len(rows) != len(self.bed.templates) or wrong:
            step.half_done.append(f"{self.user}: {len(rows)} instance(s), not paused and orphaned: {wrong}")

    async def _deliver(self, step: Any) -> None:
        from aigc_gateway.services.usersync.app import UserSync
        from aigc_gateway.services.usersync.webhooks import PATH

        bed = self.bed
        usersync = next(s.parts.service_as(UserSync) for _, s in bed.gateways if s.name == "usersync")
        url = f"http://127.0.0.1:{usersync.webhooks.port}{PATH}"
        body, headers = bed.logto.webhook("User.Deleted", self.user)
        step.attempted += 1
        started, budget, tries, answers = time.monotonic(), step.seconds + 150, 0, []
        async with aiohttp.ClientSession() as session:
            while True:
                tries += 1
                try:
                    async with session.post(url, data=body, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=10)) as response:
                        answer = f"{response.status} {(await response.json()).get('code', '')}".strip()
                        status = response.status
                except (TimeoutError, aiohttp.ClientError) as exc:
                    answer, status = type(exc).__name__, 0
                answers.append(answer)
                if 200 <= status < 300 or status == 409:
                    step.ok += 1
                    step.notes.append(f"User.Deleted: {tries} deliveries in {time.monotonic() - started:.1f} s, "
                                      f"answers {_runs(answers)}")
                    return
                if status and status < 500:
                    step.failed += 1
                    step.failures.append(f"User.Deleted {self.user}: {answer}")
                    return
                if tries == 2:
                    step.retried += 1
                if time.monotonic() - started > budget:
                    step.failed += 1
                    step.failures.append(f"User.Deleted {self.user}: still {answer} after the budget")
                    return
                await asyncio.sleep(1.0)


def _runs(answers: list[str]) -> str:
    """['503 X', '503 X', '200'] -> '503 X ×2, 200'."""
    out: list[tuple[str, int]] = []
    for a in answers:
        if out and out[-1][0] == a:
            out[-1] = (a, out[-1][1] + 1)
        else:
            out.append((a, 1))
    return ", ".join(a if n == 1 else f"{a} ×{n}" for a, n in out)
