"""The benchmarks run: the GPU script end to end on CPU with a tiny model, the summary arithmetic."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import ROOT
from vitrine.bench.gpu import gpu_summary


def test_share_of_the_bf16_peak_uses_the_chip_table_or_the_given_peak() -> None:
    result: dict[str, object] = {
        "model": "convnext_base", "device": "cuda", "precision": "bf16", "decode": "device", "n": 2048,
        "batch_size": 128, "pipeline_ips": 2500.0, "forward_ips": 2700.0,
        "ratio_pipeline_forward": 0.926, "batch1_ips": 300.0, "ratio_batched_batch1": 8.3,
        "inprocess_ips": 2600.0, "peak_gpu_memory_mib": 9000.0,
    }  # fmt: skip
    h100 = gpu_summary(result, 30.8, None, "NVIDIA H100 80GB HBM3")
    assert h100["bf16_peak_tflops"] == 989.4
    assert h100["share_of_bf16_peak"] == round(2500 * 30.8 / 989_400, 4)
    assert gpu_summary(result, 30.8, None, "NVIDIA H100 PCIe")["bf16_peak_tflops"] == 756.0
    assert gpu_summary(result, 30.8, 100.0, "Unknown GPU")["share_of_bf16_peak"] == 0.77
    assert gpu_summary(result, 30.8, None, "Unknown GPU")["share_of_bf16_peak"] is None


def test_the_script_is_executable() -> None:
    assert os.access(Path(ROOT / "vitrine" / "bench" / "gpu.sh"), os.X_OK)


def test_latency_percentiles_are_in_milliseconds() -> None:
    from vitrine.bench.latency import percentiles

    run = percentiles(32, 0.25, [0.1] * 98 + [1.0, 2.0])
    assert (run.n, run.p50_ms, run.max_ms) == (100, 100.0, 2000.0)
    assert run.p95_ms == 100.0 and 1000.0 <= run.p99_ms <= 2000.0
