"""audit events: an (action, time) index for ListAuditEvents filtered by action within a time window

At 1,000,000 events the action + one-day filter read the whole day through ix_audit_events_time (every action)
and took 76 ms p50 (bench/scale.py); the pair index reads only that action's rows of the window.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_events_action_time", "audit_events", ["action", "time"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_action_time", table_name="audit_events")
