"""The backbone: timm models without their classifier, unit-length embeddings, honest weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.config import ConfigError, load_settings
from common.vision import Backbone, WeightsUnavailable
from tests.conftest import FLIPKART, LITE0_WEIGHTS


def _photos(n: int) -> list[Image.Image]:
    paths = sorted((FLIPKART / "images").glob("*.jpg"))[:n]
    return [Image.open(p).convert("RGB") for p in paths]


def test_small_random_model_gives_unit_vectors_of_its_feature_size() -> None:
    backbone = Backbone.load("test_efficientnet", allow_random=True)
    vectors = backbone.embed_images(_photos(3))
    assert vectors.shape == (3, backbone.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert backbone.backbone_id.startswith("test_efficientnet@random-")
    assert not backbone.pretrained


def test_embedding_a_batch_equals_embedding_one_by_one() -> None:
    backbone = Backbone.load("test_efficientnet", allow_random=True)
    photos = _photos(4)
    batched = backbone.embed_images(photos)
    single = np.concatenate([backbone.embed_images([p]) for p in photos])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_preprocessing_comes_from_the_models_data_config() -> None:
    backbone = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS)
    tensor = backbone.prepare(_photos(1)[0])
    assert tuple(tensor.shape) == (3, 224, 224)
    # timm's ImageNet normalisation: a white pixel maps to (1 - mean) / std, about 2.2-2.6.
    white = backbone.prepare(Image.new("RGB", (300, 300), "white"))
    assert 2.0 < float(white.mean()) < 2.8


def test_convnext_base_architecture_has_1024_d_pooled_features() -> None:
    backbone = Backbone.load("convnext_base", allow_random=True)
    assert backbone.dim == 1024
    assert sum(p.numel() for p in backbone.model.parameters()) > 85_000_000
    with torch.inference_mode():
        out = backbone.model(torch.zeros(1, 3, 224, 224))
    assert tuple(out.shape) == (1, 1024)  # classifier removed: pooled features


def test_pretrained_weights_from_a_local_file_change_the_backbone_id() -> None:
    pretrained = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS)
    random = Backbone.load("efficientnet_lite0", allow_random=True)
    assert pretrained.pretrained
    assert pretrained.backbone_id != random.backbone_id
    assert pretrained.dim == 1280
    # Same weights, same id: embeddings of the same backbone can be mixed across restarts.
    assert Backbone.load("efficientnet_lite0", LITE0_WEIGHTS).backbone_id == pretrained.backbone_id


def test_without_weights_start_up_fails_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="VITRINE_WEIGHTS"):
        Backbone.load("convnext_base.fb_in22k_ft_in1k")


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="could not be loaded"):
        Backbone.load("resnet18", LITE0_WEIGHTS)


def test_unknown_model_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="VITRINE_MODEL"):
        Backbone.load("no_such_model_anywhere")


def test_pretrained_features_separate_categories_better_than_random(flipkart_labels) -> None:  # type: ignore[no-untyped-def]
    """Sanity of the real weights: same-category photos are closer than cross-category ones."""
    watches = [r for r in flipkart_labels if r["category"] == "Watches"][:8]
    furnishing = [r for r in flipkart_labels if r["category"] == "Home Furnishing"][:8]
    rows = watches + furnishing
    photos = [Image.open(FLIPKART / "images" / r["image"]).convert("RGB") for r in rows]
    vectors = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS).embed_images(photos)
    sims = vectors @ vectors.T
    same = np.concatenate([sims[:8, :8][np.triu_indices(8, 1)], sims[8:, 8:][np.triu_indices(8, 1)]])
    cross = sims[:8, 8:].ravel()
    assert same.mean() > cross.mean() + 0.1


def test_prepare_batch_isolates_a_bad_photo_and_keeps_the_order() -> None:
    from common.imaging import ImageRejected, LoadedImage, decode_image
    from common.vision import embed_prepared, prepare_batch
    from tests.helpers import real_jpeg

    backbone = Backbone.load("test_efficientnet", allow_random=True)
    settings = load_settings()
    photos = [real_jpeg(0), b"not an image", real_jpeg(1)]

    def load(data: bytes) -> LoadedImage:
        if data == b"boom":
            raise KeyError("a bug, not the photo")
        return decode_image(data, settings)

    prepared = prepare_batch(backbone, [*photos, b"boom"], load)
    assert [p.error.reason if p.error else None for p in prepared] == [
        None,
        "not_an_image",
        None,
        "internal_error",
    ]
    assert isinstance(prepared[1].error, ImageRejected)
    vectors = embed_prepared(backbone, prepared)
    np.testing.assert_allclose(
        vectors, backbone.embed_images([decode_image(p, settings).image for p in photos[::2]]), atol=1e-4
    )
