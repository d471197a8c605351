"""triage: the review queue ordered by `common.moderation.triage.priority` (reason and
confidence), from an index on that same expression

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out as `triage.priority()` compiles it (a migration does not import code that changes);
# tests/integration/review/test_triage.py checks that the claim's plan uses this index.
PRIORITY = (
    "(confidence * CASE WHEN review_reason = 'seller_disagrees' THEN 0.5 "
    "WHEN review_reason = 'audit_sample' THEN 0.6 ELSE 1.0 END)"
)


def upgrade() -> None:
    op.execute(
        f"CREATE INDEX ix_suggestion_triage ON suggestion ({PRIORITY}, listing_id) WHERE needs_review"
    )
    op.drop_index("ix_suggestion_queue", table_name="suggestion")


def downgrade() -> None:
    op.create_index(
        "ix_suggestion_queue",
        "suggestion",
        ["confidence", "listing_id"],
        postgresql_where=sa.text("needs_review"),
    )
    op.drop_index("ix_suggestion_triage", table_name="suggestion")
