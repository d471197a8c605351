"""The image backbone: any timm model without its classifier, weights from the hub cache or a file."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError

from common.settings import DEFAULT_CROP, ConfigError, Settings
from common.vision.device_decode import (
    TensorTransform,
    UnsupportedOnDevice,
)
from common.vision.transforms import PhotoTransform, TimmModel

log = logging.getLogger(__name__)


PRECISIONS = ("fp32", "int8", "bf16")


# Precisions whose embeddings differ enough from fp32 that they never share a clustering with it:
# int8, and bf16 on a CPU (where fp32 made every embedding so far). bf16 on CUDA keeps the plain
# id: every embedding made on CUDA so far was made with its autocast.
SEPARATE_ID_PRECISIONS = ("int8",)
# oneDNN's ISA levels (ONEDNN_MAX_CPU_ISA caps the one it uses), lowest first, from the first
# that computes bf16 in hardware: AVX-512 BF16 (Cooper Lake, Zen 4 and later), then AMX tiles
# (Sapphire Rapids and later). Older names are oneDNN's aliases of the same levels.
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16")
ONEDNN_AMX_ISAS = ("AVX10_1_512_AMX", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16")
ONEDNN_ALL_ISAS = ("", "ALL", "DEFAULT", "AVX10_2_512", "AVX10_2_512_AMX_2")


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (Linux; elsewhere, none known)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def native_bf16() -> str | None:
    """How this CPU computes bf16 in hardware: "amx", "avx512_bf16", or None (only emulated).

    Read from the CPU's flags (`amx_bf16`, `avx512_bf16` in /proc/cpuinfo), never assumed from
    the vendor; and capped by ONEDNN_MAX_CPU_ISA when set, since oneDNN (torch's CPU convolutions
    and matrix products) then uses no instruction above that level.
    """
    flags = _cpu_flags()
    found = "amx" if {"amx_bf16", "amx_tile"} <= flags else "avx512_bf16" if "avx512_bf16" in flags else None
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if found is None or cap in ONEDNN_ALL_ISAS or cap in ONEDNN_AMX_ISAS:
        return found
    return "avx512_bf16" if cap in ONEDNN_BF16_ISAS else None


class WeightsUnavailable(ConfigError):
    """Neither the hub (or its cache) nor VITRINE_WEIGHTS provided pretrained weights."""


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"VITRINE_DEVICE: {requested!r} requested but CUDA is not available")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision a backbone runs at on `device`; a combination that cannot run is refused.

    "auto": bf16 on CUDA; on a CPU, fp32, unless AUTO_BF16_ON_CPU and the CPU computes bf16 in
    hardware (`native_bf16`). bf16 on a CPU without it is refused: it would only be emulated.
    """
    if requested == "auto":
        if device.type == "cuda":
            return "bf16"
        return "bf16" if AUTO_BF16_ON_CPU and native_bf16() is not None else "fp32"
    if requested == "int8" and device.type != "cpu":
        raise ConfigError(
            f"VITRINE_PRECISION: int8 (dynamic quantisation) runs on CPU only, not on {device}; "
            "use bf16 or fp32"
        )
    if requested == "bf16" and device.type == "cpu" and native_bf16() is None:
        raise ConfigError(
            "VITRINE_PRECISION: bf16 needs a CPU that computes it in hardware (AVX-512 BF16 or AMX); "
            "this one would only emulate it, slower than fp32: use fp32 or int8"
        )
    if requested == "bf16" and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"VITRINE_PRECISION: bf16 runs on CUDA or a CPU, not {device}")
    if requested not in PRECISIONS:
        raise ConfigError(f"VITRINE_PRECISION: {requested!r} is not one of {', '.join(PRECISIONS)}")
    return requested


def check_device(settings: Settings) -> tuple[torch.device, str]:
    """Device and precision a worker will use, checked when it starts (before any model loads)."""
    device = resolve_device(settings.backbone.device)
    return device, resolve_precision(settings.backbone.precision, device)


def set_torch_threads(threads: int | None) -> int:
    """torch's intra-op threads: the setting, or the CPUs this process may run on.

    torch's own default counts the host's cores, which oversubscribes a container limited to a
    few of them; a worker process should use every core it has and no more.
    """
    count = threads or len(os.sched_getaffinity(0))
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def quantize_int8(model: TimmModel) -> TimmModel:
    """Linear layers to int8 weights with activations quantised on the fly (CPU).

    In timm's ConvNeXt the pointwise convolutions are `nn.Linear` and carry most of the FLOPs.
    torch.ao's eager dynamic quantisation is deprecated in favour of torchao, but torchao's
    equivalent is slower on CPU without torch.compile (docs/performance.md); the warning is
    silenced here because the choice is made on those figures.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


# Whether "auto" picks bf16 on a CPU that computes it. Not yet: on the Flipkart photos with the
# pretrained efficientnet_lite0, bf16 (autocast, the best variant) missed the quality bounds of
# docs/performance.md ("bf16 on a CPU": a photo's cosine to fp32 down to 0.989, under 0.99), so
# bf16 on a CPU is there when asked for, and "auto" stays fp32.
AUTO_BF16_ON_CPU = False


def _weights_digest(model: torch.nn.Module, classifier: str | None) -> str:
    """sha256 over the backbone's tensors (classifier excluded), so the id names the weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if classifier and name.startswith(classifier + "."):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def create_model(
    name: str,
    weights: Path | None,
    *,
    with_classifier: bool = False,
    allow_random: bool = False,
) -> tuple[TimmModel, bool]:
    """A timm model in eval mode and whether it is pretrained.

    Pretrained weights or a clear error; random weights only when the caller allows them.
    """
    if not timm.list_models(name.split(".")[0]) and not timm.is_model(name):
        raise ConfigError(f"VITRINE_MODEL: unknown timm model {name!r}")
    kwargs: dict[str, Any] = {} if with_classifier else {"num_classes": 0}
    if allow_random and weights is None:
        # Benchmarks only: speed does not depend on the weights, and no download is attempted.
        log.warning("using RANDOM weights for %s", name)
        return timm.create_model(name, pretrained=False, **kwargs).eval(), False
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as error:
        # Missing file or cache entry, unreachable hub, or tensors that do not fit the model.
        hint = (
            f"VITRINE_WEIGHTS={weights} could not be loaded into {name!r}"
            if weights
            else f"no pretrained weights for {name!r} in the Hugging Face cache and the hub "
            "cannot be reached; set VITRINE_WEIGHTS to a local weights file "
            "(safetensors or a timm checkpoint)"
        )
        raise WeightsUnavailable(f"{hint} ({type(error).__name__}: {error})") from None
    return model.eval(), True


def _device_transform(transform: PhotoTransform, decode: str) -> TensorTransform | None:
    if decode == "pillow":
        return None
    if decode != "device":
        raise ConfigError(f"VITRINE_DECODE: unknown decode {decode!r}; choose pillow or device")
    try:
        return TensorTransform.from_config(transform.data_config, transform.crop)
    except UnsupportedOnDevice as error:
        raise ConfigError(f"VITRINE_DECODE=device: {error}") from None


@dataclass
class Backbone:
    """A loaded model with its own preprocessing; `embed` turns photos into unit vectors."""

    name: str
    model: TimmModel
    device: torch.device
    backbone_id: str
    transform: PhotoTransform
    dim: int
    pretrained: bool = True
    crop: str = DEFAULT_CROP
    precision: str = "fp32"
    # `pillow`: photos decoded and prepared on the host. `device`: JPEGs decoded and prepared on the
    # model's device (`common.vision.device_decode`), after the same checks on the host.
    decode: str = "pillow"
    device_transform: TensorTransform | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(
        cls,
        name: str,
        weights: Path | None = None,
        device: str = "auto",
        *,
        precision: str = "auto",
        allow_random: bool = False,
        with_classifier: bool = False,
        crop: str = DEFAULT_CROP,
        decode: str = "pillow",
    ) -> Backbone:
        torch_device = resolve_device(device)
        precision = resolve_precision(precision, torch_device)
        if with_classifier and precision == "bf16" and torch_device.type == "cpu":
            # With its classifier a backbone is Grad-CAM's, whose gradients stay fp32 on a CPU.
            precision = "fp32"
        model, pretrained = create_model(
            name,
            weights,
            allow_random=allow_random,
            with_classifier=with_classifier,
        )
        classifier = model.pretrained_cfg.get("classifier") if with_classifier else None
        digest = _weights_digest(model, classifier)
        # timm's data config for this model (input size, interpolation, mean and std), with the crop.
        transform = PhotoTransform.for_model(model, crop)
        device_transform = _device_transform(transform, decode)
        dim = int(model.num_features)
        if torch_device.type == "cuda":
            model = model.to(torch_device, memory_format=torch.channels_last)
        if precision == "int8":
            model = quantize_int8(model)
        tag = digest[:16] if pretrained else f"random-{digest[:8]}"
        # The crop and the precision are part of the id: vectors of the same photo under two
        # crops, or at int8 and fp32, never mix in one clustering.
        suffix = "" if crop == "center" else f"/{crop}"
        separate = precision in SEPARATE_ID_PRECISIONS or (precision == "bf16" and torch_device.type == "cpu")
        suffix += f"+{precision}" if separate else ""
        return cls(
            name=name,
            model=model,
            device=torch_device,
            backbone_id=f"{name}@{tag}{suffix}",
            transform=transform,
            dim=dim,
            pretrained=pretrained,
            crop=crop,
            precision=precision,
            decode=decode,
            device_transform=device_transform,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, allow_random: bool = False, with_classifier: bool = False
    ) -> Backbone:
        set_torch_threads(settings.backbone.torch_threads)
        return cls.load(
            settings.backbone.model,
            settings.backbone.weights,
            settings.backbone.device,
            precision=settings.backbone.precision,
            allow_random=allow_random,
            with_classifier=with_classifier,
            crop=settings.backbone.crop,
            decode=settings.backbone.decode,
        )

    def with_decode(self, decode: str) -> Backbone:
        """The same model with photos decoded another way (`pillow` or `device`)."""
        return replace(self, decode=decode, device_transform=_device_transform(self.transform, decode))

    @property
    def weights_id(self) -> str:
        """The id without its precision: the same weights, whatever precision they run at."""
        return weights_id(self.backbone_id)

    @property
    def min_side(self) -> int:
        """The shorter side the model's transform resizes a photo to: decoding more is waste."""
        return self.transform.min_side

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """timm's eval transform for this model, with the crop: one photo → one input tensor."""
        return self.transform(image)

    def autocast(self) -> Any:
        """bf16 autocast, on CUDA and on a CPU alike: fp32 weights, bf16 products.

        On a CPU it was measured against the whole model in bf16, with and without
        channels_last, with and without torch.compile, and with norms kept in fp32: all as fast
        as each other, autocast the closest to fp32 (docs/performance.md, "bf16 on a CPU").
        """
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return batch.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return batch

    def pooled_features(self, batch: torch.Tensor) -> torch.Tensor:
        """Pre-logits features, whether or not the model still has its classifier."""
        features = self.model.forward_features(batch)
        return self.model.forward_head(features, pre_logits=True)

    def forward(self, tensors: Sequence[torch.Tensor]) -> np.ndarray:
        """One forward pass over prepared photos → L2-normalised float32 vectors."""
        if not tensors:
            return np.zeros((0, self.dim), dtype=np.float32)
        # One forward at a time: a worker's threads prepare photos beside it, never run two.
        with self._lock, torch.inference_mode(), self.autocast():
            # Photos decoded on the device are there already; `to` leaves them where they are.
            batch = torch.stack([t.to(self.device) for t in tensors])
            features = self.pooled_features(self.to_device(batch))
        return F.normalize(features.float(), dim=1).cpu().numpy()

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.forward([self.prepare(image) for image in images])


def weights_id(backbone_id: str) -> str:
    return backbone_id.split("+", 1)[0]
