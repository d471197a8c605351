"""compose.yaml on a real Docker engine, driven from outside as its users would (`make test-deploy`).

The stack is the project's own compose.yaml plus compose.test.yaml (MinIO, Postgres and Redis
swapped for images built without a registry). This test talks to it only through the ports it
publishes on 127.0.0.1, and through `docker compose` (exec, restart, ps) as an operator does:

- 40 Flipkart photos are uploaded to the stack's S3 store and posted through the HTTP API as
  s3:// URLs, which is how a marketplace that hands its uploads over works with Vitrine (the
  workers fetch from their own bucket, no host of the test's has to be reachable from inside);
- the first clustering is made by itself (cold start), the suggestions are read back;
- the embed worker is restarted while it works, and no listing is lost;
- a moderator signs in with headless chromium and decides five items by keyboard; every image of
  each page (photo, overlay, neighbours) has loaded;
- behind an https proxy the session cookie is Secure and HSTS is sent;
- `vitrine status` inside the stack says every service is ok; then `docker compose down -v`.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from common.object_store import ObjectStore
from common.settings import Settings, load_settings
from tests.conftest import FLIPKART, ROOT
from tests.e2e.review.test_browser import CHROMIUM_ARGS, chromium

pytestmark = pytest.mark.deploy

PROJECT = "vitrine-deploy-test"
N_LISTINGS = 40
N_UNLABELLED = 8  # listings sent without a seller category: only the model can place them
WEIGHTS = ROOT.parent / "shared" / "weights" / "efficientnet_lite0.safetensors"
PASSWORD = "correct horse battery staple"
T = TypeVar("T")
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"deploy: [{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class Stack:
    env: dict[str, str]
    api: str
    s3: str

    def compose(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        command = [
            self.env["DEPLOY_COMPOSE"], "-p", PROJECT,
            "-f", str(ROOT / "compose.yaml"), "-f", str(ROOT / "compose.test.yaml"), *args,
        ]  # fmt: skip
        done = subprocess.run(
            command, cwd=ROOT, env=self.env, input=stdin, capture_output=True, text=True, timeout=900
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def services(self) -> dict[str, dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json")
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {row["Service"]: row for row in rows}

    def sql(self, query: str) -> str:
        return self.compose(
            "exec", "-T", "postgres", "psql", "-U", "vitrine", "-d", "vitrine", "-tA", "-c", query
        ).strip()


def _env(tmp: Path) -> dict[str, str]:
    ports = {name: free_port() for name in ("S3", "REVIEW", "FLOWER", "METRICS")}
    values = {
        "COMPOSE_PROFILES": "cpu",
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "MINIO_ROOT_USER": "vitrine",
        "MINIO_ROOT_PASSWORD": secrets.token_hex(16),
        "VITRINE_SESSION_SECRET": secrets.token_hex(32),
        "VITRINE_FLOWER_USER": "admin",
        "VITRINE_FLOWER_PASSWORD": secrets.token_hex(12),
        # The one pretrained backbone that works offline; its weights are mounted by compose.test.yaml.
        "VITRINE_MODEL": "efficientnet_lite0",
    }
    env_file = tmp / "stack.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("VITRINE_") or k.startswith("VITRINE_DEPLOY")
        },
        **values,
        "VITRINE_BASE_TAG": os.environ["DEPLOY_BASE_TAG"],
        "VITRINE_SLIM_IMAGE": os.environ["DEPLOY_SLIM_IMAGE"],
        "VITRINE_ML_IMAGE": os.environ["DEPLOY_ML_IMAGE"],
        "VITRINE_ENV_FILE": str(env_file),
        "VITRINE_TEST_WEIGHTS": str(WEIGHTS.resolve()),
        "VITRINE_S3_PUBLIC_ENDPOINT": f"http://127.0.0.1:{ports['S3']}",
        **{f"VITRINE_TEST_{name}_PORT": str(port) for name, port in ports.items()},
    }
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if "DEPLOY_COMPOSE" not in os.environ:
        pytest.skip("run by `make test-deploy`, which builds the images and provides docker compose")
    env = _env(tmp_path_factory.mktemp("stack"))
    made = Stack(
        env, f"http://127.0.0.1:{env['VITRINE_TEST_REVIEW_PORT']}", env["VITRINE_S3_PUBLIC_ENDPOINT"]
    )
    made.compose("down", "-v", "--remove-orphans", check=False)
    images = made.compose("config", "--images").split()
    log(f"images named by compose.yaml + compose.test.yaml: {' '.join(sorted(set(images)))}")
    made.compose("up", "-d", "--no-build")
    try:
        wait_for("every service healthy", lambda: _healthy(made), timeout=420, every=3)
        log("stack healthy: " + ", ".join(sorted(made.services())))
        yield made
    except BaseException:
        print(made.compose("logs", "--no-color", "--tail", "80", check=False))
        raise
    finally:
        if os.environ.get("DEPLOY_KEEP") != "1":
            made.compose("down", "-v", "--remove-orphans", check=False)
            log("docker compose down -v")


def _healthy(stack: Stack) -> bool:
    services = stack.services()
    for name, row in services.items():
        if name == "migrate":
            if row["State"] != "exited":
                return False
            assert row["ExitCode"] == 0, f"migrate exited {row['ExitCode']}"
        elif row["State"] != "running" or row.get("Health") not in ("healthy",):
            assert row["State"] != "exited", f"{name} exited:\n" + stack.compose("logs", "--no-color", name)
            return False
    return len(services) >= 11


def _store(stack: Stack) -> tuple[ObjectStore, Settings]:
    settings = load_settings().replace(
        s3_endpoint=stack.s3,
        s3_access_key=stack.env["MINIO_ROOT_USER"],
        s3_secret_key=stack.env["MINIO_ROOT_PASSWORD"],
    )
    return ObjectStore.from_settings(settings), settings


def _rows() -> list[dict[str, str]]:
    with open(FLIPKART / "labels.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["image"])
    by_category: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    # Round-robin over the categories, so every one is represented at cold start.
    chosen: list[dict[str, str]] = []
    while len(chosen) < N_LISTINGS:
        for items in by_category.values():
            if items and len(chosen) < N_LISTINGS:
                chosen.append(items.pop(0))
    return chosen


def _token(stack: Stack) -> str:
    stack.compose(
        "exec", "-T", "review", "vitrine", "users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n"
    )
    out = stack.compose("exec", "-T", "review", "vitrine", "tokens", "add", "shop", "--scope", "ingest")
    return out.strip().splitlines()[-1]


def _post(client: httpx.Client, token: str, items: list[dict[str, Any]]) -> None:
    answer = client.post("/api/v1/listings", json=items, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == len(items), answer.text


def _listing(client: httpx.Client, token: str, external_id: str) -> dict[str, Any]:
    answer = client.get(f"/api/v1/listings/{external_id}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_the_compose_stack_serves_its_users(stack: Stack) -> None:
    client = httpx.Client(base_url=stack.api, timeout=30)
    token = _token(stack)
    store, settings = _store(stack)
    store.ensure_bucket(settings.store.images_bucket)
    rows = _rows()
    items = []
    for n, row in enumerate(rows):
        url = store.upload_photo(settings.store.images_bucket, FLIPKART / "images" / row["image"])
        item = {"external_id": f"deploy-{n:02d}", "image_url": url, "title": row["product_name"]}
        if n >= N_UNLABELLED:
            item["seller_category"] = row["category"]
        items.append(item)
    log(f"{len(items)} photos uploaded to the stack's bucket {settings.store.images_bucket}")

    # First half: fewer labelled listings than the cold start needs, so they wait as embedded and
    # the API says why.
    first, second = items[:20], items[20:]
    started = time.monotonic()
    _post(client, token, first)
    waiting = wait_for(
        "the first 20 listings embedded",
        lambda: all(_listing(client, token, i["external_id"])["status"] == "embedded" for i in first),
        timeout=300,
    )
    assert waiting
    view = _listing(client, token, first[0]["external_id"])
    assert view["suggestion"] is None and "no clustering yet" in view["pending_reason"], view
    log(
        f"20 listings embedded in {time.monotonic() - started:.1f}s; "
        f"the API says why they wait: {view['pending_reason']!r}"
    )

    # Second half, and the embed worker restarted while it has them.
    _post(client, token, second)
    restarted = time.monotonic()
    stack.compose("restart", "embed-cpu")
    log(f"embed worker restarted mid-run in {time.monotonic() - restarted:.1f}s")

    def all_suggested() -> list[dict[str, Any]] | None:
        views = [_listing(client, token, i["external_id"]) for i in items]
        return views if all(v["status"] in ("suggested", "reviewed") for v in views) else None

    views = wait_for("every listing suggested (cold start)", all_suggested, timeout=420, every=3)
    log(f"{len(views)} listings suggested {time.monotonic() - started:.1f}s after the first post")
    counts = stack.sql(
        "SELECT (SELECT count(*) FROM listing), (SELECT count(*) FROM embedding), "
        "(SELECT count(*) FROM suggestion), (SELECT count(*) FROM listing WHERE status = 'failed'), "
        "(SELECT count(*) FROM clustering_version)"
    )
    listings, embeddings, suggestions, failed, versions = (int(x) for x in counts.split("|"))
    assert (listings, embeddings, suggestions, failed) == (N_LISTINGS, N_LISTINGS, N_LISTINGS, 0), counts
    assert versions >= 1
    log(
        f"restart survived: {listings} listings, {embeddings} embeddings, {suggestions} suggestions, "
        f"{failed} failed, {versions} clustering version(s) made by the cold start"
    )
    categories = {v["suggestion"]["category"] for v in views}
    log(f"suggested categories: {sorted(categories)}")

    flagged = [v for v in views if v["suggestion"]["needs_review"]]
    assert len(flagged) >= 5, f"only {len(flagged)} flagged"

    def overlays_ready() -> list[dict[str, Any]] | None:
        fresh = [_listing(client, token, v["external_id"]) for v in flagged]
        return fresh if all(v["suggestion"]["overlay_url"] for v in fresh) else None

    fresh = wait_for("overlays of the flagged listings", overlays_ready, timeout=300, every=3)
    overlay = fresh[0]["suggestion"]["overlay_url"]
    assert overlay.startswith(stack.s3 + "/"), overlay
    assert httpx.get(overlay, timeout=10).status_code == 200
    log(f"{len(fresh)} flagged listings have overlays, presigned for {stack.s3}")

    _review_in_a_browser(stack.api)
    _secure_behind_a_proxy(stack.api)
    _status_inside(stack)
    _operators_signals(stack, token)
    _memory(stack)


def _all_images_loaded(page: Page) -> int:
    """Every <img> of the page scrolled into view (the neighbours load lazily) and decoded."""
    count = page.locator("img").count()
    for index in range(count):
        page.locator("img").nth(index).scroll_into_view_if_needed()
    _until(page, "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    return count


def _until(page: Page, script: str, arg: object = None, timeout: float = 20.0) -> None:
    """Poll `script` with `evaluate`: the page's CSP forbids the string evaluation that
    `wait_for_function` does inside the page."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script, arg):
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        time.sleep(0.05)


SHOWN = "() => document.querySelector('.desk-item')?.dataset.externalId || ''"


def _review_in_a_browser(api: str) -> None:
    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{api}/review")
            assert "/sign-in" in page.url
            page.fill("input[name=name]", "alice")
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.url.endswith("/review"), page.url
            loaded = []
            for _ in range(5):
                assert page.locator("#photo").count() == 1 and page.locator("#heat").count() == 1
                loaded.append(_all_images_loaded(page))
                # The desk shows the next item at once and posts the decision in the background.
                shown = page.evaluate(SHOWN)
                page.keyboard.press("a")
                _until(page, f"(before) => ({SHOWN})() !== before", shown)
                page.wait_for_timeout(200)  # a second key within 150 ms would be a bounce
            # Every decision posted and answered before the page goes.
            _until(page, "() => document.getElementById('retry').hidden")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(ROOT / "out" / "deploy-review.png"), full_page=True)
        finally:
            browser.close()
    assert all(n >= 2 for n in loaded), loaded
    log(
        f"images loaded: 5 items decided by keyboard, {sum(loaded)} images on their pages "
        f"(photo, overlay, neighbours), all naturalWidth > 0, in {time.monotonic() - started:.1f}s"
    )


def _secure_behind_a_proxy(api: str) -> None:
    """A TLS proxy in front says https: the cookie becomes Secure, HSTS is sent. The requests come
    from the engine's bridge gateway, not from 127.0.0.1, as a proxy container's would."""
    plain = httpx.get(f"{api}/sign-in", timeout=10)
    proxied = httpx.get(
        f"{api}/sign-in", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}, timeout=10
    )
    assert "secure" not in plain.headers.get("set-cookie", "").lower()
    assert "strict-transport-security" not in plain.headers
    assert proxied.headers.get("strict-transport-security", "").startswith("max-age="), proxied.headers
    cookies = proxied.headers.get_list("set-cookie")
    assert cookies and all("secure" in c.lower() for c in cookies), cookies
    log("behind an https proxy: Secure session cookie and HSTS")


def _status_inside(stack: Stack) -> None:
    snapshot = json.loads(
        stack.compose("exec", "-T", "refit", "vitrine", "status", "--json", "--ping-timeout", "5")
    )
    assert all(s["ok"] for s in snapshot["services"].values()), snapshot["services"]
    workers = " ".join(snapshot["workers"])
    assert all(q in workers for q in ("embed", "explain", "refit", "webhooks")), workers
    log(f"vitrine status inside the stack: {snapshot['services']}, workers {snapshot['workers']}")


def _operators_signals(stack: Stack, token: str) -> None:
    """Flower (with its password), the exporter and the review app's /metrics, from outside."""
    flower = f"http://127.0.0.1:{stack.env['VITRINE_TEST_FLOWER_PORT']}"
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    auth = (stack.env["VITRINE_FLOWER_USER"], stack.env["VITRINE_FLOWER_PASSWORD"])

    def flower_workers() -> list[str] | None:
        # refresh=1: Flower asks the workers now instead of answering from what it has seen.
        answer = httpx.get(f"{flower}/api/workers", params={"refresh": 1}, auth=auth, timeout=30)
        names = sorted(answer.json()) if answer.status_code == 200 else []
        return names if any(name.startswith("embed@") for name in names) else None

    workers = wait_for("the embed worker in Flower", flower_workers, timeout=90, every=3)
    exporter = f"http://127.0.0.1:{stack.env['VITRINE_TEST_METRICS_PORT']}/metrics"
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(exporter, timeout=30).text)}
    by_status = {s.labels["status"]: s.value for s in families["vitrine_listings"].samples}
    assert sum(by_status.values()) == N_LISTINGS and by_status["reviewed"] >= 5, by_status
    review = httpx.get(f"{stack.api}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    assert 'vitrine_http_request_seconds_count{method="POST",route="/api/v1/listings",status="2xx"}' in review
    # The sweep runs every 30 s; its routine lines are not in the refit worker's log.
    refit_log = stack.compose("logs", "--no-color", "refit")
    assert "vitrine.sweep_stale[" not in refit_log, "the sweep's routine lines are logged"
    log(f"operators: Flower (behind its password) lists {workers}; the exporter and the review app's")
    log("  /metrics answer; the sweep's routine lines are not logged")


def _memory(stack: Stack) -> None:
    out = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = sorted(line for line in out.splitlines() if line.startswith(PROJECT))
    log("memory: " + "; ".join(lines))
