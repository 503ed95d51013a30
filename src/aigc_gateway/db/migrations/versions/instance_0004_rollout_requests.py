"""instance: UpdateInstance requests the rollout step has not carried out yet (issue 14)

Revision ID: instance_0004
Revises: instance_0003
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "instance_0004"
down_revision = "instance_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_rollout_requests",
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("template", sa.String(63), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "template", "id", name="pk_instance_rollout_requests"),
    )


def downgrade() -> None:
    op.drop_table("instance_rollout_requests")
