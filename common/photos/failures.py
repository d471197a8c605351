"""Why a photo could not be used, and whose fault that is: the taxonomy every stage records.

Every failure says whose fault it is (`Fault`): the photo's is recorded at once; a failing image
host is tried again within the attempts cap; our own object store being away is tried again
without limit; a bug of ours is tried again within the cap and then recorded as such.
"""

from __future__ import annotations

from enum import StrEnum


class FailureReason(StrEnum):
    """Machine-readable reasons stored in `listing.failure_reason`."""

    invalid_url = "invalid_url"
    host_not_allowed = "host_not_allowed"
    bucket_not_allowed = "bucket_not_allowed"
    private_address = "private_address"
    fetch_failed = "fetch_failed"  # DNS, connection refused, HTTP error status, missing object
    fetch_timeout = "fetch_timeout"  # no complete answer within the per-photo deadline
    storage_unavailable = "storage_unavailable"  # our object store away: retried, never final
    too_many_bytes = "too_many_bytes"
    not_an_image = "not_an_image"
    unsupported_format = "unsupported_format"
    decompression_bomb = "decompression_bomb"
    image_too_large = "image_too_large"
    animated_image = "animated_image"
    corrupt_image = "corrupt_image"
    too_many_attempts = "too_many_attempts"  # the photo took its worker down every time
    internal_error = "internal_error"  # a fault of ours (a bug), retried under the attempts cap


class Fault(StrEnum):
    """Whose fault a failure is, which decides what happens to the listing."""

    photo = "photo"  # the photo or its URL: recorded at once
    source = "source"  # the image host failed to answer: tried again, counted against the cap
    ours = "ours"  # our own object store is away: tried again, never counted, never final
    bug = "bug"  # an unexpected error of ours: tried again under the cap, then `internal_error`


class ImageRejected(Exception):
    """An image cannot be used (now); `reason` is what gets stored, `fault` what happens next."""

    def __init__(self, reason: FailureReason, detail: str, fault: Fault = Fault.photo) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.fault = fault

    @classmethod
    def internal(cls, error: BaseException) -> ImageRejected:
        return cls(FailureReason.internal_error, f"{type(error).__name__}: {error}", Fault.bug)
