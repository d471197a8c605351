"""sources: every listing and every ingest token belongs to a source (a marketplace or a
storefront); `external_id` is unique per source. Today's listings and ingest tokens go to the
source "default", whose id is 1.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "source",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.execute("INSERT INTO source (id, name) VALUES (1, 'default')")
    # Identity columns do not see explicit ids: the next source must not collide with 1.
    op.execute("SELECT setval(pg_get_serial_sequence('source', 'id'), 1)")
    op.add_column(
        "listing",
        sa.Column(
            "source_id",
            sa.BigInteger(),
            sa.ForeignKey("source.id"),
            nullable=False,
            server_default=sa.text("1"),
        ),
    )
    op.drop_constraint("listing_external_id_key", "listing", type_="unique")
    op.create_unique_constraint("uq_listing_source_external", "listing", ["source_id", "external_id"])
    # The moderators' side finds a listing by its external id across sources.
    op.create_index("ix_listing_external_id", "listing", ["external_id"])
    op.add_column(
        "api_token", sa.Column("source_id", sa.BigInteger(), sa.ForeignKey("source.id"), nullable=True)
    )
    op.execute("UPDATE api_token SET source_id = 1 WHERE scope = 'ingest'")


def downgrade() -> None:
    op.drop_column("api_token", "source_id")
    op.drop_index("ix_listing_external_id", "listing")
    op.drop_constraint("uq_listing_source_external", "listing", type_="unique")
    # Fails, as it must, while two sources share an external id.
    op.create_unique_constraint("listing_external_id_key", "listing", ["external_id"])
    op.drop_column("listing", "source_id")
    op.drop_table("source")
