"""Embedding throughput, measured side by side in one run: whole pipeline vs in-process loop.

The pipeline figure is images/s from publishing N listing events to the last one stored, through
Redis and a real worker process; the in-process figure is the same model doing decode +
preprocess + forward over the same images at the same batch size in a tight loop.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from common.config import Settings, with_environment
from common.db import drop_database, migrate
from common.events import ListingEvent, publish_listings
from common.imaging import LoadedImage, decode_image
from common.models import Listing, ListingStatus
from common.queues import EMBED_QUEUE
from common.runtime import Runtime
from common.vision import Backbone, embed_prepared, prepare_batch, resolve_device
from vitrine.devservices import LocalServices, celery_worker, create_scratch_database, serve_bytes


@dataclass
class EmbedBenchmark:
    model: str
    weights: str
    device: str
    n: int
    batch_size: int
    torch_threads: int
    pipeline_ips: float
    inprocess_ips: float
    batch1_ips: float
    inprocess_batch1_ips: float
    ratio_pipeline_inprocess: float
    ratio_batched_batch1: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def synthetic_photos(n: int, seed: int = 0) -> list[bytes]:
    """Product-photo-like JPEGs (white background, a coloured object, ~320 px) when none are given."""
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(n):
        image = Image.new("RGB", (320, 320), "white")
        draw = ImageDraw.Draw(image)
        x0, y0 = rng.integers(20, 120, size=2)
        x1, y1 = rng.integers(200, 300, size=2)
        draw.ellipse(
            (int(x0), int(y0), int(x1), int(y1)), fill=tuple(int(c) for c in rng.integers(0, 255, 3))
        )
        noise = rng.integers(0, 40, (320, 320, 3), dtype=np.uint8)
        image = Image.fromarray(np.clip(np.asarray(image) - noise, 0, 255).astype(np.uint8))
        buffer = BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def folder_photos(directory: Path, n: int) -> list[bytes]:
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise ValueError(f"no photos in {directory}")
    return [paths[i % len(paths)].read_bytes() for i in range(n)]


def inprocess_ips(backbone: Backbone, photos: list[bytes], settings: Settings, batch_size: int) -> float:
    """The embed worker's own path (decode threads, then one forward pass) batch after batch, in
    process, with no broker and no database; one warm-up batch first."""

    def load(data: bytes) -> LoadedImage:
        return decode_image(data, settings)

    with ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode") as pool:

        def run(chunk: list[bytes]) -> None:
            embed_prepared(backbone, prepare_batch(backbone, chunk, load, pool))

        run(photos[:batch_size])
        started = time.perf_counter()
        for start in range(0, len(photos), batch_size):
            run(photos[start : start + batch_size])
        return len(photos) / (time.perf_counter() - started)


def pipeline_ips(
    photos: list[bytes], env: dict[str, str], batch_size: int, log_path: Path, label: str
) -> float:
    """N listing events through Redis and a real embed worker; time to the last stored row.

    `env` holds the VITRINE_* variables of scratch services; the worker's model load and a
    warm-up batch happen before the clock starts.
    """
    worker_env = {
        **env,
        "VITRINE_BATCH_SIZE": str(batch_size),
        "VITRINE_FLUSH_INTERVAL": "0.5",
        "VITRINE_EXPLAIN_SAMPLE_RATE": "0",
    }
    runtime = Runtime(with_environment(worker_env))
    files = {f"{i}.jpg": data for i, data in enumerate(photos)}
    name = f"bench-{uuid.uuid4().hex[:6]}@%h"
    try:
        with (
            serve_bytes(files) as base,
            celery_worker(
                [EMBED_QUEUE],
                worker_env
                | {
                    # The photo server is private (loopback): allowed on its own port only.
                    "VITRINE_FETCH_PRIVATE_HOSTS": base.removeprefix("http://"),
                },
                log_path,
                name,
            ),
        ):

            def publish(prefix: str, count: int) -> list[str]:
                events = [
                    ListingEvent(listing_id=f"{prefix}-{i}", image_url=f"{base}/{i % len(photos)}.jpg")
                    for i in range(count)
                ]
                publish_listings(runtime, events)
                return [event.listing_id for event in events]

            warm = publish(f"warm-{label}", batch_size)
            _wait(lambda: _count(runtime, warm, done=True) == len(warm), 900, "the warm-up batch")
            started = time.perf_counter()
            ids = publish(f"run-{label}", len(photos))
            _wait(lambda: _count(runtime, ids, done=True) == len(ids), 3600, "the benchmark listings")
            elapsed = time.perf_counter() - started
        failed = _count(runtime, ids, done=False)
    finally:
        runtime.close()
    if failed:
        raise RuntimeError(f"{failed} benchmark listings failed; see {log_path}")
    return len(ids) / elapsed


def _count(runtime: Runtime, external_ids: list[str], *, done: bool) -> int:
    """Listings no longer queued (`done`), or failed ones."""
    condition = Listing.status != ListingStatus.queued if done else Listing.status == ListingStatus.failed
    with runtime.db.transaction() as session:
        return session.execute(
            select(func.count()).select_from(Listing).where(Listing.external_id.in_(external_ids), condition)
        ).scalar_one()


def run_embed_benchmark(
    settings: Settings,
    *,
    model: str,
    weights: Path | None,
    n: int,
    batch_size: int,
    images: Path | None,
    log_dir: Path,
) -> EmbedBenchmark:
    photos = folder_photos(images, n) if images else synthetic_photos(n)
    backbone = Backbone.load(model, weights, settings.device, allow_random=True)
    inprocess = inprocess_ips(backbone, photos, settings, batch_size)
    inprocess_1 = inprocess_ips(backbone, photos, settings, 1)
    del backbone  # free memory for the worker process

    local = LocalServices(Path(tempfile.mkdtemp(prefix="vitrine-bench-")))
    database_url = None
    try:
        # Private Redis and a scratch database: the benchmark never touches live queues or rows.
        broker_url = local.start_redis()
        database_url = create_scratch_database(settings.database_url, "vitrine_bench")
        migrate(database_url)
        env = {
            "VITRINE_DATABASE_URL": database_url,
            "VITRINE_BROKER_URL": broker_url,
            "VITRINE_MODEL": model,
            "VITRINE_WEIGHTS": str(weights) if weights else "",
            # Speed does not depend on the weights: without a file the worker may use random ones.
            "VITRINE_ALLOW_RANDOM_WEIGHTS": "0" if weights else "1",
        }
        pipeline = pipeline_ips(photos, env, batch_size, log_dir / "bench-worker-batched.log", "b")
        pipeline_1 = pipeline_ips(photos, env, 1, log_dir / "bench-worker-batch1.log", "1")
    finally:
        if database_url:
            drop_database(database_url)
        local.stop()
    return EmbedBenchmark(
        model=model,
        weights=str(weights) if weights else "random",
        device=str(resolve_device(settings.device)),
        n=n,
        batch_size=batch_size,
        torch_threads=torch.get_num_threads(),
        pipeline_ips=round(pipeline, 3),
        inprocess_ips=round(inprocess, 3),
        batch1_ips=round(pipeline_1, 3),
        inprocess_batch1_ips=round(inprocess_1, 3),
        ratio_pipeline_inprocess=round(pipeline / inprocess, 3),
        ratio_batched_batch1=round(pipeline / pipeline_1, 3),
    )


def _wait(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
