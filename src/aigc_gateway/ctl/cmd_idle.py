"""`aigcctl idle-exemptions list|create|delete`: the users idle auto-pause leaves alone (admin; docs/instance.md).

A user is named by their OIDC subject (``alice``) or in full (``idleExemptions/alice``).
"""
from __future__ import annotations

import typer

from ..api.v1 import instance_pb2
from . import render
from .context import ctl

app = typer.Typer(no_args_is_help=True, help="Users exempt from idle auto-pause (admin).")

UserArg = typer.Argument(..., help="The user's OIDC subject, or idleExemptions/USER.")
COLUMNS: list[render.Column] = [
    ("USER", lambda e: e.name.removeprefix("idleExemptions/")),
    ("REASON", lambda e: e.reason or "-"),
    ("BY", lambda e: e.created_by or "-"),
    ("AGE", lambda e: render.age(e.create_time)),
]


def exemption_name(user: str) -> str:
    return user if user.startswith("idleExemptions/") else f"idleExemptions/{user}"


@app.command("list")
def list_(ctx: typer.Context, limit: int = typer.Option(0, help="At most this many (0: all).")) -> None:
    """List the exempt users."""
    c = ctl(ctx)
    render.emit(list(c.client.pages("instance", "ListIdleExemptions", instance_pb2.ListIdleExemptionsRequest(),
                                    "idle_exemptions", limit)), c.output, COLUMNS)


@app.command()
def create(ctx: typer.Context, user: str = UserArg,
           reason: str = typer.Option("", "--reason", "-r", help="Why, in words (shown to admins, audited).")) -> None:
    """Exempt a user: their instances are never paused for idleness."""
    c = ctl(ctx)
    made = c.client.call("instance", "CreateIdleExemption", instance_pb2.CreateIdleExemptionRequest(
        idle_exemption=instance_pb2.IdleExemption(name=exemption_name(user), reason=reason)))
    if c.output != "table":
        render.emit(made, c.output)
        return
    render.console().print(f"{made.name.removeprefix('idleExemptions/')} exempt from idle auto-pause")


@app.command()
def delete(ctx: typer.Context, user: str = UserArg) -> None:
    """End a user's exemption."""
    c = ctl(ctx)
    c.client.call("instance", "DeleteIdleExemption", instance_pb2.DeleteIdleExemptionRequest(name=exemption_name(user)))
    if c.output == "table":
        render.console().print(f"{exemption_name(user).removeprefix('idleExemptions/')} no longer exempt")
    else:
        render.emit({"name": exemption_name(user), "deleted": True}, c.output)
