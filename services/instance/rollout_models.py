"""The rollout's table (issue 14, docs/upgrade.md): the UpdateInstance requests not yet carried out.

A request makes its id a mover (``rollout.Reason.REQUESTED``) at every rollout step until the id's pod is on
the template's update revision, its slot is no longer running, or its owner changed; then the step drops it.
``owner`` is the owner when it was asked, so a request never outlives the instance it was made for. The
instance service alone writes it, under the template's allocator lock.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from aigc_gateway.db.models import Base


class RolloutRequestRow(Base):
    __tablename__ = "instance_rollout_requests"

    namespace: Mapped[str] = mapped_column(String(63), primary_key=True)
    template: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(255), nullable=False)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # Who asked: the owner, an admin, or "restart" consent (RestartInstance of an instance on an old revision).
    requested_by: Mapped[str] = mapped_column(String(255), nullable=False, default="")
