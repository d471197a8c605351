"""VITRINE_CROP: timm's centre crop, or the whole photo padded to a square with its background."""

from __future__ import annotations

from common.vision.backbone import Backbone
from tests.conftest import LITE0_WEIGHTS
from tests.helpers import wide_product


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
