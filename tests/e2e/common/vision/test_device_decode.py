"""Decoding JPEGs on the model's device (`VITRINE_DECODE=device`), here on the CPU device: the
same checks before any decode, the same embeddings as the host's path, the same failure reasons."""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.settings import ConfigError, load_settings
from common.vision.backbone import Backbone
from common.vision.batch import embed_prepared, prepare_batch
from common.vision.device_decode import decode_batch
from tests.conftest import FLIPKART
from tests.helpers import jpeg_bytes, png_bytes, real_jpeg, truncated_jpeg

EXIF_ORIENTATION = 0x0112


def _both_ways(backbone: Backbone, photos: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    settings = load_settings()
    host = embed_prepared(backbone, prepare_batch(backbone, photos, bytes, settings))
    on_device = backbone.with_decode("device")
    device = embed_prepared(on_device, prepare_batch(on_device, photos, bytes, settings))
    return host, device


@pytest.mark.parametrize("crop", ["full", "center"])
def test_device_decoding_embeds_real_photos_as_the_host_path_does(lite0: Backbone, crop: str) -> None:
    # Every 20th Flipkart photo: all seven categories, wide, tall and square photos.
    paths = sorted((FLIPKART / "images").glob("*.jpg"))[::20]
    backbone = lite0 if crop == lite0.crop else Backbone.load(lite0.name, _lite0_weights(), "cpu", crop=crop)
    host, device = _both_ways(backbone, [p.read_bytes() for p in paths])
    cosine = (host * device).sum(axis=1)
    # Same model, same transform; only resampling arithmetic differs (measured: mean 0.9996, min 0.998).
    assert len(cosine) == len(paths) >= 50
    assert cosine.mean() > 0.999 and cosine.min() > 0.99, (cosine.mean(), cosine.min())


def _lite0_weights() -> Path:
    from tests.conftest import LITE0_WEIGHTS

    return LITE0_WEIGHTS


def test_the_safe_decoding_checks_come_before_any_device_decode(lite0: Backbone) -> None:
    backbone = lite0.with_decode("device")
    photo = real_jpeg(4)
    width, height = Image.open(BytesIO(photo)).size
    cases = {
        "pixels": load_settings().replace(max_image_pixels=width * height - 1),
        "side": load_settings().replace(max_image_side=max(width, height) - 1),
        "format": load_settings().replace(allowed_image_formats=["PNG"]),
    }
    reasons = {
        name: prepare_batch(backbone, [photo], bytes, settings)[0].error for name, settings in cases.items()
    }
    assert {name: error.reason if error else None for name, error in reasons.items()} == {
        "pixels": "decompression_bomb",
        "side": "image_too_large",
        "format": "unsupported_format",
    }


def test_what_the_device_does_not_decode_goes_the_hosts_way_with_true_reasons(lite0: Backbone) -> None:
    backbone = lite0.with_decode("device")
    upright = Image.open(BytesIO(real_jpeg(3))).convert("RGB")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # the pixels stored sideways, "rotate 90° clockwise to view"
    photos = {
        "jpeg": real_jpeg(2),
        "sideways": jpeg_bytes(upright.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()),
        "cmyk": jpeg_bytes(upright.convert("CMYK")),
        "grey": jpeg_bytes(upright.convert("L")),
        "png": png_bytes(upright),
        "truncated": truncated_jpeg(),
        "html": b"<html>" * 100,
    }
    prepared = prepare_batch(backbone, list(photos.values()), bytes, load_settings())
    outcome = {name: (p.error.reason if p.error else "ok") for name, p in zip(photos, prepared, strict=True)}
    assert outcome == {
        "jpeg": "ok",
        "sideways": "ok",
        "cmyk": "ok",
        "grey": "ok",
        "png": "ok",
        "truncated": "corrupt_image",
        "html": "not_an_image",
    }
    for name, item in zip(photos, prepared, strict=True):
        assert item.encoded is None, name  # nothing left waiting for a decoder
        if item.error is None:
            assert item.sha256 == hashlib.sha256(photos[name]).hexdigest(), name
    # The sideways photo was turned upright on the device: it embeds as the upright one does.
    vectors = backbone.forward([prepared[1].tensor, backbone.with_decode("pillow").prepare(upright)])
    assert float(vectors[0] @ vectors[1]) > 0.98


def test_a_batch_the_device_refuses_is_decoded_photo_by_photo() -> None:
    refused: dict[int, BaseException] = {}
    garbage = b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9"
    photos = [real_jpeg(0), garbage, real_jpeg(1)]
    decoded = decode_batch(photos, torch.device("cpu"), refused.__setitem__)
    assert decoded[1] is None and list(refused) == [1]
    for index in (0, 2):
        image = decoded[index]
        assert image is not None and image.dtype == torch.uint8 and image.shape[0] == 3
        assert image.shape[1:] == Image.open(BytesIO(photos[index])).size[::-1]


def test_an_unknown_decode_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="VITRINE_DECODE"):
        Backbone.load("test_efficientnet", allow_random=True, decode="gpu")
