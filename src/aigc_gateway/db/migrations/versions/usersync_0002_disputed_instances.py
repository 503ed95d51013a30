"""usersync: disputed instances (one id claimed by several users in the original's data)

Revision ID: usersync_0002
Revises: usersync_0001
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "usersync_0002"
down_revision = "usersync_0001"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "disputed_instances",
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("template", sa.String(63), nullable=False),
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("claimants", _JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "template", "id", name="pk_disputed_instances"),
    )


def downgrade() -> None:
    op.drop_table("disputed_instances")
