"""Code shared by every Vitrine process: one subpackage per concern, each module one role.

The base: `settings`, `schema` (the SQL tables), `db`, `object_store` and `runtime` (what a
process holds). Above it, a package may import its own modules and those of the layers below
it, never one above (checked by tests/unit/test_layers.py):

    jobs, ops          one plain function per queue; status and metrics
    listings           events in, what may be read of a listing
    suggestions        clusters, scorers, model, policy, fitting, corpus, rows
    vision, moderation the backbone and its transforms; the review queue and decisions
    runtime            settings, database, publisher and store of one process
    webhooks           listing events to the sources' receivers: outbox rows, signed POSTs
    delivery, photos   queues, publisher, outbox, sweep; failures, urls, fetch, decode
    sources            the marketplaces listings come from; a listing found by its external id
    schema, db, object_store
    settings

`workers/` (Celery) and `review/` (HTTP) import `common/`; `vitrine/` (the command line and
the operator's tooling) may import all three; `common/` imports none of them.
"""

# Lowest first; a module's layer is its package's (or, at the base, its own).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("settings",),
    ("schema", "db", "object_store"),
    ("sources",),
    ("delivery", "photos"),
    ("webhooks",),
    ("runtime",),
    ("vision", "moderation"),
    ("suggestions",),
    ("listings",),
    ("jobs", "ops"),
)
