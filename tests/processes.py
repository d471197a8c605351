"""Start real Celery worker processes against the test services."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.queues import worker_argv
from tests.conftest import ROOT


@contextmanager
def celery_worker(
    service_env: dict[str, str], queues: str, log_path: Path, **extra_env: str
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, **service_env, **extra_env}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            worker_argv(queues.split(","), sys.executable, name=f"test-{queues.replace(',', '-')}@%h"),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while b" ready." not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
