"""OpenKruiseGame as the gateway reads and writes it: the one model every service uses.

A template is a kruise-game ``GameServerSet`` and an instance one of its ``GameServer``s; the rules that
follow from that are written here once, because each one, restated in a service, drifted from the others
(the reserve list was parsed three ways, only one of which capped the width of a range). What this module
owns:

- the API group, version, kinds, labels, annotations and the scale-down strategy the gateway relies on;
- the slot states of the ``instances`` table (:class:`SlotState`), one enum for every service that reads
  or writes a slot;
- which GameServerSets are templates: in a configured namespace (none configured: any) and carrying every
  configured ``gss_labels`` pair (:func:`is_template`, :func:`label_selector`);
- ``spec.reserveGameServerIds`` read (:func:`parse_reserve`, ints and ``"a-b"`` ranges, a range wider
  than :data:`MAX_RESERVE_RANGE` refused rather than expanded) and written (:func:`format_reserve`,
  :func:`with_scale`);
- the ``<id>`` of a Kubernetes-Ingress ``Host`` or ``Path`` (:func:`with_id`);
- the live set and the high-water mark of (R = ``spec.replicas``, X = the reserve list): kruise-game runs
  the lowest R ids not in X (:func:`live_ids`, :func:`high_water`, :func:`holes`);
- the GameServer (and pod) name ``<gss>-<id>``, the disk (PVC) name ``<vct>-<gss>-<id>``, and the id read
  back from each (:func:`game_server_name`, :func:`instance_id`, :func:`claim_name`, :func:`claim_id`).

Pure: no I/O and no service imports, so every service and the core itself can use it.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

GROUP = "game.kruise.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
GSS_KIND = "GameServerSet"
GAMESERVER_KIND = "GameServer"

# Every GameServer, pod and Advanced StatefulSet PVC made for a GameServerSet carries its name here.
OWNER_GSS_LABEL = f"{GROUP}/owner-gss"
# kruise-game's record of the explicit reserve list it last applied (same notation as the spec).
RESERVE_ANNOTATION = f"{GROUP}/reserve-ids"
# Written by the instance service on a GameServerSet, conditionally on a resourceVersion, so that a write of its own
# conditioned on that version can no longer land (services/instance/resolution.py). Not admin state.
FENCE_ANNOTATION = "aigc.gateway.io/allocator-fence"
# The scale-down strategy under which a reserved id keeps its number (and so its disk) until unreserved.
RESERVE_IDS = "ReserveIds"
# The network type whose Ingress per GameServer the gateway's auth check guards.
INGRESS_NETWORK = "Kubernetes-Ingress"
# What the Kubernetes-Ingress plugin replaces with the id in a networkConf Host or Path.
ID_MARK = "<id>"

# A range wider than this in a reserve list is refused rather than expanded into that many ids: kruise-game
# compresses consecutive ids it reserved, so a real list never holds one, and expanding "0-999999999" would
# stall the reader.
MAX_RESERVE_RANGE = 10_000


class SlotState(str, Enum):
    """The allocator's slot of one id in the ``instances`` table."""

    LIVE = "LIVE"  # owned, in the live set
    PAUSED = "PAUSED"  # owned, reserved, disk kept
    RELEASING = "RELEASING"  # uninstalled, reserved, disk deletion not yet confirmed
    FREE = "FREE"  # reserved, disk confirmed gone: the only state a new owner may get


OWNED = (SlotState.LIVE, SlotState.PAUSED)


# -- templates --------------------------------------------------------------------------------------------

def namespace_allowed(namespace: str | None, namespaces: Sequence[str]) -> bool:
    """Whether templates may live in ``namespace``: any when none are configured."""
    return not namespaces or namespace in namespaces


def matches_labels(labels: Mapping[str, Any] | None, gss_labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` carry every configured ``gss_labels`` pair."""
    have = labels or {}
    return all(have.get(k) == v for k, v in gss_labels.items())


def missing_labels(labels: Mapping[str, Any] | None, gss_labels: Mapping[str, str]) -> dict[str, str]:
    """The configured pairs ``labels`` lack (or carry with another value)."""
    have = labels or {}
    return {k: v for k, v in gss_labels.items() if have.get(k) != v}


def label_selector(gss_labels: Mapping[str, str]) -> str:
    """The Kubernetes label selector that lists templates (empty: every GameServerSet)."""
    return ",".join(f"{k}={v}" for k, v in sorted(gss_labels.items()))


def owner_selector(template: str) -> str:
    """The label selector of the GameServers, pods and PVCs a GameServerSet made."""
    return f"{OWNER_GSS_LABEL}={template}"


def is_template(gss: Mapping[str, Any], namespaces: Sequence[str], gss_labels: Mapping[str, str]) -> bool:
    """Whether a GameServerSet object is one of this gateway's templates."""
    meta = gss.get("metadata") or {}
    return namespace_allowed(meta.get("namespace"), namespaces) and matches_labels(meta.get("labels"), gss_labels)


# -- the reserve list ------------------------------------------------------------------------------------

class ReserveListError(ValueError):
    """The reserve list holds something that is not an id or an ``a-b`` range of a sane width."""


_INT = re.compile(r"^\s*([0-9]+)\s*$")
_RANGE = re.compile(r"^\s*([0-9]+)\s*-\s*([0-9]+)\s*$")


def parse_reserve(values: Iterable[Any] | None) -> frozenset[int]:
    """``spec.reserveGameServerIds``: ints and ``"a-b"`` range strings (kruise-game 1.x stores the list as
    ``[]IntOrString`` and rewrites it compressed, ``[1, "4-7"]``), plain ints (0.x).

    Anything else raises :class:`ReserveListError`: guessing could hand out a reserved id.
    """
    ids: set[int] = set()
    for item in values or ():
        if isinstance(item, bool):  # bool is an int in Python; never an id
            raise ReserveListError(f"reserveGameServerIds holds {item!r}")
        if isinstance(item, int):
            if item < 0:
                raise ReserveListError(f"reserveGameServerIds holds negative id {item}")
            ids.add(item)
            continue
        if isinstance(item, str):
            if match := _INT.match(item):
                ids.add(int(match[1]))
                continue
            if match := _RANGE.match(item):
                low, high = int(match[1]), int(match[2])
                if low > high:
                    raise ReserveListError(f"reserveGameServerIds holds the empty range {item!r}")
                if high - low > MAX_RESERVE_RANGE:
                    raise ReserveListError(f"reserveGameServerIds range {item!r} is too large (more than "
                                           f"{MAX_RESERVE_RANGE} ids)")
                ids.update(range(low, high + 1))
                continue
        raise ReserveListError(f"reserveGameServerIds holds {item!r}, which is neither an id nor a range")
    return frozenset(ids)


def format_reserve(ids: Iterable[int]) -> list[int]:
    """What the gateway writes: sorted ints, which every kruise-game version accepts."""
    return sorted(set(ids))


def with_scale(gss: Mapping[str, Any], replicas: int, reserved: Iterable[int]) -> dict[str, Any]:
    """The GameServerSet to PUT for (R, X): the object read (its resourceVersion included, so a concurrent
    change fails the write) without its status, with ``spec.replicas`` and the reserve list replaced."""
    body = copy.deepcopy(dict(gss))
    body.pop("status", None)
    body["spec"]["replicas"] = replicas
    body["spec"]["reserveGameServerIds"] = format_reserve(reserved)
    return body


def with_id(pattern: str, instance_id: int) -> str | None:
    """A Kubernetes-Ingress ``Host`` or ``Path`` for one id, as the OKG plugin makes it: its ``<id>`` replaced
    (a value without one is used as it is); None when it holds more than one, which the plugin refuses (it
    then makes no Ingress at all)."""
    parts = pattern.split(ID_MARK)
    return None if len(parts) > 2 else str(instance_id).join(parts)


# -- the live set ----------------------------------------------------------------------------------------

def live_ids(replicas: int, reserved: Iterable[int]) -> frozenset[int]:
    """The lowest ``replicas`` ids not reserved: the ids kruise-game keeps running."""
    reserved = frozenset(reserved)
    out: list[int] = []
    candidate = 0
    while len(out) < replicas:
        if candidate not in reserved:
            out.append(candidate)
        candidate += 1
    return frozenset(out)


def high_water(replicas: int, reserved: Iterable[int]) -> int:
    """One above the highest live or reserved id (0 for an empty set)."""
    reserved = frozenset(reserved)
    used = live_ids(replicas, reserved) | reserved
    return max(used) + 1 if used else 0


def holes(replicas: int, reserved: Iterable[int]) -> frozenset[int]:
    """Ids below the high-water mark that are neither live nor reserved (the allocator keeps none)."""
    reserved = frozenset(reserved)
    used = live_ids(replicas, reserved) | reserved
    return frozenset(i for i in range(max(used) + 1 if used else 0) if i not in used)


# -- GameServer names ------------------------------------------------------------------------------------

def game_server_name(template: str, instance_id: int) -> str:
    """The GameServer and pod name of an instance: ``<gss>-<id>``."""
    return f"{template}-{instance_id}"


def instance_id(name: str, template: str | None = None) -> int | None:
    """The id of a GameServer or pod named ``<template>-<id>``; None when the name is not one.

    Without ``template`` the id is what follows the last dash (a GameServerSet name may hold dashes, an id
    never does)."""
    if template is None:
        template, _, suffix = name.rpartition("-")
        if not template:
            return None
    elif name.startswith(template + "-"):
        suffix = name[len(template) + 1:]
    else:
        return None
    return int(suffix) if suffix.isascii() and suffix.isdigit() else None


def claim_name(volume_claim_template: str, template: str, instance_id: int) -> str:
    """The PVC the Advanced StatefulSet makes for an id's volumeClaimTemplate: ``<vct>-<gss>-<id>``."""
    return f"{volume_claim_template}-{template}-{instance_id}"


def claim_id(name: str, volume_claim_template: str, template: str) -> int | None:
    """The id of a PVC named ``<vct>-<gss>-<id>``; None when the name is not one of that template's."""
    return instance_id(name, f"{volume_claim_template}-{template}") if volume_claim_template else None


def template_of(name: str) -> str | None:
    """The GameServerSet part of a ``<gss>-<id>`` name; None when the name is not one."""
    template, _, suffix = name.rpartition("-")
    return template if template and suffix.isascii() and suffix.isdigit() else None


def instance_of(obj: Mapping[str, Any], template: str | None = None) -> tuple[str, str, int] | None:
    """(namespace, template, id) of a GameServer or pod object named ``<gss>-<id>``.

    The template is ``template`` if given, else the object's owner-gss label (every GameServer and pod a
    GameServerSet makes carries it); None when either is missing or the name does not match."""
    meta = obj.get("metadata") or {}
    gss = template or (meta.get("labels") or {}).get(OWNER_GSS_LABEL) or ""
    found = instance_id(str(meta.get("name") or ""), gss) if gss else None
    return None if found is None else (str(meta.get("namespace") or ""), gss, found)
