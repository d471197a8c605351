"""Host (Pillow) against device (torchvision `decode_jpeg`) decoding, side by side in one run.

For each way, the same photos go through `common.vision.backbone.prepare_batch` batch after batch (fetch is
a read of bytes already in memory), then one forward pass per batch: photos prepared per second,
whole images per second, and the cosine between the two ways' embeddings of each photo.

    python -m vitrine.bench.device_decode --photos ../shared/data/flipkart/images \
        --model efficientnet_lite0 --weights ../shared/weights/efficientnet_lite0.safetensors \
        [--device cuda] [--n 256] [--batch 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from common.settings import load_settings
from common.vision.backbone import Backbone, set_torch_threads
from common.vision.batch import embed_prepared, prepare_batch


def measure(backbone: Backbone, photos: list[bytes], batch: int) -> tuple[float, float, np.ndarray]:
    """Seconds preparing, seconds in all, and the vectors."""
    settings = load_settings()
    prepare = total = 0.0
    chunks = []
    with ThreadPoolExecutor(settings.embed.decode_threads) as pool:
        for start in range(0, len(photos), batch):
            began = time.perf_counter()
            prepared = prepare_batch(backbone, photos[start : start + batch], bytes, settings, pool)
            if backbone.device.type == "cuda":
                torch.cuda.synchronize(backbone.device)
            ready = time.perf_counter()
            chunks.append(embed_prepared(backbone, prepared))  # back on the host: synchronised
            prepare += ready - began
            total += time.perf_counter() - began
    return prepare, total, np.concatenate(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    threads = set_torch_threads(load_settings().backbone.torch_threads)
    paths = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    photos = [paths[i % len(paths)].read_bytes() for i in range(args.n)]
    host = Backbone.load(args.model, args.weights, args.device, allow_random=args.weights is None)
    device = host.with_decode("device")
    measure(host, photos[: args.batch], args.batch)  # warm-up of both ways
    measure(device, photos[: args.batch], args.batch)
    rounds: dict[str, list[tuple[float, float]]] = {"pillow": [], "device": []}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):  # interleaved: a change of load affects both alike
        for name, backbone in (("pillow", host), ("device", device)):
            prepare, total, vectors[name] = measure(backbone, photos, args.batch)
            rounds[name].append((prepare, total))
    cosine = (vectors["pillow"] * vectors["device"]).sum(axis=1)
    result: dict[str, object] = {
        "model": args.model,
        "device": str(host.device),
        "n": args.n,
        "batch": args.batch,
        "torch_threads": threads,
    }
    prepare_ips = {}
    for name, measured in rounds.items():
        prepare_ips[name] = args.n / float(np.mean([p for p, _ in measured]))
        result[f"{name}_prepare_ips"] = round(prepare_ips[name], 1)
        result[f"{name}_total_ips"] = round(args.n / float(np.mean([t for _, t in measured])), 1)
    result["ratio_prepare_device_pillow"] = round(prepare_ips["device"] / prepare_ips["pillow"], 3)
    result["cosine_mean"] = round(float(cosine.mean()), 5)
    result["cosine_min"] = round(float(cosine.min()), 5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
