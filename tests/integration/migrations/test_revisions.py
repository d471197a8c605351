"""Migration 0009: what is stored already is of revision 1; a downgrade drops the revisions."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from common.db import Database, alembic_config, drop_database, migrate
from common.settings import Settings
from vitrine.local.services import create_scratch_database

COLUMNS = (
    "SELECT table_name FROM information_schema.columns WHERE column_name = 'revision'"
    " AND table_schema = 'public' ORDER BY 1"
)


def test_stored_rows_are_of_revision_one_and_a_downgrade_drops_the_column(settings: Settings) -> None:
    url = create_scratch_database(settings.services.database_url, "vitrine_migration")
    database = Database(url)
    try:
        migrate(url, "0008")
        with database.transaction() as session:
            session.execute(
                text(
                    "INSERT INTO listing (external_id, image_url, status, attempts)"
                    " VALUES ('old', 'https://photos.example/old.jpg', 'suggested', 0)"
                )
            )
        migrate(url, "0009")
        with database.transaction() as session:
            assert session.execute(text("SELECT revision FROM listing")).scalar_one() == 1
            tables = list(session.execute(text(COLUMNS)).scalars())
        assert tables == ["embedding", "listing", "moderator_decision", "review_lease", "suggestion"]
        command.downgrade(alembic_config(url), "0008")
        with database.transaction() as session:
            assert list(session.execute(text(COLUMNS)).scalars()) == []
    finally:
        database.dispose()
        drop_database(url)
