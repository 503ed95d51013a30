"""`aigcctl instances ...`: install, list, get, pause, resume, restart, upgrade, keep-alive, delete, watch, quota."""
from __future__ import annotations

import json
import sys

import grpc
import typer

from ..api.v1 import instance_pb2
from . import render
from .context import ctl
from .exitcodes import CallFailed, Exit, Failure
from .names import instance_name, short, template_name, template_parent
from .waiting import GONE, State, wait_for

app = typer.Typer(no_args_is_help=True, help="Install and operate users' instances.")

NameArg = typer.Argument(..., help="Instance: TEMPLATE/ID (e.g. sd-cpu/0) or namespaces/NS/templates/T/instances/ID.")
WaitOption = typer.Option(True, "--wait/--no-wait", help="Wait (with live progress) until the operation completes.")
TimeoutOption = typer.Option(600.0, "--timeout", help="Seconds --wait waits before giving up (exit code 12).")

COLUMNS: list[render.Column] = [
    ("NAME", lambda i: short(i.name)),
    ("OWNER", lambda i: i.owner or "-"),
    ("STATE", lambda i: State.Name(i.state) + (" (orphaned)" if i.orphaned else "")),
    ("MESSAGE", lambda i: i.state_message or "-"),
    ("URL", lambda i: i.access_uri or "-"),
    ("AGE", lambda i: render.age(i.create_time)),
]
EVENT_COLUMNS: list[render.Column] = [
    ("TIME", lambda e: render.when(e.time)),
    ("STATE", lambda e: State.Name(e.instance.state)),
    ("SOURCE", lambda e: e.source or "-"),
    ("REASON", lambda e: e.reason or "-"),
    ("MESSAGE", lambda e: e.message or e.instance.state_message or "-"),
]


def _finish(ctx: typer.Context, instance: instance_pb2.Instance | None, verb: str, name: str) -> None:
    c = ctl(ctx)
    if c.output != "table":
        render.emit(instance if instance is not None else {"name": name, "deleted": True}, c.output)
        return
    if instance is None:
        render.console().print(f"{short(name)} {verb}")
        return
    url = f" {instance.access_uri}" if instance.access_uri else ""
    render.console().print(f"{short(instance.name)} {verb}: {State.Name(instance.state)}{url}")


def _operate(ctx: typer.Context, method: str, request_cls: type, name: str, target: int, verb: str,
             wait: bool, timeout: float, require_change: bool = False) -> None:
    c = ctl(ctx)
    full = instance_name(name, c.namespace)
    instance = c.client.call("instance", method, request_cls(name=full))
    if wait:
        instance = wait_for(c.client, full, target, timeout=timeout, first=instance, require_change=require_change)
    _finish(ctx, instance, verb, full)


@app.command()
def install(ctx: typer.Context,
            template: str = typer.Argument(..., help="Template: NAME or namespaces/NS/templates/NAME."),
            owner: str = typer.Option("", help="Admin: install for this user id instead of yourself."),
            wait: bool = WaitOption, timeout: float = TimeoutOption) -> None:
    """Install a template: a new instance for the caller (or --owner)."""
    c = ctl(ctx)
    instance = c.client.call("instance", "CreateInstance", instance_pb2.CreateInstanceRequest(
        parent=template_name(template, c.namespace), owner=owner))
    if wait:
        instance = wait_for(c.client, instance.name, State.RUNNING, timeout=timeout, first=instance)
    _finish(ctx, instance, "installed", instance.name)


@app.command("list")
def list_(ctx: typer.Context,
          template: str | None = typer.Option(None, "--template", "-t", help="Only this template (default: all)."),
          all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Every namespace."),
          owner: str = typer.Option("", help="Admin: only this user's instances; `me` for yours."),
          state: str | None = typer.Option(None, help="Only this state, e.g. RUNNING or PAUSED."),
          limit: int = typer.Option(0, help="At most this many (0: all).")) -> None:
    """List instances (yours; admins see everyone's)."""
    c = ctl(ctx)
    request = instance_pb2.ListInstancesRequest(parent=template_parent(template, c.namespace, all_namespaces),
                                                owner=owner)
    if state:
        try:
            request.state = State.Value(state.upper())
        except ValueError:
            raise Failure(f"--state {state!r}: choose from {', '.join(State.keys()[1:])}", Exit.USAGE) from None
    render.emit(list(c.client.pages("instance", "ListInstances", request, "instances", limit)), c.output, COLUMNS)


@app.command()
def quota(ctx: typer.Context,
          user: str = typer.Option("", "--user", "-u", help="Admin: this user's usage (default: yours).")) -> None:
    """Show usage against each quota limit (instances installed and running, GPUs; docs/quotas.md)."""
    c = ctl(ctx)
    reply = c.client.call("instance", "GetQuotaUsage", instance_pb2.GetQuotaUsageRequest(user=user))
    if c.output != "table":
        render.emit(reply, c.output)
        return
    render.console().print(f"user {reply.user}")
    render.console().print(render.table(list(reply.limits), [
        ("LIMIT", lambda u: u.limit), ("USAGE", lambda u: str(u.usage)),
        ("MAXIMUM", lambda u: "unlimited" if u.unlimited else str(u.maximum))]))


@app.command()
def get(ctx: typer.Context, name: str = NameArg) -> None:
    """Show one instance."""
    c = ctl(ctx)
    render.emit(c.client.call("instance", "GetInstance",
                              instance_pb2.GetInstanceRequest(name=instance_name(name, c.namespace))), c.output)


@app.command()
def pause(ctx: typer.Context, name: str = NameArg, wait: bool = WaitOption, timeout: float = TimeoutOption) -> None:
    """Pause: the pod goes, the disk and the id stay."""
    _operate(ctx, "PauseInstance", instance_pb2.PauseInstanceRequest, name, State.PAUSED, "paused", wait, timeout)


@app.command()
def resume(ctx: typer.Context, name: str = NameArg, wait: bool = WaitOption, timeout: float = TimeoutOption) -> None:
    """Resume a paused instance: same id, disk and URL."""
    _operate(ctx, "ResumeInstance", instance_pb2.ResumeInstanceRequest, name, State.RUNNING, "resumed", wait, timeout)


@app.command()
def restart(ctx: typer.Context, name: str = NameArg, wait: bool = WaitOption, timeout: float = TimeoutOption) -> None:
    """Restart: a new pod on the same disk."""
    _operate(ctx, "RestartInstance", instance_pb2.RestartInstanceRequest, name, State.RUNNING, "restarted", wait,
             timeout, require_change=True)


@app.command()
def upgrade(ctx: typer.Context, name: str = NameArg) -> None:
    """Move a running instance to its template's current revision now, whatever the rollout policy (it restarts;
    in place when the change allows it). A paused instance resumes on the current revision anyway."""
    c = ctl(ctx)
    instance = c.client.call("instance", "UpdateInstance",
                             instance_pb2.UpdateInstanceRequest(name=instance_name(name, c.namespace)))
    if c.output != "table":
        render.emit(instance, c.output)
        return
    pending = "moving to" if instance.update_available else "on"
    render.console().print(f"{short(instance.name)} upgrade requested: {State.Name(instance.state)}, {pending} the "
                           f"template's current revision (runs {instance.revision or 'unknown'})")


@app.command("keep-alive")
def keep_alive(ctx: typer.Context, name: str = NameArg) -> None:
    """Reset the idle clock and withdraw an announced pause for idleness (docs/instance.md)."""
    c = ctl(ctx)
    instance = c.client.call("instance", "KeepInstanceAlive",
                             instance_pb2.KeepInstanceAliveRequest(name=instance_name(name, c.namespace)))
    _finish(ctx, instance, "kept alive", instance.name)


@app.command()
def delete(ctx: typer.Context, name: str = NameArg, wait: bool = WaitOption, timeout: float = TimeoutOption,
           yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Uninstall: the pod and every disk of the instance are deleted."""
    c = ctl(ctx)
    full = instance_name(name, c.namespace)
    if not yes:
        typer.confirm(f"uninstall {full} and delete its disks?", abort=True, err=True)
    instance = c.client.call("instance", "DeleteInstance", instance_pb2.DeleteInstanceRequest(name=full))
    if wait:
        wait_for(c.client, full, GONE, timeout=timeout, first=instance)
        _finish(ctx, None, "deleted", full)
    else:
        _finish(ctx, instance, "uninstalling", full)


@app.command()
def watch(ctx: typer.Context, name: str = NameArg,
          timeout: float | None = typer.Option(None, "--timeout", help="Stop after this many seconds.")) -> None:
    """Follow an instance's state changes until Ctrl-C (JSON/YAML: one event per line/document)."""
    c = ctl(ctx)
    full = instance_name(name, c.namespace)
    stream = c.client.stream("instance", "WatchInstance", instance_pb2.WatchInstanceRequest(name=full),
                             timeout=timeout)
    out = render.console()
    try:
        for event in stream:
            if c.output == "json":  # JSON lines, so a consumer can parse each event as it comes
                sys.stdout.write(json.dumps(render.to_data(event), ensure_ascii=False) + "\n")
                sys.stdout.flush()
            elif c.output == "yaml":
                sys.stdout.write("---\n" + render.dumps(render.to_data(event), "yaml"))
                sys.stdout.flush()
            else:
                out.print(*(fn(event) for _, fn in EVENT_COLUMNS))
    except grpc.RpcError as error:
        failed = CallFailed.from_rpc_error(error)
        if failed.code != grpc.StatusCode.DEADLINE_EXCEEDED or timeout is None:
            raise failed from None
    finally:
        stream.cancel()
