"""Suggestion rows: the suggestion model of a clustering version read back, suggestions written.

The scoring is `common.suggestions.model` and the policy `common.suggestions.policy` (no
database in either); this module is where they meet Postgres.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.db import Database, keyset_chunks
from common.schema import ClusteringVersion, Embedding, Listing, ListingStatus, Suggestion
from common.settings import Settings
from common.suggestions.clusters import Clusters
from common.suggestions.corpus import current_version, labelled_set
from common.suggestions.model import Fitted, SuggestionModel, model_for_clusters
from common.suggestions.policy import SuggestionRow, explanation_wanted, review_reason
from common.webhooks import LISTING_NEEDS_REVIEW, LISTING_SUGGESTED
from common.webhooks.events import record_events

# Postgres accepts at most 65,535 bind parameters per statement; 1,000 rows stay well below.
UPSERT_ROWS = 1_000


@dataclass(frozen=True)
class Lineage:
    """How the clusters of a new clustering version continue those of the previous one.

    `clusters[new] = previous`: the two clusters' centroids are each other's nearest, so a
    decision for `new` is the same decision as one for `previous` and keeps its explanation.
    """

    previous_version_id: int
    clusters: dict[int, int]


def build_suggestion_model(
    session: Session, version: ClusteringVersion, settings: Settings
) -> SuggestionModel:
    """The model the refit fitted for this version; the knn reference read back from Postgres."""
    clusters = Clusters.of_version(version)
    categories = clusters.categories
    fitted = Fitted.loads(version.suggestion_model) if version.suggestion_model is not None else None
    method = fitted.method if fitted is not None else settings.suggestions.suggestion_method
    reference = None
    # Only knn reads the reference (also the image fallback of a method with no fitted probe).
    if categories and (
        method == "knn" or (method in ("linear", "fused") and (fitted is None or fitted.image is None))
    ):
        reference = labelled_set(session, version.backbone_id, settings.refit.chunk, categories)
    return model_for_clusters(clusters, settings, reference, fitted)


def load_suggestion_model(
    session: Session, backbone_id: str, settings: Settings, cached: SuggestionModel | None = None
) -> SuggestionModel | None:
    """The suggestion model of the current version; the cached one while it is still current."""
    version_id = session.execute(
        select(ClusteringVersion.id).where(
            ClusteringVersion.backbone_id == backbone_id, ClusteringVersion.is_current
        )
    ).scalar_one_or_none()
    if version_id is None:
        return None
    if cached is not None and cached.version_id == version_id:
        return cached
    version = session.get(ClusteringVersion, version_id)
    assert version is not None
    return build_suggestion_model(session, version, settings)


def upsert_suggestions(
    session: Session,
    model: SuggestionModel,
    listing_ids: Sequence[int],
    vectors: np.ndarray,
    settings: Settings,
    lineage: Lineage | None = None,
    *,
    revisions: Mapping[int, int] | None = None,
) -> list[SuggestionRow]:
    """Suggest for these listings under `model`; listings a moderator decided are left alone.

    `revisions`: the listing revision each vector is of; a listing whose photo has changed
    since is left alone (its new photo's suggestion comes with its embedding). The model's
    cached out-of-fold score of a listing stands in only for the revision it was made from.

    An overlay stays with its suggestion while the decision it explains is unchanged (same
    category, and the same cluster or, after a refit, the cluster that continues it); otherwise
    it is dropped, and the listing may be explained again.
    """
    ids = [int(i) for i in listing_ids]
    if not ids:
        return []
    sellers: dict[int, str | None] = {}
    titles: dict[int, str | None] = {}
    current: dict[int, int] = {}
    statuses: dict[int, str] = {}
    left_alone: set[int] = set()  # decided by a moderator, or of a photo replaced since
    for listing_id, status, seller_category, title, revision in session.execute(
        select(Listing.id, Listing.status, Listing.seller_category, Listing.title, Listing.revision).where(
            Listing.id.in_(ids)
        )
    ):
        sellers[listing_id] = seller_category
        titles[listing_id] = title
        current[listing_id] = revision
        statuses[listing_id] = status
        replaced = revisions is not None and revisions.get(listing_id) != revision
        if status == ListingStatus.reviewed or replaced:
            left_alone.add(listing_id)
    # Locked until the commit, so an overlay recorded meanwhile is not overwritten unseen.
    previous = {
        row.listing_id: row
        for row in session.execute(
            select(
                Suggestion.listing_id,
                Suggestion.clustering_version_id,
                Suggestion.cluster,
                Suggestion.category,
                Suggestion.needs_review,
                Suggestion.overlay_key,
                Suggestion.heatmap_key,
                Suggestion.explain_target,
                Suggestion.explain_requested_at,
                Suggestion.previous_overlay_key,
                Suggestion.previous_heatmap_key,
                Suggestion.previous_explain_target,
                Suggestion.revision,
            )
            .where(Suggestion.listing_id.in_(ids))
            .with_for_update()
        )
    }
    rows, results = [], []
    threshold = model.acceptance_threshold(settings)
    scores = model.score(
        vectors,
        [titles.get(i) for i in ids],
        ids,
        # The revision each vector is of: a cached score stands only for the photo it was made from.
        [(revisions or current).get(i, 1) for i in ids],
    )
    for listing_id, scored in zip(ids, scores, strict=True):
        if listing_id in left_alone:
            continue
        reason = review_reason(
            listing_id, scored.category, scored.confidence, sellers.get(listing_id), settings, threshold
        )
        needs_review = reason is not None
        old = previous.get(listing_id)
        # An overlay of another revision explains another photo, whatever the decision: it is
        # neither kept nor shown as the previous one (a moderator would see the old photo).
        same_photo = old is not None and old.revision == current.get(listing_id)
        kept = same_photo and _same_decision(old, model.version_id, scored.cluster, scored.category, lineage)
        rows.append(
            {
                **_overlay_columns(old if same_photo else None, kept, needs_review),
                "listing_id": listing_id,
                "revision": current.get(listing_id, 1),
                "clustering_version_id": model.version_id,
                "backbone_id": model.backbone_id,
                "cluster": scored.cluster,
                "category": scored.category,
                "confidence": round(scored.confidence, 6),
                "alternatives": scored.alternatives,
                "signals": scored.signals or None,
                "method": model.method,
                "needs_review": needs_review,
                "review_reason": reason,
            }
        )
        results.append(SuggestionRow(listing_id, scored.category, scored.confidence, needs_review, kept))
    for start in range(0, len(rows), UPSERT_ROWS):
        _upsert_rows(session, rows[start : start + UPSERT_ROWS])
    _record_outcomes(session, rows, previous, statuses)
    return results


def _record_outcomes(
    session: Session, rows: list[dict[str, Any]], previous: Mapping[int, Any], statuses: Mapping[int, str]
) -> None:
    """Webhook events for the listings whose outcome this changed: newly suggested (or of a new
    photo), or a refit's new category or review flag. A refit that leaves a listing's outcome as
    it was sends nothing, so a refit of the whole corpus is not a flood of events."""
    changed: dict[str, list[int]] = {LISTING_SUGGESTED: [], LISTING_NEEDS_REVIEW: []}
    for row in rows:
        listing_id = row["listing_id"]
        old = previous.get(listing_id)
        status = statuses.get(listing_id)
        if status not in (ListingStatus.queued, ListingStatus.embedded, ListingStatus.suggested):
            continue  # the status update above left it alone (failed): no new outcome
        same = (
            status == ListingStatus.suggested
            and old is not None
            and old.revision == row["revision"]
            and old.category == row["category"]
            and old.needs_review == row["needs_review"]
        )
        if not same:
            changed[LISTING_NEEDS_REVIEW if row["needs_review"] else LISTING_SUGGESTED].append(listing_id)
    for event, ids in changed.items():
        record_events(session, ids, event)


def _overlay_columns(old: Any, kept: bool, needs_review: bool) -> dict[str, object]:
    """The overlay columns of a suggestion written again.

    The same decision keeps its overlay. A changed one loses it (the sweep asks for a new one),
    but while the item waits for a moderator the old one stays on view as the previous overlay
    until the new one is recorded; otherwise it is deleted with the refit (`reassign_suggestions`).
    """
    if old is None:
        return dict.fromkeys(_OVERLAY_COLUMNS)
    if kept:
        return {name: getattr(old, name) for name in _OVERLAY_COLUMNS}
    if not needs_review:
        return dict.fromkeys(_OVERLAY_COLUMNS)
    newest = old.overlay_key is not None
    return {
        **dict.fromkeys(_OVERLAY_COLUMNS),
        "previous_overlay_key": old.overlay_key if newest else old.previous_overlay_key,
        "previous_heatmap_key": old.heatmap_key if newest else old.previous_heatmap_key,
        "previous_explain_target": old.explain_target if newest else old.previous_explain_target,
    }


_OVERLAY_COLUMNS = (
    "overlay_key",
    "heatmap_key",
    "explain_target",
    "explain_requested_at",
    "previous_overlay_key",
    "previous_heatmap_key",
    "previous_explain_target",
)


def _same_decision(
    old: Any, version_id: int, cluster: int, category: str | None, lineage: Lineage | None
) -> bool:
    if old.category != category:
        return False
    if old.clustering_version_id == version_id:
        return bool(old.cluster == cluster)
    return (
        lineage is not None
        and old.clustering_version_id == lineage.previous_version_id
        and lineage.clusters.get(cluster) == old.cluster
    )


def _upsert_rows(session: Session, rows: list[dict[str, object]]) -> None:
    statement = insert(Suggestion).values(rows)
    columns = [name for name in rows[0] if name != "listing_id"]
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["listing_id"],
            set_={**{name: statement.excluded[name] for name in columns}, "updated_at": func.now()},
        )
    )
    session.execute(
        update(Listing)
        .where(
            Listing.id.in_([r["listing_id"] for r in rows]),
            Listing.status.in_((ListingStatus.queued, ListingStatus.embedded, ListingStatus.suggested)),
        )
        .values(status=ListingStatus.suggested)
    )


def _stored_overlays(session: Session, listing_ids: list[int]) -> dict[int, list[str]]:
    """The overlay objects each suggestion points to, current and previous."""
    columns = (
        Suggestion.overlay_key,
        Suggestion.heatmap_key,
        Suggestion.previous_overlay_key,
        Suggestion.previous_heatmap_key,
    )
    return {
        listing_id: [key for key in keys if key]
        for listing_id, *keys in session.execute(
            select(Suggestion.listing_id, *columns).where(Suggestion.listing_id.in_(listing_ids))
        )
    }


def reassign_suggestions(
    db: Database,
    settings: Settings,
    backbone_id: str,
    lineage: Lineage | None = None,
    model: SuggestionModel | None = None,
) -> tuple[int, list[int], list[str]]:
    """Suggest under the current version for every embedded listing, one transaction per chunk.

    `model`: the current version's model when the caller (the refit) already has it.
    Returns how many suggestions were written, which listings want an explanation, and the
    object keys of overlays that no longer explain their decision (to be deleted).
    """
    if model is None:
        with db.transaction() as session:
            version = current_version(session, backbone_id)
            if version is None:
                return 0, [], []
            model = build_suggestion_model(session, version, settings)
    total, explain, dropped = 0, list[int](), list[str]()
    embedded = select(Embedding.id, Embedding.listing_id, Embedding.vector, Embedding.revision).where(
        Embedding.backbone_id == backbone_id
    )
    for session, rows in keyset_chunks(db, embedded, Embedding.id, settings.refit.chunk):
        stored = _stored_overlays(session, [r[1] for r in rows])
        written = upsert_suggestions(
            session,
            model,
            [r[1] for r in rows],
            np.stack([r[2] for r in rows]),
            settings,
            lineage,
            revisions={r[1]: r[3] for r in rows},
        )
        total += len(written)
        explain += explanation_wanted(written, settings.explain.sample_rate)
        kept_on_view = _stored_overlays(session, [r.listing_id for r in written])
        for r in written:
            # Objects no row points to any more: replaced twice, or of an item no one will review.
            dropped += sorted(set(stored.get(r.listing_id, ())) - set(kept_on_view.get(r.listing_id, ())))
    return total, explain, dropped
