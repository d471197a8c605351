"""`vitrine bench`: throughput figures measured side by side in one run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vitrine.cli.root import app, console, state

bench_app = typer.Typer(help="Benchmarks (not tests): ratios measured side by side.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("embed")
def bench_embed(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="timm model name (default: VITRINE_MODEL).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights file; random weights if omitted.")] = None,
    n: Annotated[int, typer.Option(min=1, help="Listing events per measurement.")] = 64,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    images: Annotated[Path | None, typer.Option(help="Photos to use; synthetic ones if omitted.")] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp32, int8 (CPU) or bf16 (CUDA; a CPU with AVX-512 BF16 or AMX); default VITRINE_PRECISION"
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved in-process rounds per precision.")] = 2,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    decode: Annotated[
        str | None,
        typer.Option(help="pillow (host) or device (JPEGs on the model's device); default VITRINE_DECODE."),
    ] = None,
    log_dir: Path = Path(".vitrine/logs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Images/s through Redis and a real worker vs. a tight in-process loop, and vs. batch size 1."""
    from vitrine.bench.embed import run_embed_benchmark

    settings = state(ctx).settings
    if device:
        settings = settings.replace(device=device)
    if decode:
        settings = settings.replace(decode=decode)
    log_dir.mkdir(parents=True, exist_ok=True)
    result = run_embed_benchmark(
        settings,
        model=model or settings.backbone.model,
        weights=weights,
        n=n,
        batch_size=batch_size or settings.embed.batch_size,
        images=images,
        log_dir=log_dir,
        precision=precision,
        rounds=rounds,
    )
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    table = Table(title=f"embed throughput: {result.model} ({result.weights}) on {result.device}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.as_dict().items():
        table.add_row(key, str(value))
    console.print(table)


@bench_app.command("review")
def bench_review(
    ctx: typer.Context,
    n: Annotated[
        int, typer.Option(min=100, help="Synthetic flagged suggestions in the scratch database.")
    ] = 100_000,
    claims: Annotated[int, typer.Option(min=1, help="Claims measured (each followed by an accept).")] = 300,
    reads: Annotated[int, typer.Option(min=1, help="GET /api/v1/listings/{id} measured.")] = 500,
    ingest_batches: Annotated[int, typer.Option(min=1, help="POSTs of 500 listings measured.")] = 20,
    log_dir: Path = Path(".vitrine/logs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """p50/p95 of claim and of reading a listing, ingest listings/s, webhook deliveries/s and lag."""
    from vitrine.bench.review import run_review_benchmark

    log_dir.mkdir(parents=True, exist_ok=True)
    result = run_review_benchmark(state(ctx).settings, n, claims, reads, ingest_batches, log_dir)
    if as_json:
        print(json.dumps(result))
        return
    table = Table("measure", "p50 ms", "p95 ms", "n")
    for name in ("claim", "claim_in_process", "decision", "get_listing"):
        row = result[name]
        table.add_row(name, str(row["p50_ms"]), str(row["p95_ms"]), str(row["n"]))
    console.print(table)
    ingest = result["ingest"]
    console.print(f"ingest: {ingest['listings_per_s']} listings/s in lists of {ingest['batch']}")
    hooks = result["webhooks"]
    console.print(
        f"webhooks: {hooks['deliveries_per_s']} deliveries/s ({hooks['backlog']} waiting), lag p50 "
        f"{hooks['lag']['p50_s']} s, p95 {hooks['lag']['p95_s']} s (sender every {hooks['interval_s']} s)"
    )


@bench_app.command("desk")
def bench_desk(
    ctx: typer.Context,
    images: Annotated[Path, typer.Option(help="Photos (.jpg) for the queue's listings.")] = Path(
        "../shared/data/flipkart/images"
    ),
    decisions: Annotated[int, typer.Option(min=5, help="Decisions measured in each flow.")] = 40,
    log_dir: Path = Path(".vitrine/logs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """p50/p95 from a key to the next item on screen: the desk beside the plain forms, in chromium."""
    from vitrine.bench.desk import run_desk_benchmark

    log_dir.mkdir(parents=True, exist_ok=True)
    result = run_desk_benchmark(state(ctx).settings, images, decisions, log_dir)
    if as_json:
        print(json.dumps(result))
        return
    table = Table("key → next item", "p50 ms", "p95 ms", "n")
    for name, row in (
        ("desk", result["desk"]),
        ("plain forms", result["forms"]),
        ("desk, with the driver's round trips", result["desk"]["with_driver"]),
        ("plain forms, with the driver's round trips", result["forms"]["with_driver"]),
    ):
        table.add_row(name, str(row["p50_ms"]), str(row["p95_ms"]), str(row["n"]))
    console.print(table)
    console.print(f"forms / desk: {result['ratio_p50']}× at p50, {result['ratio_p95']}× at p95")


@bench_app.command("latency")
def bench_latency(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="timm model name (default: VITRINE_MODEL).")] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Weights file (default: VITRINE_WEIGHTS; random if neither).")
    ] = None,
    n: Annotated[int, typer.Option(min=1, help="Listings per setting.")] = 60,
    rate: Annotated[float, typer.Option(min=0.01, help="Listings published per second.")] = 2.0,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Default: VITRINE_BATCH_SIZE.")] = None,
    flush_interval: Annotated[
        list[float] | None,
        typer.Option(help="Seconds; repeat to compare several (default: VITRINE_FLUSH_INTERVAL)."),
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Photos to use; synthetic ones if omitted.")] = None,
    log_dir: Path = Path(".vitrine/logs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Milliseconds from publishing a listing to its committed suggestion, one listing at a time,
    at the batch size and flush interval(s) given and at batch size 1, in one run."""
    from vitrine.bench.latency import run_latency_benchmark

    settings = state(ctx).settings
    log_dir.mkdir(parents=True, exist_ok=True)
    size = batch_size or settings.embed.batch_size
    intervals = flush_interval or [settings.embed.flush_interval]
    compared = [(size, interval) for interval in intervals] + [(1, intervals[0])]
    runs = run_latency_benchmark(
        settings,
        model=model or settings.backbone.model,
        weights=weights or settings.backbone.weights,
        n=n,
        rate=rate,
        settings_to_compare=compared,
        images=images,
        log_dir=log_dir,
    )
    chosen, batch1 = runs[0], runs[-1]
    if as_json:
        summary = {
            "model": model or settings.backbone.model,
            "rate_per_s": rate,
            **asdict(chosen),
            "batch1": asdict(batch1),
            "runs": [asdict(run) for run in runs],
        }
        print(json.dumps(summary))
        return
    table = Table(title=f"publish → committed suggestion, {rate}/s, {model or settings.backbone.model}")
    for column in ("batch size", "flush interval s", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(
            *(
                str(v)
                for v in (
                    run.batch_size, run.flush_interval, run.n, run.p50_ms, run.p95_ms, run.p99_ms, run.max_ms,
                )
            )
        )  # fmt: skip
    console.print(table)
