"""VITRINE_CROP: timm's centre crop, or the whole photo padded to a square with its background."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.settings import ConfigError, load_settings
from common.vision.backbone import Backbone
from common.vision.transforms import pad_to_square
from tests.conftest import LITE0_WEIGHTS


def wide_product() -> Image.Image:
    """A wide photo on a light grey background, with red marks at its far left and right ends."""
    image = np.full((100, 300, 3), 230, dtype=np.uint8)
    image[40:60, 10:40] = (255, 0, 0)
    image[40:60, 260:290] = (255, 0, 0)
    return Image.fromarray(image)


def test_padding_makes_a_square_of_the_background_colour() -> None:
    padded = np.asarray(pad_to_square(wide_product()))
    assert padded.shape == (300, 300, 3)
    assert (padded[:50] == 230).all() and (padded[-50:] == 230).all()  # the added bands
    assert (padded[140:160, 10:40] == (255, 0, 0)).all()  # the product itself untouched


def test_full_keeps_what_the_centre_crop_cuts_and_has_its_own_backbone_id() -> None:
    center = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu", crop="center")
    full = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu", crop="full")
    size = center.prepare(wide_product()).shape
    assert full.prepare(wide_product()).shape == size  # same input size, from timm's config

    def red_columns(backbone: Backbone) -> int:
        tensor = backbone.prepare(wide_product()).numpy()
        # Red after normalisation: high in the red channel, low in green.
        return int(((tensor[0] > 1.5) & (tensor[1] < -1.0)).any(axis=0).sum())

    assert red_columns(center) == 0  # both marks lie outside the centre square
    assert red_columns(full) > 10
    assert full.backbone_id == center.backbone_id + "/full"
    assert full.min_side <= center.min_side


def test_crop_setting_is_validated() -> None:
    assert load_settings(crop="center").backbone.crop == "center"
    with pytest.raises(ConfigError, match="VITRINE_CROP"):
        load_settings(crop="square")
