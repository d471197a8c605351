"""Latency from publishing one listing to its committed suggestion, per batch size and flush interval."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from common.jobs.refit import refit
from common.listings.events import ListingEvent, publish_listings
from common.runtime import Runtime
from common.schema import TERMINAL_STATUSES, Listing, ListingStatus
from common.settings import Settings
from vitrine.bench.embed import _count, _wait, folder_photos, photo_worker, synthetic_photos
from vitrine.local.scratch import scratch_stack


@dataclass
class LatencyRun:
    """Milliseconds from publishing one listing to its committed suggestion, at one setting."""

    batch_size: int
    flush_interval: float
    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


def percentiles(batch_size: int, flush_interval: float, latencies: list[float]) -> LatencyRun:
    ms = np.asarray(latencies) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return LatencyRun(
        batch_size=batch_size,
        flush_interval=flush_interval,
        n=len(latencies),
        p50_ms=round(float(p50), 1),
        p95_ms=round(float(p95), 1),
        p99_ms=round(float(p99), 1),
        mean_ms=round(float(ms.mean()), 1),
        max_ms=round(float(ms.max()), 1),
    )


def listing_latencies(
    photos: list[bytes],
    env: dict[str, str],
    *,
    batch_size: int,
    flush_interval: float,
    rate: float,
    n: int,
    log_path: Path,
    label: str,
) -> list[float]:
    """Publish `n` listings one at a time, `rate` per second, to a real embed worker; seconds from
    each publish call to the moment its suggestion is seen committed (polled every 10 ms).

    A clustering must exist (`seed_clustering`), or listings stop at `embedded`.
    """
    worker_env = {
        **env,
        "VITRINE_BATCH_SIZE": str(batch_size),
        "VITRINE_FLUSH_INTERVAL": str(flush_interval),
    }
    with photo_worker(photos, worker_env, log_path, "latency") as (runtime, base):

        def event(listing_id: str, i: int) -> ListingEvent:
            return ListingEvent(external_id=listing_id, image_url=f"{base}/{i % len(photos)}.jpg")

        # Warm-up: the model loads with the first batch, not inside the measurement.
        warm = [event(f"warm-{label}-{i}", i) for i in range(2)]
        publish_listings(runtime, warm)
        warm_ids = [e.external_id for e in warm]
        _wait(lambda: _count(runtime, warm_ids, done=True) == len(warm_ids), 900, "the warm-up")
        return _timed_publishing(runtime, [event(f"lat-{label}-{i}", i) for i in range(n)], rate)


def _timed_publishing(runtime: Runtime, events: list[ListingEvent], rate: float) -> list[float]:
    published: dict[str, float] = {}
    finished: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with lock:
                waiting = [key for key in published if key not in finished]
            if waiting:
                with runtime.db.transaction() as session:
                    done = session.execute(
                        select(Listing.external_id, Listing.status).where(
                            Listing.external_id.in_(waiting), Listing.status.in_(TERMINAL_STATUSES)
                        )
                    ).all()
                now = time.perf_counter()
                for key, status in done:
                    if status == ListingStatus.failed:
                        raise RuntimeError(f"latency listing {key} failed")
                    finished[key] = now
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    for i, item in enumerate(events):
        time.sleep(max(0.0, started + i / rate - time.perf_counter()))
        with lock:
            published[item.external_id] = time.perf_counter()
        publish_listings(runtime, [item])
    _wait(lambda: len(finished) == len(events) or not watcher.is_alive(), 600, "the latency listings")
    stop.set()
    watcher.join()
    if len(finished) != len(events):
        raise RuntimeError("the watcher stopped before every listing was suggested")
    return [finished[key] - published[key] for key in published]


def seed_clustering(photos: list[bytes], env: dict[str, str], log_path: Path, k: int = 2) -> None:
    """A first clustering from labelled listings, so that new listings get their suggestion."""
    with photo_worker(photos, env, log_path, "seed") as (runtime, base):
        events = [
            ListingEvent(
                external_id=f"seed-{i}", image_url=f"{base}/{i}.jpg", seller_category=f"category-{i % k}"
            )
            for i in range(len(photos))
        ]
        publish_listings(runtime, events)
        ids = [e.external_id for e in events]
        _wait(lambda: _count(runtime, ids, done=True) == len(ids), 900, "the seed listings")
        result = refit(runtime.db, runtime.settings, k=k)
    if result.version_id is None:
        raise RuntimeError(f"no clustering to suggest from: {result.skipped_reason}")


def run_latency_benchmark(
    settings: Settings,
    *,
    model: str,
    weights: Path | None,
    n: int,
    rate: float,
    settings_to_compare: list[tuple[int, float]],
    images: Path | None,
    log_dir: Path,
) -> list[LatencyRun]:
    """Latency percentiles at each (batch size, flush interval), one after the other in one run,
    against the same services, photos and clustering."""
    photos = folder_photos(images, max(n, 16)) if images else synthetic_photos(max(n, 16))
    runs = []
    with scratch_stack(settings.services.database_url, "vitrine-latency") as stack:
        env = {
            "VITRINE_DATABASE_URL": stack.database_url,
            "VITRINE_BROKER_URL": stack.broker_url or "",
            "VITRINE_MODEL": model,
            "VITRINE_WEIGHTS": str(weights) if weights else "",
            "VITRINE_ALLOW_RANDOM_WEIGHTS": "0" if weights else "1",
            "VITRINE_DEVICE": settings.backbone.device,
            "VITRINE_PRECISION": settings.backbone.precision,
            # Nothing but the embed step: no overlay requests, no audit sample.
            "VITRINE_EXPLAIN_SAMPLE_RATE": "0",
            "VITRINE_REVIEW_AUDIT_RATE": "0",
            "VITRINE_CONFIDENCE_THRESHOLD": "0",
        }
        seed_clustering(photos[:16], env, log_dir / "latency-seed.log")
        for batch_size, flush_interval in settings_to_compare:
            label = f"b{batch_size}-f{flush_interval}"
            latencies = listing_latencies(
                photos,
                env,
                batch_size=batch_size,
                flush_interval=flush_interval,
                rate=rate,
                n=n,
                log_path=log_dir / f"latency-{label}.log",
                label=label,
            )
            runs.append(percentiles(batch_size, flush_interval, latencies))
    return runs
