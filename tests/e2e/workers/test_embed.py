"""End to end on real services: listing events → a real embed worker → refit → suggestions."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from common.db import Database
from common.jobs.refit import refit
from common.listings.events import ListingEvent, publish_listings
from common.runtime import Runtime
from common.schema import TERMINAL_STATUSES, Embedding, Listing, Suggestion
from common.settings import Settings
from tests.conftest import FLIPKART
from tests.helpers import decompression_bomb, real_jpeg, truncated_jpeg
from vitrine.local.services import celery_worker, free_port, serve_bytes

pytestmark = pytest.mark.slow
PER_CATEGORY = 15  # 7 categories → 105 listings


def _sample(labels: list[dict[str, str]], per_category: int, offset: int = 0) -> list[dict[str, str]]:
    by_category: dict[str, list[dict[str, str]]] = {}
    for row in labels:
        by_category.setdefault(row["category"], []).append(row)
    return [row for rows in by_category.values() for row in rows[offset : offset + per_category]]


def _wait_until(predicate, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _statuses(db: Database, external_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    with db.transaction() as session:
        rows = session.execute(
            select(Listing.external_id, Listing.status, Listing.failure_reason).where(
                Listing.external_id.in_(external_ids)
            )
        ).all()
    return {row[0]: (row[1], row[2]) for row in rows}


def _publish_photos(runtime: Runtime, rows: list[dict[str, str]], labelled_every: int) -> list[str]:
    settings, store = runtime.settings, runtime.store
    store.ensure_bucket(settings.store.images_bucket)
    events = [
        ListingEvent(
            external_id=row["uniq_id"],
            image_url=store.upload_photo(settings.store.images_bucket, FLIPKART / "images" / row["image"]),
            # Sellers give a category on part of the listings; the rest are held back as truth.
            seller_category=row["category"] if i % labelled_every else None,
        )
        for i, row in enumerate(rows)
    ]
    publish_listings(runtime, events)
    return [event.external_id for event in events]


def test_listing_events_become_suggestions_and_bad_photos_fail_alone(
    settings: Settings,
    runtime: Runtime,
    clean_db: None,
    service_env: dict[str, str],
    flipkart_labels,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    truth = {row["uniq_id"]: row["category"] for row in flipkart_labels}
    rows = _sample(flipkart_labels, PER_CATEGORY)
    bad_files = {
        "truncated.jpg": truncated_jpeg(),
        "page.jpg": b"<html>nope</html>" * 50,
        "bomb.png": decompression_bomb(),
        "ok.jpg": real_jpeg(7),
    }
    closed = free_port()  # nothing listens there: a refused connection, tried again, then failed
    with (
        serve_bytes(bad_files) as base,
        celery_worker(
            ["embed"],
            {
                **service_env,
                "VITRINE_BATCH_SIZE": "16",
                "VITRINE_FLUSH_INTERVAL": "0.5",
                # The photo server, and a closed port: both on loopback, allowed on their ports only.
                "VITRINE_FETCH_PRIVATE_HOSTS": f"{base.removeprefix('http://')},127.0.0.1:{closed}",
                "VITRINE_EXPLAIN_SAMPLE_RATE": "0",
            },
            tmp_path / "worker.log",
            name="e2e-embed@%h",
        ),
    ):
        good_ids = _publish_photos(runtime, rows, labelled_every=3)  # 2 of 3 carry a category
        bad = {
            "bad-truncated": (f"{base}/truncated.jpg", "corrupt_image"),
            "bad-not-image": (f"{base}/page.jpg", "not_an_image"),
            "bad-bomb": (f"{base}/bomb.png", "decompression_bomb"),
            "bad-unreachable": (f"http://127.0.0.1:{closed}/x.jpg", "fetch_failed"),
            "bad-other-port": (f"http://127.0.0.1:{free_port()}/x.jpg", "private_address"),
            "bad-private": (f"{base.replace('127.0.0.1', 'localhost')}/ok.jpg", "private_address"),
            "bad-missing-object": (f"s3://{settings.store.images_bucket}/photos/none.jpg", "fetch_failed"),
        }
        published = publish_listings(
            runtime,
            [ListingEvent(external_id=k, image_url=url) for k, (url, _reason) in bad.items()]
            + [ListingEvent(external_id="fine-over-http", image_url=f"{base}/ok.jpg")],
        )
        # The same event again (a duplicate delivery from the marketplace) changes nothing.
        duplicate = publish_listings(
            runtime,
            [ListingEvent(external_id="fine-over-http", image_url=f"{base}/ok.jpg")],
        )
        assert duplicate[0].outcome == "unchanged" and duplicate[0].listing_id == published[-1].listing_id

        all_ids = [*good_ids, *bad, "fine-over-http"]
        _wait_until(
            lambda: all(
                status in ("embedded", "failed") for status, _ in _statuses(runtime.db, all_ids).values()
            ),
            300,
            "every listing to be embedded or failed",
        )
        states = _statuses(runtime.db, all_ids)
        for external_id, (_url, reason) in bad.items():
            assert states[external_id] == ("failed", reason), external_id
        assert states["fine-over-http"][0] == "embedded"
        assert all(states[i][0] == "embedded" for i in good_ids)

        # The periodic refit's own function: clusters, then a suggestion for every embedded listing.
        result = refit(runtime.db, settings)
        assert result.skipped_reason is None and result.k == 7
        assert result.ari is not None and result.ari > 0.15
        states = _statuses(runtime.db, all_ids)
        assert all(status in TERMINAL_STATUSES for status, _ in states.values())

        # Listings published after the refit are suggested by the worker itself.
        late_rows = _sample(flipkart_labels, 3, offset=PER_CATEGORY)
        late_ids = _publish_photos(runtime, late_rows, labelled_every=1)  # none labelled
        _wait_until(
            lambda: all(s == "suggested" for s, _ in _statuses(runtime.db, late_ids).values()),
            180,
            "late listings to be suggested",
        )

    with runtime.db.transaction() as session:
        assert (
            session.execute(select(func.count()).select_from(Embedding)).scalar_one()
            == len(good_ids) + len(late_ids) + 1
        )
        suggestions = {
            external_id: (category, confidence, alternatives)
            for external_id, category, confidence, alternatives in session.execute(
                select(
                    Listing.external_id, Suggestion.category, Suggestion.confidence, Suggestion.alternatives
                ).join(Suggestion, Suggestion.listing_id == Listing.id)
            )
        }
        held_back = [
            external_id
            for external_id, seller in session.execute(select(Listing.external_id, Listing.seller_category))
            if seller is None and external_id in truth
        ]
    assert all(
        0.0 <= confidence <= 1.0 and 1 <= len(alts) <= 3 for _c, confidence, alts in suggestions.values()
    )
    correct = Counter(suggestions[i][0] == truth[i] for i in held_back)
    accuracy = correct[True] / len(held_back)
    print(f"\nheld-back: {len(held_back)}, suggestion accuracy {accuracy:.3f}, refit ARI {result.ari:.3f}")
    # Chance is 1/7 ≈ 0.14.
    assert accuracy > 0.5


def test_an_embed_worker_refuses_to_start_with_a_precision_its_device_cannot_run(
    child_env: dict[str, str], tmp_path: Path
) -> None:
    from vitrine.local.services import ServiceUnavailable

    # oneDNN capped below bf16: the CPU's bf16 instructions, if any, are never used.
    env = {**child_env, "VITRINE_DEVICE": "cpu", "VITRINE_PRECISION": "bf16", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    with (
        pytest.raises(ServiceUnavailable, match="VITRINE_PRECISION: bf16 needs a CPU that computes it"),
        celery_worker(["embed"], env, tmp_path / "worker.log", "precision@%h", ready_within=120),
    ):
        pass
