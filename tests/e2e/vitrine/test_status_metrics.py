"""`vitrine status` and `vitrine metrics` against real Postgres and Redis with known rows and queues."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.db import Database
from common.delivery.publisher import Publisher
from common.delivery.queues import EMBED_QUEUE, EMBED_TASK
from common.schema import ClusteringVersion, Embedding, Listing, Suggestion
from common.settings import Settings
from vitrine.local.services import free_port

VITRINE = Path(sys.executable).parent / "vitrine"
BACKBONE = "efficientnet_lite0@0123abcd"


def run_vitrine(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VITRINE), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def known_state(clean_db: None, settings: Settings, db: Database) -> dict[str, int]:
    """Seven listings, two clustering versions (one current), three queued messages."""
    statuses = [
        ("a", "queued", None),
        ("b", "queued", None),
        ("c", "suggested", None),
        ("d", "suggested", None),
        ("e", "reviewed", None),
        ("f", "failed", "decode_error"),
        ("g", "failed", "fetch_timeout"),
    ]
    now = datetime.now(UTC)
    with db.transaction() as session:
        listings = {}
        for external_id, status, reason in statuses:
            listing = Listing(
                external_id=external_id,
                image_url=f"s3://b/{external_id}",
                status=status,
                failure_reason=reason,
            )
            session.add(listing)
            listings[external_id] = listing
        old = ClusteringVersion(
            backbone_id=BACKBONE,
            k=3,
            dim=4,
            centroids=np.zeros((3, 4), dtype=np.float32),
            cluster_categories=[],
            sizes=[1, 1, 1],
            n_vectors=3,
            n_labelled=3,
            ari=0.2,
            nmi=0.3,
            stability_ari=None,
            fit_seconds=1.0,
            algorithm="kmeans",
            is_current=False,
            created_at=now - timedelta(hours=3),
        )
        current = ClusteringVersion(
            backbone_id=BACKBONE,
            k=2,
            dim=4,
            centroids=np.eye(2, 4, dtype=np.float32),
            cluster_categories=[],
            sizes=[2, 2],
            n_vectors=4,
            n_labelled=4,
            ari=0.75,
            nmi=0.8,
            stability_ari=0.9,
            fit_seconds=2.5,
            algorithm="kmeans",
            is_current=True,
            suggestion_method="knn",
            target_precision=0.95,
            threshold=0.83,
            estimated_precision=0.951,
            estimated_coverage=0.64,
            created_at=now - timedelta(hours=1),
        )
        session.add_all([old, current])
        session.flush()
        for external_id, needs_review, gradcam in (("c", True, "gradcam/c.png"), ("d", False, None)):
            session.add(
                Suggestion(
                    listing_id=listings[external_id].id,
                    clustering_version_id=current.id,
                    backbone_id=BACKBONE,
                    cluster=0,
                    category="shoes",
                    confidence=0.4 if needs_review else 0.9,
                    alternatives=[],
                    method="knn",
                    needs_review=needs_review,
                    overlay_key=gradcam,
                )
            )
        # A reviewed listing keeps its flagged suggestion but no longer waits.
        session.add(
            Suggestion(
                listing_id=listings["e"].id,
                clustering_version_id=current.id,
                backbone_id=BACKBONE,
                cluster=1,
                category="bags",
                confidence=0.3,
                alternatives=[],
                method="knn",
                needs_review=True,
                overlay_key="gradcam/e.png",
            )
        )
        for i, external_id in enumerate(("c", "d", "e")):
            session.add(
                Embedding(
                    listing_id=listings[external_id].id,
                    backbone_id=BACKBONE,
                    image_sha256=f"{i:064d}",
                    dim=4,
                    vector=np.ones(4, dtype=np.float32),
                    # One embedding outside the throughput window.
                    created_at=now - (timedelta(hours=2) if i == 2 else timedelta(seconds=10)),
                )
            )
        current_id = current.id
    publisher = Publisher.from_settings(settings)
    try:
        publisher.explain([1, 2])
        publisher.app.send_task(EMBED_TASK, args=[3], queue=EMBED_QUEUE, priority=9)
    finally:
        publisher.close()
    return {"current": current_id}


def test_status_json_reports_the_known_state(
    known_state: dict[str, int], child_env: dict[str, str], tmp_path: Path
) -> None:
    result = run_vitrine(["status", "--json", "--ping-timeout", "0.3"], child_env, tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["listings_by_status"] == {
        "queued": 2,
        "embedded": 0,
        "suggested": 2,
        "reviewed": 1,
        "failed": 2,
    }
    assert report["failures_by_reason"] == {"decode_error": 1, "fetch_timeout": 1}
    assert report["needs_review"] == 1
    assert report["explanations"] == 2
    clustering = report["clustering"]
    assert clustering["version"] == known_state["current"]
    assert clustering["backbone"] == BACKBONE
    assert (clustering["ari"], clustering["nmi"], clustering["stability"], clustering["k"]) == (
        0.75,
        0.8,
        0.9,
        2,
    )
    assert 3500 < clustering["age_seconds"] < 3700
    assert (clustering["method"], clustering["target_precision"], clustering["threshold"]) == (
        "knn",
        0.95,
        0.83,
    )
    assert (clustering["estimated_precision"], clustering["estimated_coverage"]) == (0.951, 0.64)
    assert clustering["threshold_override"] is None
    assert report["last_refit"]["version"] == known_state["current"]
    assert report["last_refit"]["seconds"] == 2.5
    assert report["embeddings"] == {"total": 3, "last_300s": 2}
    # The priority-9 embed message sits in kombu's second list for that queue.
    assert report["queues"] == {"embed": 1, "explain": 2, "refit": 0, "webhooks": 0}
    assert report["workers"] == []
    assert all(state["ok"] for state in report["services"].values())
    assert set(report["services"]) == {"postgres", "redis", "s3"}


def test_status_without_clustering_still_has_the_keys(
    clean_db: None, child_env: dict[str, str], tmp_path: Path
) -> None:
    result = run_vitrine(["status", "--json", "--ping-timeout", "0.3"], child_env, tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["clustering"]["version"] is None
    assert {
        "version",
        "ari",
        "nmi",
        "stability",
        "threshold",
        "estimated_precision",
        "estimated_coverage",
    } <= set(report["clustering"])
    assert report["listings_by_status"]["queued"] == 0


def test_status_fails_naming_redis_when_the_broker_is_down(
    service_env: dict[str, str], child_env: dict[str, str], tmp_path: Path
) -> None:
    closed = free_port()  # nothing listens: it was bound only to pick the number
    env = {**child_env, "VITRINE_BROKER_URL": f"redis://127.0.0.1:{closed}/0"}
    result = run_vitrine(["status", "--json"], env, tmp_path)
    assert result.returncode != 0
    assert "redis unavailable" in " ".join(result.stderr.split())
    report = json.loads(result.stdout)
    assert report["services"]["redis"]["ok"] is False
    assert report["services"]["postgres"]["ok"] is True
    assert report["queues"] is None


def test_status_fails_naming_postgres_and_s3(child_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **child_env,
        "VITRINE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
        "VITRINE_S3_ENDPOINT": f"127.0.0.1:{free_port()}",
    }
    result = run_vitrine(["status"], env, tmp_path)
    assert result.returncode != 0
    stderr = " ".join(result.stderr.split())
    assert "postgres unavailable" in stderr and "s3 unavailable" in stderr
    assert "redis unavailable" not in stderr


@pytest.fixture
def exporter(child_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "metrics.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        # No --address: the exporter must default to loopback, not every interface.
        [str(VITRINE), "metrics", "--port", str(port)],
        env=child_env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "metrics.log").read_text()
            try:
                httpx.get(url, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the exporter did not start"
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_endpoint_serves_the_known_state(
    known_state: dict[str, int], exporter: str, db: Database, tmp_path: Path
) -> None:
    assert (
        f"metrics on http://127.0.0.1:{exporter.split(':')[2].split('/')[0]}"
        in (tmp_path / "metrics.log").read_text()
    )
    samples = scrape(exporter)
    backbone = (("backbone", BACKBONE),)
    expected = {
        ("vitrine_up", (("service", "postgres"),)): 1,
        ("vitrine_up", (("service", "redis"),)): 1,
        ("vitrine_queue_depth", (("queue", "embed"),)): 1,
        ("vitrine_queue_depth", (("queue", "explain"),)): 2,
        ("vitrine_queue_depth", (("queue", "refit"),)): 0,
        ("vitrine_listings", (("status", "queued"),)): 2,
        ("vitrine_listings", (("status", "failed"),)): 2,
        ("vitrine_listings", (("status", "reviewed"),)): 1,
        ("vitrine_listing_failures", (("reason", "decode_error"),)): 1,
        ("vitrine_listing_failures", (("reason", "fetch_timeout"),)): 1,
        ("vitrine_suggestions_awaiting_review", ()): 1,
        ("vitrine_explanations", ()): 2,
        ("vitrine_embeddings_total", ()): 3,
        ("vitrine_embeddings_recent", ()): 2,
        ("vitrine_clustering_version", backbone): known_state["current"],
        ("vitrine_clustering_k", backbone): 2,
        ("vitrine_clustering_ari", backbone): 0.75,
        ("vitrine_clustering_nmi", backbone): 0.8,
        ("vitrine_clustering_stability_ari", backbone): 0.9,
        ("vitrine_clustering_target_precision", backbone): 0.95,
        ("vitrine_clustering_threshold", backbone): 0.83,
        ("vitrine_clustering_estimated_precision", backbone): 0.951,
        ("vitrine_clustering_estimated_coverage", backbone): 0.64,
        ("vitrine_refit_last_duration_seconds", ()): 2.5,
    }
    for key, value in expected.items():
        assert key in samples, f"missing {key}"
        assert samples[key] == pytest.approx(value), key
    age = samples[("vitrine_clustering_age_seconds", backbone)]
    assert 3500 < age < 3700
    created = samples[("vitrine_clustering_created_timestamp_seconds", backbone)]
    assert 3500 < time.time() - created < 3700
    assert time.time() - samples[("vitrine_refit_last_timestamp_seconds", ())] > 0

    # Read on every scrape: a new listing shows up without restarting the exporter.
    with db.transaction() as session:
        session.add(Listing(external_id="h", image_url="s3://b/h", status="queued"))
    assert scrape(exporter)[("vitrine_listings", (("status", "queued"),))] == 3
