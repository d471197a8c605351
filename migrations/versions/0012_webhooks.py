"""webhooks: a source's subscriptions (URL, secret, events) and the delivery of each event, an
outbox row written in the same transaction as the listing's change (`common.webhooks`).

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_table(
        "webhook_subscription",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column(
            "source_id", sa.BigInteger(), sa.ForeignKey("source.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.String(40)), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_webhook_subscription_source_id", "webhook_subscription", ["source_id"])
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column(
            "subscription_id",
            sa.BigInteger(),
            sa.ForeignKey("webhook_subscription.id", ondelete="CASCADE"),
            nullable=False,
        ),
        # No foreign key: the delivery log outlives a deleted listing.
        sa.Column("listing_id", sa.BigInteger(), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.String(16), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_webhook_due", "webhook_delivery", ["next_attempt_at"], postgresql_where=PENDING)
    op.create_index(
        "ix_webhook_chain",
        "webhook_delivery",
        ["subscription_id", "listing_id", "id"],
        postgresql_where=PENDING,
    )
    op.create_index("ix_webhook_subscription_log", "webhook_delivery", ["subscription_id", "id"])


def downgrade() -> None:
    op.drop_table("webhook_delivery")
    op.drop_table("webhook_subscription")
