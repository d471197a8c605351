"""Safe fetching and decoding: every kind of bad input maps to its own recorded reason."""

from __future__ import annotations

import pytest

from common.object_store import ObjectStore
from common.photos.decode import decode_image
from common.photos.failures import FailureReason, Fault, ImageRejected
from common.photos.fetch import fetch_http, fetch_image_bytes
from common.photos.urls import check_url_allowed
from common.settings import Settings, load_settings
from tests.helpers import animated_gif, decompression_bomb, real_jpeg, truncated_jpeg
from vitrine.local.services import free_port, serve_bytes


def _rejected(reason: FailureReason, call, *args) -> ImageRejected:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageRejected) as caught:
        call(*args)
    assert caught.value.reason == reason, caught.value.detail
    return caught.value


def test_real_photo_decodes_to_rgb_with_its_digest() -> None:
    loaded = decode_image(real_jpeg(), load_settings())
    assert loaded.image.mode == "RGB"
    assert len(loaded.sha256) == 64
    assert max(loaded.image.size) == 320


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (truncated_jpeg(), FailureReason.corrupt_image),
        (b"<html>definitely not a photo</html>" * 10, FailureReason.not_an_image),
        (decompression_bomb(), FailureReason.decompression_bomb),
        (animated_gif(), FailureReason.animated_image),
    ],
    ids=["truncated-jpeg", "non-image", "decompression-bomb", "animated"],
)
def test_bad_bytes_are_rejected_with_their_reason(data: bytes, reason: FailureReason) -> None:
    _rejected(reason, decode_image, data, load_settings())


def test_formats_outside_the_allow_list_are_refused() -> None:
    _rejected(
        FailureReason.unsupported_format,
        decode_image,
        real_jpeg(),
        load_settings(allowed_image_formats="PNG"),
    )


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
    _rejected(FailureReason.private_address, check_url_allowed, url, load_settings())


def test_allow_list_limits_hosts() -> None:
    settings = load_settings(fetch_allowed_hosts="images.example.com,.cdn.example.org")
    _rejected(FailureReason.host_not_allowed, check_url_allowed, "https://evil.example.net/a.jpg", settings)
    _rejected(FailureReason.invalid_url, check_url_allowed, "ftp://images.example.com/a.jpg", settings)


def _local(base: str = "http://127.0.0.1:80", **overrides: object) -> Settings:
    """Settings that allow the private host of `base` (a local test server) on its own port."""
    return load_settings(fetch_private_hosts=base.removeprefix("http://"), **overrides)


def test_http_fetch_within_limits() -> None:
    with serve_bytes({"photo.jpg": real_jpeg()}) as base:
        assert fetch_http(f"{base}/photo.jpg", _local(base)) == real_jpeg()
        _rejected(FailureReason.fetch_failed, fetch_http, f"{base}/missing.jpg", _local(base))
        _rejected(
            FailureReason.too_many_bytes, fetch_http, f"{base}/photo.jpg", _local(base, max_image_bytes=2048)
        )
        # localhost is not in the private allow-list even though 127.0.0.1 is.
        _rejected(
            FailureReason.private_address,
            fetch_http,
            f"{base.replace('127.0.0.1', 'localhost')}/photo.jpg",
            _local(base),
        )


def test_unreachable_host_is_a_fetch_failure() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    _rejected(FailureReason.fetch_failed, fetch_http, f"{closed}/a.jpg", _local(closed))
    _rejected(FailureReason.fetch_failed, fetch_http, "http://no-such-host.invalid/a.jpg", _local())


def test_s3_urls_read_from_the_images_bucket_only(settings: Settings) -> None:
    store = ObjectStore.from_settings(settings)
    bucket = settings.store.images_bucket
    store.ensure_bucket(bucket)
    store.put_bytes(bucket, "a.jpg", real_jpeg(), "image/jpeg")
    assert fetch_image_bytes(f"s3://{bucket}/a.jpg", settings, store) == real_jpeg()
    missing = _rejected(
        FailureReason.fetch_failed, fetch_image_bytes, f"s3://{bucket}/missing.jpg", settings, store
    )
    assert missing.fault == Fault.photo
    small = settings.replace(max_image_bytes=2048)
    _rejected(FailureReason.too_many_bytes, fetch_image_bytes, f"s3://{bucket}/a.jpg", small, store)
    # Another bucket of the same store: refused before any request.
    store.ensure_bucket("other-bucket")
    store.put_bytes("other-bucket", "private.jpg", real_jpeg(), "image/jpeg")
    _rejected(
        FailureReason.bucket_not_allowed, fetch_image_bytes, "s3://other-bucket/private.jpg", settings, store
    )


def test_our_store_being_away_is_not_the_photos_fault(settings: Settings) -> None:
    away = settings.replace(s3_endpoint=f"127.0.0.1:{free_port()}")
    url = f"s3://{settings.store.images_bucket}/a.jpg"
    rejected = _rejected(
        FailureReason.storage_unavailable, fetch_image_bytes, url, away, ObjectStore.from_settings(away)
    )
    assert rejected.fault == Fault.ours
