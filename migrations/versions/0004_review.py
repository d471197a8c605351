"""review app: moderator accounts, API tokens, review leases, fuller decision audit rows

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "account",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", name="uq_account_name"),
    )
    op.create_table(
        "api_token",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash", name="uq_api_token_hash"),
    )
    op.create_table(
        "review_lease",
        sa.Column("listing_id", sa.BigInteger(), nullable=False),
        sa.Column("moderator", sa.String(length=100), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["listing_id"], ["listing.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("listing_id"),
    )
    op.add_column("moderator_decision", sa.Column("note", sa.Text(), nullable=True))
    op.add_column("moderator_decision", sa.Column("confidence", sa.Float(), nullable=True))
    op.add_column("moderator_decision", sa.Column("clustering_version_id", sa.BigInteger(), nullable=True))
    op.add_column("moderator_decision", sa.Column("reverts_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        "fk_decision_reverts", "moderator_decision", "moderator_decision", ["reverts_id"], ["id"]
    )
    op.create_index("ix_decision_created", "moderator_decision", ["created_at"])
    op.create_index("ix_decision_moderator", "moderator_decision", ["moderator", "id"])
    op.create_index(
        "uq_decision_reverted", "moderator_decision", ["reverts_id"], unique=True,
        postgresql_where=sa.text("reverts_id IS NOT NULL"),
    )
    # The review queue: flagged suggestions, lowest confidence first.
    op.create_index(
        "ix_suggestion_queue", "suggestion", ["confidence", "listing_id"],
        postgresql_where=sa.text("needs_review"),
    )


def downgrade() -> None:
    op.drop_index("ix_suggestion_queue", table_name="suggestion")
    op.drop_index("uq_decision_reverted", table_name="moderator_decision")
    op.drop_index("ix_decision_moderator", table_name="moderator_decision")
    op.drop_index("ix_decision_created", table_name="moderator_decision")
    op.drop_constraint("fk_decision_reverts", "moderator_decision", type_="foreignkey")
    for column in ("reverts_id", "clustering_version_id", "confidence", "note"):
        op.drop_column("moderator_decision", column)
    op.drop_table("review_lease")
    op.drop_table("api_token")
    op.drop_table("account")
