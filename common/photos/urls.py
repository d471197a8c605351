"""Which photo addresses may be fetched: the host allow-list, no private addresses, our own buckets."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.photos.failures import FailureReason, ImageRejected
from common.settings import Settings

# NAT64 (RFC 6052) embeds an IPv4 address in its last 32 bits.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


DEFAULT_PORTS = {"http": 80, "https": 443}


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


@dataclass(frozen=True)
class Approved:
    """Where a checked URL may be fetched from: its host and port, and the address checked."""

    host: str
    port: int
    address: str


def approve_url(url: str, settings: Settings) -> Approved:
    """Validate a photo's http(s) URL against the allow-list and refuse private targets."""
    return approve_target(
        url,
        allowed_hosts=settings.photos.fetch_allowed_hosts,
        private_hosts=settings.photos.fetch_private_hosts,
    )


def approve_target(url: str, *, allowed_hosts: list[str], private_hosts: list[str]) -> Approved:
    """The SSRF guard of every outgoing request (photos, webhooks): an http(s) URL, its host in
    `allowed_hosts` when that is not empty, and no private address unless `private_hosts` names it.

    Resolution happens here so that a name pointing at a private or loopback address is refused
    before any request is sent; the request then connects to the address approved here, not to a
    second lookup (`common.photos.transport`).
    """
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ImageRejected(FailureReason.invalid_url, f"not an http(s) URL: {url!r}")
    host = parts.hostname
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ImageRejected(FailureReason.invalid_url, f"bad port in {url!r}") from None
    if allowed_hosts and not _host_matches(host, allowed_hosts):
        raise ImageRejected(FailureReason.host_not_allowed, f"host {host!r} is not allowed")
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise ImageRejected(FailureReason.fetch_failed, f"cannot resolve {host!r}: {error}") from None
    ordered = list(dict.fromkeys(str(info[4][0]) for info in infos))
    private = sorted(a for a in ordered if not is_public_address(a))
    if private and not _private_host_allowed(host, port, private_hosts):
        raise ImageRejected(
            FailureReason.private_address,
            f"host {host!r} port {port} resolves to non-public address {private[0]}",
        )
    if not ordered:
        raise ImageRejected(FailureReason.fetch_failed, f"{host!r} resolves to no address")
    return Approved(host, port, ordered[0])


def check_url_allowed(url: str, settings: Settings) -> str:
    """`approve_url`, for callers that want only the host."""
    return approve_url(url, settings).host


def parse_s3_url(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ImageRejected(FailureReason.invalid_url, f"not an s3://bucket/key URL: {url!r}")
    return bucket, key


def check_object_allowed(bucket: str, key: str, settings: Settings) -> None:
    """An s3:// photo must be in an images bucket and, in ours, under the publishers' prefix.

    Keys with `.` or `..` segments, empty segments or backslashes are refused whatever the
    bucket: a store or a proxy that normalises them would read another object than the one named.
    """
    check_bucket_allowed(bucket, settings)
    segments = key.split("/")
    if "\\" in key or any(segment in ("", ".", "..") for segment in segments):
        raise ImageRejected(
            FailureReason.invalid_url, f"object key {key!r} has an empty, '.' or '..' segment"
        )
    prefix = settings.store.images_prefix
    if bucket == settings.store.images_bucket and not key.startswith(prefix):
        raise ImageRejected(
            FailureReason.bucket_not_allowed,
            f"object key {key!r} is not under {prefix!r}, where listing photos are uploaded"
            " (VITRINE_IMAGES_PREFIX)",
        )


def allowed_buckets(settings: Settings) -> set[str]:
    return {settings.store.images_bucket, *settings.photos.fetch_allowed_buckets}


def check_bucket_allowed(bucket: str, settings: Settings) -> None:
    if bucket not in allowed_buckets(settings):
        raise ImageRejected(
            FailureReason.bucket_not_allowed,
            f"bucket {bucket!r} is not an images bucket "
            "(VITRINE_IMAGES_BUCKET, VITRINE_FETCH_ALLOWED_BUCKETS)",
        )
