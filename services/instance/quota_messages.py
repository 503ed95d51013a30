"""Protobuf conversion of the quota policy API (GetQuotaPolicy, ListQuotaPolicies, UpdateQuotaPolicy).

Kept out of server.py so the servicer stays a list of RPC mappings: the request's policy and field mask become
the changes quota_policies.PolicyStore applies (every bad field INVALID_ARGUMENT naming it, before anything is
read or written), and a stored policy plus what configuration sets for its scope become the QuotaPolicy answer.
"""
from __future__ import annotations

from aigc_gateway import paging
from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.config import QuotaConfig
from aigc_gateway.errors import invalid

from .quota_policies import USER_FIELDS, Scope, Stored, parse_scope
from .quotas import Policies, Values

Changes = dict[str, tuple[bool, int | None]]  # field: (set, value; None = unlimited); not set: inherit


def configured(cfg: QuotaConfig, scope: Scope) -> Values:
    """What configuration sets for ``scope`` (only the fields it sets)."""
    p = Policies.from_config(cfg)
    if scope.kind == "default":
        return dict(p.default)
    return dict({"role": p.roles, "user": p.users, "template": p.templates}[scope.kind].get(scope.key, {}))


def _value(value: int | None) -> instance_pb2.QuotaValue:
    return instance_pb2.QuotaValue(unlimited=True) if value is None else instance_pb2.QuotaValue(maximum=value)


def _fill(message: instance_pb2.QuotaPolicy, values: Values) -> None:
    for name, value in values.items():
        getattr(message, name).CopyFrom(_value(value))


def to_proto(stored: Stored, config: Values) -> instance_pb2.QuotaPolicy:
    message = instance_pb2.QuotaPolicy(name=stored.scope.name, updated_by=stored.updated_by, etag=stored.etag)
    _fill(message, stored.values)
    message.configured.name = stored.scope.name
    _fill(message.configured, config)
    if stored.update_time is not None:
        message.update_time.FromDatetime(stored.update_time)
    return message


def changes_of(request: instance_pb2.UpdateQuotaPolicyRequest) -> tuple[Scope, Changes]:
    """The scope and the changes an UpdateQuotaPolicy request asks for."""
    if not request.HasField("quota_policy") or not request.quota_policy.name:
        raise invalid("quota_policy.name", "the policy's name is required")
    policy = request.quota_policy
    scope = parse_scope(policy.name, "quota_policy.name")
    # A subfield (`running.maximum`) names its limit: the REST bridge infers such masks from a PATCH body.
    paths = list(dict.fromkeys(p.split(".", 1)[0] if p.split(".", 1)[-1] in ("maximum", "unlimited") else p
                               for p in request.update_mask.paths))
    if not paths or paths == ["*"]:
        for name in USER_FIELDS:
            if name not in scope.fields and policy.HasField(name):
                raise invalid(f"quota_policy.{name}", f"a template's policy sets only running, not {name}")
        paths = list(scope.fields)
    out: Changes = {}
    for path in paths:
        if path not in USER_FIELDS:
            raise invalid("update_mask", f"unknown path {path!r}: the paths are {', '.join(USER_FIELDS)} (or *)")
        if path not in scope.fields:
            raise invalid("update_mask", f"a template's policy sets only running, not {path}")
        value = getattr(policy, path)
        which = value.WhichOneof("value") if policy.HasField(path) else None
        if which == "maximum":
            if value.maximum < 0:
                raise invalid(f"quota_policy.{path}.maximum", f"must be 0 or more, got {value.maximum}")
            out[path] = (True, value.maximum)
        elif which == "unlimited":
            if not value.unlimited:
                raise invalid(f"quota_policy.{path}.unlimited", "must be true; leave the value unset to inherit")
            out[path] = (True, None)
        else:
            out[path] = (False, None)
    return scope, out


def words(changes: Changes) -> dict[str, str]:
    """The changes for the audit event: a number, "unlimited" or "inherit" per field."""
    return {name: ("inherit" if not is_set else "unlimited" if value is None else str(value))
            for name, (is_set, value) in changes.items()}


def page(policies: list[tuple[Stored, Values]], page_size: int, page_token: str
         ) -> instance_pb2.ListQuotaPoliciesResponse:
    """One page of the policies that set a limit (stored or configured), in scope order."""
    size = paging.clamp(page_size, default=100, maximum=500)
    bound = paging.fingerprint("quotaPolicies")
    rows = sorted((p for p in policies if p[0].values or p[1]), key=lambda p: p[0].scope.order)
    if page_token:
        position = paging.decode(page_token, bound)
        if not (isinstance(position, list) and len(position) == 2 and isinstance(position[0], int)
                and isinstance(position[1], str)):
            raise invalid("page_token", "not a page token this server issued")
        after = (position[0], position[1])
        rows = [p for p in rows if p[0].scope.order > after]
    token = paging.encode(list(rows[size - 1][0].scope.order), bound) if len(rows) > size else ""
    return instance_pb2.ListQuotaPoliciesResponse(
        quota_policies=[to_proto(stored, config) for stored, config in rows[:size]], next_page_token=token)


def every_scope(cfg: QuotaConfig, stored: list[Stored]) -> list[tuple[Stored, Values]]:
    """Each stored policy and each configured scope, paired with what configuration sets for it."""
    p = Policies.from_config(cfg)
    scopes = {s.scope: s for s in stored}
    for scope in [Scope("default"), *(Scope("role", r) for r in p.roles), *(Scope("user", u) for u in p.users),
                  *(Scope("template", t) for t in p.templates)]:
        scopes.setdefault(scope, Stored(scope, {}))
    return [(s, configured(cfg, scope)) for scope, s in scopes.items()]
