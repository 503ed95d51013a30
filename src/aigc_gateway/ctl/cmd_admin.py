"""`aigcctl doctor`, `import-logto`, `whoami`, `config`: operating the gateway as a whole."""
from __future__ import annotations

from typing import Any

import typer

from ..api.v1 import auth_pb2, instance_pb2, usersync_pb2
from . import render
from .context import ctl
from .exitcodes import CallFailed, Exit, Failure
from .names import short, template_parent
from .settings import SERVICES


def doctor(ctx: typer.Context,
           template: str | None = typer.Option(None, "--template", "-t", help="Only this template (default: all)."),
           all_namespaces: bool = typer.Option(True, "--all-namespaces/--namespace-only",
                                               help="Check every namespace, or only --namespace.")) -> None:
    """Check the services' health and the instance allocator's invariants (PostgreSQL vs
    GameServerSets vs disks). Exit code 11 when anything is wrong."""
    c = ctl(ctx)
    health = {service: c.client.health(service) for service in SERVICES}
    problems = [f"{s} service is {h}" for s, h in health.items() if h != "SERVING"]
    report: dict[str, Any] = {"services": health}
    try:
        reply = c.client.call("instance", "CheckConsistency", instance_pb2.CheckConsistencyRequest(
            parent=template_parent(template, c.namespace, all_namespaces and not template)), timeout=120)
        report["consistency"] = render.to_data(reply)
        problems += [f"{short(v.template)} id {v.id}: {v.code}: {v.description}" for v in reply.violations]
    except CallFailed:
        if health["instance"] == "SERVING":
            raise
        report["consistency"] = None
        reply = None
    if c.output != "table":
        render.emit(report, c.output)
    else:
        out = render.console()
        out.print(render.table(list(health.items()), [("SERVICE", lambda r: r[0]), ("HEALTH", lambda r: r[1])]))
        if reply is not None:
            out.print(f"\n{reply.templates_checked} template(s) checked: "
                      + ("consistent" if reply.consistent else f"{len(reply.violations)} violation(s)"))
            if reply.violations:
                out.print(render.table(list(reply.violations), [
                    ("TEMPLATE", lambda v: short(v.template)), ("ID", lambda v: "-" if v.id < 0 else str(v.id)),
                    ("CODE", lambda v: v.code), ("DESCRIPTION", lambda v: v.description)]))
            if reply.notices:  # information (users over a lowered quota): nothing to repair
                out.print(f"\n{len(reply.notices)} notice(s):")
                out.print(render.table(list(reply.notices), [
                    ("SUBJECT", lambda v: v.template), ("CODE", lambda v: v.code),
                    ("DESCRIPTION", lambda v: v.description)]))
    if problems:
        raise Failure(f"{len(problems)} problem(s) found", Exit.CHECK_FAILED)


def import_logto(ctx: typer.Context,
                 dry_run: bool = typer.Option(False, "--dry-run",
                                              help="Report what would be imported; write nothing.")) -> None:
    """Import instance ownership from the Logto custom data the original AIGC-Gateway wrote.
    Exit code 11 when some entries conflict (they are listed; nothing is written for them)."""
    c = ctl(ctx)
    report = c.client.call("usersync", "ImportFromLogto", usersync_pb2.ImportFromLogtoRequest(dry_run=dry_run),
                           timeout=600)
    if c.output != "table":
        render.emit(report, c.output)
    else:
        out = render.console()
        verb = "would import" if report.dry_run else "imported"
        out.print(f"{report.users_scanned} user(s) scanned; {verb} {len(report.imported)}, "
                  f"{len(report.unchanged)} unchanged, {len(report.conflicts)} conflict(s)")
        entry_cols: list[render.Column] = [("USER", lambda e: e.user), ("KEY", lambda e: e.key),
                                           ("ID", lambda e: str(e.id))]
        if report.imported:
            out.print(render.table(list(report.imported), entry_cols))
        if report.conflicts:
            out.print(render.table(list(report.conflicts), [
                ("USER", lambda x: x.entry.user), ("KEY", lambda x: x.entry.key), ("REASON", lambda x: x.reason)]))
    if report.conflicts:
        raise Failure(f"{len(report.conflicts)} conflict(s) need an admin", Exit.CHECK_FAILED)


def whoami(ctx: typer.Context) -> None:
    """Show who the token authenticates as."""
    c = ctl(ctx)
    render.emit(c.client.call("auth", "WhoAmI", auth_pb2.WhoAmIRequest()), c.output)


def show_config(ctx: typer.Context) -> None:
    """Show the addresses, namespace and credential source in use (never the token)."""
    c = ctl(ctx)
    s = c.settings
    data = {"config_file": s.config_file or "(none)", "namespace": s.namespace,
            "servers": {name: s.address(name) for name in (*SERVICES, "audit")},
            "tls": s.tls, "token": f"from {s.token_source}" if s.token else "(none)",
            "request_timeout_seconds": s.timeout_seconds}
    render.emit(data if c.output != "table" else render.dumps(data, "yaml").rstrip(), c.output)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
    app.command("import-logto")(import_logto)
    app.command()(whoami)
    app.command("config")(show_config)
