"""What a receiver checks and when a failed delivery is tried again: signatures and backoff.

`Vitrine-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`. The
timestamp is signed with the body, so a receiver that refuses old timestamps refuses replays.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import time

SECRET_PREFIX = "whsec_"
SIGNATURE_HEADER = "Vitrine-Signature"
EVENT_HEADER = "Vitrine-Event"
DELIVERY_HEADER = "Vitrine-Delivery"
# Seconds before the second try, doubled for each try after it, at most an hour; each delay is
# drawn from ±25 % of that so that receivers coming back up are not hit by every sender at once.
BACKOFF_FIRST = 10.0
BACKOFF_MAX = 3600.0
JITTER = 0.25
# What a receiver should accept between our clock and its own (the README's example uses it).
TOLERANCE_SECONDS = 300


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    at = int(time.time()) if timestamp is None else timestamp
    return f"t={at},v1={signature(secret, at, body)}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: float = TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """What a receiver does: the header's timestamp is recent and one of its `v1` values matches."""
    parts = [part.partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in parts if key.strip() == "t"]
    candidates = [value.strip() for key, _, value in parts if key.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not candidates:
        return False
    at = int(stamps[0])
    if abs((time.time() if now is None else now) - at) > tolerance:
        return False
    expected = signature(secret, at, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def backoff(attempts: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `attempts`-th failed try (1 → about 10 s, 2 → 20 s, ... 1 h)."""
    base = min(BACKOFF_FIRST * 2 ** min(max(0, attempts - 1), 30), BACKOFF_MAX)
    return base * (1 + JITTER * (2 * (rng or random).random() - 1))
