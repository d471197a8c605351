"""`vitrine bench desk` runs end to end at a small size (its figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from common.settings import Settings
from tests.conftest import FLIPKART
from vitrine.cli import CommandState, app, register

register()


def test_bench_desk_times_both_flows_in_chromium(settings: Settings, tmp_path: Path) -> None:
    argv = ["bench", "desk", "--images", str(FLIPKART / "images"), "--decisions", "5"]
    result = CliRunner().invoke(
        app, [*argv, "--log-dir", str(tmp_path), "--json"], obj=CommandState(settings)
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    for flow in ("desk", "forms"):
        assert figures[flow]["n"] == 5 and figures[flow]["with_driver"]["n"] == 5
        assert 0 < figures[flow]["p50_ms"] <= figures[flow]["p95_ms"]
    assert figures["ratio_p50"] > 0
