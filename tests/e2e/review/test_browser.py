"""A moderator in a real browser: Debian's headless chromium, driven by Playwright.

Signs in, reviews three items with the keyboard, watches the counts change, undoes one, and
checks that a hostile title is shown as text. Screenshots go to out/screenshots/.
"""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import Page, sync_playwright
from sqlalchemy import update

from common.db import Database
from common.object_store import ObjectStore
from common.runtime import Runtime
from common.schema import ClusteringVersion, Listing, Suggestion
from common.settings import Settings
from review.app import create_app
from tests.conftest import FLIPKART, ROOT
from tests.fixtures.review import PASSWORD, Tokens, add_flagged

SCREENSHOTS = ROOT / "out" / "screenshots"
HOSTILE = '<script>window.__owned = 1</script><img src=x onerror="window.__owned = 2">'
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "Debian's chromium is needed: `make install` installs it (apt-get install chromium)"
    return found


@pytest.fixture
def server(review_settings: Settings, runtime: Runtime, clean_db: None) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(review_settings, runtime), host="127.0.0.1", port=port, log_level="warning"
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not running.started:
        assert time.monotonic() < deadline, "the review app did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)


def _heatmap(size: tuple[int, int]) -> bytes:
    """A grey heatmap bright in the middle, as the explain worker writes them."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    heat = np.exp(-(((x - w / 2) / (w / 4)) ** 2 + ((y - h / 2) / (h / 4)) ** 2))
    out = io.BytesIO()
    Image.fromarray((heat * 255).astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def queue(
    db: Database, store: ObjectStore, settings: Settings, flipkart_labels: list[dict[str, str]]
) -> list[str]:
    """Five flagged listings with real product photos; the first has a hostile title and an overlay."""
    rows = [r for r in flipkart_labels if r["category"] in ("Watches", "Footwear", "Jewellery")][:5]
    store.ensure_bucket(settings.store.images_bucket)
    store.ensure_bucket(settings.store.overlay_bucket)
    ids = [f"b{i}" for i in range(5)]
    with db.transaction() as session:
        # Two earlier refits, so that the dashboard's chart has lines to draw.
        for n, (ari, nmi, stability) in enumerate([(0.31, 0.45, None), (0.42, 0.52, 0.8)]):
            session.add(
                ClusteringVersion(
                    backbone_id="test@0",
                    k=2,
                    dim=2,
                    centroids=np.eye(2, dtype=np.float32),
                    cluster_categories=[],
                    sizes=[8, 4],
                    n_vectors=12,
                    n_labelled=8 + n,
                    ari=ari,
                    nmi=nmi,
                    stability_ari=stability,
                    fit_seconds=0.1,
                    algorithm="kmeans",
                    is_current=False,
                )
            )
    add_flagged(db, [(ids[0], 0.05)], title=HOSTILE, seller_category="Footwear")
    add_flagged(db, [(i, 0.1 + n / 10) for n, i in enumerate(ids[1:])], reason="seller_disagrees")
    with db.transaction() as session:
        for external_id, row in zip(ids, rows, strict=True):
            photo = FLIPKART / "images" / row["image"]
            url = store.upload_photo(settings.store.images_bucket, photo)
            values: dict[str, object] = {"image_url": url}
            if external_id != ids[0]:
                values["title"] = row["product_name"]
            session.execute(update(Listing).where(Listing.external_id == external_id).values(**values))
        first = FLIPKART / "images" / rows[0]["image"]
        with Image.open(first) as image:
            store.put_bytes(
                settings.store.overlay_bucket, "overlays/test/heatmap.png", _heatmap(image.size), "image/png"
            )
        session.execute(
            update(Suggestion)
            .where(Suggestion.listing_id == Listing.id, Listing.external_id == ids[0])
            .values(heatmap_key="overlays/test/heatmap.png")
        )
    return ids


def _count(page: Page, element: str) -> int:
    return int(page.locator(f"#{element}").inner_text())


def _key(page: Page, key: str) -> None:
    with page.expect_navigation():
        page.keyboard.press(key)


def test_a_moderator_reviews_with_the_keyboard(server: str, tokens: Tokens, queue: list[str]) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(f"{server}/review")
            assert "/sign-in" in page.url
            page.fill("input[name=name]", "alice")
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.url.endswith("/review")

            # The hostile title is text, and nothing of it ran.
            assert page.locator("#item-title").inner_text() == HOSTILE
            assert page.evaluate("window.__owned") is None and not dialogs
            assert page.locator("#seller").inner_text() == "Footwear"
            page.wait_for_function("document.getElementById('photo').naturalWidth > 0")
            assert page.locator("#heat").is_visible()
            page.keyboard.press("o")
            assert page.locator("#heat").is_hidden()
            page.keyboard.press("o")
            page.keyboard.press("?")
            assert page.locator("#help").is_visible()
            page.keyboard.press("?")
            assert _count(page, "waiting-total") == 5 and _count(page, "decided-today") == 0
            page.screenshot(path=str(SCREENSHOTS / "review-queue.png"), full_page=True)

            _key(page, "a")  # accept b0
            assert (_count(page, "waiting-total"), _count(page, "decided-today")) == (4, 1)
            _key(page, "2")  # b1: the second of the top 3
            assert (_count(page, "waiting-total"), _count(page, "decided-today")) == (3, 2)
            page.keyboard.press("/")
            page.keyboard.type("Jewellery")
            with page.expect_navigation():
                page.keyboard.press("Enter")  # b2: any category, searched
            assert (_count(page, "waiting-total"), _count(page, "decided-today")) == (2, 3)
            assert "Jewellery" in page.locator("#undo-form").inner_text()

            _key(page, "u")  # b2 back to the queue, and to this moderator
            assert (_count(page, "waiting-total"), _count(page, "decided-today")) == (3, 2)
            assert "/review/b2/decide" in (page.locator("#decide-form").get_attribute("action") or "")
            _key(page, "s")  # skip b2: someone else's now
            assert "/review/b3/decide" in (page.locator("#decide-form").get_attribute("action") or "")

            page.goto(f"{server}/history")
            rows = page.locator("#history tr").all_inner_texts()
            assert any("undo" in r for r in rows) and any("override" in r and "Jewellery" in r for r in rows)
            assert page.evaluate("window.__owned") is None and not dialogs
            page.goto(f"{server}/dashboard")
            assert page.locator("svg polyline").count() >= 2
            page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert Path(SCREENSHOTS / "review-queue.png").stat().st_size > 10_000
