"""Operators' signals: event counters and the publish → suggestion histogram from the exporter,
the review app's counter of what marketplaces sent, and a dashboard that asks only for metrics
that something serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import flower.events
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common.db import Database
from common.ops.metrics import registry
from common.settings import Settings
from tests.conftest import ROOT
from tests.fixtures.review import Tokens, add_flagged, bearer

DASHBOARD = ROOT / "deploy" / "grafana" / "vitrine.json"
METRIC = re.compile(r"\b((?:vitrine|flower)_[a-z0-9_]+)\b")


def _samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for family in reg.collect() for s in family.samples
    }


def _served_names(reg: CollectorRegistry) -> set[str]:
    """Every series name a registry can serve, its labelled families included."""
    names = set()
    for family in reg.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_decisions_refits_and_latency_are_counted(
    client: TestClient, tokens: Tokens, db: Database, settings: Settings
) -> None:
    exporter = registry(settings, db)
    first = _samples(exporter)  # the histogram starts from what exists now
    assert first[("vitrine_publish_to_suggestion_seconds_count", ())] == 0
    assert first[("vitrine_refits_total", ())] == 0
    add_flagged(db, [("c1", 0.1), ("c2", 0.2)])
    client.post("/api/v1/review/claim", headers=bearer(tokens.alice))
    client.post("/api/v1/review/c1/decision", json={"action": "skip"}, headers=bearer(tokens.alice))
    later = _samples(exporter)
    assert later[("vitrine_decisions_total", (("action", "skip"),))] == 1
    assert later[("vitrine_refits_total", ())] == 1  # add_flagged's clustering
    assert later[("vitrine_publish_to_suggestion_seconds_count", ())] == 2
    assert later[("vitrine_publish_to_suggestion_seconds_bucket", (("le", "+Inf"),))] == 2
    assert (
        "vitrine_build_info",
        (
            ("python", later and next(dict(k[1])["python"] for k in later if k[0] == "vitrine_build_info")),
            ("version", next(dict(k[1])["version"] for k in later if k[0] == "vitrine_build_info")),
        ),
    ) in later
    # Counted once: a third scrape adds nothing new.
    assert _samples(exporter)[("vitrine_publish_to_suggestion_seconds_count", ())] == 2

    items = [
        {"external_id": "n1", "image_url": "https://photos.example/1.jpg"},
        {"external_id": "n2", "image_url": "ftp://photos.example/2.jpg"},
    ]
    client.post("/api/v1/listings", json=items, headers=bearer(tokens.ingest))
    client.post("/api/v1/listings", json=items[:1], headers=bearer(tokens.ingest))
    app = _samples(client.app.state.metrics.registry)  # type: ignore[attr-defined]
    assert app[("vitrine_listings_received_total", (("outcome", "created"),))] == 1
    assert app[("vitrine_listings_received_total", (("outcome", "rejected"),))] == 1
    assert app[("vitrine_listings_received_total", (("outcome", "unchanged"),))] == 1


def test_every_dashboard_query_names_a_served_metric(
    client: TestClient, db: Database, settings: Settings, tokens: Tokens
) -> None:
    add_flagged(db, [("d1", 0.1)])  # a clustering (of backbone "test"), so its gauges are served too
    served = _served_names(registry(settings.replace(model="test"), db))
    served |= _served_names(client.app.state.metrics.registry)  # type: ignore[attr-defined]
    # Flower's own metrics (workers online, task run time: the embed batches' seconds), as the
    # installed Flower declares them.
    flower_source = Path(flower.events.__file__).read_text()
    for name in re.findall(r"PrometheusCounter\('(flower_[a-z_]+)'", flower_source):
        served.add(name + "_total")
    for name in re.findall(r"Histogram\(\s*'(flower_[a-z_]+)'", flower_source):
        served.update({name + "_bucket", name + "_count", name + "_sum"})
    for name in re.findall(r"Gauge\(\s*'(flower_[a-z_]+)'", flower_source):
        served.add(name)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= 15
    asked = {name for query in queries for name in METRIC.findall(query)}
    assert asked and asked <= served, sorted(asked - served)
    # The embed batches' run time is there, by Flower's name for the task.
    assert any("flower_task_runtime_seconds_bucket" in q and "vitrine.embed_listings" in q for q in queries)
