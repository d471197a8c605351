"""A scratch stack for benchmarks: a migrated database of its own and, when asked, a private Redis.

The benchmark never touches live queues or rows; everything is removed when the block ends.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from common.db import drop_database, migrate
from vitrine.local.services import LocalServices, create_scratch_database, port_open


@dataclass(frozen=True)
class ScratchStack:
    database_url: str
    broker_url: str | None
    services: LocalServices  # for anything else the benchmark starts (stopped with the stack)


@contextmanager
def scratch_stack(server_url: str, prefix: str, *, broker: bool = True) -> Iterator[ScratchStack]:
    """A scratch database on `server_url`'s Postgres (a private server when that one does not
    answer, as on a bare GPU machine) and, with `broker`, a private Redis."""
    services = LocalServices(Path(tempfile.mkdtemp(prefix=f"{prefix}-")))
    database_url = None
    try:
        url = make_url(server_url)
        server = (
            server_url if port_open(url.host or "127.0.0.1", url.port or 5432) else services.start_postgres()
        )
        broker_url = services.start_redis() if broker else None
        database_url = create_scratch_database(server, prefix.replace("-", "_"))
        migrate(database_url)
        yield ScratchStack(database_url, broker_url, services)
    finally:
        if database_url is not None:
            drop_database(database_url)
        services.stop()
