"""A moderator in a real browser: Debian's headless chromium, driven by Playwright.

Signs in and works through 32 items by keyboard (candidates, a searched category, notes, skips,
an undo, the category filter), checks that a hostile title is shown as text, that the page's CSP
reports nothing, that every image loaded and that the page fits 1366×768 and a 390 px phone; a
decision posted while the connection is cut is retried. Screenshots go to out/screenshots/.
"""

from __future__ import annotations

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
from playwright.sync_api import Page, Route, sync_playwright
from sqlalchemy import func, select, update

from common.db import Database
from common.moderation.labels import standing
from common.object_store import ObjectStore
from common.runtime import Runtime
from common.schema import ClusteringVersion, Embedding, Listing, ModeratorDecision, ReviewLease, Suggestion
from common.settings import Settings
from common.vision.backbone import Backbone
from common.vision.gradcam import gradcam
from common.vision.overlay import render_pngs
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


# Random directions in 16 dimensions are far apart; these two are near the first item (a group).
DIM = 16
LOOK_ALIKES = ("b7", "b8")
FOOTWEAR = 6  # items of the queue suggested as Footwear (the filter's share)
QUEUE = 32


@pytest.fixture
def queue(
    db: Database,
    store: ObjectStore,
    settings: Settings,
    flipkart_labels: list[dict[str, str]],
    lite0: Backbone,
) -> list[str]:
    """32 flagged listings with real product photos, and six labelled ones beside them.

    The first has a hostile title, a wide photo and its Grad-CAM overlay (made by the pretrained
    backbone, as the explain worker makes them); six are suggested as Footwear; every listing has
    an embedding, so the desk shows labelled neighbours and examples of each candidate category.
    """
    rows = [r for r in flipkart_labels if r["category"] in ("Watches", "Footwear", "Jewellery")]
    wide = next(r for r in rows if r["category"] == "Watches" and _aspect(r) >= 1.3)
    rows.remove(wide)
    rows.insert(0, wide)
    store.ensure_bucket(settings.store.images_bucket)
    store.ensure_bucket(settings.store.overlay_bucket)
    ids = [f"b{i}" for i in range(QUEUE)]
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
    footwear = ids[1 : 1 + FOOTWEAR]
    add_flagged(db, [(i, 0.3 + n / 100) for n, i in enumerate(footwear)], category="Footwear")
    rest = ids[1 + FOOTWEAR :]
    add_flagged(db, [(i, 0.1 + n / 100) for n, i in enumerate(rest)], reason="seller_disagrees")
    labelled = [f"l{i}" for i in range(6)]
    add_flagged(db, [(i, 0.9) for i in labelled])
    rng = np.random.default_rng(0)
    lead = rng.normal(size=DIM).astype(np.float32)
    with db.transaction() as session:
        for n, (external_id, row) in enumerate(zip(ids + labelled, rows, strict=False)):
            photo = FLIPKART / "images" / row["image"]
            url = store.upload_photo(settings.store.images_bucket, photo)
            values: dict[str, object] = {"image_url": url}
            if external_id != ids[0]:
                values["title"] = row["product_name"]
            if external_id in labelled:
                values["seller_category"] = ("Watches", "Footwear", "Jewellery")[n % 3]
            session.execute(update(Listing).where(Listing.external_id == external_id).values(**values))
            listing_id = session.execute(
                select(Listing.id).where(Listing.external_id == external_id)
            ).scalar_one()
            vector = rng.normal(size=DIM).astype(np.float32)
            if external_id in LOOK_ALIKES:  # the first item's photo listed again, nearly the same
                vector = lead + 0.05 * vector
            elif external_id == ids[0]:
                vector = lead
            session.add(
                Embedding(
                    listing_id=listing_id,
                    backbone_id="test@0",
                    image_sha256="0" * 64,
                    dim=DIM,
                    vector=vector / np.linalg.norm(vector),
                )
            )
        session.execute(
            update(Suggestion)
            .where(Suggestion.listing_id == Listing.id, Listing.external_id.in_(labelled))
            .values(needs_review=False, review_reason=None)
        )
        with Image.open(FLIPKART / "images" / rows[0]["image"]) as opened:
            first = opened.convert("RGB")
        overlay, heatmap = render_pngs(first, gradcam(lite0, [first], [None])[0], lite0.transform)
        bucket = settings.store.overlay_bucket
        store.put_bytes(bucket, "overlays/test/overlay.png", overlay, "image/png")
        store.put_bytes(bucket, "overlays/test/heatmap.png", heatmap, "image/png")
        session.execute(
            update(Suggestion)
            .where(Suggestion.listing_id == Listing.id, Listing.external_id == ids[0])
            .values(heatmap_key="overlays/test/heatmap.png", overlay_key="overlays/test/overlay.png")
        )
    return ids


def _aspect(row: dict[str, str]) -> float:
    with Image.open(FLIPKART / "images" / row["image"]) as image:
        return image.width / image.height


def _count(page: Page, element: str) -> int:
    return int(page.locator(f"#{element}").inner_text())


def _until(page: Page, script: str, arg: object = None, timeout: float = 10.0) -> None:
    """Wait until `script` (a JS function of `arg`) is true in the page.

    Polled with `evaluate`, which the page's CSP allows, unlike `wait_for_function` (it evaluates
    a string inside the page, which `script-src 'self'` forbids).
    """
    deadline = time.monotonic() + timeout
    while not page.evaluate(script, arg):
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        time.sleep(0.02)


def _title(page: Page) -> str:
    return page.locator("#item-title").inner_text()


def _press(page: Page, key: str) -> str:
    """Press a decision key; the next item is on screen when this returns. Its title."""
    before = _shown(page)
    page.keyboard.press(key)
    _until(
        page,
        "(before) => { const item = document.querySelector('.desk-item');"
        " return !item || item.dataset.externalId !== before; }",
        before,
    )
    page.wait_for_timeout(160)  # the desk ignores a second press within 150 ms (a bounce)
    return _shown(page)


def _shown(page: Page) -> str:
    """The external id of the item on screen; "" when none is."""
    return str(page.evaluate("() => document.querySelector('.desk-item')?.dataset.externalId || ''"))


def _settled(page: Page) -> None:
    """Every decision posted and answered (the desk's outbox is empty)."""
    _until(page, "() => document.getElementById('retry').hidden")
    page.wait_for_load_state("networkidle")


def _images_loaded(page: Page) -> int:
    """How many images the shown item has; each has loaded (naturalWidth > 0)."""
    _until(page, "() => Array.from(document.querySelectorAll('#desk img')).every(i => i.complete)")
    widths = page.eval_on_selector_all("#desk img", "images => images.map(i => i.naturalWidth)")
    assert all(w > 0 for w in widths), widths
    return len(widths)


def test_a_moderator_reviews_with_the_keyboard(
    server: str, tokens: Tokens, queue: list[str], db: Database
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(f"{server}/review")
            assert "/sign-in" in page.url
            page.fill("input[name=name]", "alice")
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.url.endswith("/review")

            # The hostile title is text, and nothing of it ran.
            assert _title(page) == HOSTILE
            assert page.evaluate("window.__owned") is None and not dialogs
            assert page.locator("#seller").inner_text() == "Footwear"
            assert _images_loaded(page) >= 3  # photo, heatmap, the candidates' examples, neighbours
            # At 1366×768 the decision, the overlay controls and the examples are above the fold.
            for selector in ('button[data-key="a"]', "#heat-toggle", ".examples img", 'button[data-key="s"]'):
                box = page.locator(selector).first.bounding_box()
                assert box is not None and box["y"] + box["height"] <= 768, selector
            assert page.evaluate("document.documentElement.scrollWidth") <= 1366
            assert page.locator("#heat").is_visible()
            page.keyboard.press("o")
            assert page.locator("#heat").is_hidden()
            page.keyboard.press("o")
            page.keyboard.press("?")
            assert page.locator("#help").is_visible()
            page.keyboard.press("?")
            page.keyboard.press("z")
            assert page.locator(".photo.zoomed").count() == 1
            page.keyboard.press("z")
            assert _count(page, "waiting-total") == len(queue) and _count(page, "decided-today") == 0
            # The two look-alikes come with it, ticked, their thumbnails loaded.
            members = page.eval_on_selector_all(
                "#group input[name=member]", "boxes => boxes.map(b => b.value)"
            )
            assert sorted(members) == list(LOOK_ALIKES)
            page.screenshot(path=str(SCREENSHOTS / "review-desk-1366x768.png"))

            # Enter in the note never decides; Ctrl+Enter accepts, with the note.
            page.locator("#note").click()
            page.keyboard.type("checked the strap")
            page.keyboard.press("Enter")
            page.wait_for_timeout(300)
            assert _title(page) == HOSTILE
            page.keyboard.press("Control+Enter")
            _until(page, "() => document.querySelector('.desk-item').dataset.externalId !== 'b0'")
            # A bounce (the same key twice at once) decides one item, not two.
            second = _shown(page)
            page.keyboard.press("a")
            page.keyboard.press("a")
            page.wait_for_timeout(400)
            third = _shown(page)
            assert third != second
            _settled(page)
            noted = ("accept", "checked the strap")
            assert _decided(db) == {"b0": noted, "b7": noted, "b8": noted, second: ("accept", None)}

            # The category filter by keyboard: the keys work again as soon as it is chosen.
            page.keyboard.press("f")
            assert page.evaluate("document.activeElement.id") == "filter-category"
            page.select_option("#filter-category", "Footwear")
            _until(page, "() => document.querySelector('#suggested')?.innerText === 'Footwear'")
            assert page.evaluate("document.activeElement === document.body")
            decided_footwear = []
            while (
                page.locator("#suggested").count() and page.locator("#suggested").inner_text() == "Footwear"
            ):
                decided_footwear.append(_shown(page))
                _press(page, "a")
            assert len(decided_footwear) == FOOTWEAR
            page.select_option("#filter-category", "")
            _until(page, "() => document.querySelector('.desk-item') !== null")

            # Through the rest: candidates, a searched category, skips, notes, an undo.
            actions = 3 + FOOTWEAR
            while page.locator(".desk-item").count():
                n = actions % 5
                if n == 0:
                    _press(page, "2")
                elif n == 1:
                    page.keyboard.press("/")
                    page.keyboard.type("Jewellery")
                    before = _shown(page)
                    page.keyboard.press("Enter")
                    _until(
                        page, "(b) => document.querySelector('.desk-item')?.dataset.externalId !== b", before
                    )
                    page.wait_for_timeout(160)
                elif n == 2:
                    _press(page, "s")
                elif n == 3 and actions == 13:
                    undone = _shown(page)
                    _press(page, "a")
                    _settled(page)
                    page.keyboard.press("u")
                    _until(
                        page, "(u) => document.querySelector('.desk-item')?.dataset.externalId === u", undone
                    )
                    _press(page, "a")
                else:
                    _press(page, "a")
                actions += 1
            _settled(page)
            assert actions >= 30, actions
            assert page.locator("#empty").is_visible()
            decided = _decided(db)
            assert len(decided) == len(queue), sorted(set(queue) - set(decided))
            assert _count(page, "waiting-total") == 0
            assert _count(page, "skipped") == sum(1 for action, _ in decided.values() if action == "skip")
            assert not [line for line in console if "Content Security Policy" in line], console
            assert page.evaluate("window.__owned") is None and not dialogs

            page.goto(f"{server}/history")
            rows = page.locator("#history tr").all_inner_texts()
            assert any("undo" in r for r in rows) and any("override" in r and "Jewellery" in r for r in rows)
            page.goto(f"{server}/dashboard")
            assert page.locator("svg polyline").count() >= 2
            page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert Path(SCREENSHOTS / "review-desk-1366x768.png").stat().st_size > 10_000


def test_the_desk_on_a_phone_and_through_a_lost_connection(
    server: str, tokens: Tokens, queue: list[str], db: Database
) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            # A phone set to the dark theme: the desk follows it.
            page = browser.new_page(viewport={"width": 390, "height": 844}, color_scheme="dark")
            page.goto(f"{server}/sign-in")
            page.fill("input[name=name]", "bob")
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            page.goto(f"{server}/review")
            _images_loaded(page)
            # No horizontal scrolling at 390 px: long ids wrap, the columns stack.
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            background = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(21, 24, 28)", background
            page.screenshot(path=str(SCREENSHOTS / "review-desk-390.png"), full_page=True)
            # The connection drops for a decision: the desk moves on, shows the retry, and the
            # decision lands once the connection is back.
            cut = {"on": True}

            def flaky(route: Route) -> None:
                if cut["on"]:
                    route.abort("connectionreset")
                else:
                    route.continue_()

            page.route("**/review/decide", flaky)
            first = _press(page, "a")
            _until(page, "() => !document.getElementById('retry').hidden")
            assert "not saved yet" in page.locator("#retry").inner_text()
            assert _decided(db) == {}
            cut["on"] = False
            page.click("#retry-button")
            _settled(page)
            assert set(_decided(db)) == {"b0", *LOOK_ALIKES}
            assert _shown(page) == first
            # Leaving the desk gives back the leases of the items it kept ready; the item on screen
            # stays this moderator's (a reload shows it again) until its lease ends.
            _until(page, "() => document.getElementById('retry').hidden")
            page.wait_for_timeout(500)  # the desk has topped up its items kept ready
            assert len(_leased(db, "bob")) > 1
            page.goto(f"{server}/history")  # leaving the desk
            deadline = time.monotonic() + 10
            while _leased(db, "bob") != {first} and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _leased(db, "bob") == {first}
        finally:
            browser.close()
    assert Path(SCREENSHOTS / "review-desk-390.png").stat().st_size > 5_000


def _leased(db: Database, moderator: str) -> set[str]:
    with db.transaction() as session:
        rows = session.execute(
            select(Listing.external_id)
            .join(ReviewLease, ReviewLease.listing_id == Listing.id)
            .where(ReviewLease.moderator == moderator, ReviewLease.expires_at > func.now())
        ).scalars()
        return set(rows)


def _decided(db: Database) -> dict[str, tuple[str, str | None]]:
    """The standing decision on each decided item: (action, note)."""
    with db.transaction() as session:
        rows = session.execute(
            select(Listing.external_id, ModeratorDecision.action, ModeratorDecision.note)
            .join(Listing, Listing.id == ModeratorDecision.listing_id)
            .where(ModeratorDecision.action != "undo", standing())
            .order_by(ModeratorDecision.id)
        ).all()
    return {r.external_id: (r.action, r.note) for r in rows}
