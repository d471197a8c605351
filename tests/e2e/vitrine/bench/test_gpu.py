"""The benchmarks run: the GPU script end to end on CPU with a tiny model, the summary arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from vitrine.bench.embed import gpu_summary


def test_gpu_script_runs_on_cpu_and_prints_one_json_line(service_env: dict[str, str]) -> None:
    env = {
        **os.environ,
        **service_env,
        "VITRINE_VENV": sys.prefix,  # the project is installed here: nothing to install
        "VITRINE_WEIGHTS": "",
    }
    script = str(ROOT / "vitrine" / "bench" / "gpu.sh")
    done = subprocess.run(
        [
            script,
            "--device",
            "cpu",
            "--model",
            "test_vit",
            "--precision",
            "fp32",
            "--n",
            "8",
            "--batch-size",
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["device"] == "cpu" and line["model"] == "test_vit" and line["n"] == 8
    # The GPU's decode path (JPEGs decoded by torchvision on the model's device) ran, on the CPU.
    assert line["decode"] == "device"
    for key in ("pipeline_ips", "forward_ips", "batch1_ips"):
        assert line[key] > 0
    assert line["ratio_pipeline_forward"] == round(line["pipeline_ips"] / line["forward_ips"], 3)
    assert line["peak_gpu_memory_mib"] is None and line["share_of_bf16_peak"] is None


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
    from vitrine.bench.embed import percentiles

    run = percentiles(32, 0.25, [0.1] * 98 + [1.0, 2.0])
    assert (run.n, run.p50_ms, run.max_ms) == (100, 100.0, 2000.0)
    assert run.p95_ms == 100.0 and 1000.0 <= run.p99_ms <= 2000.0
