"""Webhooks: a source's receivers told of its listings' outcomes, through an outbox in Postgres.

A state change (a suggestion, a flag for review, a moderator's decision, a failure) writes one
`webhook_delivery` row per interested subscription in its own transaction (`events`); the
sender (`sender`, a worker of the `webhooks` queue) posts each one signed (`signing`), in order
per listing, and tries again with backoff until the retry window closes. Receivers refused by
the SSRF guard of photos (`common.photos.urls`) are never connected to (`subscriptions`).
"""

# The events a subscription may ask for, as they are named on the wire (`Vitrine-Event`).
LISTING_SUGGESTED = "listing.suggested"  # a suggestion accepted without a moderator
LISTING_NEEDS_REVIEW = "listing.needs_review"  # a suggestion waiting for a moderator
LISTING_REVIEWED = "listing.reviewed"  # a moderator decided
LISTING_FAILED = "listing.failed"  # the listing cannot be categorised (see its failure_reason)
EVENTS = (LISTING_SUGGESTED, LISTING_NEEDS_REVIEW, LISTING_REVIEWED, LISTING_FAILED)
