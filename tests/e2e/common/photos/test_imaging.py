"""Safe fetching and decoding: every kind of bad input maps to its own recorded reason."""

from __future__ import annotations

import pytest

from common.object_store import ObjectStore
from common.photos.decode import decode_image
from common.photos.failures import FailureReason, Fault
from common.photos.fetch import fetch_http, fetch_image_bytes
from common.settings import Settings, load_settings
from tests.helpers import (
    animated_gif,
    decompression_bomb,
    expect_rejected,
    private_host,
    real_jpeg,
    truncated_jpeg,
)
from vitrine.local.services import free_port, serve_bytes


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
    expect_rejected(reason, decode_image, data, load_settings())


def test_formats_outside_the_allow_list_are_refused() -> None:
    expect_rejected(
        FailureReason.unsupported_format,
        decode_image,
        real_jpeg(),
        load_settings(allowed_image_formats="PNG"),
    )


def test_http_fetch_within_limits() -> None:
    with serve_bytes({"photo.jpg": real_jpeg()}) as base:
        assert fetch_http(f"{base}/photo.jpg", private_host(base)) == real_jpeg()
        expect_rejected(FailureReason.fetch_failed, fetch_http, f"{base}/missing.jpg", private_host(base))
        expect_rejected(
            FailureReason.too_many_bytes,
            fetch_http,
            f"{base}/photo.jpg",
            private_host(base, max_image_bytes=2048),
        )
        # localhost is not in the private allow-list even though 127.0.0.1 is.
        expect_rejected(
            FailureReason.private_address,
            fetch_http,
            f"{base.replace('127.0.0.1', 'localhost')}/photo.jpg",
            private_host(base),
        )


def test_s3_urls_read_from_the_images_bucket_only(settings: Settings) -> None:
    store = ObjectStore.from_settings(settings)
    bucket = settings.store.images_bucket
    store.ensure_bucket(bucket)
    store.put_bytes(bucket, "photos/a.jpg", real_jpeg(), "image/jpeg")
    assert fetch_image_bytes(f"s3://{bucket}/photos/a.jpg", settings, store) == real_jpeg()
    missing = expect_rejected(
        FailureReason.fetch_failed, fetch_image_bytes, f"s3://{bucket}/photos/missing.jpg", settings, store
    )
    assert missing.fault == Fault.photo
    small = settings.replace(max_image_bytes=2048)
    expect_rejected(
        FailureReason.too_many_bytes, fetch_image_bytes, f"s3://{bucket}/photos/a.jpg", small, store
    )
    # Another bucket of the same store: refused before any request.
    store.ensure_bucket("other-bucket")
    store.put_bytes("other-bucket", "private.jpg", real_jpeg(), "image/jpeg")
    expect_rejected(
        FailureReason.bucket_not_allowed, fetch_image_bytes, "s3://other-bucket/private.jpg", settings, store
    )
    # Our own bucket outside the publishers' prefix (another listing's file, an operator's), and
    # keys that a store or proxy would resolve elsewhere: never read.
    store.put_bytes(bucket, "exports/customers.jpg", real_jpeg(), "image/jpeg")
    expect_rejected(
        FailureReason.bucket_not_allowed,
        fetch_image_bytes,
        f"s3://{bucket}/exports/customers.jpg",
        settings,
        store,
    )
    for key in ("photos/../exports/customers.jpg", "../etc/passwd", "photos//a.jpg", "photos/./a.jpg"):
        expect_rejected(FailureReason.invalid_url, fetch_image_bytes, f"s3://{bucket}/{key}", settings, store)


def test_our_store_being_away_is_not_the_photos_fault(settings: Settings) -> None:
    away = settings.replace(s3_endpoint=f"127.0.0.1:{free_port()}")
    url = f"s3://{settings.store.images_bucket}/photos/a.jpg"
    refused = expect_rejected(
        FailureReason.storage_unavailable, fetch_image_bytes, url, away, ObjectStore.from_settings(away)
    )
    assert refused.fault == Fault.ours
