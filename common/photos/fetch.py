"""Safe fetching and decoding of listing photos: bad input becomes a recorded reason, not a crash.

Every failure says whose fault it is (`Fault`): the photo's is recorded at once; a failing image
host is tried again within the attempts cap; our own object store being away is tried again
without limit; a bug of ours is tried again within the cap and then recorded as such.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import socket
import struct
import time
import warnings
from dataclasses import dataclass
from enum import StrEnum
from io import BytesIO
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
from minio.error import S3Error
from PIL import Image, ImageOps, UnidentifiedImageError

from common.object_store import STORAGE_ERRORS, ObjectStore, ObjectTooLarge
from common.settings import Settings

MAX_REDIRECTS = 3
# What Pillow raises for broken image data. Anything else is a fault of ours, not the photo's:
# it is retried (see `Fault.bug`), never recorded as a corrupt photo.
DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error)
# Answers of an image host that say "not now" rather than "never".
RETRIABLE_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# S3 error codes that mean the object is not there or not ours to read: the listing's fault.
PERMANENT_S3_CODES = frozenset(
    {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "AccessDenied", "InvalidBucketName", "KeyTooLongError"}
)
# NAT64 (RFC 6052) embeds an IPv4 address in its last 32 bits.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
SIXTOFOUR_PREFIX = ipaddress.IPv6Network("2002::/16")
DEFAULT_PORTS = {"http": 80, "https": 443}


class FailureReason(StrEnum):
    """Machine-readable reasons stored in `listing.failure_reason`."""

    invalid_url = "invalid_url"
    host_not_allowed = "host_not_allowed"
    bucket_not_allowed = "bucket_not_allowed"
    private_address = "private_address"
    fetch_failed = "fetch_failed"  # DNS, connection refused, HTTP error status, missing object
    fetch_timeout = "fetch_timeout"  # no complete answer within the per-photo deadline
    storage_unavailable = "storage_unavailable"  # our object store away: retried, never final
    too_many_bytes = "too_many_bytes"
    not_an_image = "not_an_image"
    unsupported_format = "unsupported_format"
    decompression_bomb = "decompression_bomb"
    image_too_large = "image_too_large"
    animated_image = "animated_image"
    corrupt_image = "corrupt_image"
    too_many_attempts = "too_many_attempts"  # the photo took its worker down every time
    internal_error = "internal_error"  # a fault of ours (a bug), retried under the attempts cap


class Fault(StrEnum):
    """Whose fault a failure is, which decides what happens to the listing."""

    photo = "photo"  # the photo or its URL: recorded at once
    source = "source"  # the image host failed to answer: tried again, counted against the cap
    ours = "ours"  # our own object store is away: tried again, never counted, never final
    bug = "bug"  # an unexpected error of ours: tried again under the cap, then `internal_error`


class ImageRejected(Exception):
    """An image cannot be used (now); `reason` is what gets stored, `fault` what happens next."""

    def __init__(self, reason: FailureReason, detail: str, fault: Fault = Fault.photo) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.fault = fault

    @classmethod
    def internal(cls, error: BaseException) -> ImageRejected:
        return cls(FailureReason.internal_error, f"{type(error).__name__}: {error}", Fault.bug)


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, decoded, reduced to what its consumer needs
    sha256: str  # of the bytes as fetched
    n_bytes: int


# --- URLs ---------------------------------------------------------------------------------------


def _host_matches(host: str, patterns: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower()
        if host == pattern or (pattern.startswith(".") and host.endswith(pattern)):
            return True
    return False


def _private_host_allowed(host: str, port: int, entries: list[str]) -> bool:
    """`entries`: `host:port` (that port only) or `host` (the scheme's default ports only)."""
    for entry in entries:
        parts = urlsplit(f"//{entry}")
        try:
            allowed_port = parts.port
        except ValueError:
            continue
        name = parts.hostname or ""
        ports = {allowed_port} if allowed_port is not None else set(DEFAULT_PORTS.values())
        if _host_matches(host, [name]) and port in ports:
            return True
    return False


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries: mapped, compatible, NAT64, 6to4 or Teredo."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    packed = int(ip)
    if packed >> 32 == 0 and packed > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routable)
        return ipaddress.IPv4Address(packed)
    return None


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None and not (inner.is_global and not inner.is_multicast):
            return False
    return ip.is_global and not ip.is_multicast


def check_url_allowed(url: str, settings: Settings) -> str:
    """Validate an http(s) URL against the allow-list and refuse private targets.

    Returns the host. Resolution happens here so that a name pointing at a private or loopback
    address is refused before any request is sent.
    """
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ImageRejected(FailureReason.invalid_url, f"not an http(s) URL: {url!r}")
    host = parts.hostname
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ImageRejected(FailureReason.invalid_url, f"bad port in {url!r}") from None
    if settings.photos.fetch_allowed_hosts and not _host_matches(host, settings.photos.fetch_allowed_hosts):
        raise ImageRejected(FailureReason.host_not_allowed, f"host {host!r} is not allowed")
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise ImageRejected(FailureReason.fetch_failed, f"cannot resolve {host!r}: {error}") from None
    addresses = {str(info[4][0]) for info in infos}
    private = sorted(a for a in addresses if not is_public_address(a))
    if private and not _private_host_allowed(host, port, settings.photos.fetch_private_hosts):
        raise ImageRejected(
            FailureReason.private_address,
            f"host {host!r} port {port} resolves to non-public address {private[0]}",
        )
    return host


def parse_s3_url(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ImageRejected(FailureReason.invalid_url, f"not an s3://bucket/key URL: {url!r}")
    return bucket, key


def allowed_buckets(settings: Settings) -> set[str]:
    return {settings.store.images_bucket, *settings.photos.fetch_allowed_buckets}


def check_bucket_allowed(bucket: str, settings: Settings) -> None:
    if bucket not in allowed_buckets(settings):
        raise ImageRejected(
            FailureReason.bucket_not_allowed,
            f"bucket {bucket!r} is not an images bucket "
            "(VITRINE_IMAGES_BUCKET, VITRINE_FETCH_ALLOWED_BUCKETS)",
        )


# --- Fetching -----------------------------------------------------------------------------------


def http_client(settings: Settings) -> httpx.Client:
    """One client per worker: creating one costs ~30 ms (TLS context), more than a decode."""
    return httpx.Client(timeout=settings.photos.fetch_timeout, follow_redirects=False)


def fetch_http(url: str, settings: Settings, client: httpx.Client | None = None) -> bytes:
    """GET within one deadline for the whole download, a byte cap, and the host checks on every hop."""
    deadline = time.monotonic() + settings.photos.fetch_timeout
    own_client = client is None
    client = client or http_client(settings)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            check_url_allowed(url, settings)
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
    check_bucket_allowed(bucket, settings)
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
    client: httpx.Client | None = None,
) -> bytes:
    """Bytes of an `http(s)://` or `s3://bucket/key` image URL, within the configured limits."""
    if url.startswith("s3://"):
        return fetch_s3(url, settings, store or ObjectStore.from_settings(settings))
    return fetch_http(url, settings, client)


# --- Decoding -----------------------------------------------------------------------------------


def open_checked(data: bytes, settings: Settings) -> Image.Image:
    """Open (header only) an allowed still image within the pixel limits; no pixel decoded yet."""
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

    if image.format not in settings.photos.allowed_image_formats:
        raise ImageRejected(FailureReason.unsupported_format, f"format {image.format} not allowed")
    width, height = image.size
    if width * height > settings.photos.max_image_pixels:
        raise ImageRejected(
            FailureReason.decompression_bomb,
            f"{width}x{height} declares {width * height} pixels, limit {settings.photos.max_image_pixels}",
        )
    if max(width, height) > settings.photos.max_image_side:
        raise ImageRejected(
            FailureReason.image_too_large, f"{width}x{height} exceeds side {settings.photos.max_image_side}"
        )
    frames = int(getattr(image, "n_frames", 1))
    if frames > 1:
        raise ImageRejected(FailureReason.animated_image, f"{frames} frames")
    return image


def decode_image(data: bytes, settings: Settings, min_side: int | None = None) -> LoadedImage:
    """Decode an allowed still image to upright RGB, reduced early when it is far larger than needed.

    `min_side`: the shorter side the consumer needs (the model's resize, or an overlay's size);
    a JPEG is then decoded at a fraction of its size by the codec itself (`draft`), any other
    format is reduced right after decoding, so a batch never holds full-size photos.
    """
    image = open_checked(data, settings)
    try:
        if min_side is not None and image.format == "JPEG":
            width, height = image.size
            scale = max(min_side / min(width, height), 1 / 8)
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        image.load()
        image = ImageOps.exif_transpose(image)
        if min_side is not None:
            factor = min(image.size) // (2 * min_side)
            if factor >= 2:
                image = image.reduce(factor)
        rgb = to_rgb(image)
    except DECODE_ERRORS as error:  # truncated or corrupt data surfaces only when decoding
        raise ImageRejected(FailureReason.corrupt_image, f"{type(error).__name__}: {error}") from None
    return LoadedImage(image=rgb, sha256=sha256_of(data), n_bytes=len(data))


def sha256_of(data: bytes) -> str:
    """The photo's identity as fetched: equal bytes, equal photo."""
    return hashlib.sha256(data).hexdigest()


HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ALPHA_MODES = ("PA", "LA", "La", "RGBA", "RGBa")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as a person would see the photo: high bit depths scaled, transparency on white."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        # Integer modes hold 16-bit samples (0..65535); float ones 0..1 or 0..255.
        top = 65535.0 if image.mode != "F" else (1.0 if pixels.max(initial=0) <= 1.0 else 255.0)
        image = Image.fromarray(np.clip(np.round(pixels / top * 255), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        # Product photos are cut out onto white; compositing on black would invent a dark frame.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(
    url: str,
    settings: Settings,
    store: ObjectStore | None = None,
    client: httpx.Client | None = None,
    min_side: int | None = None,
) -> LoadedImage:
    return decode_image(fetch_image_bytes(url, settings, store, client), settings, min_side)
