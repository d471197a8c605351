"""One engine per process, a session per unit of work, and the schema's lifecycle (Alembic)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


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
