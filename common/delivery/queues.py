"""Queue and task names and their declarations: the one place publishers and workers read them from."""

from __future__ import annotations

from kombu import Exchange, Queue

EMBED_QUEUE = "embed"
EXPLAIN_QUEUE = "explain"
REFIT_QUEUE = "refit"
QUEUES = (EMBED_QUEUE, EXPLAIN_QUEUE, REFIT_QUEUE)

EMBED_TASK = "vitrine.embed_listings"
EXPLAIN_TASK = "vitrine.explain_listings"
REFIT_TASK = "vitrine.refit"
SWEEP_TASK = "vitrine.sweep_stale"


def declarations() -> list[Queue]:
    """One direct exchange per queue: a message for one queue is never copied to another."""
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]


def routes() -> dict[str, dict[str, str]]:
    return {
        EMBED_TASK: {"queue": EMBED_QUEUE},
        EXPLAIN_TASK: {"queue": EXPLAIN_QUEUE},
        REFIT_TASK: {"queue": REFIT_QUEUE},
        SWEEP_TASK: {"queue": REFIT_QUEUE},
    }
