"""instances (slots and ownership) and usersync_outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("template", sa.String(63), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("slot", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("orphaned", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_access_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("namespace", "template", "id", name="pk_instances"),
    )
    op.create_index("uq_instances_owner_per_template", "instances", ["namespace", "template", "owner"], unique=True,
                    postgresql_where=sa.text("owner IS NOT NULL"), sqlite_where=sa.text("owner IS NOT NULL"))
    op.create_index("ix_instances_owner", "instances", ["owner"])
    op.create_table(
        "usersync_outbox",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("template", sa.String(63), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.String(1024), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("id", name="pk_usersync_outbox"),
    )
    op.create_index("ix_usersync_outbox_user_id", "usersync_outbox", ["user", "id"])
    op.create_index("ix_usersync_outbox_pending", "usersync_outbox", ["delivered_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_usersync_outbox_pending", table_name="usersync_outbox")
    op.drop_index("ix_usersync_outbox_user_id", table_name="usersync_outbox")
    op.drop_table("usersync_outbox")
    op.drop_index("ix_instances_owner", table_name="instances")
    op.drop_index("uq_instances_owner_per_template", table_name="instances")
    op.drop_table("instances")
