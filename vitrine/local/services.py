"""Services and processes for a developer's machine: private Postgres, Redis and S3 (moto) servers
from local binaries, a local HTTP file server, and the worker launcher.

Used by the test suite, the benchmarks and `vitrine demo` on a machine without docker compose.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from common.db import ensure_database

POSTGRES_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


class ServiceUnavailable(RuntimeError):
    pass


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, what: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", port):
            return
        if process.poll() is not None:
            raise ServiceUnavailable(f"{what} exited with code {process.returncode}")
        time.sleep(0.1)
    raise ServiceUnavailable(f"{what} did not open port {port} within {seconds}s")


def find_binary(binary: str) -> str:
    for directory in POSTGRES_BIN_DIRS:
        if (directory / binary).exists():
            return str(directory / binary)
    found = shutil.which(binary)
    if not found:
        raise ServiceUnavailable(f"{binary} is not installed; install it or run the service yourself")
    return found


def redis_argv(port: int, directory: Path) -> list[str]:
    """A loopback Redis that keeps nothing on disk, like the deployment's broker."""
    return [
        find_binary("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]


@dataclass
class LocalServices:
    """Processes started here, stopped by `stop()`; nothing else is touched."""

    root: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pg_data: Path | None = None
    # Detached servers outlive the command that started them (the demo runs in the background).
    detach: bool = False

    def start_postgres(self) -> str:
        data = self.root / "pgdata"
        port = free_port()
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [find_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                check=True,
                capture_output=True,
                **as_postgres_user(data),
            )
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - lives as long as the server
        process = subprocess.Popen(
            [find_binary("postgres"), "-D", str(data), "-p", str(port), "-k", str(data), "-h", "127.0.0.1"],
            stdout=log,
            stderr=log,
            start_new_session=self.detach,
            **as_postgres_user(data),
        )
        self.processes.append(process)
        self.pg_data = data
        wait_for_port(port, "postgres", process)
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def start_redis(self) -> str:
        port = free_port()
        log = open(self.root / "redis.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            redis_argv(port, self.root),
            stdout=log,
            stderr=log,
            start_new_session=self.detach,
        )
        self.processes.append(process)
        wait_for_port(port, "redis-server", process)
        return f"redis://127.0.0.1:{port}/0"

    def start_s3(self) -> str:
        """moto's standalone S3 server: a real HTTP S3 endpoint for the `minio` SDK."""
        port = free_port()
        log = open(self.root / "s3.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=log,
            start_new_session=self.detach,
        )
        self.processes.append(process)
        wait_for_port(port, "moto S3 server", process)
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()


def create_scratch_database(server_url: str, prefix: str) -> str:
    """A new, empty database with a unique name on the server of `server_url`; returns its URL."""
    url = make_url(server_url).set(database=f"{prefix}_{uuid.uuid4().hex[:10]}")
    rendered = url.render_as_string(hide_password=False)
    ensure_database(rendered)
    return rendered


def as_postgres_user(data: Path) -> dict[str, Any]:
    # initdb and postgres refuse to run as root; run them as the `postgres` system user.
    if os.geteuid() != 0:
        return {}
    import pwd

    user = pwd.getpwnam("postgres")
    for path in [data, *data.parents]:
        if path == Path("/") or path.stat().st_uid == user.pw_uid:
            break
        os.chmod(path, path.stat().st_mode | 0o755)
    shutil.chown(data, user.pw_uid, user.pw_gid)
    return {"user": user.pw_uid, "group": user.pw_gid}


@contextmanager
def serve_bytes(files: dict[str, bytes]) -> Iterator[str]:
    """Serve `files` at http://127.0.0.1:PORT/<name>; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def celery_worker(
    queues: list[str], env: dict[str, str], log_path: Path, name: str, ready_within: float = 300
) -> Iterator[subprocess.Popen[bytes]]:
    """A Vitrine worker process for `queues`, started with the production command line; stopped on exit.

    `env` is laid over this process's environment: the worker reads its settings from it.
    """
    from workers.command import worker_argv

    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            worker_argv(queues, sys.executable, name=name),
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + ready_within
        while b" ready." not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServiceUnavailable(f"worker did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
