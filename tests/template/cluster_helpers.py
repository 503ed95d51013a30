"""Test helpers that look at the cluster and the shared `instances` table directly (never through the service)."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow

from ..plugins.kube import GROUP, VERSION, Game
from .samples import sample_text


def text_for(name: str, domain: str, namespace: str) -> str:
    return sample_text(name, domain).replace("namespace: default", f"namespace: {namespace}")


async def gss_names(game: Game) -> set[str]:
    items = (await game.custom.list_namespaced_custom_object(GROUP, VERSION, game.namespace,
                                                             "gameserversets"))["items"]
    return {o["metadata"]["name"] for o in items}


async def leftovers(game: Game, gss: str) -> dict[str, Any]:
    """Everything of one template in the namespace: GameServerSet, GameServers, pods, claims (by name or label)."""
    pvcs = await game.pvcs()
    return {
        "gss": gss in await gss_names(game),
        "gameservers": sorted(await game.game_servers(gss)),
        "pods": sorted(p.metadata.name for p in (await game.core.list_namespaced_pod(
            game.namespace, label_selector=f"game.kruise.io/owner-gss={gss}")).items),
        "pvcs": sorted(n for n, p in pvcs.items() if gss in n or (p.metadata.labels or {}).get(
            "game.kruise.io/owner-gss") == gss),
    }


async def add_instances(db: Database, namespace: str, template: str, rows: dict[int, tuple[str, str]]) -> None:
    """Rows of the shared table as the instance service writes them: id -> (slot, owner)."""
    now = datetime.now(UTC)
    async with db.session() as session:
        for i, (slot, owner) in rows.items():
            session.add(InstanceRow(namespace=namespace, template=template, id=i, slot=slot, owner=owner,
                                    orphaned=False, created_at=now, updated_at=now, state_changed_at=now))
