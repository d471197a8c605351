"""Faults injected into real processes, default settings: every listing ends terminal and right.

Each test runs its own Postgres, Redis and S3 endpoint (behind a proxy whose connection can be
cut) on loopback, real workers with the production command line, and real Flipkart photos.
After the fault it counts rows: every listing terminal within 120 s of recovery, none failed
that should not, no duplicate rows, no listing processed twice. Recovery times are printed
(`-s`) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import csv
import signal
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from common.delivery.queues import EMBED_QUEUE, REFIT_QUEUE
from common.jobs.embed import EmbedPipeline
from common.jobs.refit import refit
from common.runtime import Runtime
from common.schema import ClusteringVersion, Embedding, Listing, Suggestion
from common.vision.backbone import Backbone
from tests.conftest import FLIPKART, LITE0_WEIGHTS
from tests.faults.stack import Stack, count_terminal, fault_stack, wait_until

pytestmark = pytest.mark.faults

RECOVERY_LIMIT = 120.0  # seconds from the end of the fault to every listing terminal
CRASH_INJECTION = Path(__file__).parent / "crash_on_marker"
SEED_PER_CATEGORY = 5


def flipkart_rows() -> list[dict[str, str]]:
    with open(FLIPKART / "labels.csv", newline="") as handle:
        return sorted(csv.DictReader(handle), key=lambda row: row["image"])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with fault_stack(tmp_path) as running:
        yield running


@pytest.fixture
def runtime(stack: Stack) -> Iterator[Runtime]:
    made = stack.runtime()
    yield made
    made.close()


def seed_clustering(stack: Stack, runtime: Runtime) -> None:
    """A current clustering, so that new listings end `suggested` (terminal) straight away."""
    rows = flipkart_rows()
    seed: list[dict[str, str]] = []
    for category in sorted({row["category"] for row in rows}):
        seed += [row for row in rows if row["category"] == category][-SEED_PER_CATEGORY:]
    ids = stack.publish_photos(runtime, seed, "seed")
    with runtime.db.transaction() as session:
        internal = list(session.execute(select(Listing.id).where(Listing.external_id.in_(ids))).scalars())
    backbone = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu")
    EmbedPipeline(runtime.settings, runtime.db, backbone, runtime.store).run(internal)
    assert refit(runtime.db, runtime.settings).version_id is not None


@pytest.fixture
def clustered(stack: Stack, runtime: Runtime) -> None:
    seed_clustering(stack, runtime)


def listings(stack: Stack, runtime: Runtime, n: int, prefix: str = "item") -> list[str]:
    return stack.publish_photos(runtime, flipkart_rows()[:n], prefix)


def assert_all_right(runtime: Runtime, ids: list[str], *, processed_once: bool = True) -> None:
    """Every listing suggested, one embedding and one suggestion each; tried once unless told."""
    with runtime.db.transaction() as session:
        rows = session.execute(
            select(Listing.external_id, Listing.status, Listing.failure_reason, Listing.attempts).where(
                Listing.external_id.in_(ids)
            )
        ).all()
        embeddings = session.execute(
            select(func.count()).select_from(Embedding).join(Listing).where(Listing.external_id.in_(ids))
        ).scalar_one()
        suggestions = session.execute(
            select(func.count()).select_from(Suggestion).join(Listing).where(Listing.external_id.in_(ids))
        ).scalar_one()
    wrong = [
        (external_id, status, reason) for external_id, status, reason, _ in rows if status != "suggested"
    ]
    assert not wrong, f"{len(wrong)} listings not suggested: {wrong[:10]}"
    assert (len(rows), embeddings, suggestions) == (len(ids), len(ids), len(ids))
    if processed_once:
        twice = [(external_id, attempts) for external_id, _, _, attempts in rows if attempts != 1]
        assert not twice, f"claimed more than once: {twice[:10]}"


def report(what: str, seconds: float) -> None:
    print(f"\n[fault] {what}: every listing terminal {seconds:.1f}s after recovery")


def test_postgres_unreachable_for_15_seconds(stack: Stack, runtime: Runtime, clustered: None) -> None:
    stack.start_worker("embed", [EMBED_QUEUE])
    # The sweep runs beside it all along: it must not re-send what the worker still holds.
    stack.start_worker("refit", [REFIT_QUEUE])
    stack.start_beat("beat")
    ids = listings(stack, runtime, 300)
    wait_until(lambda: count_terminal(runtime, ids) >= 40, 120, "the first batches", stack)
    stack.postgres.stop(signal.SIGINT)  # fast shutdown: every connection is cut
    time.sleep(15)
    stack.postgres.start()
    recovered = wait_until(lambda: count_terminal(runtime, ids) == len(ids), 300, "every listing", stack)
    report("Postgres stopped for 15 s", recovered)
    assert_all_right(runtime, ids)
    assert recovered < RECOVERY_LIMIT


def test_s3_endpoint_cut_for_30_seconds(stack: Stack, runtime: Runtime, clustered: None) -> None:
    ids = listings(stack, runtime, 300)  # uploaded and published before the cut
    stack.start_worker("embed", [EMBED_QUEUE])
    wait_until(lambda: count_terminal(runtime, ids) >= 40, 120, "the first batches", stack)
    stack.s3_proxy.cut()
    time.sleep(30)
    stack.s3_proxy.start()
    recovered = wait_until(lambda: count_terminal(runtime, ids) == len(ids), 300, "every listing", stack)
    report("S3 connection cut for 30 s", recovered)
    # Tried again while the store was away, yet no try counted against a listing.
    assert_all_right(runtime, ids)
    assert recovered < RECOVERY_LIMIT


def test_redis_restarted_empty_after_15_seconds(stack: Stack, runtime: Runtime, clustered: None) -> None:
    stack.start_worker("embed", [EMBED_QUEUE])
    stack.start_worker("refit", [REFIT_QUEUE])
    stack.start_beat("beat")  # the sweep, every VITRINE_SWEEP_INTERVAL
    ids = listings(stack, runtime, 300)
    wait_until(lambda: count_terminal(runtime, ids) >= 40, 120, "the first batches", stack)
    stack.redis.stop(signal.SIGKILL)  # it keeps nothing on disk: every message is gone
    time.sleep(15)
    stack.redis.start()
    recovered = wait_until(lambda: count_terminal(runtime, ids) == len(ids), 300, "every listing", stack)
    report("Redis restarted empty after 15 s", recovered)
    # Messages a worker still held when Redis died were done twice (the sweep cannot tell them
    # from the lost ones); rows stay unique.
    assert_all_right(runtime, ids, processed_once=False)
    assert recovered < RECOVERY_LIMIT


def crashing_photo() -> bytes:
    """A real photo carrying the marker the injected fault kills its worker on."""
    from tests.faults.crash_on_marker.sitecustomize import CRASH_MARKER

    image = Image.open(FLIPKART / "images" / flipkart_rows()[0]["image"]).convert("RGB")
    buffer = BytesIO()
    image.save(buffer, format="JPEG", comment=CRASH_MARKER)
    return buffer.getvalue()


def test_a_photo_that_kills_its_worker_fails_alone(stack: Stack, runtime: Runtime, clustered: None) -> None:
    settings = runtime.settings
    runtime.store.ensure_bucket(settings.store.images_bucket)
    runtime.store.put_bytes(settings.store.images_bucket, "photos/crash.jpg", crashing_photo(), "image/jpeg")
    ids = listings(stack, runtime, 60)
    from common.listings.events import publish_listing

    publish_listing(runtime, "crasher", f"s3://{settings.store.images_bucket}/photos/crash.jpg")
    ids += listings(stack, runtime, 60, prefix="after")
    crashes = 0
    deadline = time.monotonic() + 900
    # A supervisor, as compose's `restart: unless-stopped` is: start the worker again each time it dies.
    while count_terminal(runtime, [*ids, "crasher"]) < len(ids) + 1:
        assert time.monotonic() < deadline, stack.tail("embed")
        if "embed" not in stack.processes or stack.processes["embed"].poll() is not None:
            if "embed" in stack.processes:
                stack.processes.pop("embed")
                crashes += 1
            stack.start_worker("embed", [EMBED_QUEUE], PYTHONPATH=str(CRASH_INJECTION))
        time.sleep(1)
    print(f"\n[fault] crashing photo: {crashes} worker crashes, then it failed alone")
    with runtime.db.transaction() as session:
        crasher = session.execute(select(Listing).where(Listing.external_id == "crasher")).scalar_one()
    assert (crasher.status, crasher.failure_reason) == ("failed", "too_many_attempts")
    assert crashes == settings.embed.max_attempts
    assert_all_right(runtime, ids, processed_once=False)


def test_two_beats_make_one_refit_per_interval(stack: Stack, runtime: Runtime, clustered: None) -> None:
    interval = 20  # shortened so the test sees several intervals; the rule is the same at any length
    extra = {"VITRINE_REFIT_INTERVAL": str(interval)}
    stack.start_worker("refit", [REFIT_QUEUE], **extra)
    started = time.monotonic()
    stack.start_beat("beat-a", **extra)
    time.sleep(7)  # the second beat ticks out of phase with the first
    stack.start_beat("beat-b", **extra)
    time.sleep(75)
    elapsed = time.monotonic() - started
    with runtime.db.transaction() as session:
        versions = session.execute(select(func.count()).select_from(ClusteringVersion)).scalar_one() - 1
    print(f"\n[fault] two beats: {versions} refits in {elapsed:.0f}s at a {interval}s interval")
    assert 1 <= versions <= elapsed / interval + 1


def test_a_warm_shutdown_hands_back_what_it_holds(stack: Stack, runtime: Runtime, clustered: None) -> None:
    stack.start_worker("embed", [EMBED_QUEUE])
    ids = listings(stack, runtime, 300)
    wait_until(lambda: count_terminal(runtime, ids) >= 40, 120, "the first batches", stack)
    started = time.monotonic()
    stack.kill("embed", signal.SIGTERM)  # what `docker compose stop` sends first
    drained = time.monotonic() - started
    done = count_terminal(runtime, ids)
    stack.start_worker("embed", [EMBED_QUEUE])
    recovered = wait_until(lambda: count_terminal(runtime, ids) == len(ids), 300, "every listing", stack)
    left = len(ids) - done
    print(f"\n[fault] warm shutdown took {drained:.1f}s with {left} listings left; restart: {recovered:.1f}s")
    assert_all_right(runtime, ids)
    assert recovered < RECOVERY_LIMIT
