"""The PNGs moderators see: a Grad-CAM heatmap drawn on the photo pixels it came from.

The heatmap lies on the model's input grid; `PhotoTransform.input_box` says where that grid
sits on the photo (the padded square of the `full` crop reaches beyond a wide photo's top and
bottom), so the heat lands on the product, not on the middle of the canvas.
"""

from __future__ import annotations

from io import BytesIO

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from common.vision.gradcam import Explanation
from common.vision.transforms import Box, PhotoTransform

MAX_OVERLAY_SIDE = 1024  # moderators see a screen-sized image; full-size PNGs would be megabytes
OVERLAY_ALPHA = 0.5


def heatmap_on_photo(heatmap: np.ndarray, photo_size: tuple[int, int], box: Box) -> np.ndarray:
    """The heatmap stretched over `box` and cut to the photo: one value in [0, 1] per photo pixel.

    Pixels outside the box (what a centre crop cut away) are 0: the model never saw them.
    """
    width, height = photo_size
    left, top, right, bottom = (round(v) for v in box)
    full = np.zeros((height, width), dtype=np.float32)
    if right <= left or bottom <= top:
        return full
    resized = np.clip(cv2.resize(heatmap, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR), 0, 1)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if x1 > x0 and y1 > y0:
        full[y0:y1, x0:x1] = resized[y0 - top : y1 - top, x0 - left : x1 - left]
    return full


def render_pngs(
    photo: Image.Image, explanation: Explanation, transform: PhotoTransform
) -> tuple[bytes, bytes]:
    """(overlay: the colour-mapped heatmap blended over the photo, heatmap: 8-bit grey, same size).

    Both are the photo's size (at most MAX_OVERLAY_SIDE), pixel for pixel, so a client lays the
    heatmap over the photo as it is. The heatmap PNG also carries its target and the model's
    input box as fractions of the photo (`input_box`: left, top, right, bottom).
    """
    photo = photo.convert("RGB")
    if max(photo.size) > MAX_OVERLAY_SIDE:
        photo = photo.copy()
        photo.thumbnail((MAX_OVERLAY_SIDE, MAX_OVERLAY_SIDE), Image.Resampling.BICUBIC)
    box = transform.input_box(photo.size)
    heat = heatmap_on_photo(explanation.heatmap, photo.size, box)
    grey = np.round(heat * 255).astype(np.uint8)
    colour = cv2.applyColorMap(grey, cv2.COLORMAP_JET)[:, :, ::-1].astype(np.float32)
    pixels = np.asarray(photo, dtype=np.float32)
    # Colour only where the model looked; a centre crop leaves the cut-away margins as they were.
    seen = _seen_mask(photo.size, box)[:, :, None]
    blended = np.where(seen, (1 - OVERLAY_ALPHA) * pixels + OVERLAY_ALPHA * colour, pixels)
    overlay = _png(Image.fromarray(np.uint8(np.clip(np.round(blended), 0, 255))))

    info = PngInfo()
    info.add_text("target", explanation.target)
    width, height = photo.size
    left, top, right, bottom = box
    fractions = (left / width, top / height, right / width, bottom / height)
    info.add_text("input_box", ",".join(f"{v:.4f}" for v in fractions))
    return overlay, _png(Image.fromarray(grey, mode="L"), info)


def _seen_mask(photo_size: tuple[int, int], box: Box) -> np.ndarray:
    width, height = photo_size
    left, top, right, bottom = (round(v) for v in box)
    mask = np.zeros((height, width), dtype=bool)
    mask[max(top, 0) : max(min(bottom, height), 0), max(left, 0) : max(min(right, width), 0)] = True
    return mask


def _png(image: Image.Image, info: PngInfo | None = None) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
