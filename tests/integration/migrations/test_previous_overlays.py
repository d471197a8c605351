"""Migration 0008: overlays stored before their geometry was right are made again, once, and
stay on view as the previous ones meanwhile; a downgrade puts them back."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from common.db import Database, alembic_config, drop_database, migrate
from common.settings import Settings
from vitrine.local.services import create_scratch_database

INSERT = """
WITH version AS (
  INSERT INTO clustering_version (backbone_id, k, dim, centroids, cluster_categories, sizes, n_vectors,
    n_labelled, fit_seconds, algorithm, is_current)
  VALUES ('test@0', 1, 1, '\\x'::bytea, '[]', '[1]', 1, 1, 0, 'kmeans', true) RETURNING id
), listing AS (
  INSERT INTO listing (external_id, image_url, status, attempts)
  VALUES ('old', 'https://photos.example/old.jpg', 'suggested', 0), ('none', 'https://photos.example/n.jpg',
    'suggested', 0) RETURNING id, external_id
)
INSERT INTO suggestion (listing_id, clustering_version_id, backbone_id, cluster, category, confidence,
  alternatives, method, needs_review, overlay_key, heatmap_key, explain_target, explain_requested_at)
SELECT listing.id, version.id, 'test@0', 0, 'Watches', 0.3, '[]', 'knn', true,
  CASE WHEN external_id = 'old' THEN 'overlays/1/a.png' END,
  CASE WHEN external_id = 'old' THEN 'overlays/1/a-heat.png' END,
  CASE WHEN external_id = 'old' THEN 'cluster:0' END, now()
FROM listing, version
"""
SELECT = (
    "SELECT l.external_id, overlay_key, previous_overlay_key, previous_heatmap_key, previous_explain_target,"
    " explain_requested_at IS NULL FROM suggestion s JOIN listing l ON l.id = s.listing_id ORDER BY 1"
)


def test_stored_overlays_are_made_again_and_kept_on_view_meanwhile(settings: Settings) -> None:
    url = create_scratch_database(settings.services.database_url, "vitrine_migration")
    database = Database(url)
    try:
        migrate(url, "0007")
        with database.transaction() as session:
            session.execute(text(INSERT))
        migrate(url, "0008")
        with database.transaction() as session:
            rows = [tuple(r) for r in session.execute(text(SELECT))]
        assert rows == [
            ("none", None, None, None, None, False),
            ("old", None, "overlays/1/a.png", "overlays/1/a-heat.png", "cluster:0", True),
        ]
        command.downgrade(alembic_config(url), "0007")  # down again: the current overlay once more
        with database.transaction() as session:
            overlay = session.execute(
                text(
                    "SELECT overlay_key FROM suggestion s JOIN listing l ON l.id = s.listing_id"
                    " WHERE l.external_id = 'old'"
                )
            ).scalar_one()
        assert overlay == "overlays/1/a.png"
    finally:
        database.dispose()
        drop_database(url)
