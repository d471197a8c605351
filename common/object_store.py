"""Object storage (MinIO, or any S3 endpoint) through the `minio` SDK."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from io import BytesIO
from pathlib import Path

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from common.settings import Settings

PROBE_TIMEOUT = 3.0
DELETE_BATCH = 1000  # S3's limit per multi-object delete
OVERLAYS = "overlays/"  # every listing's overlay and heatmap live under OVERLAYS/<listing id>/
# What talking to the object store can raise: the SDK's own errors, and the HTTP and socket
# errors under it once its retries are spent.
STORAGE_ERRORS: tuple[type[Exception], ...] = (MinioException, urllib3.exceptions.HTTPError, OSError)


class ObjectTooLarge(ValueError):
    """The object is larger than the caller accepts; nothing of it was read."""


@dataclass
class ObjectStore:
    client: Minio
    # Signs presigned URLs for the address their users reach (`s3_public_endpoint`); None: `client`.
    # Presigning is computed locally (the region is given), so this client never connects.
    public: Minio | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, probe: bool = False) -> ObjectStore:
        """The store of the settings; `probe`: one short try, for health checks that must not hang."""
        endpoint = settings.store.s3_endpoint.removeprefix("http://").removeprefix("https://")
        secret = settings.store.s3_secret_key.get_secret_value()
        if probe:
            timeout = urllib3.Timeout(connect=PROBE_TIMEOUT, read=PROBE_TIMEOUT)
            retries = urllib3.Retry(total=0)
        else:
            # Bounded time-outs and a few retries: a slow store must not hang a worker's batch.
            timeout = urllib3.Timeout(connect=5, read=30)
            retries = urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504))
        client = Minio(
            endpoint,
            # Empty keys mean anonymous access (public buckets), not an error at start-up.
            access_key=settings.store.s3_access_key if secret else None,
            secret_key=secret or None,
            http_client=urllib3.PoolManager(timeout=timeout, retries=retries, maxsize=10),
            secure=settings.store.s3_secure or settings.store.s3_endpoint.startswith("https://"),
            region=settings.store.s3_region,
        )
        public = None
        if settings.store.s3_public_endpoint:
            address = settings.store.s3_public_endpoint
            public = Minio(
                address.removeprefix("http://").removeprefix("https://"),
                access_key=settings.store.s3_access_key if secret else None,
                secret_key=secret or None,
                secure=address.startswith("https://"),
                region=settings.store.s3_region,
            )
        return cls(client, public)

    def ensure_bucket(self, bucket: str) -> None:
        if not self.client.bucket_exists(bucket):
            try:
                self.client.make_bucket(bucket)
            except S3Error as error:  # created meanwhile by another process
                if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.client.stat_object(bucket, key)
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                return False
            raise
        return True

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> bool:
        """Write once: returns False (and writes nothing) when the key already exists."""
        if self.exists(bucket, key):
            return False
        self.client.put_object(bucket, key, BytesIO(data), len(data), content_type=content_type)
        return True

    def get_bytes(self, bucket: str, key: str, max_bytes: int) -> bytes:
        size = self.client.stat_object(bucket, key).size or 0
        if size > max_bytes:
            raise ObjectTooLarge(f"object is {size} bytes, limit {max_bytes}")
        response = self.client.get_object(bucket, key)
        try:
            return response.read(max_bytes + 1)[:max_bytes]
        finally:
            response.close()
            response.release_conn()

    def delete_keys(self, bucket: str, keys: Sequence[str]) -> int:
        """Delete these objects; returns how many could be deleted (missing ones count as deleted)."""
        deleted = 0
        for start in range(0, len(keys), DELETE_BATCH):
            chunk = [DeleteObject(key) for key in keys[start : start + DELETE_BATCH]]
            # remove_objects is lazy: iterating it performs the deletes and yields the failures.
            deleted += len(chunk) - len(list(self.client.remove_objects(bucket, chunk)))
        return deleted

    def delete_prefix(self, bucket: str, prefix: str, keep: frozenset[str] = frozenset()) -> int:
        """Delete the objects under `prefix` except `keep`; returns how many could be deleted."""
        doomed = [
            DeleteObject(item.object_name)
            for item in self.client.list_objects(bucket, prefix=prefix, recursive=True)
            if item.object_name and item.object_name not in keep
        ]
        if not doomed:
            return 0
        # remove_objects is lazy: iterating it performs the deletes and yields the failures.
        failures = list(self.client.remove_objects(bucket, doomed))
        return len(doomed) - len(failures)

    def presigned_get(self, bucket: str, key: str, expiry_seconds: int) -> str:
        """A URL for the object's user: signed for the public address where one is set."""
        signer = self.public or self.client
        return signer.presigned_get_object(bucket, key, expires=timedelta(seconds=expiry_seconds))

    def upload_photo(self, bucket: str, path: Path, prefix: str = "photos/") -> str:
        """Upload a listing photo under a content-addressed key below `prefix` (the deployment's
        `images_prefix`); returns its s3:// URL."""
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        key = f"{prefix}{digest[:2]}/{digest}{path.suffix.lower()}"
        self.put_bytes(bucket, key, data, content_type=_content_type(path))
        return f"s3://{bucket}/{key}"


def _content_type(path: Path) -> str:
    return {
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".png": "image/png",
        ".webp": "image/webp",
    }.get(path.suffix.lower(), "application/octet-stream")


def overlay_url(store: ObjectStore, settings: Settings, key: str | None) -> str | None:
    """A short-lived URL of an overlay or heatmap object; None without a key or while the store is away."""
    if not key:
        return None
    try:
        return store.presigned_get(settings.store.overlay_bucket, key, settings.store.presign_expiry)
    except STORAGE_ERRORS:
        return None
