"""`aigcctl quotas list|get|set|clear`: read and change the stored quota policies (admin; docs/quotas.md).

A policy is named in full (``users/alice/quotaPolicy``) or briefly: ``default``, ``role/NAME``, ``user/NAME``,
``template/NAME`` (in --namespace) or ``template/-`` (every template not named). ``set`` changes only the
limits it is given; ``clear`` puts limits back to what configuration sets (all of them, or those named).
"""
from __future__ import annotations

from typing import Literal

import typer

from ..api.v1 import instance_pb2
from . import render
from .context import ctl
from .exitcodes import Exit, Failure

app = typer.Typer(no_args_is_help=True, help="Read and change quota policies (admin).")

Limit = Literal["installed", "running", "gpus", "gpu_memory_gib"]  # the QuotaPolicy fields that are limits
FIELDS: tuple[Limit, ...] = ("installed", "running", "gpus", "gpu_memory_gib")
NameArg = typer.Argument(..., help="default, role/NAME, user/NAME, template/NAME, template/- or a full policy name.")
LimitHelp = "A maximum (0 or more) or `unlimited`."
FieldOption = typer.Option([], "--field", "-f", help=f"Only this limit ({', '.join(FIELDS)}); repeatable. "
                           "Default: every limit.")


def policy_name(arg: str, namespace: str) -> str:
    """The full policy name of ``arg`` (see the module docstring)."""
    if arg in ("default", "quotaPolicies/default"):
        return "quotaPolicies/default"
    if arg.endswith("/quotaPolicy"):
        return arg
    kind, _, rest = arg.partition("/")
    if kind in ("role", "roles", "user", "users") and rest:
        return f"{kind.rstrip('s')}s/{rest}/quotaPolicy"
    if kind in ("template", "templates") and rest:
        return ("namespaces/-/templates/-/quotaPolicy" if rest == "-"
                else f"namespaces/{namespace}/templates/{rest}/quotaPolicy")
    raise Failure(f"{arg!r} is not a policy: use default, role/NAME, user/NAME, template/NAME or template/-",
                  Exit.USAGE)


def limit_value(option: str, text: str) -> instance_pb2.QuotaValue:
    if text.strip().lower() == "unlimited":
        return instance_pb2.QuotaValue(unlimited=True)
    try:
        return instance_pb2.QuotaValue(maximum=int(text))
    except ValueError:
        raise Failure(f"{option} {text!r}: give a number or `unlimited`", Exit.USAGE) from None


def _shown(policy: instance_pb2.QuotaPolicy, name: Limit) -> str:
    """The stored value, else the configured one marked `(config)`, else `-` (inherits)."""
    for source, suffix in ((policy, ""), (policy.configured, " (config)")):
        if source.HasField(name):
            value = getattr(source, name)
            return ("unlimited" if value.WhichOneof("value") == "unlimited" else str(value.maximum)) + suffix
    return "-"


COLUMNS: list[render.Column] = [
    ("NAME", lambda p: p.name),
    *((f.upper(), lambda p, f=f: _shown(p, f)) for f in FIELDS),
    ("UPDATED BY", lambda p: p.updated_by or "-"),
    ("ETAG", lambda p: p.etag),
]


def _show(ctx: typer.Context, policy: instance_pb2.QuotaPolicy) -> None:
    c = ctl(ctx)
    render.emit([policy] if c.output == "table" else policy, c.output, COLUMNS)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Every policy that sets a limit, stored or configured (stored values win; `(config)` marks the others)."""
    c = ctl(ctx)
    render.emit(list(c.client.pages("instance", "ListQuotaPolicies", instance_pb2.ListQuotaPoliciesRequest(),
                                    "quota_policies")), c.output, COLUMNS)


@app.command()
def get(ctx: typer.Context, name: str = NameArg) -> None:
    """Show one policy."""
    c = ctl(ctx)
    _show(ctx, c.client.call("instance", "GetQuotaPolicy",
                             instance_pb2.GetQuotaPolicyRequest(name=policy_name(name, c.namespace))))


@app.command("set")
def set_(ctx: typer.Context, name: str = NameArg,
         installed: str | None = typer.Option(None, help=f"Instances held, running or paused. {LimitHelp}"),
         running: str | None = typer.Option(None, help=f"Instances running at once. {LimitHelp}"),
         gpus: str | None = typer.Option(None, help=f"nvidia.com/gpu units running. {LimitHelp}"),
         gpu_memory_gib: str | None = typer.Option(None, "--gpu-memory-gib",
                                                   help=f"aliyun.com/gpu-mem GiB running. {LimitHelp}"),
         etag: str = typer.Option("", help="Refuse (exit code of ABORTED) if the policy changed since this etag.")
         ) -> None:
    """Store the limits given; the others are left as they are. Lowering a limit pauses nothing."""
    c = ctl(ctx)
    options = {"installed": installed, "running": running, "gpus": gpus, "gpu_memory_gib": gpu_memory_gib}
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        raise Failure("give at least one of --installed, --running, --gpus, --gpu-memory-gib", Exit.USAGE)
    policy = instance_pb2.QuotaPolicy(name=policy_name(name, c.namespace), etag=etag)
    for field, text in given.items():
        getattr(policy, field).CopyFrom(limit_value("--" + field.replace("_", "-"), text))
    request = instance_pb2.UpdateQuotaPolicyRequest(quota_policy=policy)
    request.update_mask.paths.extend(given)
    _show(ctx, c.client.call("instance", "UpdateQuotaPolicy", request))


@app.command()
def clear(ctx: typer.Context, name: str = NameArg,
          field: list[str] = FieldOption,
          etag: str = typer.Option("", help="Refuse if the policy changed since this etag.")) -> None:
    """Drop stored limits: they inherit again (configuration, then the wider scope)."""
    c = ctl(ctx)
    request = instance_pb2.UpdateQuotaPolicyRequest(
        quota_policy=instance_pb2.QuotaPolicy(name=policy_name(name, c.namespace), etag=etag))
    request.update_mask.paths.extend([f.replace("-", "_") for f in field] or ["*"])
    _show(ctx, c.client.call("instance", "UpdateQuotaPolicy", request))
