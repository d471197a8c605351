"""Peak memory of one embed batch of the largest allowed photos: decoded at the model's size vs in full.

Each variant runs in a fresh process (so its peak RSS is its own): the backbone is loaded, then one
batch of `--batch` photos goes through `common.vision.backbone.prepare_batch` and one forward pass, exactly as
the embed worker does it. The photos are a real product photo scaled up to the default pixel limit
(VITRINE_MAX_IMAGE_PIXELS) and saved as JPEG within the byte limit.

Usage: python -m vitrine.bench.decode_memory --photo PHOTO.jpg [--batch 32] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from queue import Queue
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def largest_allowed_jpeg(photo: Path) -> bytes:
    from PIL import Image

    from common.settings import load_settings

    settings = load_settings()
    side = math.isqrt(settings.photos.max_image_pixels)
    image = Image.open(photo).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    for quality in (90, 80, 70, 60):
        buffer = BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= settings.photos.max_image_bytes:
            return buffer.getvalue()
    raise SystemExit("could not fit the photo within VITRINE_MAX_IMAGE_BYTES")


def measure(data: bytes, batch: int, model: str, reduced: bool, results: Queue[dict[str, Any]]) -> None:
    from common.photos.decode import decode_image
    from common.settings import load_settings
    from common.vision.backbone import Backbone
    from common.vision.batch import embed_prepared, prepare_batch

    settings = load_settings()
    backbone = Backbone.load(model, None, "cpu", allow_random=True)
    # Warm up the model on one photo (decoded at the model's size), then take the baseline.
    embed_prepared(backbone, prepare_batch(backbone, [data], lambda d: d, settings))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    started = time.perf_counter()
    with ThreadPoolExecutor(settings.embed.decode_threads) as pool:
        if reduced:
            # The worker's path: `prepare_batch` decodes at the model's size.
            embed_prepared(backbone, prepare_batch(backbone, [data] * batch, lambda d: d, settings, pool))
        else:
            # What it replaced: every photo of the batch decoded in full, then prepared.
            images = list(pool.map(lambda d: decode_image(d, settings).image, [data] * batch))
            backbone.embed_images(images)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results.put(
        {
            "decode": f"reduced to the model's size (min side {backbone.min_side})"
            if reduced
            else "full size",
            "batch": batch,
            "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak / 1024),
            "batch_rss_mib": round((peak - baseline) / 1024),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default="efficientnet_lite0")
    args = parser.parse_args()
    data = largest_allowed_jpeg(args.photo)
    print(f"photo: {len(data) / 1e6:.1f} MB JPEG at the pixel limit; batch {args.batch}; model {args.model}")
    context = multiprocessing.get_context("spawn")
    rows = []
    for reduced in (True, False):
        results = context.Queue()
        process = context.Process(target=measure, args=(data, args.batch, args.model, reduced, results))
        process.start()
        process.join()
        rows.append(results.get(timeout=10))
        print(json.dumps(rows[-1]))
    print(f"peak RSS full / reduced: {rows[1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}")


if __name__ == "__main__":
    main()
