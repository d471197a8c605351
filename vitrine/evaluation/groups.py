"""How many moderator actions resolve the review queue, with the desk's groups and without.

Walks the queue as one moderator at the desk would (`queue.claim` in triage order, then, with
groups, `groups.group` for the look-alikes of each item), deciding each item with the category
the model suggested, inside one transaction that is rolled back: nothing of it stays. A group
whose members carry another label than its lead (a seller's or a moderator's) is counted: it is
where "accept all" would have needed the moderator's attention.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select

from common.db import Database
from common.moderation import decisions, groups, queue
from common.moderation.labels import label_expression
from common.schema import Listing

MODERATOR = "vitrine-group-count"
LEASE_SECONDS = 3600


@dataclass(frozen=True)
class QueueActions:
    waiting: int  # items waiting when the walk began
    actions: int  # moderator decisions that resolve them
    groups: int  # decisions that took look-alikes with them
    grouped_items: int  # items decided as a group's member
    mixed_groups: int  # groups whose members' known labels differ from their lead's


def walk_queue(database: Database, with_groups: bool) -> QueueActions:
    actions = grouped = members_total = mixed = 0
    session = database.sessions()
    try:
        waiting = sum(queue.waiting_counts(session, MODERATOR)["per_reason"].values())
        while (lead := queue.claim(session, MODERATOR, LEASE_SECONDS)) is not None:
            members = groups.group(session, MODERATOR, lead, LEASE_SECONDS) if with_groups else []
            actions += 1
            if members:
                grouped += 1
                members_total += len(members)
                ids = [lead.listing_id, *(m.listing_id for m in members)]
                labels: dict[int, str | None] = {
                    row[0]: row[1]
                    for row in session.execute(
                        select(Listing.id, label_expression()).where(Listing.id.in_(ids))
                    )
                }
                own = labels.get(lead.listing_id)
                if any(labels.get(m.listing_id) not in (None, own) for m in members):
                    mixed += 1
            for item in [lead, *members]:
                try:
                    decisions.decide(session, MODERATOR, item.external_id, "accept")
                except decisions.Invalid:  # no category suggested: another moderator's to name
                    decisions.decide(session, MODERATOR, item.external_id, "skip")
        return QueueActions(waiting, actions, grouped, members_total, mixed)
    finally:
        session.rollback()
        session.close()


def queue_actions(database: Database) -> dict[str, Any]:
    alone = walk_queue(database, with_groups=False)
    together = walk_queue(database, with_groups=True)
    return {
        "without_groups": asdict(alone),
        "with_groups": asdict(together),
        "similarity": groups.SIMILARITY,
        "actions_saved": alone.actions - together.actions,
    }
