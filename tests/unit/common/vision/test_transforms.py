"""What the model sees of a photo, and the way back: a mark on the photo is found again where the
inverse geometry says, for both crops, wide and tall photos; overlays land on the product."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from common.vision.gradcam import TARGET_CENTROID, Explanation
from common.vision.overlay import heatmap_on_photo, render_pngs
from common.vision.transforms import PhotoTransform

# timm's default eval config for 224 px ImageNet models (efficientnet, convnext): what
# `resolve_data_config` gives, written out so these tests need no model.
CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def transform(crop: str) -> PhotoTransform:
    config = dict(CONFIG, crop_pct=1.0) if crop == "full" else dict(CONFIG)
    return PhotoTransform.from_config(config, crop)


def marked_photo(size: tuple[int, int], mark: tuple[int, int]) -> Image.Image:
    """A white photo with a 12 px black square centred at `mark` (x, y)."""
    pixels = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
    x, y = mark
    pixels[y - 6 : y + 6, x - 6 : x + 6] = 0
    return Image.fromarray(pixels)


def mark_in_input(tensor: np.ndarray) -> tuple[float, float]:
    """Centre (x, y) of the dark square in the model's normalised input, in input pixels."""
    dark = tensor.mean(axis=0) < -1.0
    ys, xs = np.nonzero(dark)
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("crop", ["full", "center"])
@pytest.mark.parametrize(
    ("size", "mark"),
    [((900, 300), (450, 150)), ((900, 300), (520, 200)), ((300, 900), (150, 480)), ((640, 480), (300, 250))],
)
def test_a_mark_is_found_where_the_inverse_geometry_says(
    crop: str, size: tuple[int, int], mark: tuple[int, int]
) -> None:
    forward = transform(crop)
    x, y = mark_in_input(forward(marked_photo(size, mark)).numpy())
    left, top, right, bottom = forward.input_box(size)
    in_h, in_w = forward.input_size
    back = (left + (x + 0.5) / in_w * (right - left), top + (y + 0.5) / in_h * (bottom - top))
    assert back == pytest.approx(mark, abs=3)


def test_the_full_crop_reaches_beyond_a_wide_photo_and_the_centre_crop_stays_inside() -> None:
    assert transform("full").input_box((300, 100)) == (0.0, -100.0, 300.0, 200.0)
    assert transform("full").input_box((100, 300)) == (-100.0, 0.0, 200.0, 300.0)
    # timm resizes the shorter side to 256 and keeps the centre 224: 87.5 % of it, centred.
    left, top, right, bottom = transform("center").input_box((300, 100))
    assert (top, bottom) == pytest.approx((6.25, 93.75), abs=0.1)
    assert (left, right) == pytest.approx((106.25, 193.75), abs=0.1)


def hot_cell(row: int, column: int, grid: int = 7) -> Explanation:
    heatmap = np.zeros((grid, grid), dtype=np.float32)
    heatmap[row, column] = 1.0
    return Explanation(heatmap=heatmap, target=TARGET_CENTROID, score=1.0)


def test_heat_of_an_edge_product_lands_on_it_in_a_wide_photo() -> None:
    """A product at the left end of a 3:1 photo lies in the padded square's left column, middle row."""
    size = (900, 300)
    heat = heatmap_on_photo(hot_cell(3, 0).heatmap, size, transform("full").input_box(size))
    ys, xs = np.nonzero(heat > 0.5)
    assert xs.max() < 200, "heat drawn away from the left end"
    assert 100 < ys.mean() < 200
    overlay, raw = render_pngs(marked_photo(size, (60, 150)), hot_cell(3, 0), transform("full"))
    grey = np.asarray(Image.open(BytesIO(raw)))
    assert grey.shape == (300, 900) and grey[150, 60] > 128 and grey[150, 450] == 0
    assert Image.open(BytesIO(raw)).text["input_box"] == "0.0000,-1.0000,1.0000,2.0000"
    colour = np.asarray(Image.open(BytesIO(overlay)), dtype=np.int32)
    assert colour.shape == (300, 900, 3)
    assert abs(colour[150, 60] - colour[150, 450]).sum() > 60  # coloured at the product only


def test_a_centre_crop_leaves_what_the_model_never_saw_uncoloured() -> None:
    size = (900, 300)
    photo = marked_photo(size, (450, 150))
    overlay, _ = render_pngs(photo, hot_cell(3, 3), transform("center"))
    pixels = np.asarray(Image.open(BytesIO(overlay)))
    assert (pixels[:, :250] == 255).all() and (pixels[:, -250:] == 255).all()
    assert (pixels[:, 400:500] != 255).any()
