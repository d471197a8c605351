"""The backbone: timm models without their classifier, unit-length embeddings, honest weights."""

from __future__ import annotations

import pytest
import torch

from common.settings import ConfigError
from common.vision.backbone import Backbone, WeightsUnavailable


def test_convnext_base_architecture_has_1024_d_pooled_features() -> None:
    backbone = Backbone.load("convnext_base", allow_random=True)
    assert backbone.dim == 1024
    assert sum(p.numel() for p in backbone.model.parameters()) > 85_000_000
    with torch.inference_mode():
        out = backbone.model(torch.zeros(1, 3, 224, 224))
    assert tuple(out.shape) == (1, 1024)  # classifier removed: pooled features


def test_without_weights_start_up_fails_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="VITRINE_WEIGHTS"):
        Backbone.load("convnext_base.fb_in22k_ft_in1k")


def test_unknown_model_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="VITRINE_MODEL"):
        Backbone.load("no_such_model_anywhere")


@pytest.mark.parametrize(
    ("device", "requested", "expected"),
    [("cpu", "auto", "fp32"), ("cuda", "auto", "bf16"), ("cpu", "int8", "int8"), ("cuda", "fp32", "fp32")],
)
def test_auto_precision_follows_the_device(device: str, requested: str, expected: str) -> None:
    from common.vision.backbone import resolve_precision

    assert resolve_precision(requested, torch.device(device)) == expected


@pytest.mark.parametrize(("device", "requested"), [("cuda", "int8"), ("cpu", "bf16")])
def test_a_precision_the_device_cannot_run_is_refused(device: str, requested: str) -> None:
    from common.vision.backbone import resolve_precision

    with pytest.raises(ConfigError, match="VITRINE_PRECISION"):
        resolve_precision(requested, torch.device(device))


def test_torch_threads_come_from_the_setting_or_the_usable_cpus() -> None:
    import os

    from common.vision.backbone import set_torch_threads

    before = torch.get_num_threads()
    try:
        assert set_torch_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_torch_threads(None) == len(os.sched_getaffinity(0)) == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
