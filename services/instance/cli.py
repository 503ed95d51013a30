"""`aigc-gateway doctor`: check every template's allocator invariants and print each violation.

The invariants: docs/instance.md#the-allocator.

It runs the same check as the CheckConsistency RPC, directly against
PostgreSQL and the Kubernetes API, so it works while the service is down.
Exit status: 0 consistent, 1 violations found, 2 configuration problem.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # read lazily at run time, as the imports in _doctor (the CLI starts without them)
    from aigc_gateway.config import Settings


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(
        config: Path | None = typer.Option(None, "--config", "-c",
                                              help="YAML or JSON config file (else $AIGC_GATEWAY_CONFIG)."),
        parent: str = typer.Option("namespaces/-/templates/-", help="Which templates: `-` means any."),
        repair: bool = typer.Option(False, help="First resolve interrupted operations, finish uninstalls and run "
                                                "the rollout step (what the reconciler does), and make each "
                                                "GameServerSet run exactly the ids recorded LIVE (ids running for "
                                                "nobody stop and lose their disks)."),
    ) -> None:
        """Check instance ids, owners and disks against the GameServerSets; print every violation."""
        from aigc_gateway.cli import settings_or_exit

        settings = settings_or_exit(config)
        found = asyncio.run(_doctor(settings, parent, repair))
        raise typer.Exit(1 if found else 0)


async def _doctor(settings: Settings, parent: str, repair: bool) -> int:
    from aigc_gateway.audit import AuditLog
    from aigc_gateway.db import Database
    from aigc_gateway.kube import Kube
    from aigc_gateway.names import parse_list_parent

    from .cluster import Cluster
    from .consistency import ConsistencyChecker
    from .lifecycle import Lifecycle
    from .rollouts import Rollouts
    from .slots import SlotStore

    namespace, template = parse_list_parent(parent, "--parent")
    db = Database(settings.database_url())
    kube = await Kube.connect(settings.kubernetes)
    try:
        store = SlotStore(db)
        cluster = Cluster(kube, settings.namespaces, settings.gss_labels)
        lifecycle = Lifecycle(db, store, cluster, settings.instance)
        checker = ConsistencyChecker(lifecycle, cluster, store)
        rollouts = Rollouts(lifecycle, settings.template.annotation_prefix, settings.template.rollout_policy,
                            settings.template.rollout_idle_after_seconds, AuditLog(db, "instance"))
        refs = await checker.templates(namespace, template)
        total = 0
        for ref in refs:
            if repair:
                await lifecycle.tidy(ref, repair=True)  # also a live set of the wrong size (allocator.plan_realign)
                await rollouts.step(ref)  # also finishes a rollout step a crash left (its intent)
            findings = await checker.check(ref)
            total += len(findings)
            for f in findings:
                typer.echo(f"{f.template}\t{f.id if f.id >= 0 else '-'}\t{f.code}\t{f.description}")
        typer.echo(f"{len(refs)} template(s) checked, {total} violation(s)", err=True)
        return total
    finally:
        await kube.close()
        await db.close()
