"""The review app's /metrics: request latency by route template, and the build (no services needed:
the sign-in page and a refused /metrics touch no database)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from pydantic import SecretStr

from common.settings import load_settings
from review.app import create_app


def test_requests_are_timed_by_route_template_and_metrics_need_a_token() -> None:
    app = create_app(load_settings().replace(session_secret=SecretStr("s" * 32)))
    with TestClient(app) as client:
        assert client.get("/sign-in").status_code == 200
        assert client.get("/no/such/page/42").status_code == 404
        assert client.get("/metrics").status_code == 401
    registry = app.state.metrics.registry

    def count(route: str, status: str) -> float | None:
        labels = {"route": route, "method": "GET", "status": status}
        return registry.get_sample_value("vitrine_http_request_seconds_count", labels)

    assert count("/sign-in", "2xx") == 1
    assert count("unmatched", "4xx") == 1  # raw paths never become labels
    assert count("/metrics", "4xx") == 1
    build = [s for m in registry.collect() if m.name == "vitrine_build_info" for s in m.samples]
    assert len(build) == 1 and build[0].value == 1 and build[0].labels["version"]
