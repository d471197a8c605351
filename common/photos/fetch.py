"""Fetching a photo's bytes within one deadline and a byte cap, over http(s) or from our object store."""

from __future__ import annotations

import time
from urllib.parse import urljoin

import httpx
from minio.error import S3Error

from common.object_store import STORAGE_ERRORS, ObjectStore, ObjectTooLarge
from common.photos.decode import LoadedImage, decode_image
from common.photos.failures import FailureReason, Fault, ImageRejected
from common.photos.transport import PhotoClient
from common.photos.urls import approve_url, check_object_allowed, parse_s3_url
from common.settings import Settings

MAX_REDIRECTS = 3


# Answers of an image host that say "not now" rather than "never".
RETRIABLE_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


# S3 error codes that mean the object is not there or not ours to read: the listing's fault.
PERMANENT_S3_CODES = frozenset(
    {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "AccessDenied", "InvalidBucketName", "KeyTooLongError"}
)


def http_client(settings: Settings) -> PhotoClient:
    """One client per worker: creating one costs ~30 ms (TLS context), more than a decode.

    It connects only to addresses the URL check approved (`common.photos.transport`).
    """
    return PhotoClient(settings.photos.fetch_timeout)


def fetch_http(url: str, settings: Settings, client: PhotoClient | None = None) -> bytes:
    """GET within one deadline for the whole download, a byte cap, and the host checks on every hop."""
    deadline = time.monotonic() + settings.photos.fetch_timeout
    own_client = client is None
    client = client or http_client(settings)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            # Checked, then connected to the very address checked: on every redirect too.
            approved = approve_url(url, settings)
            client.pin(approved.host, approved.port, approved.address)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise httpx.TimeoutException("deadline passed")
            with client.stream("GET", url, timeout=remaining) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    fault = Fault.source if response.status_code in RETRIABLE_HTTP_STATUS else Fault.photo
                    raise ImageRejected(
                        FailureReason.fetch_failed, f"HTTP {response.status_code} from {url}", fault
                    )
                return _read_within(response, deadline, settings)
        raise ImageRejected(FailureReason.fetch_failed, f"more than {MAX_REDIRECTS} redirects")
    except httpx.TimeoutException:
        raise ImageRejected(
            FailureReason.fetch_timeout,
            f"no complete answer within {settings.photos.fetch_timeout}s: {url}",
            Fault.source,
        ) from None
    except httpx.HTTPError as error:
        raise ImageRejected(
            FailureReason.fetch_failed, f"{type(error).__name__}: {error}", Fault.source
        ) from None
    finally:
        if own_client:
            client.close()


def _read_within(response: httpx.Response, deadline: float, settings: Settings) -> bytes:
    limit = settings.photos.max_image_bytes
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.photos.max_image_bytes:
        raise ImageRejected(
            FailureReason.too_many_bytes,
            f"{declared} bytes declared, limit {limit}",
        )
    chunks, total = [], 0
    for chunk in response.iter_bytes():
        # Each read is bounded by the client's time-out; this bounds their sum, so a server that
        # drips a byte a second cannot hold a worker past the deadline.
        if time.monotonic() > deadline:
            raise httpx.TimeoutException("deadline passed")
        total += len(chunk)
        if total > settings.photos.max_image_bytes:
            raise ImageRejected(FailureReason.too_many_bytes, f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def fetch_s3(url: str, settings: Settings, store: ObjectStore) -> bytes:
    """An object of an allowed bucket in our own store; an unreachable store is a transient fault."""
    bucket, key = parse_s3_url(url)
    check_object_allowed(bucket, key, settings)
    try:
        return store.get_bytes(bucket, key, max_bytes=settings.photos.max_image_bytes)
    except ObjectTooLarge as error:
        raise ImageRejected(FailureReason.too_many_bytes, str(error)) from None
    except ValueError as error:  # the SDK refuses a key it cannot send
        raise ImageRejected(FailureReason.invalid_url, f"bad object key in {url!r}: {error}") from None
    except S3Error as error:
        if error.code in PERMANENT_S3_CODES:
            raise ImageRejected(FailureReason.fetch_failed, f"{error.code}: s3://{bucket}/{key}") from None
        raise ImageRejected(FailureReason.storage_unavailable, f"S3 {error.code}", Fault.ours) from None
    except STORAGE_ERRORS as error:
        raise ImageRejected(
            FailureReason.storage_unavailable, f"{type(error).__name__}: {error}", Fault.ours
        ) from None


def fetch_image_bytes(
    url: str,
    settings: Settings,
    store: ObjectStore | None = None,
    client: PhotoClient | None = None,
) -> bytes:
    """Bytes of an `http(s)://` or `s3://bucket/key` image URL, within the configured limits."""
    if url.startswith("s3://"):
        return fetch_s3(url, settings, store or ObjectStore.from_settings(settings))
    return fetch_http(url, settings, client)


def load_image(
    url: str,
    settings: Settings,
    store: ObjectStore | None = None,
    client: PhotoClient | None = None,
    min_side: int | None = None,
) -> LoadedImage:
    return decode_image(fetch_image_bytes(url, settings, store, client), settings, min_side)
