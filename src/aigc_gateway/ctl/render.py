"""Output: `--output table` for people (rich), `json` and `yaml` for scripts.

JSON and YAML carry the same field names as the REST API (lowerCamelCase) with
every field present; a list command prints one array of its items, a single
resource one object. Only the result goes to stdout: progress and errors go to
stderr, so `aigcctl ... -o json | jq` always parses.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "yaml")
Column = tuple[str, Callable[[Any], str]]


def to_data(value: Any) -> Any:
    if isinstance(value, Message):
        return json_format.MessageToDict(value, always_print_fields_with_no_presence=True)
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    return value


def dumps(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    raise ValueError(fmt)


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal: wide enough that nothing is cut, and no colour codes in files.
    return Console(file=stream, width=None if stream.isatty() else 240, highlight=False)


def when(ts: Timestamp) -> str:
    """A timestamp as local-free UTC, `-` when unset."""
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(ts: Timestamp, now: datetime | None = None) -> str:
    if not ts.seconds:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - ts.ToDatetime(tzinfo=UTC)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(rows: Sequence[Any], columns: Sequence[Column]) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for header, _ in columns:
        t.add_column(header, overflow="fold")
    for row in rows:
        t.add_row(*(fn(row) for _, fn in columns))
    return t


def details(message: Message) -> Table:
    """One resource as FIELD / VALUE rows; nested values as compact YAML."""
    t = Table(box=None, pad_edge=False, show_header=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for key, value in to_data(message).items():
        if isinstance(value, (dict, list)):
            shown = yaml.safe_dump(value, sort_keys=False, default_flow_style=None).strip() if value else "-"
        else:
            shown = "-" if value in ("", None) else str(value)
        t.add_row(key, shown)
    return t


def emit(value: Any, fmt: str, columns: Sequence[Column] | None = None) -> None:
    """Print a result: a list of messages (with columns for the table) or one message."""
    if fmt in ("json", "yaml"):
        sys.stdout.write(dumps(to_data(value), fmt))
        sys.stdout.flush()
        return
    out = console()
    if isinstance(value, (list, tuple)):
        if not value:
            console(stderr=True).print("(none)")
            return
        out.print(table(value, columns or [("VALUE", str)]))
    elif isinstance(value, Message):
        out.print(details(value))
    else:
        out.print(value)
