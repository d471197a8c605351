"""The backbone: timm models without their classifier, unit-length embeddings, honest weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.settings import ConfigError, load_settings
from common.vision.backbone import Backbone, WeightsUnavailable, native_bf16
from tests.conftest import FLIPKART, LITE0_WEIGHTS


def _photos(n: int) -> list[Image.Image]:
    paths = sorted((FLIPKART / "images").glob("*.jpg"))[:n]
    return [Image.open(p).convert("RGB") for p in paths]


def _saved_random_weights(name: str, path: Path) -> Path:
    """A random model's weights in a file, so two loads get the same weights."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(timm.create_model(name, pretrained=False).state_dict(), str(path))
    return path


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


def test_pretrained_weights_from_a_local_file_change_the_backbone_id() -> None:
    pretrained = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS)
    random = Backbone.load("efficientnet_lite0", allow_random=True)
    assert pretrained.pretrained
    assert pretrained.backbone_id != random.backbone_id
    assert pretrained.dim == 1280
    # Same weights, same id: embeddings of the same backbone can be mixed across restarts.
    assert Backbone.load("efficientnet_lite0", LITE0_WEIGHTS).backbone_id == pretrained.backbone_id


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="could not be loaded"):
        Backbone.load("resnet18", LITE0_WEIGHTS)


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
    from common.photos.decode import decode_image
    from common.photos.failures import ImageRejected
    from common.vision.batch import embed_prepared, prepare_batch
    from tests.helpers import real_jpeg

    backbone = Backbone.load("test_efficientnet", allow_random=True)
    settings = load_settings()
    photos = [real_jpeg(0), b"not an image", real_jpeg(1)]

    def fetch(data: bytes) -> bytes:
        if data == b"boom":
            raise KeyError("a bug, not the photo")
        return data

    prepared = prepare_batch(backbone, [*photos, b"boom"], fetch, settings)
    assert [p.error.reason if p.error else None for p in prepared] == [
        None,
        "not_an_image",
        None,
        "internal_error",
    ]
    assert isinstance(prepared[1].error, ImageRejected)
    vectors = embed_prepared(backbone, prepared)
    # Decoded as the worker does: reduced to the model's size first.
    images = [decode_image(p, settings, backbone.min_side).image for p in photos[::2]]
    np.testing.assert_allclose(vectors, backbone.embed_images(images), atol=1e-4)


def test_int8_quantises_the_linear_layers_and_has_its_own_backbone_id(tmp_path: Path) -> None:
    weights = _saved_random_weights("test_vit", tmp_path / "w.safetensors")
    fp32 = Backbone.load("test_vit", weights, "cpu", precision="fp32")
    int8 = Backbone.load("test_vit", weights, "cpu", precision="int8")
    assert fp32.precision == "fp32" and int8.precision == "int8"
    assert int8.backbone_id == fp32.backbone_id + "+int8"
    assert int8.weights_id == fp32.backbone_id == fp32.weights_id
    assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
    assert any(type(m) is torch.nn.Linear for m in fp32.model.modules())
    photos = _photos(4)
    a, b = fp32.embed_images(photos), int8.embed_images(photos)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    # Same weights, approximately the same vectors, never exactly (the id keeps them apart).
    cosines = (a * b).sum(axis=1)
    assert cosines.min() > 0.9
    assert not np.allclose(a, b, atol=1e-6)


def test_fp32_keeps_the_plain_backbone_id() -> None:
    backbone = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu", precision="fp32")
    assert "+" not in backbone.backbone_id
    # "auto" on a CPU is fp32, whatever the CPU computes (AUTO_BF16_ON_CPU, docs/performance.md).
    assert Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu").backbone_id == backbone.backbone_id


def test_bf16_on_a_cpu_runs_where_the_cpu_computes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where this CPU has AVX-512 BF16 or AMX: bf16 autocast under an id of its own, close to fp32
    on real photos, and Grad-CAM's backbone (with its classifier) in fp32. Elsewhere: refused."""
    if native_bf16() is None:
        with pytest.raises(ConfigError, match="VITRINE_PRECISION: bf16 needs a CPU"):
            Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu", precision="bf16")
        return
    fp32 = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu", precision="fp32")
    bf16 = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu", precision="bf16")
    assert bf16.backbone_id == fp32.backbone_id + "+bf16" and bf16.weights_id == fp32.backbone_id
    # Autocast: the weights stay fp32, the products are bf16.
    assert {p.dtype for p in bf16.model.parameters()} == {torch.float32}
    assert bf16.autocast().fast_dtype == torch.bfloat16
    photos = _photos(16)
    a, b = fp32.embed_images(photos), bf16.embed_images(photos)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cosines = (a * b).sum(axis=1)
    assert cosines.min() > 0.98 and not np.allclose(a, b, atol=1e-6)
    explainer = Backbone.load(
        "efficientnet_lite0", LITE0_WEIGHTS, "cpu", precision="bf16", with_classifier=True
    )
    assert explainer.precision == "fp32" and "+" not in explainer.backbone_id
    # The same CPU with oneDNN capped below bf16 computes it no faster than fp32: refused.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    with pytest.raises(ConfigError, match="VITRINE_PRECISION: bf16 needs a CPU"):
        Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu", precision="bf16")
