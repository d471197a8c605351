"""Safe fetching and decoding of listing photos: bad input becomes a recorded reason, not a crash."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import struct
import warnings
from dataclasses import dataclass
from enum import StrEnum
from io import BytesIO
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from common.config import Settings
from common.storage import ObjectStore

MAX_REDIRECTS = 3
# What Pillow raises for broken image data. Anything else is a fault of ours, not the photo's:
# it is retried (see `FailureReason.internal_error`), never recorded as a corrupt photo.
DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class FailureReason(StrEnum):
    """Machine-readable reasons stored in `listing.failure_reason`."""

    invalid_url = "invalid_url"
    host_not_allowed = "host_not_allowed"
    private_address = "private_address"
    fetch_failed = "fetch_failed"  # DNS, connection refused, HTTP error status
    fetch_timeout = "fetch_timeout"
    too_many_bytes = "too_many_bytes"
    not_an_image = "not_an_image"
    unsupported_format = "unsupported_format"
    decompression_bomb = "decompression_bomb"
    image_too_large = "image_too_large"
    animated_image = "animated_image"
    corrupt_image = "corrupt_image"
    too_many_attempts = "too_many_attempts"
    internal_error = "internal_error"  # a fault of ours (a bug), retried under the attempts cap


# Not the photo's fault: the listing is tried again (within the attempts cap) instead of failing.
RETRIED_REASONS = frozenset({FailureReason.internal_error})


class ImageRejected(Exception):
    """An image cannot be used; `reason` is what gets stored on the listing."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @classmethod
    def internal(cls, error: BaseException) -> ImageRejected:
        return cls(FailureReason.internal_error, f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, fully decoded
    sha256: str
    n_bytes: int


def _host_matches(host: str, patterns: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower()
        if host == pattern or (pattern.startswith(".") and host.endswith(pattern)):
            return True
    return False


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_global and not ip.is_multicast


def check_url_allowed(url: str, settings: Settings) -> str:
    """Validate an http(s) URL against the allow-list and refuse private targets.

    Returns the host. Resolution happens here so that a name pointing at a private or loopback
    address is refused before any request is sent.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImageRejected(FailureReason.invalid_url, f"not an http(s) URL: {url!r}")
    host = parts.hostname
    if settings.fetch_allowed_hosts and not _host_matches(host, settings.fetch_allowed_hosts):
        raise ImageRejected(FailureReason.host_not_allowed, f"host {host!r} is not allowed")
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise ImageRejected(FailureReason.fetch_failed, f"cannot resolve {host!r}: {error}") from None
    addresses = {str(info[4][0]) for info in infos}
    private = sorted(a for a in addresses if not _is_public(a))
    if private and not _host_matches(host, settings.fetch_private_hosts):
        raise ImageRejected(
            FailureReason.private_address,
            f"host {host!r} resolves to non-public address {private[0]}",
        )
    return host


def fetch_http(url: str, settings: Settings, client: httpx.Client | None = None) -> bytes:
    """GET with a time-out, a byte cap and the host checks applied to every redirect hop."""
    own_client = client is None
    client = client or http_client(settings)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            check_url_allowed(url, settings)
            with client.stream("GET", url) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise ImageRejected(FailureReason.fetch_failed, f"HTTP {response.status_code} from {url}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > settings.max_image_bytes:
                    raise ImageRejected(
                        FailureReason.too_many_bytes,
                        f"{declared} bytes declared, limit {settings.max_image_bytes}",
                    )
                chunks, total = [], 0
                for chunk in response.iter_bytes():
                    total += len(chunk)
                    if total > settings.max_image_bytes:
                        raise ImageRejected(
                            FailureReason.too_many_bytes,
                            f"more than {settings.max_image_bytes} bytes",
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        raise ImageRejected(FailureReason.fetch_failed, f"more than {MAX_REDIRECTS} redirects")
    except httpx.TimeoutException:
        raise ImageRejected(
            FailureReason.fetch_timeout, f"no answer within {settings.fetch_timeout}s: {url}"
        ) from None
    except httpx.HTTPError as error:
        raise ImageRejected(FailureReason.fetch_failed, f"{type(error).__name__}: {error}") from None
    finally:
        if own_client:
            client.close()


def fetch_image_bytes(
    url: str,
    settings: Settings,
    store: ObjectStore | None = None,
    client: httpx.Client | None = None,
) -> bytes:
    """Bytes of an `http(s)://` or `s3://bucket/key` image URL, within the configured limits."""
    if url.startswith("s3://"):
        bucket, _, key = url[len("s3://") :].partition("/")
        if not bucket or not key:
            raise ImageRejected(FailureReason.invalid_url, f"not an s3://bucket/key URL: {url!r}")
        store = store or ObjectStore.from_settings(settings)
        try:
            return store.get_bytes(bucket, key, max_bytes=settings.max_image_bytes)
        except ValueError as error:
            raise ImageRejected(FailureReason.too_many_bytes, str(error)) from None
        except Exception as error:  # the SDK raises several unrelated types
            raise ImageRejected(FailureReason.fetch_failed, f"{type(error).__name__}: {error}") from None
    return fetch_http(url, settings, client)


def http_client(settings: Settings) -> httpx.Client:
    """One client per worker: creating one costs ~30 ms (TLS context), more than a decode."""
    return httpx.Client(timeout=settings.fetch_timeout, follow_redirects=False)


def decode_image(data: bytes, settings: Settings) -> LoadedImage:
    """Decode only allowed still-image formats, within explicit pixel limits, to RGB."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning becomes an error; our explicit limit below names it.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(BytesIO(data), formats=None)
    except UnidentifiedImageError:
        raise ImageRejected(FailureReason.not_an_image, "bytes are not a known image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(FailureReason.decompression_bomb, str(error)) from None
    except DECODE_ERRORS as error:
        raise ImageRejected(FailureReason.corrupt_image, f"{type(error).__name__}: {error}") from None

    if image.format not in settings.allowed_image_formats:
        raise ImageRejected(FailureReason.unsupported_format, f"format {image.format} not allowed")
    width, height = image.size
    # Checked from the header, before any pixel is decoded.
    if width * height > settings.max_image_pixels:
        raise ImageRejected(
            FailureReason.decompression_bomb,
            f"{width}x{height} declares {width * height} pixels, limit {settings.max_image_pixels}",
        )
    if max(width, height) > settings.max_image_side:
        raise ImageRejected(
            FailureReason.image_too_large,
            f"{width}x{height} exceeds side {settings.max_image_side}",
        )
    frames = int(getattr(image, "n_frames", 1))
    if frames > 1:
        raise ImageRejected(FailureReason.animated_image, f"{frames} frames")
    try:
        image.load()
        rgb = image.convert("RGB")
    except DECODE_ERRORS as error:  # truncated or corrupt data surfaces only when decoding
        raise ImageRejected(FailureReason.corrupt_image, f"{type(error).__name__}: {error}") from None
    return LoadedImage(image=rgb, sha256=hashlib.sha256(data).hexdigest(), n_bytes=len(data))


def load_image(
    url: str,
    settings: Settings,
    store: ObjectStore | None = None,
    client: httpx.Client | None = None,
) -> LoadedImage:
    return decode_image(fetch_image_bytes(url, settings, store, client), settings)
