"""instance_intents (the allocator's write-ahead records)

Revision ID: instance_0001
Revises: 0002
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "instance_0001"
down_revision = "0002"
branch_labels = ("instance",)
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "instance_intents",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("template", sa.String(63), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("plan", _JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("id", name="pk_instance_intents"),
    )
    op.create_index("ix_instance_intents_template", "instance_intents", ["namespace", "template", "id"])


def downgrade() -> None:
    op.drop_index("ix_instance_intents_template", table_name="instance_intents")
    op.drop_table("instance_intents")
