"""Grad-CAM cost against a plain forward pass, side by side on the same photos and batch size."""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.vision.backbone import Backbone
from common.vision.gradcam import gradcam_tensors


def best_of(repeats: int, run: Callable[[], object]) -> float:
    run()  # warm-up: allocator, kernels, lazy initialisation
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(backbone: Backbone, batch: torch.Tensor, repeats: int) -> tuple[float, float]:
    centroid = np.zeros(backbone.dim, dtype=np.float32)
    centroid[0] = 1.0
    forward = best_of(repeats, lambda: backbone.forward(list(batch)))
    explain = best_of(repeats, lambda: gradcam_tensors(backbone, batch, [centroid] * len(batch)))
    return forward / len(batch), explain / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=Path, required=True, help="Folder with labels.csv and images/.")
    parser.add_argument("--lite0-weights", type=Path, required=True, help="efficientnet_lite0 weights file.")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    with open(args.photos / "labels.csv", newline="") as handle:
        names = sorted(row["image"] for row in csv.DictReader(handle))[: args.batch]
    images = [Image.open(args.photos / "images" / name).convert("RGB") for name in names]
    models = [
        Backbone.load("efficientnet_lite0", args.lite0_weights, args.device, with_classifier=True),
        Backbone.load("convnext_base", None, args.device, allow_random=True),
    ]
    print(f"{len(images)} photos, batch {args.batch}, torch threads {torch.get_num_threads()}")
    print(f"{'model':<22} {'device':<6} {'forward s/img':>14} {'grad-cam s/img':>15} {'ratio':>6}")
    for backbone in models:
        batch = torch.stack([backbone.prepare(image) for image in images])
        forward, explain = measure(backbone, batch, args.repeats)
        print(
            f"{backbone.name:<22} {backbone.device.type:<6} {forward:>14.4f} {explain:>15.4f}"
            f" {explain / forward:>6.2f}"
        )


if __name__ == "__main__":
    main()
