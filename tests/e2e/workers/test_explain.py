"""The explain worker as deployed: a real process on the `explain` queue writes overlays to S3."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common.delivery.queues import EXPLAIN_QUEUE
from common.object_store import ObjectStore
from common.runtime import Runtime
from common.settings import Settings
from common.vision.backbone import Backbone
from tests.helpers import count_objects, flipkart_rows, seed_listings, suggestions
from vitrine.local.services import celery_worker

pytestmark = pytest.mark.slow


def test_explain_worker_writes_overlays_for_its_messages(
    settings: Settings,
    runtime: Runtime,
    service_env: dict[str, str],
    clean_db: None,
    store: ObjectStore,
    overlay_bucket: str,
    lite0: Backbone,
    tmp_path: Path,
) -> None:
    ids = sorted(seed_listings(runtime.db, settings, store, lite0, flipkart_rows("Watches")[:2]).values())
    env = {**service_env, "VITRINE_DEVICE": "cpu", "VITRINE_FLUSH_INTERVAL": "0.5"}
    with celery_worker([EXPLAIN_QUEUE], env, tmp_path / "worker.log", "explain-test@%h"):
        runtime.publisher.explain(ids)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            rows = suggestions(runtime.db, ids)
            if all(row.overlay_key for row in rows.values()):
                break
            time.sleep(1)
    assert all(row.overlay_key for row in rows.values()), (tmp_path / "worker.log").read_text()[-3000:]
    assert count_objects(store, overlay_bucket) == 4
