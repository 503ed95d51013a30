"""Whether a GameServerSet write announced by an intent took effect: judged from the GameServerSet, never from how
our request seemed to end (docs/instance.md#the-allocator).

How a request seemed to end says little. The HTTP client under kubernetes_asyncio (aiohttp) sends a PUT a second
time when its connection closes before the answer: the first copy is applied, the second refused with 409, its
resourceVersion made stale by the first. Taken at its word, that 409 said "not written": the intent was dropped
and the write's ids ran for nobody (bench/chaos.py's `kube:timeout` dropped the apiserver's answers for 30 s, then
closed the connections: an install batch live in its GameServerSet, its ids missing or FREE in PostgreSQL,
docs/chaos.md).
And a request that timed out, or whose caller was cancelled, may still be on its way and land after it was judged.

So :func:`judge` calls a write applied when (R, X) shows it (:func:`.allocator.resolve`), and not applied only once
the object's resourceVersion has moved past the one the write was conditioned on (recorded with the intent): every
copy of that write is refused from then on. While the version has not moved, the judge moves it itself (the fence:
an annotation patched conditionally on that version) and looks again.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aigc_gateway.errors import Aborted
from aigc_gateway.names import TemplateRef

from . import allocator, templates
from .allocator import Plan
from .cluster import Cluster
from .models import IntentRow

Obj = dict[str, Any]
WRITTEN_ON = "written_on"  # key in an intent's plan: the resourceVersion its write is conditioned on


def recorded(plan: Plan, gss: Obj | None) -> dict[str, Any]:
    """What an intent stores: the plan, and the version of ``gss`` (the object the write replaces)."""
    version = ((gss or {}).get("metadata") or {}).get("resourceVersion")
    return plan.to_json() | ({WRITTEN_ON: str(version)} if version else {})


async def judge(cluster: Cluster, ref: TemplateRef, gss: Obj, plan: Plan, intent: IntentRow) -> tuple[bool, Obj, bool]:
    """(applied, the object as last read, whether it was fenced here). Aborted never leaves: a fence refused
    means the object moved (perhaps by the write itself), so it is read and judged again; Unavailable does, and
    the intent stays for the next step or the reconciler."""
    written_on = str((intent.plan or {}).get(WRITTEN_ON) or "")  # "" for intents older than the key
    fenced = False
    while True:
        if allocator.resolve(plan, templates.spec_of(ref, gss)):
            return True, gss, fenced
        if fenced or (written_on and gss["metadata"].get("resourceVersion") != written_on):
            return False, gss, fenced
        try:
            gss = await cluster.fence(gss, f"intent {intent.id} {datetime.now(UTC).isoformat()}")
            fenced = True
        except Aborted:
            gss = await cluster.template(ref)
