"""`vitrine bench desk`: from a moderator's key to the next item on screen, in a real browser.

Two ways through the same queue, side by side in one run: the desk with its script (items kept
ready in the page, decisions posted in the background) and the plain forms it falls back to
without one (a POST, a redirect, and a GET that claims and renders the next item: what every
decision cost before the desk kept items ready). Debian's headless chromium, a scratch database,
a private Redis, a `vitrine serve` of its own, and real photos served over HTTP on loopback, so
that "on screen" includes the photo having loaded.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import text

from common.db import Database
from common.moderation.accounts import add_user
from common.settings import Settings
from vitrine.bench.review import start_review_app
from vitrine.local.scratch import scratch_stack
from vitrine.local.services import free_port

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CATEGORIES = ("Watches", "Footwear", "Jewellery", "Kitchen & Dining")
# What the page reports once the item after a key press is in the DOM and its photo decoded.
SHOWN = "() => { const i = document.querySelector('#photo'); return i && i.complete && i.naturalWidth > 0; }"


# The page's own navigation timing: from the form's POST (through the redirect) to its load event.
NAVIGATION = "() => performance.getEntriesByType('navigation')[0].loadEventEnd"


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 1),
        "n": len(ordered),
    }


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def _photo_server(images: Path) -> Iterator[str]:
    """The photos over HTTP on loopback, as a marketplace's image host would serve them."""
    handler = functools.partial(_QuietHandler, directory=str(images))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _fill(database: Database, photos: list[str], n: int) -> None:
    """`n` flagged suggestions with real photos, each with three candidate categories."""
    with database.transaction() as session:
        version = session.execute(
            text(
                "INSERT INTO clustering_version (backbone_id, k, dim, centroids, cluster_categories, sizes,"
                " n_vectors, n_labelled, fit_seconds, algorithm, is_current)"
                " VALUES ('bench@0', 4, 1, '\\x'::bytea, CAST(:cats AS jsonb), '[1,1,1,1]', 4, 4, 0,"
                " 'kmeans', true) RETURNING id"
            ),
            {"cats": '[{"category": "Watches", "counts": {"Watches": 1, "Footwear": 1, "Jewellery": 1}}]'},
        ).scalar_one()
        for i in range(n):
            listing = session.execute(
                text(
                    "INSERT INTO listing (external_id, image_url, status, attempts, title, seller_category)"
                    " VALUES (:id, :url, 'suggested', 0, :title, :seller) RETURNING id"
                ),
                {
                    "id": f"desk-{i}",
                    "url": photos[i % len(photos)],
                    "title": f"listing {i}",
                    "seller": CATEGORIES[i % 4],
                },
            ).scalar_one()
            session.execute(
                text(
                    "INSERT INTO suggestion (listing_id, clustering_version_id, backbone_id, cluster,"
                    " category, confidence, alternatives, method, needs_review, review_reason)"
                    " VALUES (:listing, :version, 'bench@0', 0, 'Watches', :confidence,"
                    ' \'[{"category": "Watches", "score": 0.5}, {"category": "Footwear", "score": 0.3},'
                    ' {"category": "Jewellery", "score": 0.2}]\'::jsonb, \'knn\', true, \'low_confidence\')'
                ),
                {"listing": listing, "version": version, "confidence": 0.1 + 0.5 * i / n},
            )


def _sign_in(page: Any, base: str, name: str, password: str) -> None:
    page.goto(f"{base}/sign-in")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.goto(f"{base}/review")


def _wait(page: Any, script: str, arg: object = None, timeout: float = 30.0) -> None:
    # `evaluate` rather than `wait_for_function`: the page's CSP forbids evaluating strings in it.
    deadline = time.monotonic() + timeout
    while not page.evaluate(script, arg):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the page did not get to {script!r}")
        time.sleep(0.002)


def _desk_flow(page: Any, decisions: int) -> tuple[list[float], list[float]]:
    """Key → next item with its photo, measured inside the page and, apart, from here (which adds
    the driver's round trips: the key sent, the page polled)."""
    # Inside the page: from the key's event to the first frame after the next item was put in,
    # or, should its photo not be decoded by then, to its load.
    page.evaluate(
        """() => {
          window.__bench = [];
          let pressed = null;
          document.addEventListener('keydown', () => { pressed = performance.now(); }, true);
          new MutationObserver(() => {
            if (pressed === null) return;
            const start = pressed;
            pressed = null;
            requestAnimationFrame(() => {
              const photo = document.getElementById('photo');
              const done = () => window.__bench.push(performance.now() - start);
              if (!photo || (photo.complete && photo.naturalWidth > 0)) done();
              else photo.addEventListener('load', done, { once: true });
            });
          }).observe(document.getElementById('desk'), { childList: true });
        }"""
    )
    outside: list[float] = []
    for i in range(decisions):
        before = page.evaluate("() => document.querySelector('.desk-item').dataset.externalId")
        # Items are kept ready in the background; a moderator takes a moment to look at each.
        _wait(page, "() => document.getElementById('retry').hidden")
        time.sleep(0.3)
        started = time.perf_counter()
        page.keyboard.press("a")
        _wait(page, "(b) => document.querySelector('.desk-item')?.dataset.externalId !== b", before)
        _wait(page, SHOWN)
        outside.append(1000 * (time.perf_counter() - started))
        _wait(page, "(n) => window.__bench.length >= n", i + 1)
    inside = [float(x) for x in page.evaluate("() => window.__bench")]
    return outside, inside


def _form_flow(page: Any, decisions: int) -> tuple[list[float], list[float]]:
    """The same decision as a plain form: the button's POST, its redirect, the next page loaded
    with its images. Inside the page: the navigation's own timing, from the POST to the load."""
    outside: list[float] = []
    inside: list[float] = []
    for _ in range(decisions):
        time.sleep(0.3)
        started = time.perf_counter()
        with page.expect_navigation(wait_until="load"):
            page.click('button[data-key="a"]')
        _wait(page, SHOWN)
        outside.append(1000 * (time.perf_counter() - started))
        inside.append(float(page.evaluate(NAVIGATION)))
    return outside, inside


def run_desk_benchmark(settings: Settings, images: Path, decisions: int, log_dir: Path) -> dict[str, Any]:
    from playwright.sync_api import ViewportSize, sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("Debian's chromium is needed: apt-get install chromium")
    photos = sorted(p.name for p in images.glob("*.jpg"))[: 4 * decisions]
    if not photos:
        raise RuntimeError(f"no .jpg photos in {images}")
    server: subprocess.Popen[bytes] | None = None
    password = secrets.token_urlsafe(16)
    with (
        scratch_stack(settings.services.database_url, "vitrine-bench-desk") as stack,
        _photo_server(images) as photo_host,
    ):
        database = Database(stack.database_url)
        try:
            _fill(database, [f"{photo_host}/{name}" for name in photos], 2 * decisions + 20)
            with database.transaction() as session:
                add_user(session, "desk", password)
                add_user(session, "forms", password)
        finally:
            database.dispose()
        port = free_port()
        env = {
            **os.environ,
            "VITRINE_DATABASE_URL": stack.database_url,
            "VITRINE_BROKER_URL": stack.broker_url or "",
            "VITRINE_SESSION_SECRET": secrets.token_urlsafe(32),
            # The limiter runs (its cost is in the figures) at a rate this one browser never meets.
            "VITRINE_ADDRESS_RATE_LIMIT": "100000",
            "VITRINE_ADDRESS_RATE_BURST": "100000",
        }
        try:
            server = start_review_app(env, port, log_dir / "bench-desk.log")
            base = f"http://127.0.0.1:{port}"
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                try:
                    viewport: ViewportSize = {"width": 1366, "height": 768}
                    desk = browser.new_context(viewport=viewport).new_page()
                    _sign_in(desk, base, "desk", password)
                    _wait(desk, SHOWN)
                    outside, inside = _desk_flow(desk, decisions)
                    # The forms alone: the same page with its script switched off.
                    forms = browser.new_context(viewport=viewport, java_script_enabled=False).new_page()
                    _sign_in(forms, base, "forms", password)
                    form_outside, form_inside = _form_flow(forms, decisions)
                finally:
                    browser.close()
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
    desk_figures, form_figures = _percentiles(inside), _percentiles(form_inside)
    return {
        "decisions": decisions,
        # Key → next item on screen with its photo, as the page itself times it.
        "desk": {**desk_figures, "with_driver": _percentiles(outside)},
        "forms": {**form_figures, "with_driver": _percentiles(form_outside)},
        "ratio_p50": round(form_figures["p50_ms"] / desk_figures["p50_ms"], 1),
        "ratio_p95": round(form_figures["p95_ms"] / desk_figures["p95_ms"], 1),
        "viewport": "1366x768",
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
