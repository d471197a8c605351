"""Queue and task names: the one place both publishers and workers read them from."""

EMBED_QUEUE = "embed"
EXPLAIN_QUEUE = "explain"
REFIT_QUEUE = "refit"
QUEUES = (EMBED_QUEUE, EXPLAIN_QUEUE, REFIT_QUEUE)

EMBED_TASK = "vitrine.embed_listings"
EXPLAIN_TASK = "vitrine.explain_listings"
REFIT_TASK = "vitrine.refit"
SWEEP_TASK = "vitrine.sweep_stale"


def worker_argv(queues: list[str], python: str, loglevel: str = "INFO", name: str | None = None) -> list[str]:
    """The command line of a Vitrine worker for `queues`.

    Never a forking pool, so CUDA is only ever initialised in the process that uses it. The
    embed queue gets two threads: while one batch is in the forward pass (which releases the
    GIL and holds the model's lock), the next batch's photos are fetched and decoded beside it.
    Each batch is still acknowledged only after its own transaction commits.
    """
    pool = ["--pool", "threads", "--concurrency", "2"] if queues == [EMBED_QUEUE] else ["--pool", "solo"]
    return [
        python, "-m", "celery", "-A", "workers.app", "worker", "-Q", ",".join(queues), *pool,
        "--loglevel", loglevel, "-n", name or f"{'-'.join(queues)}@%h",
    ]  # fmt: skip
