"""bf16 on a CPU, the variants side by side: which one the backbone runs (docs/performance.md).

Speed: ConvNeXt-Base with random weights (speed does not depend on them), interleaved rounds of
one batch per variant, images/s. Quality: the pretrained efficientnet_lite0 on Flipkart photos,
and ConvNeXt-Base's random weights, each variant's embedding against fp32's (cosine).

    python benchmarks/bf16_variants.py [--rounds 3] [--batch 16] [--photos 64] [--compile] [--jit]
        [--only VARIANT ...]
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from common.vision.backbone import Backbone, native_bf16, set_torch_threads

ROOT = Path(__file__).resolve().parents[1]
FLIPKART = ROOT.parent / "shared" / "data" / "flipkart"
LITE0 = ROOT.parent / "shared" / "weights" / "efficientnet_lite0.safetensors"
NORMS = (torch.nn.LayerNorm, torch.nn.BatchNorm2d, torch.nn.GroupNorm)


def keep_norms_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """A bf16 model whose normalisation layers compute in fp32 (input cast up, output down)."""
    for module in model.modules():
        if isinstance(module, NORMS) or type(module).__name__.startswith(("LayerNorm", "BatchNormAct")):
            module.float()
            module.register_forward_pre_hook(lambda _m, args: tuple(a.float() for a in args))
            module.register_forward_hook(lambda _m, _a, out: out.to(torch.bfloat16))
    return model


def variants(
    model: torch.nn.Module, compile_too: bool, jit_too: bool = False
) -> dict[str, tuple[torch.nn.Module, Any, Any]]:
    """name -> (model, autocast context factory, input memory format and dtype)."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    made: dict[str, tuple[torch.nn.Module, Any, Any]] = {
        "fp32": (model, nullcontext, (torch.contiguous_format, torch.float32)),
        "autocast": (
            model,
            lambda: torch.autocast("cpu", torch.bfloat16),
            (torch.contiguous_format, torch.float32),
        ),
        "autocast+cl": (
            copy.deepcopy(model).to(memory_format=torch.channels_last),
            lambda: torch.autocast("cpu", torch.bfloat16),
            (torch.channels_last, torch.float32),
        ),
        "bf16 model": (bf16, nullcontext, (torch.contiguous_format, torch.bfloat16)),
        "bf16 model+cl": (
            copy.deepcopy(bf16).to(memory_format=torch.channels_last),
            nullcontext,
            (torch.channels_last, torch.bfloat16),
        ),
        "bf16 model, fp32 norms": (
            keep_norms_fp32(copy.deepcopy(model).to(torch.bfloat16)),
            nullcontext,
            (torch.contiguous_format, torch.bfloat16),
        ),
    }
    if jit_too:
        example = torch.zeros(2, 3, 224, 224, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            traced = torch.jit.trace(copy.deepcopy(bf16).to(memory_format=torch.channels_last), example)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        made["bf16 model+cl, jit frozen"] = (frozen, nullcontext, (torch.channels_last, torch.bfloat16))
    if compile_too:
        made["fp32, compiled"] = (
            torch.compile(copy.deepcopy(model)),
            nullcontext,
            (torch.contiguous_format, torch.float32),
        )
        made["bf16 model+cl, compiled"] = (
            torch.compile(copy.deepcopy(bf16).to(memory_format=torch.channels_last)),
            nullcontext,
            (torch.channels_last, torch.bfloat16),
        )
    return made


def embed(entry: tuple[torch.nn.Module, Any, Any], batch: torch.Tensor) -> torch.Tensor:
    model, autocast, (memory_format, dtype) = entry
    with torch.inference_mode(), autocast():
        x = batch.to(dtype=dtype, memory_format=memory_format)
        # Without a classifier a timm model's forward is its pooled features (what we embed).
        features = model(x)
    return F.normalize(features.float(), dim=1)


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def photos(n: int, backbone: Backbone) -> torch.Tensor:
    with open(FLIPKART / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))[:n]
    return torch.stack(
        [backbone.prepare(Image.open(FLIPKART / "images" / r["image"]).convert("RGB")) for r in rows]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--only", nargs="*", help="Variants to time (fp32 always).")
    args = parser.parse_args()
    threads = set_torch_threads(None)
    report: dict[str, Any] = {"cpu_bf16": native_bf16(), "threads": threads, "batch": args.batch}

    lite0 = Backbone.load("efficientnet_lite0", LITE0, "cpu", precision="fp32")
    inputs = photos(args.photos, lite0)
    found = variants(lite0.model, compile_too=False)
    reference = embed(found["fp32"], inputs)
    report["lite0_cosine"] = {
        name: {"mean": round(float(c.mean()), 5), "min": round(float(c.min()), 5)}
        for name, entry in found.items()
        if name != "fp32"
        for c in [(embed(entry, inputs) * reference).sum(dim=1)]
    }

    convnext = Backbone.load("convnext_base", None, "cpu", precision="fp32", allow_random=True)
    found = variants(convnext.model, args.compile, args.jit)
    batch = inputs[: args.batch]
    if batch.shape[-1] != 224:
        batch = F.interpolate(batch, size=(224, 224), mode="bilinear")
    reference = embed(found["fp32"], batch)
    report["convnext_cosine_min"] = {
        name: round(float((embed(entry, batch) * reference).sum(dim=1).min()), 6)
        for name, entry in found.items()
        if name != "fp32"
    }  # also the warm-up (and the compilation) of every variant
    if args.only:
        found = {name: entry for name, entry in found.items() if name == "fp32" or name in args.only}
    speeds: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(args.rounds):
        for name, entry in found.items():
            speeds[name].append(round(args.batch / timed(lambda e=entry: embed(e, batch)), 3))
    report["images_per_s"] = speeds
    report["ratio_to_fp32"] = {
        name: [round(s / f, 2) for s, f in zip(values, speeds["fp32"], strict=True)]
        for name, values in speeds.items()
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
