"""In-process embedding images/s at 1 thread and at N torch intra-op threads, interleaved.

The embed worker sets torch's intra-op threads from VITRINE_TORCH_THREADS or the CPUs it may
use; this measures what that buys, on the worker's own path (decode threads, prepare, forward).

    python -m vitrine.bench.torch_threads --photos DIR [--model convnext_base] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from common.settings import load_settings
from common.vision.backbone import Backbone, set_torch_threads
from vitrine.bench.embed import folder_photos, inprocess_ips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=Path, required=True, help="Folder of photos.")
    parser.add_argument("--model", default="convnext_base")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    settings = load_settings()
    photos = folder_photos(args.photos, args.n)
    backbone = Backbone.load(args.model, None, "cpu", precision=args.precision, allow_random=True)
    most = len(os.sched_getaffinity(0))
    figures: dict[int, list[float]] = {1: [], most: []}
    # Interleaved rounds: a change in the machine's load meanwhile affects both alike.
    for _ in range(args.rounds):
        for threads in figures:
            set_torch_threads(threads)
            figures[threads].append(inprocess_ips(backbone, photos, settings, args.batch))
    mean = {threads: sum(values) / len(values) for threads, values in figures.items()}
    print(
        json.dumps(
            {
                "model": args.model,
                "precision": args.precision,
                "batch_size": args.batch,
                "n": args.n,
                "ips_by_threads": {str(t): [round(v, 3) for v in values] for t, values in figures.items()},
                f"ratio_{most}_threads_1_thread": round(mean[most] / mean[1], 3),
                "torch_version": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
