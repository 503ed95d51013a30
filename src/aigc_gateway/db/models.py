"""SQLAlchemy tables of the shared core.

Every service's tables hang off :class:`Base` so that one Alembic history
(``aigc_gateway/db/migrations``) covers the whole database. Services declare
their own tables in their own ``models.py`` and add a migration.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, LargeBinary, MetaData, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names make migrations reproducible across PostgreSQL and SQLite.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT identity on PostgreSQL; SQLite only auto-increments an INTEGER primary key.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AuditEventRow(Base):
    """Append-only: rows are inserted, never updated or deleted by the services."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    actor_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    action: Mapped[str] = mapped_column(String(128), nullable=False)
    resource: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    # Denormalised from `resource` so the template and instance filters use an index.
    template: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    request_id: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    error_code: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    service: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    details: Mapped[dict[str, Any]] = mapped_column(Json, nullable=False, default=dict)

    __table_args__ = (
        Index("ix_audit_events_time", "time"),
        Index("ix_audit_events_actor_id", "actor", "id"),
        Index("ix_audit_events_action_id", "action", "id"),
        Index("ix_audit_events_action_time", "action", "time"),  # action within a time window (migration 0004)
        Index("ix_audit_events_template_id", "template", "id"),
        Index("ix_audit_events_resource_id", "resource", "id"),
        Index("ix_audit_events_outcome_id", "outcome", "id"),
    )


class IdempotencyKeyRow(Base):
    """The first outcome of a mutating request, replayed for the same request_id."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256(method, subject, request_id)
    method: Mapped[str] = mapped_column(String(128), nullable=False)
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    state: Mapped[str] = mapped_column(String(8), nullable=False)  # "pending" | "done"
    status_code: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # A serialized response message, or a serialized google.rpc.Status for a refusal.
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # While pending: the replica running the call (``replicas.ReplicaRegistry.id``; "" from before holders were
    # recorded) and how many times the claim was taken over (a fence: a holder that lost it writes nothing).
    holder: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # What the call committed, written in the same transaction as the effect itself, so that a retry after
    # a crash answers with it instead of running again (a service's own JSON; None: nothing committed yet).
    effect: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)


class ReplicaRow(Base):
    """A gateway process and its heartbeat lease (``aigc_gateway.replicas``): alive while ``expires_at`` is
    in the future and, when ``session_lock`` (PostgreSQL), while its session holds its advisory lock."""

    __tablename__ = "gateway_replicas"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    session_lock: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


def allocator_lock(namespace: str, template: str) -> str:
    """The name of a template's allocator lock (:meth:`Database.lock`, docs/instance.md#the-allocator). Whoever changes the
    template's slots, replicas or reserve list holds it: the instance service's allocator, usersync's
    import, and the template service's delete while it checks for instances and deletes."""
    return f"allocator:{namespace}/{template}"


class InstanceRow(Base):
    """One id of one template: the allocator's slot and, while it has an owner, the ownership record.

    Shared schema: the instance service writes it (always under the per-template
    lock, see docs/instance.md#the-allocator); auth reads it for the owner map and writes only
    ``last_access_at`` (batched); usersync reads it for the Logto mirror and
    writes only ``orphaned``; template reads it for instance counts. ``owner`` is set exactly while
    ``slot`` is LIVE or PAUSED. Writers call :func:`notify_instance_change`
    in the same transaction so that watchers (the auth owner map) see the
    change at once.
    """

    __tablename__ = "instances"

    namespace: Mapped[str] = mapped_column(String(63), primary_key=True)
    template: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    slot: Mapped[str] = mapped_column(String(16), nullable=False)  # LIVE | PAUSED | RELEASING | FREE
    owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    orphaned: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    state_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_access_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        # One instance per user per template (the original's rule), and one owner per id by the primary key.
        Index("uq_instances_owner_per_template", "namespace", "template", "owner", unique=True,
              postgresql_where=text("owner IS NOT NULL"), sqlite_where=text("owner IS NOT NULL")),
        Index("ix_instances_owner", "owner"),
    )


class UserSyncOutboxRow(Base):
    """Ownership changes waiting to be mirrored into Logto custom data.

    Written by the instance service in the same transaction as the change to
    ``instances``; delivered by usersync at least once, in ``id`` order per user.
    ``instance_id`` None means "remove the key".
    """

    __tablename__ = "usersync_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255), nullable=False)
    namespace: Mapped[str] = mapped_column(String(63), nullable=False)
    template: Mapped[str] = mapped_column(String(63), nullable=False)
    instance_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str] = mapped_column(String(1024), nullable=False, default="")

    __table_args__ = (Index("ix_usersync_outbox_user_id", "user", "id"),
                      Index("ix_usersync_outbox_pending", "delivered_at", "id"))


class DisputedInstanceRow(Base):
    """An id the original gateway handed to several users (its race), found by usersync's import.

    Shared schema: usersync writes it (under the template's allocator lock) and removes it when an admin
    resolves the dispute; the instance service reads it for CheckConsistency. While it exists the id has
    no row in ``instances``, which is what keeps it out of allocation: the allocator hands out FREE rows
    only, a running id without a row keeps running, and a reserved one stays reserved. ``claimants`` are
    the user ids whose custom data claims the id; Reconcile and cleanup leave their entries alone.
    """

    __tablename__ = "disputed_instances"

    namespace: Mapped[str] = mapped_column(String(63), primary_key=True)
    template: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    claimants: Mapped[list[str]] = mapped_column(Json, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)  # LIVE | PAUSED: the id in the GameServerSet
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class AuthSessionRow(Base):
    """One signed-in browser. The cookie carries the session id; only its SHA-256 is stored, so a
    read of this table alone cannot be turned into a usable cookie.

    Shared schema: every server reads it to accept the session cookie (``aigc_gateway.sessions``); the
    auth service writes it (sign-in, sign-out, revocation), and its Alembic branch creates it.
    """

    __tablename__ = "auth_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(255), nullable=False)
    email: Mapped[str] = mapped_column(String(320), nullable=False, default="")
    preferred_username: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    display_name: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    roles: Mapped[list[str]] = mapped_column(Json, nullable=False, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_auth_sessions_user", "user"), Index("ix_auth_sessions_expires_at", "expires_at"))


INSTANCE_CHANNEL = "aigc_instances"


async def notify_instance_change(session: Any, namespace: str, template: str, instance_id: int) -> None:
    """Tell LISTENers on ``aigc_instances`` (PostgreSQL) that a row changed; delivered at commit.
    On SQLite there is no NOTIFY: readers poll ``updated_at`` instead."""
    if session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_notify(:c, :p)"),
                              {"c": INSTANCE_CHANNEL, "p": f"{namespace}/{template}/{instance_id}"})
