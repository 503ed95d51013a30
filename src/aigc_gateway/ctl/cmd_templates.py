"""`aigcctl templates ...`: list, get, apply -f, validate -f, preview-update -f, delete."""
from __future__ import annotations

from typing import Any

import grpc
import typer
from google.protobuf import duration_pb2

from ..api.v1 import common_pb2, template_pb2
from ..idle import parse_duration
from . import render
from .context import ctl
from .exitcodes import CallFailed, Exit, Failure
from .manifests import Manifest, load, parse_vars
from .names import short, template_name

app = typer.Typer(no_args_is_help=True, help="Publish, inspect and delete templates (GameServerSets).")

FileOption = typer.Option(..., "--filename", "-f",
                          help="Manifest file (YAML or JSON; several documents allowed); - reads stdin.")
TemplateArg = typer.Argument(..., help="Template: NAME or namespaces/NS/templates/NAME.")
VarOption = typer.Option([], "--var", help="Fill ${NAME} placeholders: --var DOMAIN=example.com (repeatable).")
PolicyOption = typer.Option("", "--rollout-policy",
                            help="How an update of the pod template reaches live instances: when-idle, immediate "
                                 "(needs --allow-restart) or manual (default: the template's, else the configured "
                                 "one; docs/upgrade.md).")
IdleAfterOption = typer.Option("", "--rollout-idle-after",
                               help="when-idle's threshold: how long without access an instance counts as idle "
                                    "(900, 90s, 30m, 2h; default: the template's).")


def _accelerator(t: template_pb2.Template) -> str:
    a = t.accelerator
    kind = {1: "cpu", 2: f"gpu x{a.gpu_count}", 3: f"gpu-share {a.gpu_memory_gib}GiB"}.get(a.type, "-")
    return kind + (" eci" if a.eci else "")


COLUMNS: list[render.Column] = [
    ("NAME", lambda t: short(t.name)),
    ("DISPLAY NAME", lambda t: t.display_name or "-"),
    ("ACCELERATOR", _accelerator),
    ("LIVE", lambda t: str(t.live_instance_count)),
    ("PAUSED", lambda t: str(t.paused_instance_count)),
    ("USABLE", lambda t: "yes" if t.usable else "no: " + "; ".join(t.unusable_reasons)),
    ("HOST", lambda t: t.host_pattern or "-"),
    ("AGE", lambda t: render.age(t.create_time)),
]
VIOLATION_COLUMNS: list[render.Column] = [
    ("FIELD", lambda v: v.field or "-"), ("PROBLEM", lambda v: v.description), ("REASON", lambda v: v.reason or "-"),
]


def _namespace(ctx: typer.Context, manifest: Manifest) -> str:
    """The manifest's own namespace, else --namespace (kubectl's rule: they may not disagree)."""
    c = ctl(ctx)
    if manifest.namespace and c.settings.namespace_flag and manifest.namespace != c.namespace:
        raise Failure(f"{manifest.source}: the manifest is in namespace {manifest.namespace!r}, "
                      f"not --namespace {c.namespace!r}", Exit.USAGE)
    return manifest.namespace or c.namespace


def _source(manifest: Manifest) -> template_pb2.TemplateSource:
    return template_pb2.TemplateSource(manifest=manifest.text)


def _rollout(policy: str, idle_after: str) -> dict[str, Any]:
    """The UpdateTemplate / PreviewTemplateUpdate fields of --rollout-policy and --rollout-idle-after."""
    out: dict[str, Any] = {}
    if policy:
        name = policy.strip().upper().replace("-", "_")
        if name not in ("WHEN_IDLE", "IMMEDIATE", "MANUAL"):
            raise Failure(f"--rollout-policy {policy!r}: use when-idle, immediate or manual", Exit.USAGE)
        out["rollout_policy"] = template_pb2.RolloutPolicy.Value(name)
    if idle_after:
        try:
            out["rollout_idle_after"] = duration_pb2.Duration(seconds=int(parse_duration(idle_after)))
        except ValueError as exc:
            raise Failure(f"--rollout-idle-after: {exc}", Exit.USAGE) from None
    return out


def _warn(warnings: list[common_pb2.FieldViolation]) -> None:
    err = render.console(stderr=True)
    for w in warnings:
        err.print(f"warning: {w.field + ': ' if w.field else ''}{w.description}")


@app.command("list")
def list_(ctx: typer.Context,
          all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Every configured namespace."),
          limit: int = typer.Option(0, help="At most this many (0: all).")) -> None:
    """List templates, ordered by sort order then name."""
    c = ctl(ctx)
    parent = "namespaces/-" if all_namespaces else f"namespaces/{c.namespace}"
    items = list(c.client.pages("template", "ListTemplates", template_pb2.ListTemplatesRequest(parent=parent),
                                "templates", limit))
    render.emit(items, c.output, COLUMNS)


@app.command()
def get(ctx: typer.Context, name: str = TemplateArg) -> None:
    """Show one template (admins also see its manifest)."""
    c = ctl(ctx)
    render.emit(c.client.call("template", "GetTemplate",
                              template_pb2.GetTemplateRequest(name=template_name(name, c.namespace))), c.output)


@app.command()
def apply(ctx: typer.Context, filename: str = FileOption, var: list[str] = VarOption,
          allow_restart: bool = typer.Option(False, "--allow-restart",
                                             help="Accept an update that restarts every live instance now "
                                                  "(--rollout-policy immediate)."),
          rollout_policy: str = PolicyOption, rollout_idle_after: str = IdleAfterOption,
          dry_run: bool = typer.Option(False, "--dry-run", help="Validate on the server; write nothing.")) -> None:
    """Create each template in the file, or update it when it exists. An update of the pod template rolls out by
    the rollout policy: when-idle and manual move no instance at once; immediate restarts every live one."""
    c = ctl(ctx)
    rollout = _rollout(rollout_policy, rollout_idle_after)
    results = []
    for manifest in load(filename, parse_vars(var)):
        ns = _namespace(ctx, manifest)
        name = f"namespaces/{ns}/templates/{manifest.name}"
        try:
            current = c.client.call("template", "GetTemplate", template_pb2.GetTemplateRequest(name=name))
        except CallFailed as failed:
            if failed.code != grpc.StatusCode.NOT_FOUND:
                raise
            current = None
        if current is None:
            change = c.client.call("template", "CreateTemplate", template_pb2.CreateTemplateRequest(
                parent=f"namespaces/{ns}", source=_source(manifest), validate_only=dry_run))
            verb = "created"
        else:
            change = c.client.call("template", "UpdateTemplate", template_pb2.UpdateTemplateRequest(
                name=name, source=_source(manifest), allow_restart=allow_restart, etag=current.etag,
                validate_only=dry_run, **rollout))
            verb = "updated"
        _warn(list(change.warnings))
        if c.output == "table":
            render.console().print(f"{short(name)} {verb}{' (dry run)' if dry_run else ''}")
        results.append(change)
    if c.output != "table":
        render.emit(results if len(results) > 1 else results[0], c.output)


@app.command()
def validate(ctx: typer.Context, filename: str = FileOption, var: list[str] = VarOption,
             as_update: bool = typer.Option(False, "--as-update",
                                            help="Validate as an update of the existing template.")) -> None:
    """Check manifests without writing anything. Exit code 11 when any is invalid."""
    c = ctl(ctx)
    results, invalid = [], 0
    for manifest in load(filename, parse_vars(var)):
        reply = c.client.call("template", "ValidateTemplate", template_pb2.ValidateTemplateRequest(
            parent=f"namespaces/{_namespace(ctx, manifest)}", source=_source(manifest), as_update=as_update))
        invalid += not reply.valid
        results.append(reply)
        if c.output == "table":
            out = render.console()
            out.print(f"{manifest.source}: {'valid' if reply.valid else 'INVALID'} ({manifest.name})")
            if reply.violations:
                out.print(render.table(list(reply.violations), VIOLATION_COLUMNS))
            _warn(list(reply.warnings))
    if c.output != "table":
        render.emit(results if len(results) > 1 else results[0], c.output)
    if invalid:
        raise Failure(f"{invalid} manifest(s) invalid", Exit.CHECK_FAILED)


@app.command("preview-update")
def preview_update(ctx: typer.Context, filename: str = FileOption, var: list[str] = VarOption,
                   rollout_policy: str = PolicyOption, rollout_idle_after: str = IdleAfterOption) -> None:
    """Tell what applying the file would change, and what it would do to each instance (and owner): restart
    now, when idle, on resume or when asked, in place or recreated (docs/upgrade.md)."""
    c = ctl(ctx)
    rollout = _rollout(rollout_policy, rollout_idle_after)
    results = []
    for manifest in load(filename, parse_vars(var)):
        name = f"namespaces/{_namespace(ctx, manifest)}/templates/{manifest.name}"
        reply = c.client.call("template", "PreviewTemplateUpdate", template_pb2.PreviewTemplateUpdateRequest(
            name=name, source=_source(manifest), **rollout))
        results.append(reply)
        if c.output == "table":
            out = render.console()
            live = [a for a in reply.affected_instances if a.action != template_pb2.AffectedInstance.ON_RESUME]
            how = "in place" if reply.in_place else "recreating the pods"
            policy = template_pb2.RolloutPolicy.Name(reply.rollout_policy)
            out.print(f"{short(name)}: {len(reply.changed_paths)} path(s) change"
                      + (f"; restarts {len(live)} live instance(s), {how}, policy {policy}"
                         if reply.restarts_instances else "; no instance restarts"))
            for path in reply.changed_paths:
                out.print(f"  ~ {path}")
            if reply.affected_instances:
                out.print(render.table(list(reply.affected_instances), [
                    ("INSTANCE", lambda a: short(a.instance)), ("OWNER", lambda a: a.owner),
                    ("WHEN", lambda a: template_pb2.AffectedInstance.Action.Name(a.action)), ("WHY", lambda a: a.reason),
                    ("LAST ACCESS", lambda a: a.last_access_time.ToJsonString()
                     if a.HasField("last_access_time") else "never")]))
            if reply.violations:
                out.print(render.table(list(reply.violations), VIOLATION_COLUMNS))
    if c.output != "table":
        render.emit(results if len(results) > 1 else results[0], c.output)
    if any(r.violations for r in results):
        raise Failure("the update would be refused", Exit.CHECK_FAILED)


@app.command()
def delete(ctx: typer.Context, name: str = TemplateArg,
           force: bool = typer.Option(False, "--force", help="Also delete its instances, their disks and ownership."),
           yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
           timeout: float | None = typer.Option(300.0, help="Seconds to wait for the cascade.")) -> None:
    """Delete a template. Refused while instances exist unless --force."""
    c = ctl(ctx)
    full = template_name(name, c.namespace)
    if force and not yes:
        typer.confirm(f"delete {full} with ALL its instances and their disks?", abort=True, err=True)
    reply = c.client.call("template", "DeleteTemplate", template_pb2.DeleteTemplateRequest(name=full, force=force),
                          timeout=timeout)
    _warn(list(getattr(reply, "warnings", [])))
    if c.output == "table":
        render.console().print(f"{short(full)} deleted ({reply.deleted_instance_count} instance(s), "
                               f"{len(reply.deleted_claims)} disk(s))")
    else:
        render.emit(reply, c.output)
