"""`aigc-gateway import-logto`: import ownership from the original AIGC-Gateway's Logto custom data.

Runs in this process against the configured database, Logto and Kubernetes (no server needed).
Exit status: 0 done, 3 done but some entries need an admin (conflicts), 1 failed, 2 bad configuration.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path

import typer

from aigc_gateway.config import Settings
from aigc_gateway.errors import GatewayError

from .importer import ImportResult, ReportEntry


def register(app: typer.Typer) -> None:
    @app.command("import-logto")
    def import_logto(
        dry_run: bool = typer.Option(False, "--dry-run", help="Report what would be imported; write nothing."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        config: Path | None = typer.Option(None, "--config", "-c",
                                              help="YAML or JSON config file (else $AIGC_GATEWAY_CONFIG)."),
    ) -> None:
        """Create ownership rows from the custom data the original AIGC-Gateway wrote in Logto (idempotent)."""
        from aigc_gateway import logs
        from aigc_gateway.cli import settings_or_exit

        settings = settings_or_exit(config)
        logs.setup("usersync", settings.logging.level, settings.logging.json_format)
        try:
            result = asyncio.run(_run(settings, dry_run))
        except GatewayError as exc:
            typer.echo(f"import failed: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps(asdict(result), indent=2) if as_json else render(result))
        if result.conflicts:
            raise typer.Exit(3)


async def _run(settings: Settings, dry_run: bool) -> ImportResult:
    from aigc_gateway.db.migrate import upgrade
    from aigc_gateway.runtime import Runtime

    from .app import UserSync

    if settings.database_url().startswith("sqlite"):
        upgrade(settings.database_url())
    runtime = Runtime.create(settings)
    usersync = UserSync(runtime)
    try:
        usersync.require_logto()
        return await usersync.importer.run(dry_run=dry_run)
    finally:
        await usersync.stop()
        await runtime.close()


def _line(item: ReportEntry) -> str:
    where = f"{item.namespace}/{item.template}" if item.namespace else item.key
    ident = f" id {item.id}" if item.id >= 0 else ""
    who = item.user or "(no user)"
    return f"  {who:<24} {where}{ident}" + (f": {item.reason}" if item.reason else "")


def render(result: ImportResult) -> str:
    lines = [f"import from Logto{' (dry run: nothing written)' if result.dry_run else ''}: "
             f"{result.users_scanned} users scanned"]
    for title, items in (("imported", result.imported), ("unchanged", result.unchanged),
                         ("conflicts (an admin must resolve these)", result.conflicts), ("skipped", result.skipped)):
        lines.append(f"{title}: {len(items)}")
        lines += [_line(i) for i in items]
    for where, ids in sorted(result.slots_created.items()):
        lines.append(f"unclaimed reserved ids recorded as {where.rsplit(':', 1)[1]} in {where.rsplit(':', 1)[0]}: "
                     f"{', '.join(map(str, ids))}")
    for namespace, template, dispute in result.disputes:
        lines.append(f"disputed (out of allocation until ResolveDisputedInstance): {namespace}/{template} id "
                     f"{dispute.id} ({dispute.state}), claimed by {', '.join(dispute.claimants)}")
    return "\n".join(lines)
