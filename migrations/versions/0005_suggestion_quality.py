"""suggestion quality: the fitted suggestion model and its estimated threshold per clustering version,
each signal's opinion per suggestion

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Versions made before this revision have no estimate: the configured or default threshold holds.
    op.add_column("clustering_version", sa.Column("suggestion_method", sa.String(length=20), nullable=True))
    op.add_column("clustering_version", sa.Column("suggestion_model", sa.LargeBinary(), nullable=True))
    op.add_column("clustering_version", sa.Column("target_precision", sa.Float(), nullable=True))
    op.add_column("clustering_version", sa.Column("threshold", sa.Float(), nullable=True))
    op.add_column("clustering_version", sa.Column("estimated_precision", sa.Float(), nullable=True))
    op.add_column("clustering_version", sa.Column("estimated_coverage", sa.Float(), nullable=True))
    op.add_column("suggestion", sa.Column("signals", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("suggestion", "signals")
    for column in (
        "estimated_coverage",
        "estimated_precision",
        "threshold",
        "target_precision",
        "suggestion_model",
        "suggestion_method",
    ):
        op.drop_column("clustering_version", column)
