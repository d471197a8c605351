"""Queue and task names and their declarations: the one place publishers and workers read them from."""

from __future__ import annotations

from kombu import Exchange, Queue

EMBED_QUEUE = "embed"
EXPLAIN_QUEUE = "explain"
REFIT_QUEUE = "refit"
# Webhook sends: a queue of their own, so a slow receiver never waits behind a refit (or delays one).
WEBHOOK_QUEUE = "webhooks"
QUEUES = (EMBED_QUEUE, EXPLAIN_QUEUE, REFIT_QUEUE, WEBHOOK_QUEUE)

EMBED_TASK = "vitrine.embed_listings"
EXPLAIN_TASK = "vitrine.explain_listings"
REFIT_TASK = "vitrine.refit"
SWEEP_TASK = "vitrine.sweep_stale"
WEBHOOK_TASK = "vitrine.send_webhooks"
# A retried message carries how many times its work was tried before, as the keyword `retry`.
RETRY_KWARG = "retry"
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0


def retry_delay(retries: int) -> float:
    """Backoff before the (retries + 1)-th try of a message's work: 5 s, 10 s, 20 s ... at most 5 min."""
    return min(RETRY_BASE_SECONDS * 2**retries, RETRY_MAX_SECONDS)


def declarations() -> list[Queue]:
    """One direct exchange per queue: a message for one queue is never copied to another."""
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]


def routes() -> dict[str, dict[str, str]]:
    return {
        EMBED_TASK: {"queue": EMBED_QUEUE},
        EXPLAIN_TASK: {"queue": EXPLAIN_QUEUE},
        REFIT_TASK: {"queue": REFIT_QUEUE},
        SWEEP_TASK: {"queue": REFIT_QUEUE},
        WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE},
    }
