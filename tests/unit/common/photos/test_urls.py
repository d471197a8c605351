"""Safe fetching and decoding: every kind of bad input maps to its own recorded reason."""

from __future__ import annotations

import pytest

from common.photos.failures import FailureReason
from common.photos.fetch import fetch_http
from common.photos.urls import check_url_allowed
from common.settings import load_settings
from tests.helpers import expect_rejected, private_host
from vitrine.local.services import free_port


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/a.jpg",
        "http://192.168.1.5/a.jpg",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/a.jpg",
    ],
)
def test_private_and_link_local_targets_are_refused_before_any_request(url: str) -> None:
    expect_rejected(FailureReason.private_address, check_url_allowed, url, load_settings())


def test_allow_list_limits_hosts() -> None:
    settings = load_settings(fetch_allowed_hosts="images.example.com,.cdn.example.org")
    expect_rejected(
        FailureReason.host_not_allowed, check_url_allowed, "https://evil.example.net/a.jpg", settings
    )
    expect_rejected(FailureReason.invalid_url, check_url_allowed, "ftp://images.example.com/a.jpg", settings)


def test_unreachable_host_is_a_fetch_failure() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    expect_rejected(FailureReason.fetch_failed, fetch_http, f"{closed}/a.jpg", private_host(closed))
    expect_rejected(
        FailureReason.fetch_failed, fetch_http, "http://no-such-host.invalid/a.jpg", private_host()
    )
