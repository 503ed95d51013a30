"""usersync's own tables: what it has written to Logto, and the webhook deliveries it has seen."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from aigc_gateway.db.models import Base


class MirrorEntryRow(Base):
    """One custom-data entry usersync last wrote (or found, on import) for a user.

    It is how CleanupTemplate finds every user holding a template's key from PostgreSQL alone, even
    after the template's ownership rows are gone (a forced delete purges them first), and never by
    scanning Logto.
    """

    __tablename__ = "usersync_mirror"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(63), primary_key=True)
    template: Mapped[str] = mapped_column(String(63), primary_key=True)
    instance_id: Mapped[int] = mapped_column(Integer, nullable=False)
    written_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (Index("ix_usersync_mirror_template", "namespace", "template"),)


class WebhookDeliveryRow(Base):
    """A verified webhook delivery, kept for twice the accepted age so a replay is recognised."""

    __tablename__ = "usersync_webhook_deliveries"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the raw body
    hook_id: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    event: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)  # the payload's createdAt
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (Index("ix_usersync_webhook_deliveries_received_at", "received_at"),)
