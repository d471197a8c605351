"""The live refit lifecycle against real Postgres, on synthetic unit vectors in well-separated blobs."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, insert, select

from common.db import Database
from common.jobs.refit import refit, refit_lock
from common.schema import (
    ClusteringVersion,
    Embedding,
    Listing,
    ListingStatus,
    ModeratorDecision,
    Suggestion,
)
from common.settings import Settings
from common.suggestions.corpus import iter_embeddings
from common.suggestions.policy import ReviewReason

BACKBONE = "efficientnet_lite0@synthetic"
CATEGORIES = ("bags", "lamps", "shoes")
DIM = 8


def blobs(per_blob: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Unit vectors around three orthogonal directions, with their blob's category."""
    rng = np.random.default_rng(seed)
    vectors, truth = [], []
    for i, category in enumerate(CATEGORIES):
        centre = np.zeros(DIM)
        centre[i] = 1.0
        points = centre + 0.15 * rng.standard_normal((per_blob, DIM))
        vectors.append(points / np.linalg.norm(points, axis=1, keepdims=True))
        truth.extend([category] * per_blob)
    return np.concatenate(vectors).astype(np.float32), truth


def insert_rows(
    db: Database,
    vectors: np.ndarray,
    truth: list[str],
    *,
    labelled_every: int = 2,
    status: str = ListingStatus.embedded,
) -> list[int]:
    """One listing and one embedding per vector; every `labelled_every`-th carries its category."""
    with db.transaction() as session:
        ids = session.scalars(
            insert(Listing).returning(Listing.id, sort_by_parameter_order=True),
            [
                {
                    "external_id": f"item-{i}",
                    "image_url": f"s3://photos/{i}.jpg",
                    "image_sha256": f"{i:064x}",
                    "seller_category": category if i % labelled_every == 0 else None,
                    "status": status,
                }
                for i, category in enumerate(truth)
            ],
        ).all()
        session.execute(
            insert(Embedding),
            [
                {
                    "listing_id": listing_id,
                    "backbone_id": BACKBONE,
                    "image_sha256": f"{i:064x}",
                    "dim": DIM,
                    "vector": vector,
                }
                for i, (listing_id, vector) in enumerate(zip(ids, vectors, strict=True))
            ],
        )
        return list(ids)


def versions(db: Database) -> list[ClusteringVersion]:
    with db.transaction() as session:
        return list(session.execute(select(ClusteringVersion).order_by(ClusteringVersion.id)).scalars())


def test_refit_creates_a_current_version(db: Database, settings: Settings, clean_db: None) -> None:
    vectors, truth = blobs(40)
    insert_rows(db, vectors, truth)

    result = refit(db, settings)

    assert result.skipped_reason is None
    assert (result.k, result.n_vectors, result.n_labelled) == (3, 120, 60)
    assert result.ari is not None and result.ari > 0.95
    assert result.nmi is not None and result.nmi > 0.9
    [version] = versions(db)
    assert version.id == result.version_id and version.is_current
    assert version.backbone_id == BACKBONE and version.algorithm == "kmeans"
    assert version.ari == pytest.approx(result.ari)
    assert sorted(version.sizes) == [40, 40, 40]
    assert version.centroid_matrix().shape == (3, DIM)
    assert np.allclose(np.linalg.norm(version.centroid_matrix(), axis=1), 1.0, atol=1e-5)
    assert sorted(c["category"] for c in version.cluster_categories) == list(CATEGORIES)
    assert all(c["share"] == 1.0 and c["labelled"] == 20 for c in version.cluster_categories)
    assert version.stability_ari is None


def test_second_refit_records_stability_and_switches_atomically(
    db: Database, settings: Settings, clean_db: None
) -> None:
    vectors, truth = blobs(40)
    insert_rows(db, vectors, truth)
    first = refit(db, settings)
    more, more_truth = blobs(10, seed=1)
    with db.transaction() as session:
        # New listings arrive between refits; the next version covers them too.
        for i, (vector, category) in enumerate(zip(more, more_truth, strict=True)):
            listing = Listing(
                external_id=f"late-{i}", image_url="s3://photos/late.jpg", seller_category=category
            )
            session.add(listing)
            session.flush()
            session.add(
                Embedding(
                    listing_id=listing.id, backbone_id=BACKBONE, image_sha256="0", dim=DIM, vector=vector
                )
            )

    second = refit(db, settings)

    assert second.version_id != first.version_id
    assert second.n_vectors == 150
    assert second.stability_ari is not None and second.stability_ari > 0.95
    rows = versions(db)
    assert [v.is_current for v in rows] == [False, True]
    assert rows[1].id == second.version_id and rows[1].stability_ari == pytest.approx(second.stability_ari)


def test_embedded_listings_get_suggestions_and_reviewed_ones_are_left_alone(
    db: Database, settings: Settings, clean_db: None
) -> None:
    vectors, truth = blobs(30)
    ids = insert_rows(db, vectors, truth)
    reviewed_id = ids[1]  # unlabelled, in the first blob
    with db.transaction() as session:
        session.get(Listing, reviewed_id).status = ListingStatus.reviewed  # type: ignore[union-attr]

    result = refit(db, settings)

    assert result.suggested == len(ids) - 1
    with db.transaction() as session:
        statuses = dict(session.execute(select(Listing.id, Listing.status)).all())
        suggestions = {s.listing_id: s for s in session.execute(select(Suggestion)).scalars()}
    assert statuses[reviewed_id] == ListingStatus.reviewed
    assert reviewed_id not in suggestions
    assert all(statuses[i] == ListingStatus.suggested for i in ids if i != reviewed_id)
    assert set(suggestions) == set(ids) - {reviewed_id}
    for listing_id, suggestion in suggestions.items():
        assert 0.0 <= suggestion.confidence <= 1.0
        assert suggestion.clustering_version_id == result.version_id
        assert 1 <= len(suggestion.alternatives) <= 3
        scores = [a["score"] for a in suggestion.alternatives]
        assert scores == sorted(scores, reverse=True)
        assert suggestion.alternatives[0]["category"] == suggestion.category
        assert suggestion.category == truth[ids.index(listing_id)]
        assert suggestion.method == settings.suggestions.suggestion_method


def test_each_flagged_suggestion_says_why(db: Database, settings: Settings, clean_db: None) -> None:
    vectors, truth = blobs(30)
    ids = insert_rows(db, vectors, truth)
    # One seller in the first blob picked the second blob's category.
    mislabelled = ids[2]
    with db.transaction() as session:
        session.get(Listing, mislabelled).seller_category = CATEGORIES[1]  # type: ignore[union-attr]
    # Everything confident but unlabelled would be audited at rate 1; nothing at rate 0. kNN:
    # on these blobs every other listing's neighbours agree, so only the mislabelled one stands out.
    settings = settings.replace(suggestion_method="knn")
    for rate in (0.0, 1.0):
        refit(db, settings.replace(review_audit_rate=rate))
        with db.transaction() as session:
            rows = session.execute(
                select(Suggestion.listing_id, Suggestion.needs_review, Suggestion.review_reason)
            ).all()
        reasons = {listing_id: reason for listing_id, _, reason in rows}
        assert all(needs == (reason is not None) for _, needs, reason in rows)
        assert reasons[mislabelled] == ReviewReason.seller_disagrees
        others = {reason for listing_id, reason in reasons.items() if listing_id != mislabelled}
        assert others == ({None} if rate == 0.0 else {ReviewReason.audit_sample})

    # Below the threshold, low confidence is the reason for everything else.
    refit(db, settings.replace(confidence_threshold=1.0))
    with db.transaction() as session:
        rows = session.execute(
            select(Suggestion.listing_id, Suggestion.confidence, Suggestion.review_reason)
        ).all()
    doubtful = {listing_id: reason for listing_id, confidence, reason in rows if confidence < 1.0}
    # A confident contradiction of the seller is still called that, however high the threshold.
    assert doubtful.pop(mislabelled) == ReviewReason.seller_disagrees
    assert set(doubtful.values()) == {ReviewReason.low_confidence}


@pytest.mark.parametrize("method", ["centroid", "knn"])
def test_both_suggestion_methods_give_calibrated_suggestions(
    db: Database, settings: Settings, clean_db: None, method: str
) -> None:
    vectors, truth = blobs(30)
    ids = insert_rows(db, vectors, truth)

    refit(db, settings.replace(suggestion_method=method))

    with db.transaction() as session:
        suggestions = list(session.execute(select(Suggestion)).scalars())
    assert len(suggestions) == len(ids)
    assert {s.method for s in suggestions} == {method}
    correct = [s.category == truth[ids.index(s.listing_id)] for s in suggestions]
    assert np.mean(correct) > 0.95
    assert all(0.0 <= s.confidence <= 1.0 for s in suggestions)


def test_moderator_decision_replaces_the_seller_label(
    db: Database, settings: Settings, clean_db: None
) -> None:
    vectors, truth = blobs(30)
    ids = insert_rows(db, vectors, truth)
    overridden, skipped = ids[0], ids[2]  # both labelled "bags" by their sellers
    with db.transaction() as session:
        session.add_all(
            [
                ModeratorDecision(listing_id=overridden, action="override", category="lamps", moderator="m1"),
                # A skip is not a label: the seller's category stays.
                ModeratorDecision(listing_id=skipped, action="skip", category="shoes", moderator="m1"),
            ]
        )

    with db.transaction() as session:
        labels = {
            int(i): label
            for chunk_ids, _vectors, chunk_labels in iter_embeddings(session, BACKBONE, 1000)
            for i, label in zip(chunk_ids, chunk_labels, strict=True)
        }
    assert labels[overridden] == "lamps" and labels[skipped] == "bags"

    refit(db, settings)

    [version] = versions(db)
    bags = next(c for c in version.cluster_categories if c["category"] == "bags")
    assert bags["counts"] == {"bags": 14, "lamps": 1}
    assert version.n_labelled == 45


def test_refit_is_skipped_while_another_holds_the_lock(
    db: Database, settings: Settings, clean_db: None
) -> None:
    vectors, truth = blobs(10)
    insert_rows(db, vectors, truth)

    with refit_lock(db) as acquired:
        assert acquired
        result = refit(db, settings)
    assert result.skipped_reason == "another refit is running"
    assert result.version_id is None and versions(db) == []

    assert refit(db, settings).skipped_reason is None  # released with the block


def test_refit_without_embeddings_is_skipped(db: Database, settings: Settings, clean_db: None) -> None:
    result = refit(db, settings)
    assert result.skipped_reason is not None and "no embeddings" in result.skipped_reason


def test_streamed_minibatch_path_matches_the_in_memory_fit(
    db: Database, settings: Settings, clean_db: None
) -> None:
    vectors, truth = blobs(100)
    insert_rows(db, vectors, truth)

    in_memory = refit(db, settings)
    streamed = refit(db, settings.replace(refit_max_vectors=100, refit_chunk=100))

    rows = versions(db)
    assert [v.algorithm for v in rows] == ["kmeans", "minibatch-kmeans"]
    assert [v.is_current for v in rows] == [False, True]
    assert in_memory.ari is not None and streamed.ari is not None
    assert streamed.ari > 0.9
    assert abs(streamed.ari - in_memory.ari) < 0.05
    assert streamed.stability_ari is not None and streamed.stability_ari > 0.9


def test_refit_suggests_for_more_listings_than_one_statement_can_carry(
    db: Database, settings: Settings, clean_db: None
) -> None:
    # 8100 rows × 9 columns would exceed Postgres' 65535 bind parameters in one INSERT.
    vectors, truth = blobs(2700)
    ids = insert_rows(db, vectors, truth)

    result = refit(db, settings)

    assert result.suggested == len(ids) == 8100
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Suggestion)) == 8100
        statuses = set(session.scalars(select(Listing.status).distinct()))
    assert statuses == {ListingStatus.suggested}


def test_knn_scoring_in_blocks_matches_scoring_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.suggestions import scorers
    from common.suggestions.clusters import Clusters
    from common.suggestions.model import SuggestionModel

    vectors, truth = blobs(50)
    index = {c: i for i, c in enumerate(CATEGORIES)}
    reference = scorers.LabelledSet(
        np.arange(0, len(vectors), 2), vectors[::2], np.array([index[c] for c in truth[::2]]), []
    )
    model = SuggestionModel(
        Clusters(1, BACKBONE, np.eye(3, DIM, dtype=np.float32), list(CATEGORIES), np.eye(3)),
        method="knn",
        reference=reference,
    )
    at_once = model.category_probabilities(vectors)
    monkeypatch.setattr(scorers, "KNN_BLOCK_ENTRIES", 7 * len(reference.vectors))
    in_blocks = model.category_probabilities(vectors)
    assert np.allclose(at_once, in_blocks)
    assert np.allclose(in_blocks.sum(axis=1), 1.0)


def test_refit_fits_the_fused_model_stores_its_threshold_and_each_signal(
    db: Database, settings: Settings, clean_db: None
) -> None:
    vectors, truth = blobs(30)
    ids = insert_rows(db, vectors, truth)
    untitled = ids[1]
    with db.transaction() as session:
        for listing_id, category in zip(ids, truth, strict=True):
            if listing_id != untitled:
                session.get(Listing, listing_id).title = f"a fine {category[:-1]} no {listing_id}"  # type: ignore[union-attr]
    fused = settings.replace(suggestion_method="fused", review_audit_rate=0.0)

    result = refit(db, fused)

    with db.transaction() as session:
        version = session.get(ClusteringVersion, result.version_id)
        assert version is not None and version.suggestion_method == "fused"
        assert version.target_precision == fused.suggestions.target_precision
        assert version.threshold is not None and 0.0 < version.threshold <= 1.0
        assert (
            version.estimated_precision is not None
            and version.estimated_precision >= fused.suggestions.target_precision
        )
        assert version.estimated_coverage is not None and version.estimated_coverage > 0.5
        suggestions = {s.listing_id: s for s in session.execute(select(Suggestion)).scalars()}
        assert {s.method for s in suggestions.values()} == {"fused"}
        assert set(suggestions[ids[0]].signals or {}) == {"image", "title"}
        assert set(suggestions[untitled].signals or {}) == {"image"}  # no title: the photo alone
        assert suggestions[ids[0]].signals["title"]["category"] == truth[0]  # type: ignore[index]
        assert all(s.needs_review == (s.confidence < version.threshold) for s in suggestions.values())
        # A worker loads the same fitted model from the version and suggests the same.
        from common.suggestions.rows import load_suggestion_model

        model = load_suggestion_model(session, BACKBONE, fused)
        assert model is not None and model.version_id == version.id
        titles = [session.get(Listing, i).title for i in ids]  # type: ignore[union-attr]
        again = model.score(vectors, titles, ids)
    for listing_id, scored in zip(ids, again, strict=True):
        assert scored.category == suggestions[listing_id].category
        assert scored.confidence == pytest.approx(suggestions[listing_id].confidence, abs=1e-5)
