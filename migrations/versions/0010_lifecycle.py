"""lifecycle: tokens that expire, are revoked and record their last use; server-side sessions,
so that signing out (or disabling an account) ends a session at once

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for column in ("expires_at", "revoked_at", "last_used_at"):
        op.add_column("api_token", sa.Column(column, sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "account_session",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.BigInteger(), sa.ForeignKey("account.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_account_session_account_id", "account_session", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_account_session_account_id", "account_session")
    op.drop_table("account_session")
    for column in ("last_used_at", "revoked_at", "expires_at"):
        op.drop_column("api_token", column)
