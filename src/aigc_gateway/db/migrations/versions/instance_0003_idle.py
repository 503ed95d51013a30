"""instance: idle auto-pause state per instance (keep-alive, announced pause) and users exempt from it

Revision ID: instance_0003
Revises: instance_0002
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "instance_0003"
down_revision = "instance_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_idle",
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("template", sa.String(63), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("kept_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scheduled_pause_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("warned_activity_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("namespace", "template", "id", name="pk_instance_idle"),
    )
    op.create_table(
        "idle_exemptions",
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("user", name="pk_idle_exemptions"),
    )


def downgrade() -> None:
    op.drop_table("idle_exemptions")
    op.drop_table("instance_idle")
