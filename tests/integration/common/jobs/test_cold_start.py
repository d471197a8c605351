"""Cold start against real Postgres: the first refit is due as soon as enough labelled listings are
embedded, and never again once a clustering exists (later refits follow the interval)."""

from __future__ import annotations

from sqlalchemy import update

from common.db import Database
from common.jobs.refit import first_refit_due, refit
from common.schema import Listing
from common.settings import Settings
from common.suggestions.corpus import cold_start
from tests.integration.common.jobs.test_refit import BACKBONE, blobs, insert_rows


def test_the_first_refit_is_due_once_enough_labelled_listings_are_embedded(
    db: Database, settings: Settings, clean_db: None
) -> None:
    settings = settings.replace(model="efficientnet_lite0", refit_first_after=10)
    assert first_refit_due(db, settings) is None  # nothing embedded yet
    vectors, truth = blobs(6)
    ids = insert_rows(db, vectors, truth, labelled_every=3)  # 18 embedded, 6 labelled
    with db.transaction() as session:
        waiting = cold_start(session, settings.backbone.model, settings.refit.first_after)
    assert waiting is not None and (waiting.labelled, waiting.needed) == (6, 10)
    assert "no clustering yet" in waiting.reason and "(6 so far)" in waiting.reason
    assert first_refit_due(db, settings) is None

    with db.transaction() as session:  # sellers name the categories of four more
        unlabelled = [i for n, i in enumerate(ids) if n % 3][:4]
        session.execute(update(Listing).where(Listing.id.in_(unlabelled)).values(seller_category="bags"))
    due = first_refit_due(db, settings)
    assert due is not None and due.labelled == 10

    assert refit(db, settings).version_id is not None
    assert BACKBONE.startswith(settings.backbone.model + "@")
    with db.transaction() as session:
        assert cold_start(session, settings.backbone.model, settings.refit.first_after) is None
    assert first_refit_due(db, settings) is None
