"""The group threshold on real photos: a photo listed again (re-encoded, resized) is a look-alike,
another product of the same category is not."""

from __future__ import annotations

import csv
import io

import numpy as np
from PIL import Image

from common.moderation.groups import SIMILARITY, members_of
from common.vision.backbone import Backbone
from tests.conftest import FLIPKART


def _relisted(photo: Image.Image) -> Image.Image:
    """What a second listing of the same product often carries: the photo smaller, saved again."""
    smaller = photo.convert("RGB").resize((photo.width * 4 // 5, photo.height * 4 // 5))
    out = io.BytesIO()
    smaller.save(out, format="JPEG", quality=60)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def test_a_relisted_photo_groups_and_another_product_does_not(lite0: Backbone) -> None:
    with open(FLIPKART / "labels.csv", newline="") as handle:
        watches = [r["image"] for r in csv.DictReader(handle) if r["category"] == "Watches"][:12]
    photos = [Image.open(FLIPKART / "images" / name).convert("RGB") for name in watches]
    lead, others = photos[0], photos[1:]
    vectors = lite0.embed_images([lead, _relisted(lead), *others])
    chosen = members_of(vectors[0], vectors[1:])
    # Only the re-listing: eleven other watches, however alike, are other products.
    assert list(chosen) == [0], (chosen, vectors[1:] @ vectors[0])
    assert float(vectors[1] @ vectors[0]) >= SIMILARITY
    assert float(np.max(vectors[2:] @ vectors[0])) < SIMILARITY
