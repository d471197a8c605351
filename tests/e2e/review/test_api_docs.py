"""The API's interactive docs in a real browser: they render the app's own description from the
app's own files, under its Content-Security-Policy, with no request leaving the app."""

from __future__ import annotations

import time

from playwright.sync_api import Page, Request, sync_playwright

from tests.e2e.review.test_browser import CHROMIUM_ARGS, chromium, server  # noqa: F401  (fixture)


def _until(page: Page, script: str, timeout: float = 20.0) -> None:
    # Polled from here: the page's CSP forbids the string evaluation `wait_for_function` needs.
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, script
        time.sleep(0.1)


def test_swagger_ui_and_redoc_render_offline_under_the_csp(server: str) -> None:  # noqa: F811
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            failed: list[Request] = []
            page.on("requestfailed", lambda request: failed.append(request))

            page.goto(f"{server}/docs")
            # Every operation of the description is listed, by its stable id.
            _until(page, "document.querySelectorAll('.opblock').length >= 7")
            text = page.inner_text("#swagger-ui")
            for path in ("/api/v1/listings", "/api/v1/review/claim", "/api/v1/stats"):
                assert path in text
            page.click("#operations-listings-sendListings .opblock-summary")
            _until(page, "document.body.innerText.includes('application/problem+json')")

            page.goto(f"{server}/redoc")
            _until(page, "document.body.innerText.includes('Send one listing or a list of up to 500')")

            # Redoc's search runs in a worker made from a blob: URL of the app's own origin.
            outside = [url for url in requested if not url.startswith((server, f"blob:{server}"))]
            assert not outside, outside
            assert not failed, [r.url for r in failed]
            assert not [line for line in console if "Content Security Policy" in line], console
        finally:
            browser.close()
