"""The original AIGC-Gateway's custom-data format, and pure operations on it.

One key per installed template: ``"<namespace>-<template>"`` -> ``{"Name": "<template>", "Namespace": "<ns>",
"ID": "<id>"}`` (the id as a string). The original wrote ``null`` when an instance was removed; this
gateway removes the key instead (see :func:`apply_changes`), and treats a ``null`` it finds as "no
instance". The key alone cannot be split (both parts may contain ``-``), so the value's ``Namespace``
and ``Name`` are what identify the template.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# A change set for one user: key -> the new value, or None to remove the key.
Changes = dict[str, dict[str, str] | None]


def entry_key(namespace: str, template: str) -> str:
    return f"{namespace}-{template}"


def entry_value(namespace: str, template: str, instance_id: int) -> dict[str, str]:
    return {"Name": template, "Namespace": namespace, "ID": str(instance_id)}


@dataclass(frozen=True)
class Entry:
    """A well-formed instance entry read from custom data."""

    key: str
    namespace: str
    template: str
    id: int


@dataclass(frozen=True)
class Malformed:
    """Something under a key that looks like an instance entry but is not a valid one."""

    key: str
    reason: str
    namespace: str = ""
    template: str = ""


NULL = "null"


def parse_entry(key: str, value: Any) -> Entry | Malformed | str | None:
    """Classify one custom-data item: an :class:`Entry`, a :class:`Malformed` one, :data:`NULL` for the
    original's removed-instance marker, or None when the item is not an instance entry at all (other
    applications keep their own data in custom data too)."""
    if value is None:
        return NULL
    if not isinstance(value, dict) or not ({"Name", "Namespace", "ID"} & value.keys()):
        return None
    namespace, template, raw_id = value.get("Namespace"), value.get("Name"), value.get("ID")
    if not isinstance(namespace, str) or not namespace or not isinstance(template, str) or not template:
        return Malformed(key, "Namespace and Name must be non-empty strings")
    if key != entry_key(namespace, template):
        return Malformed(key, f"key does not match its value (expected {entry_key(namespace, template)!r})",
                         namespace, template)
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return Malformed(key, "ID must be a string of digits", namespace, template)
    text = str(raw_id).strip()
    if not text.isdecimal():
        return Malformed(key, f"ID {raw_id!r} is not a non-negative integer", namespace, template)
    return Entry(key, namespace, template, int(text))


def desired_entries(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, str]]:
    """The custom data entries one user should have, from their (namespace, template, id) ownership rows."""
    return {entry_key(ns, tpl): entry_value(ns, tpl, i) for ns, tpl, i in rows}


def collapse(changes: Iterable[tuple[str, str, int | None]]) -> Changes:
    """Outbox rows of one user, oldest first, as one change set: the last row per key wins, which is what
    applying them one by one in order would leave."""
    out: Changes = {}
    for namespace, template, instance_id in changes:
        key = entry_key(namespace, template)
        out.pop(key, None)  # keep dict order = order of each key's last change
        out[key] = None if instance_id is None else entry_value(namespace, template, instance_id)
    return out


def apply_changes(current: Mapping[str, Any], changes: Changes) -> dict[str, Any]:
    """The custom data after ``changes``: values set, keys removed (not set to null); other keys untouched."""
    out = dict(current)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = dict(value)
    return out


def effective(current: Mapping[str, Any], changes: Changes) -> Changes:
    """The subset of ``changes`` that would change ``current``."""
    return {k: v for k, v in changes.items() if (k in current if v is None else current.get(k) != v)}


def diff(current: Mapping[str, Any], desired: Mapping[str, dict[str, str]],
         managed: set[tuple[str, str]], keep: Collection[str] = ()) -> Changes:
    """What makes ``current`` agree with ``desired`` (PostgreSQL wins).

    Entries are removed only for templates in ``managed`` (those the gateway holds ownership rows
    for): an entry of a template never imported is left alone, so running reconcile before the
    import cannot wipe the original installation's data. ``null`` items count as absent. Keys in
    ``keep`` are never changed: the user claims a disputed id there (see disputes.py).
    """
    changes: Changes = {k: dict(v) for k, v in desired.items() if current.get(k) != v and k not in keep}
    for key, value in current.items():
        if key in desired or key in keep:
            continue
        parsed = parse_entry(key, value)
        if isinstance(parsed, Entry) and (parsed.namespace, parsed.template) in managed:
            changes[key] = None
    return changes


def describe_change(key: str, value: dict[str, str] | None, current: Any) -> tuple[str, str, int]:
    """(namespace, template, id) of one change for reports; id -1 for a removal. The template of a removed
    key comes from the value being removed (the key alone is ambiguous)."""
    if value is not None:
        return value["Namespace"], value["Name"], int(value["ID"])
    parsed = parse_entry(key, current)
    if isinstance(parsed, Entry):
        return parsed.namespace, parsed.template, -1
    return "", "", -1
