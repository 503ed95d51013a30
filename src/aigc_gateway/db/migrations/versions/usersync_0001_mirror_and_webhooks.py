"""usersync: mirror entries and webhook deliveries

Revision ID: usersync_0001
Revises: 0002
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "usersync_0001"
down_revision = "0002"
branch_labels = ("usersync",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usersync_mirror",
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("template", sa.String(63), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user", "namespace", "template", name="pk_usersync_mirror"),
    )
    op.create_index("ix_usersync_mirror_template", "usersync_mirror", ["namespace", "template"])
    op.create_table(
        "usersync_webhook_deliveries",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("hook_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_usersync_webhook_deliveries"),
    )
    op.create_index("ix_usersync_webhook_deliveries_received_at", "usersync_webhook_deliveries", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_usersync_webhook_deliveries_received_at", table_name="usersync_webhook_deliveries")
    op.drop_table("usersync_webhook_deliveries")
    op.drop_index("ix_usersync_mirror_template", table_name="usersync_mirror")
    op.drop_table("usersync_mirror")
