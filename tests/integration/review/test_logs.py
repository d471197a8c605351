"""`vitrine serve` logs in the one format: with VITRINE_LOG_FORMAT=json each line is an object, and
each request's access line carries its duration and its request id, which the answer echoes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def test_access_lines_are_json_with_the_request_id_and_duration(
    child_env: dict[str, str], clean_db: None, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**child_env, "VITRINE_SESSION_SECRET": "s" * 32, "VITRINE_LOG_FORMAT": "json"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "vitrine.cli", "serve", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "vitrine serve did not start"
                time.sleep(0.2)
        given = httpx.get(f"{url}/healthz", headers={"X-Request-ID": "proxy-7f3a"})
        assert given.headers["x-request-id"] == "proxy-7f3a"
        made = httpx.get(f"{url}/sign-in", headers={"X-Request-ID": "not a valid id!"})
        assert made.headers["x-request-id"] != "not a valid id!" and len(made.headers["x-request-id"]) == 16
        time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "review.access"]
    mine = [line for line in access if line.get("request_id") == "proxy-7f3a"]
    assert len(mine) == 1 and mine[0]["message"].startswith("GET /healthz 200 ")
    assert mine[0]["message"].endswith(" ms")
    assert any(line.get("request_id") == made.headers["x-request-id"] for line in access)
    # uvicorn's own lines come in the same format (its start-up line, among others).
    assert any(line["logger"].startswith("uvicorn") for line in lines), lines
