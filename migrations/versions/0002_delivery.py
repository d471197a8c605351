"""delivery bookkeeping: a listing's last error and claim, overlay requests, the broker last seen

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("listing", sa.Column("last_error", sa.Text(), nullable=True))
    op.add_column("listing", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("suggestion", sa.Column("explain_requested_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "broker_state",
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_listing_unsent", "listing", ["status", "updated_at"], postgresql_where=sa.text("enqueued_at IS NULL"))


def downgrade() -> None:
    op.drop_table("broker_state")
    op.drop_index("ix_listing_unsent", table_name="listing")
    op.drop_column("suggestion", "explain_requested_at")
    op.drop_column("listing", "claimed_at")
    op.drop_column("listing", "last_error")
