"""One engine per process, a session per unit of work, and the schema's lifecycle (Alembic)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Select, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 15.0


class Database:
    """The process's engine and its session factory; made once from the settings and handed in."""

    def __init__(self, url: str, **engine_options: Any) -> None:
        self.url = url
        # pool_pre_ping: Postgres restarts must not poison a long-lived worker's pool.
        self.engine: Engine = create_engine(url, pool_pre_ping=True, **engine_options)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed when the block ends and rolled back when it raises."""
        with self.sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def keyset_chunks(
    source: Database | Session, query: Select[Any], key: Any, size: int
) -> Iterator[tuple[Session, list[Any]]]:
    """`query`'s rows in chunks of `size`, ordered by `key` (its first column) and resumed after the
    last key seen: bounded memory, and no OFFSET that slows as it goes.

    From a `Database`, each chunk is read and handled in a transaction of its own, committed when
    the caller asks for the next chunk; from a `Session`, every chunk is read in that session.
    """
    last = None
    while True:
        page = (query if last is None else query.where(key > last)).order_by(key).limit(size)
        if isinstance(source, Session):
            rows = list(source.execute(page).all())
            if not rows:
                return
            yield source, rows
        else:
            with source.transaction() as session:
                rows = list(session.execute(page).all())
                if not rows:
                    return
                yield session, rows
        last = rows[-1][0]


def database_unavailable(error: BaseException) -> bool:
    """The database is away (stopped, restarting, unreachable): not a fault of the work itself."""
    if isinstance(error, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def until_available(work: Callable[[], T], what: str) -> T:
    """Run `work` (one transaction) until the database lets it finish.

    A worker can do nothing useful without Postgres, so it waits, with a capped backoff, for as
    long as the outage lasts; the messages it holds stay unacknowledged meanwhile, never lost.
    Any other error is raised at once.
    """
    delay = RETRY_FIRST_DELAY
    while True:
        try:
            return work()
        except Exception as error:
            if not database_unavailable(error):
                raise
            log.warning(
                "database unavailable while %s (%s); retrying in %.1fs", what, type(error).__name__, delay
            )
        time.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_DELAY)


def _server(url: str) -> Engine:
    # Database-level statements run outside a transaction, connected to the `postgres` database.
    return create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")


def ensure_database(url: str) -> None:
    """Create the database `url` names when the server has none of that name."""
    name = make_url(url).database
    engine = _server(url)
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar()
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


def drop_database(url: str) -> None:
    engine = _server(url)
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    finally:
        engine.dispose()


def alembic_config(database_url: str) -> Config:
    config = Config(str(Path(__file__).resolve().parents[1] / "alembic.ini"))
    # Keep the caller's own logging; alembic.ini's would reformat every later log line.
    config.attributes["configure_logger"] = False
    config.attributes["database_url"] = database_url
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations to the database at `database_url`."""
    command.upgrade(alembic_config(database_url), revision)
