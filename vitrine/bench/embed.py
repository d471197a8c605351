"""Embedding throughput, measured side by side in one run: whole pipeline vs in-process loop.

The pipeline figure is images/s from publishing N listing events to the last one stored, through
Redis and a real worker process; the in-process figure is the same model doing decode +
preprocess + forward over the same images at the same batch size in a tight loop.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from common.delivery.queues import EMBED_QUEUE
from common.listings.events import ListingEvent, publish_listings
from common.runtime import Runtime
from common.schema import Listing, ListingStatus
from common.settings import Settings, with_environment
from common.vision.backbone import Backbone, native_bf16, set_torch_threads
from common.vision.batch import embed_prepared, prepare_batch
from vitrine.local.scratch import scratch_stack
from vitrine.local.services import (
    celery_worker,
    serve_bytes,
)


@dataclass
class EmbedBenchmark:
    model: str
    weights: str
    device: str
    precision: str
    decode: str
    n: int
    batch_size: int
    torch_threads: int
    pipeline_ips: float
    inprocess_ips: float
    batch1_ips: float
    inprocess_batch1_ips: float
    ratio_pipeline_inprocess: float
    ratio_batched_batch1: float
    # The model alone: forward passes over already prepared photos at the same batch size.
    forward_ips: float
    ratio_pipeline_forward: float
    # In-process loop at fp32 (and, on a CPU, at int8), same photos, same run, interleaved round
    # by round with the chosen precision: `rounds` each, means here, every round in `rounds_ips`.
    fp32_inprocess_ips: float
    ratio_precision_fp32: float
    int8_inprocess_ips: float | None
    ratio_precision_int8: float | None
    rounds_ips: dict[str, list[float]]
    # Each photo's embedding at the chosen precision against its fp32 one (None at fp32).
    cosine_to_fp32_mean: float | None
    cosine_to_fp32_min: float | None
    # How the CPU computes bf16 (`common.vision.backbone.native_bf16`): amx, avx512_bf16 or None.
    cpu_bf16: str | None
    # Peak CUDA memory of the in-process measurements (the worker is another process); CPU: None.
    peak_gpu_memory_mib: float | None

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


def forward_ips(backbone: Backbone, photos: list[bytes], settings: Settings, batch_size: int) -> float:
    """Forward passes alone over the photos prepared beforehand: the model's own ceiling."""
    prepared = prepare_batch(backbone, photos, bytes, settings)
    tensors = [p.tensor for p in prepared if p.tensor is not None]
    backbone.forward(tensors[:batch_size])
    started = time.perf_counter()
    for start in range(0, len(tensors), batch_size):
        backbone.forward(tensors[start : start + batch_size])  # returns on the host: synchronised
    return len(tensors) / (time.perf_counter() - started)


def inprocess_ips(backbone: Backbone, photos: list[bytes], settings: Settings, batch_size: int) -> float:
    """The embed worker's own path (decode threads, then one forward pass) batch after batch, in
    process, with no broker and no database; one warm-up batch first."""

    with ThreadPoolExecutor(settings.embed.decode_threads, thread_name_prefix="decode") as pool:

        def run(chunk: list[bytes]) -> None:
            embed_prepared(backbone, prepare_batch(backbone, chunk, bytes, settings, pool))

        run(photos[:batch_size])
        started = time.perf_counter()
        for start in range(0, len(photos), batch_size):
            run(photos[start : start + batch_size])
        return len(photos) / (time.perf_counter() - started)


@contextmanager
def photo_worker(
    photos: list[bytes], env: dict[str, str], log_path: Path, label: str
) -> Iterator[tuple[Runtime, str]]:
    """The photos served over HTTP as `{base}/{i}.jpg`, a real embed worker, and a runtime to
    publish with and count rows; all stopped on exit. `env`: the VITRINE_* of scratch services."""
    runtime = Runtime(with_environment(env))
    files = {f"{i}.jpg": data for i, data in enumerate(photos)}
    try:
        with (
            serve_bytes(files) as base,
            celery_worker(
                [EMBED_QUEUE],
                # The photo server is private (loopback): allowed on its own port only.
                env | {"VITRINE_FETCH_PRIVATE_HOSTS": base.removeprefix("http://")},
                log_path,
                f"{label}-{uuid.uuid4().hex[:6]}@%h",
            ),
        ):
            yield runtime, base
    finally:
        runtime.close()


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
    with photo_worker(photos, worker_env, log_path, "bench") as (runtime, base):

        def publish(prefix: str, count: int) -> list[str]:
            events = [
                ListingEvent(external_id=f"{prefix}-{i}", image_url=f"{base}/{i % len(photos)}.jpg")
                for i in range(count)
            ]
            publish_listings(runtime, events)
            return [event.external_id for event in events]

        warm = publish(f"warm-{label}", batch_size)
        _wait(lambda: _count(runtime, warm, done=True) == len(warm), 900, "the warm-up batch")
        started = time.perf_counter()
        ids = publish(f"run-{label}", len(photos))
        _wait(lambda: _count(runtime, ids, done=True) == len(ids), 3600, "the benchmark listings")
        elapsed = time.perf_counter() - started
        failed = _count(runtime, ids, done=False)
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


def compare_precisions(
    backbones: dict[str, Backbone], photos: list[bytes], settings: Settings, batch_size: int, rounds: int
) -> dict[str, list[float]]:
    """In-process images/s of each backbone, interleaved round by round, so that a machine whose
    load changes meanwhile affects every precision alike."""
    measured: dict[str, list[float]] = {name: [] for name in backbones}
    for _ in range(rounds):
        for name, backbone in backbones.items():
            measured[name].append(round(inprocess_ips(backbone, photos, settings, batch_size), 3))
    return measured


def cosine_to_reference(
    backbone: Backbone, reference: Backbone, photos: list[bytes], settings: Settings, batch_size: int
) -> np.ndarray:
    """Each photo's cosine between its embedding by `backbone` and by `reference` (unit vectors)."""
    cosines = []
    for start in range(0, len(photos), batch_size):
        chunk = photos[start : start + batch_size]
        ours = embed_prepared(backbone, prepare_batch(backbone, chunk, bytes, settings))
        theirs = embed_prepared(reference, prepare_batch(reference, chunk, bytes, settings))
        cosines.append(np.sum(ours * theirs, axis=1))
    return np.concatenate(cosines)


def run_embed_benchmark(
    settings: Settings,
    *,
    model: str,
    weights: Path | None,
    n: int,
    batch_size: int,
    images: Path | None,
    log_dir: Path,
    precision: str | None = None,
    rounds: int = 2,
) -> EmbedBenchmark:
    photos = folder_photos(images, n) if images else synthetic_photos(n)
    threads = set_torch_threads(settings.backbone.torch_threads)
    precision = precision or settings.backbone.precision
    # Random weights are drawn at each load: the same seed gives both precisions the same ones.
    torch.manual_seed(0)

    def load(precision: str) -> Backbone:
        return Backbone.load(
            model,
            weights,
            settings.backbone.device,
            precision=precision,
            allow_random=True,
            crop=settings.backbone.crop,
        ).with_decode(settings.backbone.decode)

    backbone = load(precision)
    compared = {backbone.precision: backbone}
    # bf16 on a CPU is compared with int8 too: the other way to trade precision for speed there.
    cpu_bf16 = backbone.precision == "bf16" and backbone.device.type == "cpu"
    for other in ("fp32", "int8"):
        if other not in compared and (other == "fp32" or cpu_bf16):
            torch.manual_seed(0)
            compared[other] = load(other)
    if backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(backbone.device)
    cosine = (
        cosine_to_reference(backbone, compared["fp32"], photos, settings, batch_size)
        if backbone.precision != "fp32"
        else None
    )
    measured = compare_precisions(compared, photos, settings, batch_size, rounds)
    inprocess = float(np.mean(measured[backbone.precision]))
    fp32_inprocess = float(np.mean(measured["fp32"]))
    int8_inprocess = float(np.mean(measured["int8"])) if "int8" in measured else None
    del compared
    forward = forward_ips(backbone, photos, settings, batch_size)
    inprocess_1 = inprocess_ips(backbone, photos, settings, 1)
    peak = (
        round(torch.cuda.max_memory_allocated(backbone.device) / 2**20, 1)
        if backbone.device.type == "cuda"
        else None
    )
    precision = backbone.precision
    device = backbone.device
    del backbone  # free memory for the worker process

    with scratch_stack(settings.services.database_url, "vitrine-bench") as stack:
        env = {
            "VITRINE_DATABASE_URL": stack.database_url,
            "VITRINE_BROKER_URL": stack.broker_url or "",
            "VITRINE_MODEL": model,
            "VITRINE_DEVICE": settings.backbone.device,
            "VITRINE_PRECISION": precision,
            "VITRINE_CROP": settings.backbone.crop,
            "VITRINE_DECODE": settings.backbone.decode,
            "VITRINE_TORCH_THREADS": str(threads),
            "VITRINE_WEIGHTS": str(weights) if weights else "",
            # Speed does not depend on the weights: without a file the worker may use random ones.
            "VITRINE_ALLOW_RANDOM_WEIGHTS": "0" if weights else "1",
        }
        pipeline = pipeline_ips(photos, env, batch_size, log_dir / "bench-worker-batched.log", "b")
        pipeline_1 = pipeline_ips(photos, env, 1, log_dir / "bench-worker-batch1.log", "1")
    return EmbedBenchmark(
        model=model,
        weights=str(weights) if weights else "random",
        device=str(device),
        precision=precision,
        decode=settings.backbone.decode,
        n=n,
        batch_size=batch_size,
        torch_threads=threads,
        pipeline_ips=round(pipeline, 3),
        inprocess_ips=round(inprocess, 3),
        batch1_ips=round(pipeline_1, 3),
        inprocess_batch1_ips=round(inprocess_1, 3),
        ratio_pipeline_inprocess=round(pipeline / inprocess, 3),
        ratio_batched_batch1=round(pipeline / pipeline_1, 3),
        forward_ips=round(forward, 3),
        ratio_pipeline_forward=round(pipeline / forward, 3),
        fp32_inprocess_ips=round(fp32_inprocess, 3),
        ratio_precision_fp32=round(inprocess / fp32_inprocess, 3),
        int8_inprocess_ips=round(int8_inprocess, 3) if int8_inprocess is not None else None,
        ratio_precision_int8=round(inprocess / int8_inprocess, 3) if int8_inprocess else None,
        rounds_ips=measured,
        cosine_to_fp32_mean=round(float(cosine.mean()), 5) if cosine is not None else None,
        cosine_to_fp32_min=round(float(cosine.min()), 5) if cosine is not None else None,
        cpu_bf16=native_bf16() if device.type == "cpu" else None,
        peak_gpu_memory_mib=peak,
    )


def _wait(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
