"""The order of the review queue: which waiting item a moderator sees next.

One function, `priority`, lowest first. An item's priority is its confidence scaled by the
weight of its reason. Low-confidence items keep their confidence (the doubtful first). A seller
who contradicts a confident suggestion is worth a look soon, but ranking those items by their own
(high) confidence would put every one of them behind the whole low-confidence queue: halved, a
contradiction at 0.9 comes with the 0.45 low-confidence items. Audit samples (confident and
agreed, drawn at random to measure confident errors) come a little later than those.

The queue's index (`ix_suggestion_triage`, migration 0007) is built on this same expression, so
a claim reads the next item from the index instead of sorting the queue; `REASON_WEIGHT` and the
migration change together (tests/integration/review/test_triage.py checks the plan uses it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, literal_column

from common.schema import Suggestion

# Reasons as `common.suggestions.policy.ReviewReason` names them (the layer below cannot import it).
REASON_WEIGHT: dict[str, float] = {"low_confidence": 1.0, "seller_disagrees": 0.5, "audit_sample": 0.6}


def priority() -> Any:
    """The SQL expression a waiting suggestion is ordered by; lower comes first."""
    # Constants written into the statement, not bound: the planner matches the index's expression
    # only against the same constants.
    weight = case(
        *(
            (Suggestion.review_reason == literal_column(f"'{reason}'"), literal_column(repr(w)))
            for reason, w in REASON_WEIGHT.items()
            if w != 1.0
        ),
        else_=literal_column("1.0"),
    )
    return Suggestion.confidence * weight


def priority_of(confidence: float, reason: str | None) -> float:
    """The same order in Python, for tests and for the desk's own sorting of prefetched items."""
    return confidence * REASON_WEIGHT.get(reason or "low_confidence", 1.0)
