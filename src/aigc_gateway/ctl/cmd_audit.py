"""`aigcctl audit list|tail`: read the audit log."""
from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta

import typer
from google.protobuf.timestamp_pb2 import Timestamp

from ..api.v1 import audit_pb2
from . import render
from .context import ctl
from .exitcodes import Exit, Failure
from .names import instance_name, short, template_name

app = typer.Typer(no_args_is_help=True, help="Read the audit log (admin).")
Outcome = audit_pb2.AuditEvent.Outcome

COLUMNS: list[render.Column] = [
    ("TIME", lambda e: render.when(e.time)),
    ("ACTOR", lambda e: e.actor or "-"),
    ("ACTION", lambda e: e.action),
    ("RESOURCE", lambda e: short(e.resource) if e.resource else "-"),
    ("OUTCOME", lambda e: Outcome.Name(e.outcome) + (f" {e.error_code}" if e.error_code else "")),
    ("REQUEST ID", lambda e: e.request_id or "-"),
]
_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`90s`, `15m`, `2h`, `7d`, or an ISO-8601 time."""
    match = _DURATION.match(value.strip())
    now = now or datetime.now(UTC)
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Failure(f"--since {value!r}: give a duration (30m, 2h, 7d) or an ISO-8601 time", Exit.USAGE) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _request(ctx: typer.Context, actor: str, action: str, template: str | None, instance: str | None,
             outcome: str | None, since: str | None) -> audit_pb2.ListAuditEventsRequest:
    ns = ctl(ctx).namespace
    request = audit_pb2.ListAuditEventsRequest(actor=actor, action=action)
    if template:
        request.template = template_name(template, ns)
    if instance:
        request.instance = instance_name(instance, ns)
    if outcome:
        try:
            request.outcome = Outcome.Value(outcome.upper())
        except ValueError:
            raise Failure(f"--outcome {outcome!r}: choose from SUCCESS, DENIED, FAILURE", Exit.USAGE) from None
    if since:
        stamp = Timestamp()
        stamp.FromDatetime(parse_since(since))
        request.start_time.CopyFrom(stamp)
    return request


ActorOption = typer.Option("", help="Only events by this actor (user id or service).")
ActionOption = typer.Option("", help="Only this action, e.g. InstanceService.PauseInstance.")
TemplateOption = typer.Option(None, "--template", "-t", help="Only events on this template or its instances.")
InstanceOption = typer.Option(None, "--instance", "-i", help="Only events on this instance (TEMPLATE/ID).")
OutcomeOption = typer.Option(None, help="SUCCESS, DENIED or FAILURE.")


@app.command("list")
def list_(ctx: typer.Context, actor: str = ActorOption, action: str = ActionOption,
          template: str | None = TemplateOption, instance: str | None = InstanceOption,
          outcome: str | None = OutcomeOption,
          since: str | None = typer.Option(None, help="Only events since: 30m, 2h, 7d or an ISO-8601 time."),
          limit: int = typer.Option(100, help="At most this many, newest first (0: all).")) -> None:
    """List audit events, newest first."""
    c = ctl(ctx)
    request = _request(ctx, actor, action, template, instance, outcome, since)
    request.page_size = min(limit, 1000) if limit else 1000
    render.emit(list(c.client.pages("audit", "ListAuditEvents", request, "audit_events", limit)), c.output, COLUMNS)


def new_events(page: list[audit_pb2.AuditEvent], seen: set[str]) -> list[audit_pb2.AuditEvent]:
    """The events of a newest-first page not printed yet, oldest first."""
    fresh = [e for e in page if e.name not in seen]
    seen.update(e.name for e in fresh)
    return list(reversed(fresh))


@app.command()
def tail(ctx: typer.Context, actor: str = ActorOption, action: str = ActionOption,
         template: str | None = TemplateOption, instance: str | None = InstanceOption,
         outcome: str | None = OutcomeOption,
         lines: int = typer.Option(10, "--lines", "-l", help="Events to show first."),
         interval: float = typer.Option(2.0, help="Seconds between polls."),
         follow: bool = typer.Option(True, "--follow/--no-follow",
                                     help="Keep printing new events until Ctrl-C.")) -> None:
    """Show the latest events, then new ones as they are written (JSON: one event per line)."""
    c = ctl(ctx)
    seen: set[str] = set()
    out = render.console()
    first = True
    while True:
        request = _request(ctx, actor, action, template, instance, outcome, None)
        request.page_size = max(lines, 1) if first else 200
        page = list(c.client.call("audit", "ListAuditEvents", request).audit_events)
        for event in new_events(page[:lines] if first else page, seen):
            if c.output == "table":
                out.print(*(fn(event) for _, fn in COLUMNS))
            else:  # JSON lines for json and yaml alike: one parseable event per line as it comes
                sys.stdout.write(json.dumps(render.to_data(event), ensure_ascii=False) + "\n")
                sys.stdout.flush()
        if first:
            seen.update(e.name for e in page)
        first = False
        if not follow:
            return
        time.sleep(interval)
