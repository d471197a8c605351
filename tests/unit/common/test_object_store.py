"""Presigned URLs are signed for the address their users reach, not the one inside the network."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import SecretStr

from common.object_store import ObjectStore, overlay_url
from common.settings import load_settings


def test_presigned_urls_name_the_public_endpoint_when_one_is_set() -> None:
    # compose: the workers talk to minio:9000, browsers reach the published 127.0.0.1:9000.
    settings = load_settings().replace(
        s3_endpoint="minio:9000",
        s3_secret_key=SecretStr("secret"),
        s3_public_endpoint="https://s3.example.com",
    )
    store = ObjectStore.from_settings(settings)
    url = urlsplit(store.presigned_get("vitrine-overlays", "overlays/1/a.png", 900))
    assert (url.scheme, url.netloc) == ("https", "s3.example.com")
    assert url.path == "/vitrine-overlays/overlays/1/a.png"
    assert "X-Amz-Signature=" in url.query and "X-Amz-SignedHeaders=host" in url.query
    # The API's overlay and heatmap URLs go the same way.
    assert (overlay_url(store, settings, "overlays/1/a.png") or "").startswith("https://s3.example.com/")
    # The store itself still talks to the internal address.
    assert store.client._base_url.host == "minio:9000"


def test_without_a_public_endpoint_urls_name_the_store_endpoint() -> None:
    settings = load_settings().replace(s3_endpoint="127.0.0.1:9000", s3_secret_key=SecretStr("secret"))
    url = urlsplit(ObjectStore.from_settings(settings).presigned_get("vitrine-overlays", "k", 60))
    assert (url.scheme, url.netloc) == ("http", "127.0.0.1:9000")
