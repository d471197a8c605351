"""Hostile and unusual input: every case ends in its true state and reason, and its batch-mates
are unaffected. Photos are real Flipkart photos, transformed the way the case needs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from common.jobs.claims import Claimed
from common.jobs.embed import EmbedPipeline
from common.photos.decode import decode_image
from common.photos.failures import FailureReason, Fault, ImageRejected
from common.photos.fetch import fetch_http, fetch_image_bytes
from common.photos.urls import check_url_allowed
from common.runtime import Runtime
from common.schema import Listing
from common.settings import Settings, load_settings
from common.vision.backbone import Backbone
from tests.helpers import jpeg_bytes, png_bytes, real_jpeg
from vitrine.local.services import serve_bytes

EXIF_ORIENTATION = 0x0112


def _photo(index: int = 3) -> Image.Image:
    return Image.open(BytesIO(real_jpeg(index))).convert("RGB")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- Pictures that decoded wrong before -----------------------------------------------------------


def test_exif_orientation_is_applied(lite0: Backbone) -> None:
    upright = _photo()
    # What a phone stores: the pixels sideways, and a tag saying "rotate 90° clockwise to view".
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    sideways = jpeg_bytes(upright.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())

    decoded = decode_image(sideways, load_settings()).image

    assert decoded.size == upright.size
    diff = np.abs(np.asarray(decoded, dtype=np.float32) - np.asarray(upright, dtype=np.float32)).mean()
    assert diff < 8, f"mean pixel difference {diff:.1f}: not the upright photo"
    vectors = lite0.embed_images([decoded, upright, upright.transpose(Image.Transpose.ROTATE_90)])
    assert _cosine(vectors[0], vectors[1]) > 0.98 > _cosine(vectors[2], vectors[1])


def test_sixteen_bit_images_are_scaled_not_clipped_to_white() -> None:
    grey = np.asarray(_photo().convert("L"), dtype=np.uint16)
    sixteen = Image.fromarray(grey * 257)  # 16-bit greyscale
    assert sixteen.mode.startswith("I;16")

    decoded = np.asarray(decode_image(png_bytes(sixteen), load_settings()).image, dtype=np.float32)

    assert decoded.shape[2] == 3
    assert abs(decoded.mean() - grey.mean()) < 2, (decoded.mean(), grey.mean())
    assert decoded.min() < 128  # the dark parts stay dark


def test_transparent_cutouts_are_composited_on_white() -> None:
    photo = _photo()
    cutout = photo.convert("RGBA")
    alpha = np.zeros((photo.height, photo.width), dtype=np.uint8)
    alpha[photo.height // 4 : -photo.height // 4, photo.width // 4 : -photo.width // 4] = 255
    cutout.putalpha(Image.fromarray(alpha))

    decoded = np.asarray(decode_image(png_bytes(cutout), load_settings()).image)

    assert (decoded[:5, :5] == 255).all() and (decoded[-5:, -5:] == 255).all()
    centre = decoded[photo.height // 2, photo.width // 2]
    assert (centre == np.asarray(photo)[photo.height // 2, photo.width // 2]).all()


def test_large_photos_are_reduced_while_decoding() -> None:
    big = _photo().resize((6000, 6000), Image.Resampling.BILINEAR)
    settings = load_settings()
    for data in (jpeg_bytes(big), png_bytes(big)):
        loaded = decode_image(data, settings, min_side=256)
        # Never below what the model's resize needs, and far below the original.
        assert 256 <= min(loaded.image.size) <= 1024, loaded.image.size
    assert decode_image(jpeg_bytes(big), settings).image.size == (6000, 6000)


# --- Addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a00:1]/a.jpg",  # NAT64 of 10.0.0.1
        "http://[64:ff9b::7f00:1]/a.jpg",  # NAT64 of 127.0.0.1
        "http://[2002:a9fe:a9fe::]/a.jpg",  # 6to4 of 169.254.169.254
        "http://[::a00:1]/a.jpg",  # IPv4-compatible ::10.0.0.1
        "http://[::ffff:127.0.0.1]/a.jpg",  # IPv4-mapped loopback
        "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/a.jpg",  # Teredo, client 10.0.0.1
    ],
)
def test_ipv6_forms_of_private_ipv4_addresses_are_refused(url: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        check_url_allowed(url, load_settings())
    assert caught.value.reason == FailureReason.private_address


def test_a_private_host_is_allowed_on_its_configured_port_only() -> None:
    with serve_bytes({"a.jpg": real_jpeg()}) as base:
        port = int(base.rsplit(":", 1)[1])
        assert (
            fetch_http(f"{base}/a.jpg", load_settings(fetch_private_hosts=f"127.0.0.1:{port}")) == real_jpeg()
        )
        for entries in (f"127.0.0.1:{port + 1}", "127.0.0.1"):
            with pytest.raises(ImageRejected) as caught:
                fetch_http(f"{base}/a.jpg", load_settings(fetch_private_hosts=entries))
            assert caught.value.reason == FailureReason.private_address


# --- Slow and failing image hosts ---------------------------------------------------------------


@contextmanager
def dripping_server(seconds_per_byte: float) -> Iterator[str]:
    """An image host that sends its photo one byte at a time, each within any read time-out."""
    body = real_jpeg()

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(seconds_per_byte)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_deadline_bounds_the_whole_download_not_each_read() -> None:
    with dripping_server(0.05) as base:
        settings = load_settings(fetch_private_hosts=base.removeprefix("http://"), fetch_timeout=1.5)
        started = time.monotonic()
        with pytest.raises(ImageRejected) as caught:
            fetch_http(f"{base}/a.jpg", settings)
        elapsed = time.monotonic() - started
    assert caught.value.reason == FailureReason.fetch_timeout and caught.value.fault == Fault.source
    assert elapsed < 4, f"held for {elapsed:.1f}s by a host that drips"


def test_a_bad_s3_key_is_an_invalid_url_not_a_size_problem(settings: Settings, runtime: Runtime) -> None:
    with pytest.raises(ImageRejected) as caught:
        fetch_image_bytes(f"s3://{settings.store.images_bucket}/", settings, runtime.store)
    assert caught.value.reason == FailureReason.invalid_url


# --- In a batch ---------------------------------------------------------------------------------


def _listings(runtime: Runtime, urls: dict[str, str]) -> dict[str, int]:
    ids = {}
    with runtime.db.transaction() as session:
        for external_id, url in urls.items():
            listing = Listing(external_id=external_id, image_url=url, status="queued")
            session.add(listing)
            session.flush()
            ids[external_id] = listing.id
    return ids


def _states(runtime: Runtime, ids: dict[str, int]) -> dict[str, tuple[str, str | None, int, str | None]]:
    with runtime.db.transaction() as session:
        rows = session.execute(
            select(Listing.id, Listing.status, Listing.failure_reason, Listing.attempts, Listing.last_error)
        ).all()
    by_id = {row[0]: tuple(row[1:]) for row in rows}
    return {external_id: by_id[listing_id] for external_id, listing_id in ids.items()}  # type: ignore[misc]


class BuggyPipeline(EmbedPipeline):
    """The worker's pipeline with one planted bug: loading the photo of `buggy` raises KeyError."""

    buggy = "never"

    def fetch(self, item: Claimed) -> bytes:
        if item.url.endswith(self.buggy):
            raise KeyError("a bug of ours")
        return super().fetch(item)


@pytest.mark.parametrize("decode", ["pillow", "device"])
def test_every_case_in_one_batch_ends_right_and_alone(
    settings: Settings, runtime: Runtime, clean_db: None, lite0: Backbone, decode: str
) -> None:
    # `device`: JPEGs decoded by torchvision on the model's device (the CPU here), as on a GPU.
    store, bucket = runtime.store, settings.store.images_bucket
    store.ensure_bucket(bucket)
    files = {"good.jpg": real_jpeg(0), "truncated.jpg": real_jpeg(1)[:3000], "page.jpg": b"<html>" * 100}
    for name, data in files.items():
        store.put_bytes(bucket, f"photos/{name}", data, "image/jpeg")
    with serve_bytes({"good.jpg": real_jpeg(2)}) as base:
        local = settings.replace(fetch_private_hosts=[base.removeprefix("http://")])
        ids = _listings(
            runtime,
            {
                "good-s3": f"s3://{bucket}/photos/good.jpg",
                "good-http": f"{base}/good.jpg",
                "truncated": f"s3://{bucket}/photos/truncated.jpg",
                "not-an-image": f"s3://{bucket}/photos/page.jpg",
                "missing": f"s3://{bucket}/photos/nothing-here.jpg",
                "other-bucket": "s3://other-bucket/private.jpg",
                "loopback-other-port": f"http://127.0.0.1:{_closed_port()}/a.jpg",
                "buggy": f"s3://{bucket}/photos/good.jpg?buggy",
            },
        )
        pipeline = BuggyPipeline(local, runtime.db, lite0.with_decode(decode), store)
        pipeline.buggy = "?buggy"
        report = pipeline.run(list(ids.values()))

    states = _states(runtime, ids)
    assert states["good-s3"][0] == states["good-http"][0] == "embedded"
    assert states["truncated"][:2] == ("failed", "corrupt_image")
    assert states["not-an-image"][:2] == ("failed", "not_an_image")
    assert states["missing"][:2] == ("failed", "fetch_failed")
    assert states["other-bucket"][:2] == ("failed", "bucket_not_allowed")
    assert states["loopback-other-port"][:2] == ("failed", "private_address")
    # A bug of ours: not a photo failure, tried again (counted), the error kept.
    status, reason, attempts, last_error = states["buggy"]
    assert (status, reason, attempts) == ("queued", None, 1)
    assert last_error is not None and "KeyError" in last_error
    assert ids["buggy"] in report.retry
    # Tried again until the cap: then `internal_error`, naming the exception.
    for _ in range(settings.embed.max_attempts - 1):
        pipeline.run([ids["buggy"]])
    status, reason, attempts, last_error = _states(runtime, ids)["buggy"]
    assert (status, reason, attempts) == ("failed", "internal_error", settings.embed.max_attempts)


def test_our_store_being_away_never_counts_against_a_listing(
    settings: Settings, runtime: Runtime, clean_db: None, lite0: Backbone
) -> None:
    ids = _listings(runtime, {"waiting": f"s3://{settings.store.images_bucket}/photos/good.jpg"})
    away = settings.replace(s3_endpoint=f"127.0.0.1:{_closed_port()}")
    from common.object_store import ObjectStore

    pipeline = EmbedPipeline(away, runtime.db, lite0, ObjectStore.from_settings(away))
    for _ in range(settings.embed.max_attempts + 2):
        report = pipeline.run(list(ids.values()))
        assert ids["waiting"] in report.retry
    assert _states(runtime, ids)["waiting"] == ("queued", None, 0, None)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
