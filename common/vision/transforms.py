"""What the model sees of a photo: timm's eval transform with the configured crop, and its inverse.

The forward direction turns a photo into the model's input tensor; the inverse says where that
input square lies on the photo, so whatever is drawn on the model's grid (a Grad-CAM heatmap)
lands on the pixels it came from. Both are read from the same timm data config, here only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform, resolve_data_config

from common.settings import ConfigError

# A timm model: an nn.Module with timm's own API, which torch's type stubs do not describe.
TimmModel = Any
CROPS = ("center", "full")
# (left, top, right, bottom) in the photo's pixels; may reach beyond the photo (padding).
Box = tuple[float, float, float, float]


def crop_data_config(model: TimmModel, crop: str) -> dict[str, Any]:
    """timm's data config for this model (input size, interpolation, crop, mean and std).

    `center`: exactly timm's, which resizes the shorter side and cuts the centre square.
    `full`: the photo is padded to a square first (`pad_to_square`), then resized whole
    (crop_pct 1.0), so nothing of a wide or tall product is cut; every other constant is timm's.
    """
    if crop not in CROPS:
        raise ConfigError(f"VITRINE_CROP: unknown crop {crop!r}; choose center or full")
    config = resolve_data_config({}, model=model)
    if crop == "full":
        config["crop_pct"] = 1.0
    return config


def padding_colour(rgb: np.ndarray) -> tuple[int, ...]:
    """The photo's background colour: the median of its border pixels."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return tuple(int(c) for c in np.median(border, axis=0))


def pad_to_square(image: Image.Image) -> Image.Image:
    """The photo centred on a square of its own background colour.

    Product photos mostly sit on a plain background; padding with it adds no edge the model
    could mistake for part of the product.
    """
    width, height = image.size
    if width == height:
        return image
    rgb = image.convert("RGB")
    side = max(width, height)
    return ImageOps.pad(rgb, (side, side), color=padding_colour(np.asarray(rgb)), centering=(0.5, 0.5))


@dataclass(frozen=True)
class PhotoTransform:
    """timm's eval transform for one model and crop, and where its input lies on a photo."""

    data_config: dict[str, Any]
    crop: str
    timm_transform: Any

    @classmethod
    def for_model(cls, model: TimmModel, crop: str) -> PhotoTransform:
        return cls.from_config(crop_data_config(model, crop), crop)

    @classmethod
    def from_config(cls, data_config: dict[str, Any], crop: str) -> PhotoTransform:
        """From a resolved timm data config (with `crop_pct` 1.0 already for the `full` crop)."""
        return cls(data_config, crop, create_transform(**data_config, is_training=False))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One photo → the model's input tensor."""
        if self.crop == "full":
            image = pad_to_square(image)
        return self.timm_transform(image)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        _, height, width = self.data_config["input_size"]
        return int(height), int(width)

    @property
    def min_side(self) -> int:
        """The shorter side the transform resizes a photo to: decoding more is waste."""
        crop_pct = float(self.data_config.get("crop_pct") or 1.0)
        return math.ceil(max(self.input_size) / crop_pct)

    def input_box(self, photo_size: tuple[int, int]) -> Box:
        """Where the model's input lies on a photo of `photo_size` (width, height), in its pixels.

        `full`: the padded square, centred on the photo, so it reaches beyond a wide photo's top
        and bottom (or a tall one's sides). `center`: timm's centre crop of the photo. Either
        way the model's grid spans this box evenly.
        """
        width, height = photo_size
        if self.crop == "full":
            # The photo is padded to a square of its longer side, centred.
            side = max(width, height)
            left, top, seen_w, seen_h = (width - side) / 2, (height - side) / 2, float(side), float(side)
        else:
            left, top, seen_w, seen_h = 0.0, 0.0, float(width), float(height)
        box_w, box_h = self._crop_of(seen_w, seen_h)
        left += (seen_w - box_w) / 2
        top += (seen_h - box_h) / 2
        return left, top, left + box_w, top + box_h

    def _crop_of(self, width: float, height: float) -> tuple[float, float]:
        """The part of a (width × height) image timm's eval transform keeps, in that image's pixels."""
        in_h, in_w = self.input_size
        crop_pct = float(self.data_config.get("crop_pct") or 1.0)
        mode = self.data_config.get("crop_mode") or "center"
        if mode == "squash":
            # Both sides resized to input / crop_pct, then the centre input-sized part kept.
            return width * crop_pct, height * crop_pct
        if mode != "center":
            raise ValueError(f"timm crop mode {mode!r} has no inverse here")
        # The shorter side resized to floor(input / crop_pct), then an input-sized centre crop.
        scale = math.floor(min(in_h, in_w) / crop_pct) / min(width, height)
        return min(width, in_w / scale), min(height, in_h / scale)
