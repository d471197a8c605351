"""Bad and good image bytes made from real photos, and a tiny local HTTP image server."""

from __future__ import annotations

from io import BytesIO

from PIL import Image

from common.localservices import serve_bytes
from tests.conftest import FLIPKART

__all__ = ["animated_gif", "decompression_bomb", "real_jpeg", "serve_bytes", "truncated_jpeg"]


def real_jpeg(index: int = 0) -> bytes:
    return sorted((FLIPKART / "images").glob("*.jpg"))[index].read_bytes()


def truncated_jpeg() -> bytes:
    data = real_jpeg(1)
    return data[: len(data) // 2]


def decompression_bomb() -> bytes:
    """A few KB of PNG that declares 12,000 × 12,000 pixels (144 M)."""
    buffer = BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def animated_gif() -> bytes:
    buffer = BytesIO()
    frames = [Image.new("RGB", (32, 32), color) for color in ("red", "blue")]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()
