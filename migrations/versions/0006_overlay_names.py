"""overlay names: one word per object, `overlay_key` for the overlay, `explain_target` for what
the explanation was taken against

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("suggestion", "gradcam_key", new_column_name="overlay_key")
    op.alter_column("suggestion", "gradcam_target", new_column_name="explain_target")


def downgrade() -> None:
    op.alter_column("suggestion", "explain_target", new_column_name="gradcam_target")
    op.alter_column("suggestion", "overlay_key", new_column_name="gradcam_key")
