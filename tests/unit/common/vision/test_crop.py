"""VITRINE_CROP: timm's centre crop, or the whole photo padded to a square with its background."""

from __future__ import annotations

import numpy as np
import pytest

from common.settings import ConfigError, load_settings
from common.vision.transforms import pad_to_square
from tests.helpers import wide_product


def test_padding_makes_a_square_of_the_background_colour() -> None:
    padded = np.asarray(pad_to_square(wide_product()))
    assert padded.shape == (300, 300, 3)
    assert (padded[:50] == 230).all() and (padded[-50:] == 230).all()  # the added bands
    assert (padded[140:160, 10:40] == (255, 0, 0)).all()  # the product itself untouched


def test_crop_setting_is_validated() -> None:
    assert load_settings(crop="center").backbone.crop == "center"
    with pytest.raises(ConfigError, match="VITRINE_CROP"):
        load_settings(crop="square")
