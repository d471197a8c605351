"""Signatures as a receiver checks them, the retry schedule, event names and the receiver guard."""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import UTC, datetime

import pytest

from common.settings import Settings
from common.webhooks import EVENTS
from common.webhooks.sender import Claimed, body_of
from common.webhooks.signing import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    JITTER,
    backoff,
    new_secret,
    signature_header,
    verify,
)
from common.webhooks.subscriptions import WebhookError, check_receiver, event_names

BODY = b'{"id":1,"event":"listing.suggested"}'


def test_the_signature_is_hmac_sha256_of_the_timestamp_and_the_raw_body() -> None:
    secret = new_secret()
    header = signature_header(secret, BODY, timestamp=1_700_000_000)
    expected = hmac.new(secret.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(secret, header, BODY, now=1_700_000_010)


def test_a_changed_body_another_secret_or_an_old_timestamp_is_refused() -> None:
    secret = new_secret()
    header = signature_header(secret, BODY, timestamp=1_700_000_000)
    assert not verify(secret, header, BODY + b" ", now=1_700_000_000)
    assert not verify(new_secret(), header, BODY, now=1_700_000_000)
    # A replay ten minutes later: the timestamp is signed, so it cannot be refreshed.
    assert not verify(secret, header, BODY, now=1_700_000_600)
    fresh = signature_header(secret, BODY, timestamp=1_700_000_600)
    assert verify(secret, fresh, BODY, now=1_700_000_600)


@pytest.mark.parametrize(
    "header", ["", "v1=abc", "t=,v1=abc", "t=x,v1=abc", "t=1700000000", "t=1,t=2,v1=abc", "garbage"]
)
def test_malformed_headers_are_refused(header: str) -> None:
    assert not verify("whsec_x", header, BODY, now=1_700_000_000)


def test_secrets_are_prefixed_and_unguessable() -> None:
    made = {new_secret() for _ in range(100)}
    assert len(made) == 100
    assert all(secret.startswith("whsec_") and len(secret) > 40 for secret in made)


def test_backoff_doubles_from_ten_seconds_to_an_hour_with_jitter() -> None:
    rng = random.Random(0)
    for attempts, base in [(1, 10), (2, 20), (3, 40), (9, 2560), (10, BACKOFF_MAX), (500, BACKOFF_MAX)]:
        delays = [backoff(attempts, rng) for _ in range(200)]
        assert min(delays) >= base * (1 - JITTER) and max(delays) <= base * (1 + JITTER)
        # Jittered: receivers coming back are not hit by every retry at the same instant.
        assert max(delays) - min(delays) > base * JITTER
    assert BACKOFF_FIRST == 10


def test_enough_tries_fit_in_the_day() -> None:
    # The schedule a receiver down for hours meets: retried for a day, at most an hour apart.
    elapsed, attempts = 0.0, 0
    while elapsed < 86_400:
        attempts += 1
        elapsed += backoff(attempts, random.Random(attempts))
    assert 25 < attempts < 40


def test_the_body_is_the_same_bytes_for_every_try() -> None:
    now = datetime.now(UTC)
    delivery = Claimed(7, "https://x.example/h", "whsec_x", "listing.reviewed", {"a": 1}, 1, now)
    again = Claimed(7, "https://x.example/h", "whsec_x", "listing.reviewed", {"a": 1}, 5, now)
    assert body_of(delivery) == body_of(again) == b'{"id":7,"event":"listing.reviewed","a":1}'


def test_event_names_short_or_full_all_by_default() -> None:
    assert event_names(["suggested", "listing.failed", "needs-review"]) == [
        "listing.suggested",
        "listing.failed",
        "listing.needs_review",
    ]
    assert event_names([""]) == list(EVENTS)
    with pytest.raises(WebhookError, match="unknown event"):
        event_names(["deleted"])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/hook",
        "ftp://example.com/hook",
        "not a url",
    ],
)
def test_private_or_odd_receivers_are_refused_by_default(settings: Settings, url: str) -> None:
    with pytest.raises(WebhookError, match="receiver refused"):
        check_receiver(url, settings)


def test_a_private_receiver_is_allowed_only_on_the_port_named(settings: Settings) -> None:
    allowed = settings.replace(webhook_private_hosts=["127.0.0.1:8080"])
    assert check_receiver("http://127.0.0.1:8080/hook", allowed).address == "127.0.0.1"
    with pytest.raises(WebhookError):
        check_receiver("http://127.0.0.1:8081/hook", allowed)
    # The photos' exceptions are not the webhooks' (nor the other way round).
    with pytest.raises(WebhookError):
        check_receiver("http://127.0.0.1:8080/hook", settings.replace(fetch_private_hosts=["127.0.0.1:8080"]))
