"""instance: quota policies set through the admin API, and the role claims each user last called with

Revision ID: instance_0002
Revises: instance_0001
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "instance_0002"
down_revision = "instance_0001"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # One row per scope an admin changed (services/instance/quota_policies.py). Each limit: NULL inherits
    # (configuration, then the wider scope), -1 is explicitly unlimited, 0 or more is the maximum. No CHECK
    # constraint: a row written around the API is reported and skipped, never allowed to break the reads.
    op.create_table(
        "quota_policies",
        sa.Column("name", sa.String(600), nullable=False),
        sa.Column("installed", sa.Integer(), nullable=True),
        sa.Column("running", sa.Integer(), nullable=True),
        sa.Column("gpus", sa.Integer(), nullable=True),
        sa.Column("gpu_memory_gib", sa.Integer(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("name", name="pk_quota_policies"),
    )
    # The role claims of each user's last install, resume or usage read: what their limits were judged with,
    # so that checks made without their token (an admin installing for them, CheckConsistency) use them too.
    op.create_table(
        "quota_user_roles",
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("roles", _JSON, nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user", name="pk_quota_user_roles"),
    )


def downgrade() -> None:
    op.drop_table("quota_user_roles")
    op.drop_table("quota_policies")
