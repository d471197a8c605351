"""The command line of a Vitrine worker: the one way workers are started, in production and in tests."""

from __future__ import annotations

from common.delivery.queues import EMBED_QUEUE, REFIT_QUEUE


def worker_argv(queues: list[str], python: str, loglevel: str = "INFO", name: str | None = None) -> list[str]:
    """The command line of a worker for `queues`.

    Never a forking pool, so CUDA is only ever initialised in the process that uses it, and the
    consumer's own thread stays free to renew the messages the worker holds. The embed queue
    (alone or with others) gets two threads: while one batch is in the forward pass (which
    releases the GIL and holds the model's lock), the next batch's photos are fetched and
    decoded beside it. The refit queue gets two as well, so a sweep never waits behind a long
    refit. Each batch is still acknowledged only after its own transaction commits.
    """
    threads = 2 if EMBED_QUEUE in queues or REFIT_QUEUE in queues else 1
    pool = ["--pool", "threads", "--concurrency", str(threads)]
    return [
        python, "-m", "celery", "-A", "workers.app", "worker", "-Q", ",".join(queues), *pool,
        "--loglevel", loglevel, "-n", name or f"{'-'.join(queues)}@%h",
    ]  # fmt: skip
