"""The idle culler's tables (issue 15): per-instance idle state and the users exempt from idle auto-pause.

``instance_idle`` holds what the ``instances`` row does not: the last keep-alive or busy probe, and the
announced pause (when, and the activity time it was computed from, so any later activity withdraws it).
The instance service alone writes both tables, under the template's allocator lock for ``instance_idle``
(activity while no pause is announced excepted: Culler._keep_unannounced says why).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from aigc_gateway.db.models import Base


class IdleStateRow(Base):
    __tablename__ = "instance_idle"

    namespace: Mapped[str] = mapped_column(String(63), primary_key=True)
    template: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # The last KeepInstanceAlive or busy probe answer (activity that makes no auth check).
    kept_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The announced pause, and the last activity it was computed from (newer activity withdraws it).
    scheduled_pause_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    warned_activity_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class IdleExemptionRow(Base):
    __tablename__ = "idle_exemptions"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    reason: Mapped[str] = mapped_column(String(1024), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False, default="")
