"""Recording listing events: one outbox row per interested subscription, in the caller's transaction.

The rows are written by the same transaction as the change they report, so a change that rolls
back leaves no event and a committed one always has its events (the sender posts them later).
The payload is built in SQL from the rows as the transaction sees them after its change: one
INSERT ... SELECT, which costs a scan of the (small, usually empty) subscription table when no
subscription wants the event.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.orm import Session

from common.schema import Listing
from common.webhooks import EVENTS

_RECORD = text("""
INSERT INTO webhook_delivery (subscription_id, listing_id, external_id, event, payload)
SELECT w.id, l.id, l.external_id, CAST(:event AS varchar), jsonb_build_object(
    'occurred_at', now(),
    'listing', jsonb_build_object(
        'external_id', l.external_id,
        'source', src.name,
        'status', l.status,
        'revision', l.revision,
        'failure_reason', l.failure_reason,
        'suggestion', CASE WHEN s.id IS NULL THEN NULL ELSE jsonb_build_object(
            'category', s.category,
            'confidence', s.confidence,
            'needs_review', s.needs_review,
            'review_reason', s.review_reason) END,
        -- The decision standing on the current revision (what `decision_of` finds); no moderator
        -- name: who decided is the deployment's business, not the marketplace's.
        'decision', (
            SELECT jsonb_build_object('action', d.action, 'category', d.category, 'decided_at', d.created_at)
            FROM moderator_decision d
            WHERE d.listing_id = l.id AND d.action IN ('accept', 'override') AND d.revision = l.revision
              AND NOT EXISTS (SELECT 1 FROM moderator_decision u WHERE u.reverts_id = d.id)
            ORDER BY d.id DESC LIMIT 1)))
FROM webhook_subscription w
JOIN listing l ON l.source_id = w.source_id
JOIN source src ON src.id = l.source_id
LEFT JOIN suggestion s ON s.listing_id = l.id
WHERE w.disabled_at IS NULL
  AND CAST(:event AS varchar) = ANY (w.events)
  AND l.id = ANY (CAST(:ids AS bigint[]))
ORDER BY l.id, w.id
""")


def record_events(session: Session, listing_ids: Iterable[int], event: str) -> int:
    """Queue `event` for these listings to every active subscription of their source that wants it.

    Returns the rows written. Call it after the change, in its transaction: the payload is the
    listing as the change left it.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    ids = sorted({int(i) for i in listing_ids})
    if not ids:
        return 0
    # ORM changes not yet flushed (a decision's status) must be in the rows the SELECT reads.
    session.flush()
    result = session.execute(_RECORD, {"event": event, "ids": ids})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def record_event(session: Session, listing: Listing, event: str) -> int:
    """`record_events` for one listing."""
    return record_events(session, [listing.id], event)
