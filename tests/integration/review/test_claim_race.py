"""Claims are exclusive under concurrency: many moderators claiming at once never share an item."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import update

from common.db import Database
from common.moderation.queue import claim
from common.schema import ReviewLease
from tests.fixtures.review import add_flagged

MODERATORS = 20
ITEMS = 12


def claim_all_at_once(db: Database, moderators: list[str]) -> dict[str, str | None]:
    """Every moderator claims in a transaction of its own, all released at the same moment."""
    start = threading.Barrier(len(moderators))

    def one(moderator: str) -> tuple[str, str | None]:
        with db.transaction() as session:
            start.wait()
            lease = claim(session, moderator, 600)
            return moderator, lease.external_id if lease is not None else None

    with ThreadPoolExecutor(len(moderators)) as pool:
        return dict(pool.map(one, moderators))


def test_twenty_moderators_claiming_at_once_never_get_the_same_item(db: Database, clean_db: None) -> None:
    add_flagged(db, [(f"item-{i}", 0.1 + i / 100) for i in range(ITEMS)])
    for round_ in range(5):
        got = claim_all_at_once(db, [f"mod-{round_}-{m}" for m in range(MODERATORS)])
        held = Counter(item for item in got.values() if item is not None)
        assert all(n == 1 for n in held.values()), f"round {round_}: an item handed out twice: {held}"
        assert len(held) == ITEMS  # every item went to someone, the other eight got nothing
        # Every lease runs out before the next round: the items are free again, all at once.
        with db.transaction() as session:
            session.execute(
                update(ReviewLease).values(expires_at=ReviewLease.expires_at - timedelta(hours=1))
            )
