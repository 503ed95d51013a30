"""The instance service's own tables: allocator intents, stored quota policies, users' last role claims.

The slots and ownership live in the shared ``instances`` table (core
``db.models.InstanceRow``), which this service alone writes.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from aigc_gateway.db.models import Base, BigId, Json


class IntentRow(Base):
    """A GameServerSet write about to be made (docs/instance.md#the-allocator).

    Committed before the write, deleted in the same transaction that records
    the write's outcome. One left behind means the process stopped in between;
    the next operation on the template (or the reconciler) reads (R, X) and
    applies or drops ``plan`` accordingly.
    """

    __tablename__ = "instance_intents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    namespace: Mapped[str] = mapped_column(String(63), nullable=False)
    template: Mapped[str] = mapped_column(String(63), nullable=False)
    operation: Mapped[str] = mapped_column(String(16), nullable=False)
    instance_id: Mapped[int] = mapped_column(Integer, nullable=False)
    plan: Mapped[dict[str, Any]] = mapped_column(Json, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # host:pid of the writer, for the doctor's report.
    holder: Mapped[str] = mapped_column(String(255), nullable=False, default="")

    __table_args__ = (Index("ix_instance_intents_template", "namespace", "template", "id"),)


class QuotaPolicyRow(Base):
    """Limits an admin stored for one scope (services/instance/quota_policies.py, docs/quotas.md).

    ``name`` is the API's resource name. Each limit: None inherits, -1 (:data:`UNLIMITED`) is explicitly
    unlimited, 0 or more is the maximum. ``version`` is the etag, bumped by every update.
    """

    __tablename__ = "quota_policies"

    name: Mapped[str] = mapped_column(String(600), primary_key=True)
    installed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    running: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gpu_memory_gib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_by: Mapped[str] = mapped_column(String(255), nullable=False, default="")


UNLIMITED = -1  # QuotaPolicyRow's encoding of an explicit "no limit"


class QuotaUserRolesRow(Base):
    """The role claims a user last acted with (install, resume, usage read): their limits' roles when they
    are judged without their token (an admin installing for them, CheckConsistency)."""

    __tablename__ = "quota_user_roles"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    roles: Mapped[list[str]] = mapped_column(Json, nullable=False)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
