"""revisions: a listing's content version, recorded by what is made from it (embedding,
suggestion and its overlay, moderator decision) so that a write for an older one is discarded

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Everything stored so far was made from the only content its listing has had: revision 1.
TABLES = ("listing", "embedding", "suggestion", "moderator_decision", "review_lease")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("revision", sa.Integer(), server_default=sa.text("1"), nullable=False))


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_column(table, "revision")
