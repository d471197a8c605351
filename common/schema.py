"""Postgres schema: listings, embeddings, clustering versions, suggestions, moderator decisions."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class Vector(TypeDecorator[np.ndarray]):
    """float32 vectors (or matrices, shape kept by the caller) as raw bytes in a bytea column.

    Stock Postgres 15 has no vector type here; bytea of little-endian float32 is compact
    (4 bytes per value) and loads into numpy without parsing.
    """

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
        if value is None:
            return None
        return np.ascontiguousarray(value, dtype="<f4").tobytes()

    def process_result_value(self, value: Any, dialect: Any) -> np.ndarray | None:
        if value is None:
            return None
        return np.frombuffer(value, dtype="<f4")


class Base(DeclarativeBase):
    pass


class ListingStatus(enum.StrEnum):
    queued = "queued"  # accepted, waiting for the embed worker
    embedded = "embedded"  # embedded, waiting for the first clustering
    suggested = "suggested"  # terminal: a category is suggested
    reviewed = "reviewed"  # terminal: a moderator decided
    failed = "failed"  # terminal: see failure_reason


TERMINAL_STATUSES = (ListingStatus.suggested, ListingStatus.reviewed, ListingStatus.failed)


# The source today's listings and tokens were given by migration 0011, and the one a listing or
# an ingest token belongs to when none is named.
DEFAULT_SOURCE_ID = 1


class Source(Base):
    """Where listings come from: a marketplace or a storefront, holding its own ingest tokens.

    A source's token sees only its source's listings; moderators and the taxonomy are shared.
    """

    __tablename__ = "source"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Listing(Base):
    __tablename__ = "listing"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source_id: Mapped[int] = mapped_column(
        ForeignKey("source.id"), default=DEFAULT_SOURCE_ID, server_default=text(str(DEFAULT_SOURCE_ID))
    )
    # The source's own id for the listing: unique within its source only.
    external_id: Mapped[str] = mapped_column(String(200), index=True)
    image_url: Mapped[str] = mapped_column(Text)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    seller_category: Mapped[str | None] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=ListingStatus.queued)
    failure_reason: Mapped[str | None] = mapped_column(String(40))
    failure_detail: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    # When the broker accepted the listing's last message; NULL while it is not known to be sent
    # (the sweep sends those). Set after the send, never before it.
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The last fault of ours (not the photo's) met while embedding it: retried under the attempts
    # cap, then the listing fails as `internal_error` with this detail.
    last_error: Mapped[str | None] = mapped_column(Text)
    # Set when a worker claims the listing and cleared when that batch's outcome is written: a
    # listing that arrives still claimed took its worker down, and is handled alone.
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The listing's content version: a new photo increments it. Whatever is made from the
    # content (embedding, suggestion, overlay, decision) records the revision it was made from,
    # and a write for an older one is discarded (docs/reliability.md, "Revisions").
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))

    suggestion: Mapped[Suggestion | None] = relationship(back_populates="listing", uselist=False)

    __table_args__ = (
        UniqueConstraint("source_id", "external_id", name="uq_listing_source_external"),
        Index("ix_listing_status_enqueued", "status", "enqueued_at"),
        Index("ix_listing_unsent", "status", "updated_at", postgresql_where=text("enqueued_at IS NULL")),
    )


class Embedding(Base):
    __tablename__ = "embedding"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    listing_id: Mapped[int] = mapped_column(ForeignKey("listing.id", ondelete="CASCADE"))
    backbone_id: Mapped[str] = mapped_column(String(200))
    image_sha256: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[np.ndarray] = mapped_column(Vector)
    # The listing's revision whose photo this vector is of.
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("listing_id", "backbone_id", name="uq_embedding_listing_backbone"),
        Index("ix_embedding_backbone", "backbone_id", "id"),
    )


class ClusteringVersion(Base):
    __tablename__ = "clustering_version"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    backbone_id: Mapped[str] = mapped_column(String(200))
    k: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    centroids: Mapped[np.ndarray] = mapped_column(Vector)  # k × dim, row-major
    # [{"category": str | None, "share": float, "counts": {category: n}}] per cluster
    cluster_categories: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    sizes: Mapped[list[int]] = mapped_column(JSONB)
    n_vectors: Mapped[int] = mapped_column(Integer)
    n_labelled: Mapped[int] = mapped_column(Integer)
    ari: Mapped[float | None] = mapped_column(Float)
    nmi: Mapped[float | None] = mapped_column(Float)
    stability_ari: Mapped[float | None] = mapped_column(Float)
    fit_seconds: Mapped[float] = mapped_column(Float)
    algorithm: Mapped[str] = mapped_column(String(40))
    is_current: Mapped[bool] = mapped_column(Boolean, default=False)
    # What the refit fitted for suggestions (`common.suggestions.model.Fitted`, pickled) and the
    # auto-accept threshold it estimated for the target precision, with what it expects of it.
    suggestion_method: Mapped[str | None] = mapped_column(String(20))
    suggestion_model: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    target_precision: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    estimated_precision: Mapped[float | None] = mapped_column(Float)
    estimated_coverage: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        # At most one current version per backbone.
        Index(
            "uq_clustering_current",
            "backbone_id",
            unique=True,
            postgresql_where=text("is_current"),
        ),
    )

    def centroid_matrix(self) -> np.ndarray:
        return self.centroids.reshape(self.k, self.dim)


class Suggestion(Base):
    __tablename__ = "suggestion"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    listing_id: Mapped[int] = mapped_column(ForeignKey("listing.id", ondelete="CASCADE"), unique=True)
    clustering_version_id: Mapped[int] = mapped_column(ForeignKey("clustering_version.id"))
    backbone_id: Mapped[str] = mapped_column(String(200))
    cluster: Mapped[int] = mapped_column(Integer)
    category: Mapped[str | None] = mapped_column(String(200))
    confidence: Mapped[float] = mapped_column(Float)
    # [{"category": str, "score": float}], best first, top 3
    alternatives: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    method: Mapped[str] = mapped_column(String(20))
    needs_review: Mapped[bool] = mapped_column(Boolean)
    # Why it waits for a moderator (`common.suggestions.rows.ReviewReason`); None when it does not.
    review_reason: Mapped[str | None] = mapped_column(String(24))
    # Each signal's own top category and probability: {"image": {"category", "probability"},
    # "title": {...}}, so a moderator sees where the photo and the title disagree.
    signals: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    overlay_key: Mapped[str | None] = mapped_column(Text)
    heatmap_key: Mapped[str | None] = mapped_column(Text)
    explain_target: Mapped[str | None] = mapped_column(String(40))
    # The overlay of the decision before this one, kept while the item waits for a moderator and
    # its new overlay is being made (the desk shows it, marked as such); cleared, and its objects
    # deleted, when the new one is recorded.
    previous_overlay_key: Mapped[str | None] = mapped_column(Text)
    previous_heatmap_key: Mapped[str | None] = mapped_column(Text)
    previous_explain_target: Mapped[str | None] = mapped_column(String(40))
    explain_error: Mapped[str | None] = mapped_column(Text)
    # When an overlay was last asked for; NULL: not yet asked (the sweep asks).
    explain_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The listing's revision this suggestion (and its overlay) was made from.
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    listing: Mapped[Listing] = relationship(back_populates="suggestion")

    __table_args__ = (
        Index("ix_suggestion_review", "needs_review", "confidence"),
        # The review queue's index is on `common.moderation.triage.priority()`: migration 0007.
    )


class BrokerState(Base):
    """What Postgres remembers of the broker: the identity of the Redis server it last saw."""

    __tablename__ = "broker_state"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class ModeratorDecision(Base):
    """Audit row for every moderator action; the newest one is the listing's label."""

    __tablename__ = "moderator_decision"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    listing_id: Mapped[int] = mapped_column(ForeignKey("listing.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(16))  # accept | override | skip
    category: Mapped[str | None] = mapped_column(String(200))
    suggested_category: Mapped[str | None] = mapped_column(String(200))
    moderator: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    note: Mapped[str | None] = mapped_column(Text)
    # The suggestion as the moderator saw it: its confidence and clustering version.
    confidence: Mapped[float | None] = mapped_column(Float)
    clustering_version_id: Mapped[int | None] = mapped_column(BigInteger)
    # An `undo` row names the decision it reverts; the reverted row itself is never changed.
    reverts_id: Mapped[int | None] = mapped_column(ForeignKey("moderator_decision.id"))
    # The listing's revision decided on: a decision labels the listing only while it is current.
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))

    __table_args__ = (
        Index("ix_decision_listing", "listing_id", "id"),
        Index("ix_decision_created", "created_at"),
        Index("ix_decision_moderator", "moderator", "id"),
        Index(
            "uq_decision_reverted", "reverts_id", unique=True, postgresql_where=text("reverts_id IS NOT NULL")
        ),
    )


class AccountRole(enum.StrEnum):
    moderator = "moderator"
    admin = "admin"


class Account(Base):
    """A person who signs in to the review app; the password is stored as an argon2 hash only."""

    __tablename__ = "account"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16), default=AccountRole.moderator)
    password_hash: Mapped[str] = mapped_column(Text)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TokenScope(enum.StrEnum):
    ingest = "ingest"  # a marketplace sends listings and reads their outcome
    review = "review"  # a moderator's program claims and decides


class ApiToken(Base):
    """A bearer token for the HTTP API; only its SHA-256 is stored."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The moderator a review token acts as (its account's state is checked on every use).
    account_id: Mapped[int | None] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    # The source an ingest token sends for and reads from (None for a review token).
    source_id: Mapped[int | None] = mapped_column(ForeignKey("source.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Refused from then on: a set expiry, the end of a rotation's overlap, or now (revoked).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Updated at most once a minute, so a busy token costs one write a minute, not one a call.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AccountSession(Base):
    """A signed-in browser: the cookie names it, so signing out or disabling ends it at once."""

    __tablename__ = "account_session"

    # SHA-256 of the session id the cookie carries; the id itself is never stored.
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReviewLease(Base):
    """A flagged listing held by one moderator until `expires_at`; expired leases are free again."""

    __tablename__ = "review_lease"

    listing_id: Mapped[int] = mapped_column(ForeignKey("listing.id", ondelete="CASCADE"), primary_key=True)
    moderator: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The listing's revision claimed: a new photo ends the claim, and a decision under it is refused.
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))


class WebhookSubscription(Base):
    """A receiver of a source's listing events (`common.webhooks`); `secret` signs every delivery."""

    __tablename__ = "webhook_subscription"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    # A shared secret, kept as given: the HMAC that signs a delivery needs it, not a hash of it.
    secret: Mapped[str] = mapped_column(String(100))
    events: Mapped[list[str]] = mapped_column(ARRAY(String(40)))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Paused or removed by an operator: nothing more is recorded for it, nothing more sent.
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


_PENDING = text("status = 'pending'")


class WebhookDelivery(Base):
    """One event for one subscription: the outbox row, written with the change it reports."""

    __tablename__ = "webhook_delivery"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscription.id", ondelete="CASCADE"))
    # No foreign key: the delivery log outlives a deleted listing.
    listing_id: Mapped[int] = mapped_column(BigInteger)
    external_id: Mapped[str] = mapped_column(String(200))
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))  # | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Not tried before then: the backoff, or the lease of a sender that has it in hand.
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_status: Mapped[int | None] = mapped_column(Integer)  # the receiver's last HTTP status
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_webhook_due", "next_attempt_at", postgresql_where=_PENDING),
        # The sender's "nothing earlier still pending for this listing" check; the log's reads.
        Index("ix_webhook_chain", "subscription_id", "listing_id", "id", postgresql_where=_PENDING),
        Index("ix_webhook_subscription_log", "subscription_id", "id"),
    )
