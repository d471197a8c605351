"""The benchmarks run: the GPU script end to end on CPU with a tiny model, the summary arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


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
