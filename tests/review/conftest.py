"""The review app on this session's real Postgres, Redis and S3, with accounts, tokens and queue items."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from common.db import Database
from common.moderation.accounts import add_token, add_user
from common.runtime import Runtime
from common.schema import ClusteringVersion, Listing, ListingStatus, Suggestion
from common.settings import Settings
from review.app import create_app

PASSWORD = "correct horse battery"
CATEGORIES = ("Watches", "Footwear", "Kitchen & Dining", "Jewellery")


@pytest.fixture
def review_settings(settings: Settings) -> Settings:
    return settings.replace(session_secret=SecretStr("s" * 32), sign_in_delay=0.05)


@pytest.fixture
def client(review_settings: Settings, runtime: Runtime, clean_db: None) -> Iterator[TestClient]:
    with TestClient(create_app(review_settings, runtime)) as made:
        yield made


@dataclass(frozen=True)
class Tokens:
    ingest: str
    alice: str  # review token of moderator alice
    bob: str  # review token of moderator bob


@pytest.fixture
def tokens(db: Database, clean_db: None) -> Tokens:
    with db.transaction() as session:
        add_user(session, "alice", PASSWORD)
        add_user(session, "bob", PASSWORD)
        add_user(session, "root", PASSWORD, role="admin")
        return Tokens(
            ingest=add_token(session, "shop", "ingest"),
            alice=add_token(session, "alice", "review"),
            bob=add_token(session, "bob", "review"),
        )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def add_flagged(
    db: Database,
    items: list[tuple[str, float]],
    *,
    category: str = "Watches",
    reason: str = "low_confidence",
    title: str | None = None,
    seller_category: str | None = None,
    signals: dict[str, dict[str, object]] | None = None,
) -> list[int]:
    """Suggested listings waiting for review: (external id, confidence) each, under one clustering."""
    with db.transaction() as session:
        version = session.query(ClusteringVersion).filter_by(is_current=True).one_or_none()
        if version is None:
            version = ClusteringVersion(
                backbone_id="test@0",
                k=2,
                dim=2,
                centroids=np.eye(2, dtype=np.float32),
                cluster_categories=[
                    {"category": "Watches", "share": 0.9, "counts": {c: 1 for c in CATEGORIES}},
                    {"category": "Footwear", "share": 0.8, "counts": {"Footwear": 4}},
                ],
                sizes=[10, 5],
                n_vectors=15,
                n_labelled=12,
                ari=0.5,
                nmi=0.6,
                stability_ari=None,
                fit_seconds=0.1,
                algorithm="kmeans",
                is_current=True,
                target_precision=0.95,
                threshold=0.72,
                estimated_precision=0.951,
                estimated_coverage=0.61,
            )
            session.add(version)
            session.flush()
        ids = []
        for external_id, confidence in items:
            listing = Listing(
                external_id=external_id,
                image_url=f"https://photos.example/{external_id}.jpg",
                status=ListingStatus.suggested,
                title=title or f"item {external_id}",
                seller_category=seller_category,
            )
            session.add(listing)
            session.flush()
            others = [c for c in CATEGORIES if c != category]
            session.add(
                Suggestion(
                    listing_id=listing.id,
                    clustering_version_id=version.id,
                    backbone_id="test@0",
                    cluster=0,
                    category=category,
                    confidence=confidence,
                    alternatives=[
                        {"category": category, "score": confidence},
                        {"category": others[0], "score": (1 - confidence) / 2},
                        {"category": others[1], "score": (1 - confidence) / 3},
                    ],
                    method="knn",
                    needs_review=True,
                    review_reason=reason,
                    signals=signals,
                )
            )
            ids.append(listing.id)
        return ids
