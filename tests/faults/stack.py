"""A whole Vitrine on loopback whose parts can be hurt: Postgres that stops, Redis that restarts
empty, an S3 endpoint whose connection is cut, and workers that are killed.

Every service is private to the test (own data directory, own port), so stopping it touches
nothing else on the machine. Workers run with the production command line and default settings;
only the addresses of the services (and the model) are set.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sql_select
from sqlalchemy.exc import OperationalError

from common.db import migrate
from common.listings.events import ListingEvent, publish_listings
from common.runtime import Runtime
from common.schema import TERMINAL_STATUSES, Listing
from common.settings import Settings, with_environment
from tests.conftest import FLIPKART, LITE0_WEIGHTS
from vitrine.local.services import as_postgres_user, find_binary, free_port, redis_argv, wait_for_port
from workers.command import worker_argv


class Server:
    """A server process that can be stopped and started again on the same port."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, **popen: Any) -> None:
        self.name, self.argv, self.port, self.log, self.popen = name, argv, port, log, popen
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, **self.popen)
        wait_for_port(self.port, self.name, self.process, seconds=60)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class CuttableProxy:
    """A TCP proxy in front of a server: `cut()` refuses new connections and drops open ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        self._stop.clear()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.5)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(a)
                self._open.discard(b)
            a.close()
            b.close()


@dataclass
class Stack:
    root: Path
    postgres: Server
    redis: Server
    s3: Server
    s3_proxy: CuttableProxy
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return with_environment(self.env)

    def runtime(self) -> Runtime:
        return Runtime(self.settings)

    def child_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.env, **extra}

    # --- processes --------------------------------------------------------------------------

    def start_worker(self, name: str, queues: list[str], **extra: str) -> subprocess.Popen[bytes]:
        """A worker with the production command line; returns once it is ready."""
        log = self.root / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0  # a restart appends to the same log
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                worker_argv(queues, sys.executable, name=f"{name}@%h"),
                env=self.child_env(**extra),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        self.processes[name] = process
        deadline = time.monotonic() + 300
        while b" ready." not in log.read_bytes()[offset:]:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{self.tail(name)}")
            time.sleep(0.2)
        return process

    def start_beat(self, name: str, **extra: str) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        argv = [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel", "INFO"]
        argv += ["--schedule", str(self.root / f"{name}-schedule")]
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                argv, env=self.child_env(**extra), stdout=handle, stderr=subprocess.STDOUT
            )
        self.processes[name] = process
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(timeout=120)

    def stop_all(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def tail(self, name: str, chars: int = 4000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # --- data ---------------------------------------------------------------------------------

    def publish_photos(self, runtime: Runtime, rows: list[dict[str, str]], prefix: str) -> list[str]:
        """Upload the photos to the images bucket, then publish one listing each."""
        bucket = runtime.settings.store.images_bucket
        runtime.store.ensure_bucket(bucket)
        events = [
            ListingEvent(
                external_id=f"{prefix}-{i}",
                image_url=runtime.store.upload_photo(bucket, FLIPKART / "images" / row["image"]),
                seller_category=row["category"] if i % 2 == 0 else None,
            )
            for i, row in enumerate(rows)
        ]
        publish_listings(runtime, events)
        return [event.external_id for event in events]


def count_terminal(runtime: Runtime, external_ids: list[str]) -> int:
    with runtime.db.transaction() as session:
        return int(
            session.execute(
                sql_select(func.count())
                .select_from(Listing)
                .where(Listing.external_id.in_(external_ids), Listing.status.in_(TERMINAL_STATUSES))
            ).scalar_one()
        )


def wait_until(check: Callable[[], bool], seconds: float, what: str, stack: Stack | None = None) -> float:
    """Seconds it took `check` to pass; fails with the workers' logs after `seconds`."""
    started = time.monotonic()
    while not _passes(check):
        if time.monotonic() - started > seconds:
            logs = (
                ""
                if stack is None
                else "\n".join(f"--- {n}\n{stack.tail(n)}" for n in sorted(stack.processes))
            )
            raise AssertionError(f"timed out after {seconds}s waiting for {what}\n{logs}")
        time.sleep(0.5)
    return time.monotonic() - started


def _passes(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except OperationalError:  # Postgres still starting up after the fault: not yet
        return False


@contextmanager
def fault_stack(root: Path) -> Iterator[Stack]:
    """Private Postgres, Redis and S3 (behind a cuttable proxy), migrated, with defaults otherwise."""
    pg_port, redis_port, s3_port = free_port(), free_port(), free_port()
    # Outside pytest's temporary folder: pytest makes that owner-only again whenever a session
    # starts, and the `postgres` user must still reach its data when the server starts again.
    data = Path(tempfile.mkdtemp(prefix="vitrine-faults-pgdata-"))
    subprocess.run(
        [find_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        **as_postgres_user(data),
    )
    postgres = Server(
        "postgres",
        [find_binary("postgres"), "-D", str(data), "-p", str(pg_port), "-k", str(data), "-h", "127.0.0.1"],
        pg_port,
        root / "postgres.log",
        **as_postgres_user(data),
    )
    redis = Server(
        "redis",
        redis_argv(redis_port, root),
        redis_port,
        root / "redis.log",
    )
    s3 = Server(
        "s3",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        s3_port,
        root / "s3.log",
    )
    proxy = CuttableProxy(s3_port)
    for server in (postgres, redis, s3):
        server.start()
    proxy.start()
    env = {
        "VITRINE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/vitrine",
        "VITRINE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "VITRINE_S3_ENDPOINT": f"127.0.0.1:{proxy.port}",
        "VITRINE_S3_ACCESS_KEY": "testing",
        "VITRINE_S3_SECRET_KEY": "testing",
        "VITRINE_MODEL": "efficientnet_lite0",
        "VITRINE_WEIGHTS": str(LITE0_WEIGHTS),
        "HF_HUB_OFFLINE": "1",
    }
    from common.db import ensure_database

    ensure_database(env["VITRINE_DATABASE_URL"])
    migrate(env["VITRINE_DATABASE_URL"])
    stack = Stack(root, postgres, redis, s3, proxy, env)
    failed = True
    try:
        yield stack
        failed = False
    finally:
        stack.stop_all()
        proxy.cut()
        for server in (s3, redis, postgres):
            server.stop()
        if failed:
            # Kept for a person to look at: start it with `postgres -D <folder> -p <port>`.
            print(f"\n[fault] failed: Postgres data kept in {data}, logs and dumps in {root}")
        else:
            shutil.rmtree(data, ignore_errors=True)
