"""Limits that hold across processes: a rate per token (per address without one) answered with
429 and Retry-After, a cap on one token's open long-polls; with Redis away, requests go through."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from common.db import Database
from common.listings.events import publish_listing
from common.runtime import Runtime
from common.settings import Settings
from review.app import create_app
from tests.fixtures.review import Tokens, bearer
from tests.integration.review.test_problems import problem
from vitrine.local.services import free_port


def test_a_token_past_its_rate_is_refused_in_every_instance_and_others_are_not(
    review_settings: Settings, runtime: Runtime, tokens: Tokens
) -> None:
    settings = review_settings.replace(rate_limit=1.0, rate_burst=5)
    with (
        TestClient(create_app(settings, runtime)) as first,
        TestClient(create_app(settings, runtime)) as second,
    ):
        shop = bearer(tokens.ingest)
        answers = [c.get("/api/v1/listings/none", headers=shop).status_code for c in (first, second) * 3]
        assert answers[:5] == [404] * 5  # the burst, counted across both instances
        refused = problem(second.get("/api/v1/listings/none", headers=shop), 429, "rate_limited")
        assert (
            answers[5] == 429
            and int(second.get("/api/v1/listings/none", headers=shop).headers["retry-after"]) >= 1
        )
        assert "at most 5" in refused["detail"]
        # Another token, and the health probe, are not held back by this one.
        assert first.get("/api/v1/stats", headers=bearer(tokens.alice)).status_code == 200
        assert first.get("/healthz").status_code == 200


def test_calls_without_a_token_are_limited_per_address(
    review_settings: Settings, runtime: Runtime, tokens: Tokens
) -> None:
    settings = review_settings.replace(address_rate_limit=1.0, address_rate_burst=3)
    with TestClient(create_app(settings, runtime)) as client:
        assert [client.get("/sign-in").status_code for _ in range(3)] == [200] * 3
        assert client.get("/sign-in").status_code == 429
        assert client.get("/api/v1/listings/none", headers=bearer(tokens.ingest)).status_code == 404


def test_one_token_keeps_a_bounded_number_of_long_polls_open(
    review_settings: Settings, runtime: Runtime, tokens: Tokens, db: Database
) -> None:
    for i in range(3):
        publish_listing(
            runtime, f"waiting-{i}", "https://photos.example/w.jpg"
        )  # queued: never terminal here
    app = create_app(review_settings.replace(long_polls_per_token=2), runtime)
    shop = bearer(tokens.ingest)
    with TestClient(app) as client:
        answers: list[int] = []
        polls = [
            threading.Thread(
                target=lambda i=i: answers.append(
                    TestClient(app).get(f"/api/v1/listings/waiting-{i}?wait=3", headers=shop).status_code
                )
            )
            for i in range(2)
        ]
        for poll in polls:
            poll.start()
        threading.Event().wait(1.0)  # both are waiting now
        third = client.get("/api/v1/listings/waiting-2?wait=3", headers=shop)
        assert problem(third, 429, "too_many_waits")["errors"][0]["pointer"] == "/query/wait"
        assert client.get("/api/v1/listings/waiting-2", headers=shop).status_code == 200  # no wait: answered
        for poll in polls:
            poll.join()
        assert answers == [200, 200]
        # Their places are free again.
        assert client.get("/api/v1/listings/waiting-2?wait=0.5", headers=shop).status_code == 200


def test_with_redis_away_requests_go_through(
    review_settings: Settings, runtime: Runtime, tokens: Tokens
) -> None:
    away = review_settings.replace(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(away, runtime)) as client:
        assert client.get("/api/v1/listings/none", headers=bearer(tokens.ingest)).status_code == 404
        assert client.get("/healthz").status_code == 200


def test_one_process_keeps_a_bounded_number_of_long_polls_open(
    review_settings: Settings, runtime: Runtime, tokens: Tokens
) -> None:
    publish_listing(runtime, "waiting", "https://photos.example/w.jpg")
    app = create_app(review_settings.replace(long_polls_per_process=1), runtime)
    shop = bearer(tokens.ingest)
    with TestClient(app) as client:
        answers: list[int] = []
        poll = threading.Thread(
            target=lambda: answers.append(
                TestClient(app).get("/api/v1/listings/waiting?wait=2", headers=shop).status_code
            )
        )
        poll.start()
        threading.Event().wait(0.7)
        # Another token, but the same server: its one place is taken.
        problem(
            client.get("/api/v1/listings/waiting?wait=2", headers=bearer(tokens.alice)), 429, "too_many_waits"
        )
        poll.join()
        assert answers == [200]
