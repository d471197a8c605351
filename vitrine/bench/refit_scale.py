"""Time `common.jobs.refit.refit` at growing numbers of stored 1024-d embeddings in a scratch database.

Usage: python -m vitrine.bench.refit_scale [--sizes 10000,100000] [--server postgresql://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM = 1024
CLUSTERS = 20
NOISE = 0.03  # per dimension: the noise norm (about 1) matches the centre's, so clusters overlap a little
LABELLED_SHARE = 0.5
BACKBONE = "convnext_base.fb_in22k_ft_in1k@benchmark"
CHUNK = 10_000


def centres(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((CLUSTERS, DIM))
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def insert_vectors(url: str, start: int, stop: int) -> None:
    """Listings start+1..stop with one unit vector each, by binary COPY in chunks."""
    import psycopg

    centre = centres()
    rng = np.random.default_rng(start)
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        for low in range(start, stop, CHUNK):
            high = min(low + CHUNK, stop)
            ids = np.arange(low + 1, high + 1)
            truth = rng.integers(0, CLUSTERS, size=len(ids))
            points = centre[truth] + NOISE * rng.standard_normal((len(ids), DIM))
            points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype("<f4")
            labelled = rng.random(len(ids)) < LABELLED_SHARE
            with cursor.copy(
                "COPY listing (id, external_id, image_url, seller_category, status, attempts)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "text", "text", "text", "text", "int4"])
                for i, t, known in zip(ids, truth, labelled, strict=True):
                    copy.write_row(
                        (
                            int(i),
                            f"bench-{i}",
                            f"s3://bench/{i}.jpg",
                            f"c{t:02d}" if known else None,
                            "embedded",
                            0,
                        )
                    )
            with cursor.copy(
                "COPY embedding (id, listing_id, backbone_id, image_sha256, dim, vector)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "int8", "text", "text", "int4", "bytea"])
                for i, vector in zip(ids, points, strict=True):
                    copy.write_row((int(i), int(i), BACKBONE, f"{i:064x}", DIM, vector.tobytes()))
            connection.commit()
        cursor.execute("SELECT setval('listing_id_seq', %s), setval('embedding_id_seq', %s)", (stop, stop))
        cursor.execute("ANALYZE listing; ANALYZE embedding")
        connection.commit()


def run_refit(url: str, max_vectors: int, method: str, results: Any) -> None:
    """In a fresh process, so that its peak RSS is the refit's own."""
    from common.db import Database
    from common.jobs.refit import refit
    from common.settings import load_settings

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    settings = load_settings(
        database_url=url,
        model=BACKBONE.split("@")[0],
        refit_max_vectors=max_vectors,
        suggestion_method=method,
    )
    db = Database(url)
    result = refit(db, settings)
    db.dispose()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results.put(
        {
            "seconds": round(seconds, 1),
            "fit_seconds": round(result.fit_seconds, 1),
            # What remains after the fit: assigning every listing its suggestion, chunk by chunk.
            "suggest_seconds": round(seconds - result.fit_seconds, 1),
            "ari": round(result.ari or float("nan"), 4),
            "k": result.k,
            "n": result.n_vectors,
            "suggested": result.suggested,
            "skipped": result.skipped_reason,
            "peak_rss_mib": round(peak / 1024),
            "rss_before_mib": round(baseline / 1024),
        }
    )


def algorithm_of_current(url: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as connection:
        value = connection.execute(text("SELECT algorithm FROM clustering_version WHERE is_current")).scalar()
    engine.dispose()
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--max-vectors", type=int, default=20_000)
    parser.add_argument(
        "--method", choices=("centroid", "knn", "linear", "fused"), default="knn", help="suggestion method"
    )
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    from vitrine.local.scratch import scratch_stack

    server = args.server.replace("postgresql://", "postgresql+psycopg://", 1)
    context = multiprocessing.get_context("spawn")
    with scratch_stack(f"{server}/postgres", "vitrine-bench-refit", broker=False) as stack:
        url = stack.database_url
        name = url.rsplit("/", 1)[1]
        stored = 0
        print(
            f"database {name}; {CLUSTERS} clusters of {DIM}-d unit vectors; max in memory {args.max_vectors}"
        )
        for size in sizes:
            started = time.perf_counter()
            insert_vectors(url, stored, size)
            print(f"inserted {size - stored} vectors in {time.perf_counter() - started:.1f}s", flush=True)
            stored = size
            queue = context.Queue()
            process = context.Process(target=run_refit, args=(url, args.max_vectors, args.method, queue))
            process.start()
            process.join()
            try:
                figures = queue.get(timeout=10)
            except Empty:
                raise SystemExit(f"refit at n={size} failed (exit code {process.exitcode})") from None
            figures["algorithm"] = algorithm_of_current(url)
            print(f"refit n={size}: {figures}", flush=True)


if __name__ == "__main__":
    main()
