"""What an update of a published template does: the object to write, what changes, and whether it restarts
live instances. Pure.

An update never changes `spec.replicas`, `spec.reserveGameServerIds` or `spec.scaleStrategy`: the
instance service owns them (and the controller rewrites the reserved ids concurrently), so they are
always taken from the object read; a request that would change them is refused with that path.
Without an update mask the source is the whole new object; with one, only the named paths are
taken from the source (AIP-161: a named path missing from the source is removed).
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aigc_gateway import okg
from aigc_gateway.errors import Aborted, Violation

from .normalize import SERVER_METADATA

PROTECTED = ("spec.replicas", "spec.reserveGameServerIds", "spec.scaleStrategy")
# The rollout's own fields (docs/upgrade.md): UpdateTemplate pauses a pod-template change, the instance service's
# reconciler sets the partition and unpauses. An admin's manifest carries them only as read: left out, or the same
# value, they are taken from the object read (an old manifest must not reset a rollout in progress); not admin
# state, so outside the etag and the changed paths.
ROLLOUT_OWNED = ("spec.updateStrategy.rollingUpdate.partition", "spec.updateStrategy.rollingUpdate.paused")
IMMUTABLE = ("metadata.name", "metadata.namespace", "spec.network.networkType")
NOT_UPDATABLE = ("metadata.uid", "metadata.resourceVersion", "metadata.creationTimestamp", "metadata.generation",
                 "metadata.managedFields", "metadata.ownerReferences", "metadata.finalizers", "status")
# Changing these rolls every live pod (the pod template's hash changes).
RESTART_PREFIXES = ("spec.gameServerTemplate",)
# Maps whose keys are data (often with dots and slashes): shown as [key] like the apiserver does.
_KEYED_MAPS = frozenset({"labels", "annotations", "limits", "requests", "nodeSelector"})
# Label and annotation keys of Kubernetes and OpenKruise themselves.
SYSTEM_KEY = re.compile(r"(^|\.)(kruise\.io|kubernetes\.io|k8s\.io)/")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _system(key: str) -> bool:
    """A key of Kubernetes, OpenKruise, or the instance service's write fence: never admin state."""
    return bool(SYSTEM_KEY.search(key)) or key == okg.FENCE_ANNOTATION


@dataclass
class Proposal:
    desired: dict[str, Any]
    violations: list[Violation] = field(default_factory=list)
    changed_paths: list[str] = field(default_factory=list)

    @property
    def restarts(self) -> bool:
        return any(_under(p, prefix) for p in self.changed_paths for prefix in RESTART_PREFIXES)

    @property
    def restart_paths(self) -> list[str]:
        return [p for p in self.changed_paths if any(_under(p, prefix) for prefix in RESTART_PREFIXES)]


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


# -- paths -------------------------------------------------------------------

_SEGMENT = re.compile(r"`(?P<quoted>[^`]+)`|\[(?P<key>[^\]]+)\]|(?P<plain>[^.\[`]+)")


def parse_path(path: str) -> list[str] | None:
    """Segments of `a.b`, `` a.`x.y` `` (AIP-161 quoting) or `a[x.y]`; None when malformed."""
    segments: list[str] = []
    i = 0
    while i < len(path):
        if segments and path[i] == ".":
            i += 1
        elif segments and path[i] != "[":
            return None
        match = _SEGMENT.match(path, i)
        if not match or (match["key"] is not None and not segments):
            return None
        segments.append(match["quoted"] or match["key"] or match["plain"])
        i = match.end()
    return segments or None


def format_path(segments: list[str | int]) -> str:
    out = ""
    parent = ""
    for segment in segments:
        if isinstance(segment, int) or out and (parent in _KEYED_MAPS or not _PLAIN_KEY.match(segment)):
            out += f"[{segment}]"
        else:
            out += ("." if out else "") + segment
        parent = str(segment)
    return out


_MISSING = object()


def get_path(obj: Any, segments: list[str]) -> Any:
    for segment in segments:
        if not isinstance(obj, dict) or segment not in obj:
            return _MISSING
        obj = obj[segment]
    return obj


def set_path(obj: dict[str, Any], segments: list[str], value: Any) -> None:
    for segment in segments[:-1]:
        child = obj.get(segment)
        if not isinstance(child, dict):
            child = obj[segment] = {}
        obj = child
    if value is _MISSING:
        obj.pop(segments[-1], None)
    else:
        obj[segments[-1]] = copy.deepcopy(value)


# -- comparing -----------------------------------------------------------------

def reserved_ids(value: Any) -> frozenset[int] | Any:
    """`[1, 2, "5-7"]` as {1, 2, 5, 6, 7}, to compare what was read with what the controller wrote; a value
    that is not a reserve list (see :func:`aigc_gateway.okg.parse_reserve`) is compared as it is."""
    if not isinstance(value, list):
        return value
    try:
        return okg.parse_reserve(value)
    except okg.ReserveListError:
        return value


def _same(path: str, a: Any, b: Any) -> bool:
    if path == "spec.reserveGameServerIds":
        return bool(reserved_ids(a if a is not _MISSING else []) == reserved_ids(b if b is not _MISSING else []))
    return bool(a == b)


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """The part of an object an admin controls: no status, no server metadata."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        for key in SERVER_METADATA:
            meta.pop(key, None)
    return out


def admin_part(obj: dict[str, Any]) -> dict[str, Any]:
    """What admins control: everything but status, server metadata and the fields the instance service owns."""
    out = comparable(obj)
    for path in PROTECTED + ROLLOUT_OWNED:
        set_path(out, path.split("."), _MISSING)
    meta = out.get("metadata")
    if not isinstance(meta, dict):
        return out
    for section in ("labels", "annotations"):
        values = meta.get(section)
        if isinstance(values, dict):  # e.g. `game.kruise.io/reserve-ids`, rewritten by the controller
            meta[section] = {k: v for k, v in values.items() if not _system(k)}
            if not meta[section]:
                del meta[section]
    return out


def etag(obj: dict[str, Any]) -> str:
    """The template's etag: a digest of what admins control. Not the resourceVersion, which every install,
    pause and controller status update changes; an admin's edit is stale only when another edit came first."""
    canonical = json.dumps(admin_part(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def check_etag(obj: dict[str, Any], sent: str) -> None:
    """ABORTED when the caller sent an etag and the template's is another (AIP-154); no etag: no check."""
    now = etag(obj)
    if sent and sent != now:
        raise Aborted(f"the template changed since etag {sent} was read (now {now}); read it again",
                      reason="STALE_ETAG", metadata={"etag": now})


def diff(old: Any, new: Any, segments: list[str | int] | None = None) -> list[str]:
    """Manifest paths where ``old`` and ``new`` differ (leaves, or the list when its length changed)."""
    segments = segments or []
    # A map that appears or disappears is reported by its keys, like any other change inside it.
    if isinstance(new, dict) and old is _MISSING and new:
        old = {}
    if isinstance(old, dict) and new is _MISSING and old:
        new = {}
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            out += diff(old.get(key, _MISSING), new.get(key, _MISSING), [*segments, key])
        return out
    if segments[-1:] == ["networkConf"] and isinstance(old, list) and isinstance(new, list):
        return _diff_network_conf(old, new, segments)
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [p for i, (a, b) in enumerate(zip(old, new, strict=True)) for p in diff(a, b, [*segments, i])]
    return [] if old == new else [format_path(segments)]


def dropped(sent: Any, kept: Any, segments: list[str | int] | None = None) -> list[str]:
    """Paths of ``sent`` that ``kept`` lacks: fields the apiserver pruned because its schema does not know them."""
    segments = segments or []
    if isinstance(sent, dict) and isinstance(kept, dict):
        return [p for key, value in sent.items()
                for p in ([format_path([*segments, key])] if key not in kept
                          else dropped(value, kept[key], [*segments, key]))]
    if isinstance(sent, list) and isinstance(kept, list) and len(sent) == len(kept):
        return [p for i, (a, b) in enumerate(zip(sent, kept, strict=True)) for p in dropped(a, b, [*segments, i])]
    return []


def _diff_network_conf(old: list[Any], new: list[Any], segments: list[str | int]) -> list[str]:
    """Network entries by name (`networkConf[Host]`): the plugin reads them by name, not by position."""
    def grouped(items: list[Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for item in items:
            key = str(item.get("name", "")) if isinstance(item, dict) else ""
            out.setdefault(key, []).append(item.get("value") if isinstance(item, dict) else item)
        return out
    def same(name: str) -> bool:
        if name == "Annotation":  # the plugin copies them into the Ingress's annotation map: order is no change
            return sorted(map(str, a.get(name, []))) == sorted(map(str, b.get(name, [])))
        return a.get(name) == b.get(name)
    a, b = grouped(old), grouped(new)
    base = format_path(segments)
    return [f"{base}[{name}]" for name in list(a) + [k for k in b if k not in a] if not same(name)]


# -- the proposal --------------------------------------------------------------

def propose(current: dict[str, Any], source: dict[str, Any], mask: list[str]) -> Proposal:
    """The object to write for an update of ``current`` with ``source`` (and the mask), before normalisation."""
    violations: list[Violation] = []
    mask = [p for p in mask if p != "*"]
    if mask:
        desired = comparable(current)
        for i, raw in enumerate(mask):
            segments = parse_path(raw)
            if segments is None:
                violations.append(Violation(f"update_mask.paths[{i}]", f"{raw!r} is not a field path",
                                            "INVALID_MASK"))
                continue
            if any(segments[:len(f)] == f for f in (p.split(".") for p in NOT_UPDATABLE + IMMUTABLE[:2])):
                violations.append(Violation(f"update_mask.paths[{i}]", f"{raw!r} cannot be updated",
                                            "NOT_UPDATABLE"))
                continue
            set_path(desired, segments, get_path(source, segments))
        desired = comparable(desired)
    else:
        desired = comparable(source)
    if not isinstance(desired.get("metadata"), dict):
        if "metadata" in desired:
            violations.append(Violation("metadata", "must be a mapping", "INVALID_METADATA"))
        desired["metadata"] = {}
    if not mask:
        _keep_system_keys(current, desired)
    cur_meta = current.get("metadata", {})
    for path in IMMUTABLE:
        segments = path.split(".")
        given, was = get_path(desired, segments), get_path(current, segments)
        if given is not _MISSING and was is not _MISSING and given != was:
            violations.append(Violation(path, f"cannot change from {was!r} to {given!r}", "IMMUTABLE_FIELD"))
        if was is not _MISSING:
            set_path(desired, segments, was)
    for path in PROTECTED:
        segments = path.split(".")
        given, was = get_path(desired, segments), get_path(current, segments)
        touched = bool(mask) or given is not _MISSING
        if touched and not _same(path, given, was):
            violations.append(Violation(path, "UpdateTemplate never changes replicas, reserveGameServerIds or the "
                                        "scale strategy (the instance service owns them); leave it out or send "
                                        "the current value", "PROTECTED_FIELD"))
        set_path(desired, segments, was)
    for path in ROLLOUT_OWNED:
        segments = path.split(".")
        given, was = get_path(desired, segments), get_path(current, segments)
        if given is not _MISSING and given != was:
            violations.append(Violation(path, f"the rollout sets it (docs/upgrade.md), now {_shown(was)}; leave it "
                                        "out or send the current value", "ROLLOUT_FIELD"))
        if isinstance(get_path(desired, segments[:-1]), dict) or was is not _MISSING:
            set_path(desired, segments, was)
    # Carry the server's view of the object so the write is conditional on what was read.
    meta = desired["metadata"]
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation", "ownerReferences", "finalizers"):
        if key in cur_meta:
            meta[key] = copy.deepcopy(cur_meta[key])
    return Proposal(desired=desired, violations=violations)


def _shown(value: Any) -> str:
    return "unset" if value is _MISSING else repr(value)


def _keep_system_keys(current: dict[str, Any], desired: dict[str, Any]) -> None:
    """Labels and annotations that controllers write (kruise-game's `game.kruise.io/reserve-ids`…) survive a whole-
    manifest update that leaves them out: an admin's manifest cannot be expected to carry them."""
    for section in ("labels", "annotations"):
        was = (current.get("metadata") or {}).get(section)
        if not isinstance(was, dict):
            continue
        kept = {k: v for k, v in was.items() if _system(k)}
        given = desired["metadata"].get(section)
        if kept and (given is None or isinstance(given, dict)):
            desired["metadata"][section] = {**kept, **(given or {})}


def finish(proposal: Proposal, current: dict[str, Any]) -> Proposal:
    """Fill in the changed paths once the desired object is final (after normalisation)."""
    proposal.changed_paths = [p for p in diff(comparable(current), comparable(proposal.desired))
                              if not any(_under(p, owned) for owned in ROLLOUT_OWNED)]
    return proposal
