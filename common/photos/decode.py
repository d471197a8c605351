"""Decoding untrusted bytes: allowed still images within the limits, upright RGB, reduced early."""

from __future__ import annotations

import hashlib
import math
import struct
import warnings
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.photos.failures import FailureReason, ImageRejected
from common.settings import Settings

# What Pillow raises for broken image data. Anything else is a fault of ours, not the photo's:
# it is retried (see `Fault.bug`), never recorded as a corrupt photo.
DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error)


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, decoded, reduced to what its consumer needs
    sha256: str  # of the bytes as fetched
    n_bytes: int


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
