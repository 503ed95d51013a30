"""What a template write leaves behind for a retry of the same request after a crash (issue 20, AIP-155).

A template's writes land in Kubernetes, not in PostgreSQL, so the call's effect cannot be committed in the
transaction of its claim. Instead:

- CreateTemplate and UpdateTemplate write, in the GameServerSet itself and in the same write, the annotation
  ``<annotation_prefix>request``: a digest of the call's claim key (never the request id itself). A retry that
  took the claim over finds the object carrying its own digest and answers from that object, as the first
  attempt would have; it runs the write again only when the object does not carry it. UpdateTemplate also
  commits the warnings it will answer with on the claim before it writes (``record_effect``), since checked
  again against the already updated template they would read "nothing to change".
- DeleteTemplate commits its answer (the template as it was, the instances and disks it deletes) on the claim
  before it deletes. A retry finding that effect answers with it, resuming the cascade, when the object is gone
  or being deleted; it deletes again when the object is still there, not being deleted.

The annotation is the service's: it is dropped from admin input (a manifest read back from GetTemplate or
kubectl carries it, so refusing it would make a round trip fail) and from what an update compares, so it
never shows as a change in UpdateTemplate or PreviewTemplateUpdate. Pure, but for :func:`record` and
:func:`written_by`.
"""
from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

from aigc_gateway.errors import NotFound, Violation
from aigc_gateway.idempotency import Claim

from .cluster import TemplateCluster
from .messages import Template, parsed, serialized
from .policy import Policy

KEY = "request"


def annotation(policy: Policy) -> str:
    return f"{policy.annotation_prefix}{KEY}"


def digest(claim: Claim) -> str:
    """What the object carries for the call: a digest of the claim key, which itself hashes the method, the
    caller and the request id (the key is the replay row's primary key; the digest is not)."""
    return hashlib.sha256(claim.key.encode()).hexdigest()


def _notes(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    notes = meta.get("annotations") if isinstance(meta, dict) else None
    return notes if isinstance(notes, dict) else {}


def mark(obj: dict[str, Any], policy: Policy, claim: Claim | None) -> dict[str, Any]:
    """A copy of the manifest to write, carrying the call's digest (unchanged without a claim)."""
    if claim is None:
        return obj
    out = copy.deepcopy(obj)
    meta = out.setdefault("metadata", {})
    if not isinstance(meta.get("annotations"), dict):
        meta["annotations"] = {}
    meta["annotations"][annotation(policy)] = digest(claim)
    return out


def carries(obj: dict[str, Any], policy: Policy, claim: Claim | None) -> bool:
    """Whether ``obj`` was written by this call (an earlier attempt of it)."""
    return claim is not None and _notes(obj).get(annotation(policy)) == digest(claim)


def unmarked(obj: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """``obj`` without the digest annotation (a copy when it had one): admin input, and what an update compares."""
    if annotation(policy) not in _notes(obj):
        return obj
    out = copy.deepcopy(obj)
    notes = out["metadata"]["annotations"]
    notes.pop(annotation(policy))
    if not notes:
        out["metadata"].pop("annotations")
    return out


async def written_by(cluster: TemplateCluster, obj: dict[str, Any], policy: Policy,
                     claim: Claim | None) -> dict[str, Any] | None:
    """The template a create of ``obj`` met (ALREADY_EXISTS) when an earlier attempt of this call made it."""
    meta = obj.get("metadata") or {}
    try:
        found = await cluster.get(str(meta.get("namespace", "")), str(meta.get("name", "")))
    except NotFound:
        return None
    return found if carries(found, policy, claim) else None


# -- the effects committed on the claim --------------------------------------------------------------------



def update_effect(warnings: list[Violation]) -> dict[str, Any]:
    return {"op": "update", "warnings": [[w.field, w.description, w.reason] for w in warnings]}


def update_warnings(effect: dict[str, Any] | None) -> list[Violation] | None:
    if not effect or effect.get("op") != "update":
        return None
    return [Violation(field, description, reason) for field, description, reason in effect["warnings"]]


def delete_effect(template: Template | None, uid: str, known_ids: list[int], claims: set[str],
                  deleted_count: int) -> dict[str, Any]:
    shown = base64.b64encode(serialized(template)).decode() if template else ""
    return {"op": "delete", "uid": uid, "template": shown, "known_ids": sorted(known_ids), "claims": sorted(claims),
            "deleted_count": deleted_count}


def deleted_template(effect: dict[str, Any]) -> Template | None:
    shown = effect.get("template") or ""
    return parsed(base64.b64decode(shown)) if shown else None


def delete_happened(effect: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """Whether the delete an effect describes was made: the object it names is gone or being deleted (a
    same-named successor counts as gone). False: the first attempt died before deleting; delete again."""
    if not effect or effect.get("op") != "delete":
        return False
    if current is None:
        return True
    meta = current.get("metadata") or {}
    return str(meta.get("uid", "")) != effect["uid"] or bool(meta.get("deletionTimestamp"))
