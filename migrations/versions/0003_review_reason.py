"""why a suggestion waits for a moderator: low confidence, the seller disagrees, an audit sample

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("suggestion", sa.Column("review_reason", sa.String(length=24), nullable=True))
    # Before this revision only low confidence sent a suggestion to review.
    op.execute("UPDATE suggestion SET review_reason = 'low_confidence' WHERE needs_review")


def downgrade() -> None:
    op.drop_column("suggestion", "review_reason")
