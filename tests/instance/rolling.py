"""Helpers of the rollout tests (issue 14) on the test bed: a template change written the way the template
service writes it (new image and `paused: true` in one write, the policy and idle threshold as annotations), and
what the pods show."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, update

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow

from ..plugins.kube import Game
from .conftest import SAMPLE

NEW = "yunqi-registry.cn-shanghai.cr.aliyuncs.com/lab/stable-diffusion:v1.0.1-cpu"
NEWER = "yunqi-registry.cn-shanghai.cr.aliyuncs.com/lab/stable-diffusion:v1.0.2-cpu"  # kwok pulls nothing
REVISION = "controller-revision-hash"
HOLD_LABEL = "aigc.gateway.io/update-hold"
PRIORITY = "game.kruise.io/gs-update-priority"
POLICY = "aigc.gateway.io/rollout-policy"
IDLE_AFTER = "aigc.gateway.io/rollout-idle-after"
# The in-place update hook the template service writes on every template (docs/upgrade.md, fact 8).
HOOK = {"inPlaceUpdate": {"labelsHandler": {HOLD_LABEL: "true"}}}


async def write_change(game: Game, policy: str = "WHEN_IDLE", idle_after: str = "1h", image: str = NEW,
                       template: str = SAMPLE) -> None:
    """The new image, `paused: true` and the rollout annotations in one GameServerSet write."""
    def change(gss: dict[str, Any]) -> None:
        gss["spec"]["gameServerTemplate"]["spec"]["containers"][0]["image"] = image
        gss["spec"]["updateStrategy"]["rollingUpdate"]["paused"] = True
        gss["spec"]["lifecycle"] = HOOK
        notes = gss["metadata"].setdefault("annotations", {})
        notes[POLICY], notes[IDLE_AFTER] = policy, idle_after
    await game.update_object(template, change)


async def update_revision(game: Game, template: str = SAMPLE) -> str:
    asts = await game.custom.get_namespaced_custom_object("apps.kruise.io", "v1beta1", game.namespace,
                                                          "statefulsets", template)
    return str((asts.get("status") or {}).get("updateRevision") or "")


async def pod_state(game: Game, template: str = SAMPLE) -> dict[int, tuple[str, str, bool]]:
    """Per id with a pod: (uid, revision, carries the hold label)."""
    return {i: (p.metadata.uid, p.metadata.labels.get(REVISION, ""), (p.metadata.labels or {}).get(HOLD_LABEL) == "true")
            for i, p in (await game.pods(template)).items()}


async def rolling_update(game: Game, template: str = SAMPLE) -> dict[str, Any]:
    return dict((await game.get_gss(template))["spec"]["updateStrategy"]["rollingUpdate"])


async def started_long_ago(db: Database, namespace: str, owner: str, hours: float = 2) -> None:
    """`owner`'s instance was installed `hours` ago (and, with no access recorded, never used since): a running
    instance counts as in use for the idle threshold after it starts (upgrades.last_activity)."""
    async with db.session() as session:
        await session.execute(update(InstanceRow).where(InstanceRow.namespace == namespace,
                                                        InstanceRow.owner == owner)
                              .values(state_changed_at=func.now() - timedelta(hours=hours)))
