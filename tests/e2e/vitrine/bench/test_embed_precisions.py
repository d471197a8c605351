"""`vitrine bench embed`'s comparison of precisions: interleaved rounds and each photo's cosine,
on the pretrained efficientnet_lite0 and real photos (bf16 where this CPU computes it)."""

from __future__ import annotations

from common.settings import Settings
from common.vision.backbone import Backbone, native_bf16
from tests.conftest import FLIPKART, LITE0_WEIGHTS
from vitrine.bench.embed import compare_precisions, cosine_to_reference, folder_photos


def test_precisions_are_measured_round_by_round_and_compared_photo_by_photo(settings: Settings) -> None:
    photos = folder_photos(FLIPKART / "images", 6)
    fp32 = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu", precision="fp32")
    other = "bf16" if native_bf16() else "int8"
    lower = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu", precision=other)
    rounds = compare_precisions({other: lower, "fp32": fp32}, photos, settings, batch_size=3, rounds=2)
    assert set(rounds) == {other, "fp32"}
    assert all(len(values) == 2 and min(values) > 0 for values in rounds.values())
    cosines = cosine_to_reference(lower, fp32, photos, settings, batch_size=4)
    assert cosines.shape == (6,)
    # The same weights: close, and (for bf16) not identical; a photo against itself is exactly 1.
    assert cosines.min() > 0.98
    assert cosine_to_reference(fp32, fp32, photos, settings, batch_size=4).min() > 0.99999
    if other == "bf16":
        assert cosines.max() < 0.999999
