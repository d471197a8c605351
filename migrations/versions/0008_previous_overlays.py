"""previous overlays: a changed decision keeps its old overlay on view until the new one is made;
the overlays made before their geometry was right (drawn over timm's centre crop of the unpadded
photo) are re-made once

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("suggestion", sa.Column("previous_overlay_key", sa.Text(), nullable=True))
    op.add_column("suggestion", sa.Column("previous_heatmap_key", sa.Text(), nullable=True))
    op.add_column("suggestion", sa.Column("previous_explain_target", sa.String(40), nullable=True))
    # Every overlay stored so far was placed with the wrong geometry on non-square photos. Each
    # becomes the previous one (still shown, marked, until its replacement lands) and its
    # suggestion is asked again: the sweep sends flagged ones to the explain queue, at its pace.
    op.execute(
        "UPDATE suggestion SET previous_overlay_key = overlay_key, previous_heatmap_key = heatmap_key,"
        " previous_explain_target = explain_target, overlay_key = NULL, heatmap_key = NULL,"
        " explain_target = NULL, explain_requested_at = NULL WHERE overlay_key IS NOT NULL"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE suggestion SET overlay_key = previous_overlay_key, heatmap_key = previous_heatmap_key,"
        " explain_target = previous_explain_target"
        " WHERE overlay_key IS NULL AND previous_overlay_key IS NOT NULL"
    )
    op.drop_column("suggestion", "previous_explain_target")
    op.drop_column("suggestion", "previous_heatmap_key")
    op.drop_column("suggestion", "previous_overlay_key")
