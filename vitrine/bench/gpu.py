"""The GPU benchmark's one JSON line (`gpu.sh`): throughput, ratios, memory, share of the bf16 peak.

Usage: vitrine bench embed --json ... | python -m vitrine.bench.gpu --gflop-per-image G
"""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by a
# substring of `torch.cuda.get_device_name()`; the first match wins. --peak-tflops overrides.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 364.2),
    ("RTX 4090", 165.2),
)


def gpu_summary(
    result: dict[str, object], gflop_per_image: float, peak_tflops: float | None, gpu: str | None
) -> dict[str, object]:
    """The GPU benchmark's one line: throughput, ratios, memory, and the share of the bf16 peak."""
    if peak_tflops is None and gpu:
        peak_tflops = next((peak for key, peak in BF16_PEAK_TFLOPS if key in gpu), None)
    pipeline = float(result["pipeline_ips"])  # type: ignore[arg-type]
    share = pipeline * gflop_per_image / (peak_tflops * 1000) if peak_tflops else None
    keys = (
        "model", "device", "precision", "decode", "n", "batch_size", "pipeline_ips", "forward_ips",
        "ratio_pipeline_forward", "batch1_ips", "ratio_batched_batch1", "inprocess_ips",
        "peak_gpu_memory_mib",
    )  # fmt: skip
    return {
        "gpu": gpu,
        **{key: result[key] for key in keys},
        "gflop_per_image": gflop_per_image,
        "bf16_peak_tflops": peak_tflops,
        "share_of_bf16_peak": round(share, 4) if share is not None else None,
    }


def main(argv: list[str] | None = None) -> None:
    """Reads `vitrine bench embed --json` on stdin, prints the GPU benchmark's one JSON line."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--gflop-per-image", type=float, default=30.8)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args(argv)
    result = json.loads(sys.stdin.read().strip().splitlines()[-1])
    gpu = torch.cuda.get_device_name() if str(result["device"]).startswith("cuda") else None
    print(json.dumps(gpu_summary(result, args.gflop_per_image, args.peak_tflops, gpu)))


if __name__ == "__main__":
    main()
