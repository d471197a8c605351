"""`vitrine bench review`: latency of claim and of reading a listing, ingest throughput, over HTTP;
webhook delivery throughput and lag beside them (`vitrine.bench.webhooks`).

Runs against a scratch database filled with synthetic flagged suggestions, a private Redis, and a
`vitrine serve` process of its own; the client is this process. Nothing of it outlives the run.
"""

from __future__ import annotations

import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from common.db import Database
from common.moderation import decisions, queue
from common.moderation.accounts import add_token, add_user
from common.settings import Settings
from vitrine.bench import webhooks
from vitrine.local.receiver import WebhookReceiver
from vitrine.local.scratch import scratch_stack
from vitrine.local.services import free_port

INGEST_BATCH = 500
START_TIMEOUT = 60.0


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 2),
        "n": len(ordered),
    }


def fill(database: Database, n: int) -> None:
    """`n` suggested listings, all flagged for review, with confidences spread over [0, 0.6)."""
    with database.transaction() as session:
        version = session.execute(
            text(
                "INSERT INTO clustering_version (backbone_id, k, dim, centroids, cluster_categories, sizes,"
                " n_vectors, n_labelled, fit_seconds, algorithm, is_current)"
                " VALUES ('bench@0', 4, 1, '\\x'::bytea, CAST(:cats AS jsonb), '[1,1,1,1]', 4, 4, 0,"
                " 'kmeans', true)"
                " RETURNING id"
            ),
            {"cats": '[{"category": "c0", "counts": {"c0": 1, "c1": 1, "c2": 1, "c3": 1}}]'},
        ).scalar_one()
        session.execute(
            text(
                "INSERT INTO listing (external_id, image_url, status, attempts, title, seller_category)"
                " SELECT 'bench-' || g, 'https://photos.example/' || g || '.jpg', 'suggested', 0,"
                " 'listing ' || g, 'c' || (g % 4) FROM generate_series(1, :n) AS g"
            ),
            {"n": n},
        )
        session.execute(
            text(
                "INSERT INTO suggestion (listing_id, clustering_version_id, backbone_id, cluster, category,"
                " confidence, alternatives, method, needs_review, review_reason)"
                " SELECT id, :version, 'bench@0', id % 4, 'c' || (id % 4), random() * 0.6,"
                ' \'[{"category": "c0", "score": 0.5}, {"category": "c1", "score": 0.3},'
                ' {"category": "c2", "score": 0.2}]\'::jsonb, \'knn\', true, \'low_confidence\' FROM listing'
            ),
            {"version": version},
        )
        session.execute(text("ANALYZE listing; ANALYZE suggestion"))


def start_review_app(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "vitrine.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the review app exited; see {log}")
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"the review app did not answer within {START_TIMEOUT:.0f}s; see {log}")


def _timed(expect: int, call: Callable[..., httpx.Response], *args: Any, **kwargs: Any) -> float:
    started = time.perf_counter()
    response = call(*args, **kwargs)
    elapsed = time.perf_counter() - started
    if response.status_code != expect:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text[:200]}")
    return elapsed


def run_review_benchmark(
    settings: Settings, n: int, claims: int, reads: int, ingest_batches: int, log_dir: Path
) -> dict[str, Any]:
    server: subprocess.Popen[bytes] | None = None
    receiver = WebhookReceiver().start()
    with scratch_stack(settings.services.database_url, "vitrine-bench-review") as stack:
        url = stack.database_url
        database = Database(url)
        try:
            started = time.perf_counter()
            fill(database, n)
            fill_seconds = time.perf_counter() - started
            with database.transaction() as session:
                add_user(session, "bench", secrets.token_urlsafe(16))
                review_token = add_token(session, "bench", "review")
                ingest_token = add_token(session, "bench-shop", "ingest")
            # Before any decision: each one records its event, and its timing includes that.
            hook_settings = webhooks.subscribe(database, settings, receiver, "default")
        finally:
            database.dispose()
        port = free_port()
        env = {
            **os.environ,
            "VITRINE_DATABASE_URL": url,
            # A private broker: the benchmark's messages never reach a real worker.
            "VITRINE_BROKER_URL": stack.broker_url or "",
            "VITRINE_SESSION_SECRET": secrets.token_urlsafe(32),
            # The limiter runs (its cost is in the figures) at a rate this one client never meets.
            "VITRINE_RATE_LIMIT": "100000",
            "VITRINE_RATE_BURST": "100000",
        }
        try:
            server = start_review_app(env, port, log_dir / "bench-review.log")
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=60) as client:
                reviewer = {"Authorization": f"Bearer {review_token}"}
                ingest = {"Authorization": f"Bearer {ingest_token}"}
                claim_times, decide_times = [], []
                for _ in range(claims):
                    started = time.perf_counter()
                    response = client.post("/api/v1/review/claim", headers=reviewer)
                    claim_times.append(time.perf_counter() - started)
                    external_id = response.json()["external_id"]
                    decide_times.append(
                        _timed(
                            200,
                            client.post,
                            f"/api/v1/review/{external_id}/decision",
                            json={"action": "accept"},
                            headers=reviewer,
                        )
                    )
                rng = random.Random(0)
                read_times = [
                    _timed(200, client.get, f"/api/v1/listings/bench-{rng.randint(1, n)}", headers=ingest)
                    for _ in range(reads)
                ]
                ingest_seconds = 0.0
                for batch in range(ingest_batches):
                    items = [
                        {
                            "external_id": f"new-{batch}-{i}",
                            "image_url": f"https://photos.example/new/{batch}/{i}.jpg",
                            "seller_category": f"c{i % 4}",
                            "title": f"new listing {i}",
                        }
                        for i in range(INGEST_BATCH)
                    ]
                    ingest_seconds += _timed(202, client.post, "/api/v1/listings", json=items, headers=ingest)
            # The same claims without HTTP: what the database costs, apart from the web server's share.
            database = Database(url)
            try:
                direct = []
                for _ in range(claims):
                    started = time.perf_counter()
                    with database.transaction() as session:
                        claimed = queue.claim(session, "bench", settings.review.review_lease_seconds)
                    direct.append(time.perf_counter() - started)
                    assert claimed is not None
                    with database.transaction() as session:
                        decisions.decide(session, "bench", claimed.external_id, "accept")

                def decide_more(count: int) -> int:
                    made = 0
                    for _ in range(count):
                        with database.transaction() as session:
                            item = queue.claim(session, "bench", settings.review.review_lease_seconds)
                            if item is None:
                                break
                        with database.transaction() as session:
                            decisions.decide(session, "bench", item.external_id, "accept")
                        made += 1
                    return made

                delivered = webhooks.measure(database, hook_settings, receiver, decide_more)
            finally:
                database.dispose()
            return {
                "suggestions": n,
                "claim_in_process": _percentiles(direct),
                "fill_seconds": round(fill_seconds, 1),
                "claim": _percentiles(claim_times),
                "decision": _percentiles(decide_times),
                "get_listing": _percentiles(read_times),
                "ingest": {
                    "listings": ingest_batches * INGEST_BATCH,
                    "batch": INGEST_BATCH,
                    "seconds": round(ingest_seconds, 2),
                    "listings_per_s": round(ingest_batches * INGEST_BATCH / ingest_seconds, 1),
                },
                "webhooks": delivered,
                "cpus": os.cpu_count(),
                # Other processes' load during the run: the figures are only comparable at a similar load.
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        finally:
            receiver.stop()
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
