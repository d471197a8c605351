"""One SQLAlchemy engine per process, a session per unit of work, and database lifecycle helpers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from common.config import get_settings


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    # pool_pre_ping: Postgres restarts must not poison a long-lived worker's pool.
    return create_engine(url or get_settings().database_url, pool_pre_ping=True, future=True)


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back when it raises."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _server(url: str) -> Engine:
    # Database-level statements run outside a transaction, connected to the `postgres` database.
    return create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")


def ensure_database(url: str) -> None:
    """Create the database `url` names when the server has none of that name."""
    name = make_url(url).database
    engine = _server(url)
    with engine.connect() as connection:
        exists = connection.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).scalar()
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()


def create_scratch_database(server_url: str, prefix: str) -> str:
    """A new, empty database with a unique name on the server of `server_url`; returns its URL."""
    url = make_url(server_url).set(database=f"{prefix}_{uuid.uuid4().hex[:10]}")
    rendered = url.render_as_string(hide_password=False)
    ensure_database(rendered)
    return rendered


def drop_database(url: str) -> None:
    engine = _server(url)
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    engine.dispose()


def alembic_config(database_url: str | None = None) -> Config:
    config = Config(str(Path(__file__).resolve().parents[1] / "alembic.ini"))
    # Keep the caller's own logging; alembic.ini's would reformat every later log line.
    config.attributes["configure_logger"] = False
    if database_url:
        config.attributes["database_url"] = database_url
    return config


def migrate(database_url: str | None = None, revision: str = "head") -> None:
    """Apply the Alembic migrations (to the configured database unless a URL is given)."""
    command.upgrade(alembic_config(database_url), revision)
