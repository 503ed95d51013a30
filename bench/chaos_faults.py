"""bench/chaos.py's faults (how each starts, and what undoes it) and its Logto mirror check."""
from __future__ import annotations

from typing import Any

from chaos_restart import ApiserverRestart
from chaos_userdeleted import LEAVER


async def apply(bed: Any, step: Any) -> list[Any]:
    """Start the fault; returns what to undo."""
    if step.fault == "pg-restart":
        postgres = bed.postgres
        if postgres is None:
            raise RuntimeError("pg-restart crashes the run's own PostgreSQL: give ChaosBed a PrivatePostgres")
        step.notes.append(f"PostgreSQL crashed (pg_ctl stop -m immediate) in {await postgres.crash():.1f} s")

        async def start_again() -> None:
            step.notes.append(f"PostgreSQL started again (crash recovery) in {await postgres.restart():.1f} s")
        return [start_again]
    if step.fault == "kube-restart":
        restart = ApiserverRestart(step.seconds)
        await restart.begin()

        async def back() -> None:
            step.notes.append("testbed restart: " + await restart.end())
        # The command sleeps the fault's length itself: what is left of it is the apiserver starting.
        return [back]
    proxy = bed.proxies[step.link]
    if step.fault == "down":
        proxy.enable(False)
        return [lambda: proxy.enable(True)]
    toxic = {"latency": lambda: proxy.toxic("latency", latency=400, jitter=100),
             "bandwidth": lambda: proxy.toxic("bandwidth", rate=8),
             "reset": lambda: proxy.toxic("reset_peer", timeout=0),
             "timeout": lambda: proxy.toxic("timeout", timeout=0)}[step.fault]()
    return [lambda: proxy.remove(toxic)]


async def mirror_lost(bed: Any) -> list[str]:
    """Owners in PostgreSQL vs. the keys of this namespace in Logto's custom data."""
    from sqlalchemy import select

    from aigc_gateway.db.models import InstanceRow

    async with bed.db.session() as session:
        rows = (await session.execute(select(InstanceRow.template, InstanceRow.id, InstanceRow.owner).where(
            InstanceRow.namespace == bed.namespace, InstanceRow.owner.is_not(None)))).all()
    want: dict[str, dict[str, Any]] = {u: {} for u in [*bed.users, "chaos-probe"]}
    for tpl, ident, owner in rows:
        want.setdefault(owner, {})[f"{bed.namespace}-{tpl}"] = {
            "Name": tpl, "Namespace": bed.namespace, "ID": str(ident)}
    lost = []
    for user, keys in want.items():
        if user.startswith(LEAVER):
            continue  # deleted in Logto: its custom data went with it
        have = {k: v for k, v in bed.logto.custom_data(user).items() if k.startswith(f"{bed.namespace}-")}
        if have != keys:
            lost.append(f"{user}: logto {have} != postgres {keys}")
    return lost
