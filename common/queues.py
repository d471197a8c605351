"""Queue and task names: the one place both publishers and workers read them from."""

EMBED_QUEUE = "embed"
EXPLAIN_QUEUE = "explain"
REFIT_QUEUE = "refit"
QUEUES = (EMBED_QUEUE, EXPLAIN_QUEUE, REFIT_QUEUE)

EMBED_TASK = "vitrine.embed_listings"
EXPLAIN_TASK = "vitrine.explain_listings"
REFIT_TASK = "vitrine.refit"
SWEEP_TASK = "vitrine.sweep_stale"
