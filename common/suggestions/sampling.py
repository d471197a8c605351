"""Stable pseudo-random choices: the same key always falls on the same side, in every process."""

from __future__ import annotations

import hashlib


def stable_fraction(key: str | int) -> float:
    """A number in [0, 1] fixed by `key` (the first 32 bits of its sha256)."""
    return int(hashlib.sha256(str(key).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
