"""Quota policies an admin stores at run time, and the role claims each user last acted with (issue 16).

Owns the ``quota_policies`` and ``quota_user_roles`` tables (models.py) and the policy names of the admin API:
``quotaPolicies/default``, ``roles/{role}/quotaPolicy``, ``users/{user}/quotaPolicy`` and
``namespaces/{ns}/templates/{tpl}/quotaPolicy`` (``namespaces/-/templates/-/quotaPolicy``: every template not
named, configuration's ``"*"``). A stored limit overrides what configuration sets for the same scope, field by
field (quotas.Policies); an unset one inherits. Nothing is cached: enforcement reads the table inside the user
and template locks, so an admin's change applies to the very next install or resume (docs/quotas.md).

Roles: a user's role claims come with their token, so they are known only in their own calls. Each install,
resume and usage read made by a user for themself records the claims it carried (``quota_user_roles``); checks
made without the user's token (an admin installing or resuming for them, CheckConsistency) use the recorded
claims, i.e. those the user's current usage was granted under. A user never seen has no roles (their own
override, else the default). Logto's roles are not read: they would be a network call inside the locks, and the
token's claims are what the user's own calls are judged by.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from aigc_gateway.db import Database
from aigc_gateway.errors import Aborted, invalid
from aigc_gateway.names import ANY, is_namespace, is_template_name

from .models import UNLIMITED, QuotaPolicyRow, QuotaUserRolesRow

log = logging.getLogger(__name__)

Limit = Literal["installed", "running", "gpus", "gpu_memory_gib"]  # the QuotaPolicy fields that are limits
USER_FIELDS: tuple[Limit, ...] = ("installed", "running", "gpus", "gpu_memory_gib")
TEMPLATE_FIELDS: tuple[Limit, ...] = ("running",)
KINDS = ("default", "role", "user", "template")  # ListQuotaPolicies' order
_SEGMENT = re.compile(r"^[^/\s]{1,255}$")  # a role claim or an OIDC subject: no slash, no blank


@dataclass(frozen=True, order=True)
class Scope:
    """Whom a policy limits: ``kind`` default | role | user | template; ``key`` the role, the user, ``ns/tpl``
    or ``*``."""

    kind: str
    key: str = ""

    @property
    def name(self) -> str:
        if self.kind == "default":
            return "quotaPolicies/default"
        if self.kind == "template":
            namespace, _, template = (ANY, "", ANY) if self.key == "*" else self.key.partition("/")
            return f"namespaces/{namespace}/templates/{template}/quotaPolicy"
        return f"{self.kind}s/{self.key}/quotaPolicy"

    @property
    def fields(self) -> tuple[Limit, ...]:
        return TEMPLATE_FIELDS if self.kind == "template" else USER_FIELDS

    @property
    def order(self) -> tuple[int, str]:
        return KINDS.index(self.kind), self.name


def parse_scope(name: str, field: str = "name") -> Scope:
    """The scope a policy name designates; INVALID_ARGUMENT on ``field`` if it is not one."""
    parts = name.split("/")
    if name == "quotaPolicies/default":
        return Scope("default")
    if len(parts) == 3 and parts[0] in ("roles", "users") and parts[2] == "quotaPolicy":
        if not _SEGMENT.match(parts[1]):
            raise invalid(field, f"{parts[0][:-1]} {parts[1]!r} must be 1 to 255 characters without '/' or blanks")
        return Scope(parts[0][:-1], parts[1])
    if len(parts) == 5 and parts[0] == "namespaces" and parts[2] == "templates" and parts[4] == "quotaPolicy":
        namespace, template = parts[1], parts[3]
        if namespace == ANY and template == ANY:
            return Scope("template", "*")
        if is_namespace(namespace) and is_template_name(template):
            return Scope("template", f"{namespace}/{template}")
        raise invalid(field, "namespace and template must be a Kubernetes namespace (lower-case DNS label) and a "
                             f"template name, or both '-' for every template, got {name!r}")
    raise invalid(field, "must be quotaPolicies/default, roles/{role}/quotaPolicy, users/{user}/quotaPolicy or "
                         f"namespaces/{{namespace}}/templates/{{template}}/quotaPolicy, got {name!r}")


@dataclass(frozen=True)
class Stored:
    """One scope's stored policy. ``values`` holds the fields set (None: explicitly unlimited)."""

    scope: Scope
    values: dict[str, int | None]
    version: int = 0
    update_time: datetime | None = None
    updated_by: str = ""

    @property
    def etag(self) -> str:
        return str(self.version)


def decode(row: QuotaPolicyRow) -> Stored:
    """The stored policy of a row; ValueError if the row could not have been written by the API."""
    try:
        scope = parse_scope(row.name)
    except Exception as exc:
        raise ValueError(f"malformed quota policy name {row.name!r}") from exc
    values: dict[str, int | None] = {}
    for name in USER_FIELDS:
        raw = getattr(row, name)
        if raw is None:
            continue
        if name not in scope.fields or raw < UNLIMITED:
            raise ValueError(f"quota policy {row.name!r} holds {name}={raw}, which the API never writes")
        values[name] = None if raw == UNLIMITED else raw
    return Stored(scope, values, row.version, row.update_time, row.updated_by)


def _encode(value: int | None) -> int:
    return UNLIMITED if value is None else value


class PolicyStore:
    """Reads and writes ``quota_policies``. A row the API could not have written (a hand-made bad name or
    value) is logged and left out, so that it breaks neither the list nor anyone's install."""

    def __init__(self, db: Database):
        self.db = db

    async def load(self) -> list[Stored]:
        async with self.db.session() as session:
            rows = list((await session.execute(select(QuotaPolicyRow))).scalars())
        out = []
        for row in rows:
            try:
                out.append(decode(row))
            except ValueError as exc:
                log.warning("ignoring a stored quota policy: %s", exc)
        return sorted(out, key=lambda s: s.scope.order)

    async def get(self, scope: Scope) -> Stored:
        async with self.db.session() as session:
            row = await session.get(QuotaPolicyRow, scope.name)
        if row is None:
            return Stored(scope, {})
        try:
            return decode(row)
        except ValueError as exc:
            log.warning("ignoring a stored quota policy: %s", exc)
            return Stored(scope, {}, row.version, row.update_time, row.updated_by)

    async def update(self, scope: Scope, changes: Mapping[str, tuple[bool, int | None]], etag: str, actor: str,
                     on_commit: Any = None) -> Stored:
        """Apply ``changes`` (field: (set, value); not set: back to inheriting) under the policy's lock; ABORTED if
        ``etag`` is given and is not the stored version's. ``on_commit(session, stored)`` runs in the same
        transaction (the replay claim's effect)."""
        async with self.db.lock(f"quota-policy:{scope.name}") as session:
            row = await session.get(QuotaPolicyRow, scope.name)
            version = row.version if row is not None else 0
            if etag and etag != str(version):
                raise Aborted(f"{scope.name} changed since it was read (etag {etag!r}, now {version!r}); read it "
                              "again and retry", reason="ETAG_MISMATCH")
            if row is None:
                row = QuotaPolicyRow(name=scope.name, version=0)
                session.add(row)
            for name, (is_set, value) in changes.items():
                setattr(row, name, _encode(value) if is_set else None)
            for name in USER_FIELDS:
                if name not in scope.fields:
                    setattr(row, name, None)  # a hand-written value where the API allows none: cleared
            row.version, row.update_time, row.updated_by = version + 1, datetime.now(UTC), actor
            await session.flush()
            stored = decode(row)
            if on_commit is not None:
                await on_commit(session, stored)
            return stored


class RoleStore:
    """The role claims each user last acted with (see the module docstring)."""

    def __init__(self, db: Database):
        self.db = db

    async def record(self, user: str, roles: Sequence[str]) -> None:
        """Remember ``roles`` for ``user``; writes nothing when they are what is recorded already."""
        values = sorted(set(roles))
        async with self.db.session() as session:
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(QuotaUserRolesRow).values(user=user, roles=values, seen_at=datetime.now(UTC))
            await session.execute(stmt.on_conflict_do_update(
                index_elements=["user"], set_={"roles": stmt.excluded.roles, "seen_at": stmt.excluded.seen_at},
                where=QuotaUserRolesRow.roles != stmt.excluded.roles))

    async def of(self, users: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Recorded roles of ``users`` (those never recorded are absent)."""
        wanted = sorted(set(users))
        if not wanted:
            return {}
        async with self.db.session() as session:
            rows = (await session.execute(select(QuotaUserRolesRow).where(QuotaUserRolesRow.user.in_(wanted))))
            return {r.user: tuple(r.roles or ()) for r in rows.scalars()}
