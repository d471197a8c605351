"""`vitrine flower` against a real worker on the real Redis: authentication, workers and tasks."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.delivery.queues import EMBED_QUEUE, EMBED_TASK, REFIT_QUEUE, SWEEP_TASK
from common.listings.events import publish_listing
from common.runtime import Runtime
from vitrine.local.services import celery_worker, free_port

VITRINE = Path(sys.executable).parent / "vitrine"
USER, PASSWORD = "moderator-ops", "s3cret-Pa55:word"


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        return subprocess.Popen(argv, env=env, cwd=log.parent, stdout=handle, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_for(what: str, check: Callable[[], Any], logs: list[Path], seconds: float = 120) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            found = check()
        except httpx.TransportError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
            pytest.fail(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.5)


@pytest.fixture
def worker_and_flower(
    clean_db: None, child_env: dict[str, str], service_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[str, str, list[Path]]]:
    name = f"flower-test-{uuid.uuid4().hex[:8]}@localhost"
    port = free_port()
    logs = [tmp_path / "worker.log", tmp_path / "flower.log"]
    flower_env = {**child_env, "VITRINE_FLOWER_USER": USER, "VITRINE_FLOWER_PASSWORD": PASSWORD}
    with celery_worker([REFIT_QUEUE, EMBED_QUEUE], service_env, logs[0], name):
        flower = start(
            [str(VITRINE), "flower", "--port", str(port), "--address", "127.0.0.1"], flower_env, logs[1]
        )
        try:
            yield f"http://127.0.0.1:{port}", name, logs
        finally:
            stop(flower)


def test_flower_lists_the_worker_and_its_tasks_behind_basic_auth(
    worker_and_flower: tuple[str, str, list[Path]], runtime: Runtime
) -> None:
    base, name, logs = worker_and_flower
    auth = httpx.BasicAuth(USER, PASSWORD)

    def workers() -> dict[str, Any] | None:
        response = httpx.get(f"{base}/api/workers", params={"refresh": 1}, auth=auth, timeout=10)
        return response.json() if response.status_code == 200 and name in response.json() else None

    listed = wait_for(f"worker {name} in /api/workers", workers, logs)
    assert REFIT_QUEUE in [queue["name"] for queue in listed[name]["active_queues"]]

    task_id = runtime.publisher.app.send_task(SWEEP_TASK, queue=REFIT_QUEUE).id

    def task() -> dict[str, Any] | None:
        response = httpx.get(f"{base}/api/tasks", auth=auth, timeout=10)
        found = response.json().get(task_id) if response.status_code == 200 else None
        return found if found and found.get("state") == "SUCCESS" else None

    seen = wait_for(f"task {task_id} done in /api/tasks", task, logs)
    assert seen["name"] == SWEEP_TASK
    assert seen["worker"] == name

    # A batched embed task (celery-batches) is reported per message too, not left PENDING.
    publish_listing(runtime, "flower-sku", "http://no-such-host.invalid/photo.jpg")

    def embed_task() -> dict[str, Any] | None:
        response = httpx.get(f"{base}/api/tasks", params={"taskname": EMBED_TASK}, auth=auth, timeout=10)
        tasks = response.json().values() if response.status_code == 200 else []
        return next((t for t in tasks if t.get("state") == "SUCCESS"), None)

    embedded = wait_for("a batched embed task done in /api/tasks", embed_task, logs)
    assert embedded["name"] == EMBED_TASK and embedded["worker"] == name

    assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{base}/api/tasks", timeout=10).status_code == 401
    wrong = httpx.BasicAuth(USER, PASSWORD + "x")
    assert httpx.get(f"{base}/api/workers", auth=wrong, timeout=10).status_code == 401
    # The dashboard is behind the same authentication as the API.
    assert httpx.get(f"{base}/", timeout=10).status_code == 401


def test_flower_refuses_to_start_without_credentials(child_env: dict[str, str], tmp_path: Path) -> None:
    env = {**child_env, "VITRINE_FLOWER_USER": "", "VITRINE_FLOWER_PASSWORD": ""}
    result = subprocess.run(
        [str(VITRINE), "flower", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert "refusing to start Flower without credentials" in message
    assert "VITRINE_FLOWER_USER" in message and "VITRINE_FLOWER_PASSWORD" in message
    assert "--insecure-local" in message


def test_flower_insecure_local_listens_on_loopback_only(child_env: dict[str, str], tmp_path: Path) -> None:
    env = {**child_env, "VITRINE_FLOWER_USER": "", "VITRINE_FLOWER_PASSWORD": ""}
    port = free_port()
    log = tmp_path / "flower.log"
    # --address is overridden: without credentials Flower never listens beyond loopback.
    flower = start(
        [str(VITRINE), "flower", "--port", str(port), "--address", "0.0.0.0", "--insecure-local"], env, log
    )
    try:
        wait_for(
            "Flower on 127.0.0.1",
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=5).status_code == 200,
            [log],
        )
        assert "Visit me at http://127.0.0.1:" in log.read_text()
    finally:
        stop(flower)
