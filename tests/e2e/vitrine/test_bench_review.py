"""`vitrine bench review` runs end to end at a small size (its figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from common.settings import Settings
from vitrine.cli import CommandState, app, register

register()


def test_bench_review_measures_claims_reads_and_ingest(settings: Settings, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "review",
            "--n",
            "200",
            "--claims",
            "5",
            "--reads",
            "5",
            "--ingest-batches",
            "1",
            "--log-dir",
            str(tmp_path),
            "--json",
        ],
        obj=CommandState(settings),
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["claim"]["n"] == 5 and figures["claim_in_process"]["n"] == 5
    assert figures["get_listing"]["n"] == 5
    assert figures["ingest"]["listings"] == 500 and figures["ingest"]["listings_per_s"] > 0
    # Every decision's event reached the bench's receiver once: the 10 above, then the live ones.
    hooks = figures["webhooks"]
    assert hooks["backlog"] == 10 and hooks["live"] > 0 and hooks["delivered_once"]
    assert hooks["deliveries_per_s"] > 0 and hooks["lag"]["p95_s"] >= hooks["lag"]["p50_s"] >= 0
