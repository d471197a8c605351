"""Real services for the tests: the machine's Postgres and Redis when running, private ones otherwise.

An unreachable service is never a skip: either a private instance starts from the local
binaries, or the session fails with a message that says what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from common import config, db
from common.config import Settings
from common.localservices import LocalServices, port_open

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FLIPKART = SHARED / "data" / "flipkart"
LITE0_WEIGHTS = SHARED / "weights" / "efficientnet_lite0.safetensors"
TABLES = ("moderator_decision", "suggestion", "embedding", "clustering_version", "listing")


@pytest.fixture(scope="session")
def service_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """VITRINE_* variables pointing at real Postgres, Redis and S3 endpoints for this session."""
    local = LocalServices(tmp_path_factory.mktemp("services"))
    try:
        if port_open("127.0.0.1", 5432):
            server_url = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        else:
            server_url = local.start_postgres()
        # A private Redis for the session: tests flush it freely.
        broker_url = local.start_redis() if not port_open("127.0.0.1", 6379) else None
        if broker_url is None:
            broker_url = f"redis://127.0.0.1:6379/{10 + os.getpid() % 5}"
        s3_endpoint = local.start_s3()
        database_url = db.create_scratch_database(server_url, "vitrine_test")
        env = {
            "VITRINE_DATABASE_URL": database_url,
            "VITRINE_BROKER_URL": broker_url,
            "VITRINE_S3_ENDPOINT": s3_endpoint,
            "VITRINE_S3_ACCESS_KEY": "testing",
            "VITRINE_S3_SECRET_KEY": "testing",
            "VITRINE_MODEL": "efficientnet_lite0",
            "VITRINE_WEIGHTS": str(LITE0_WEIGHTS),
            # Tests never download: a missing file must fail fast, not wait on retries.
            "HF_HUB_OFFLINE": "1",
        }
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        config.get_settings.cache_clear()
        db.get_engine.cache_clear()
        # Test modules may have imported the Celery app before the services were known.
        from workers.app import app

        app.conf.broker_url = broker_url
        redis.Redis.from_url(broker_url).flushdb()
        db.migrate(database_url)
        yield env
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        db.get_engine.cache_clear()
        db.drop_database(database_url)
    finally:
        local.stop()


@pytest.fixture
def settings(service_env: dict[str, str]) -> Settings:
    config.get_settings.cache_clear()
    return config.get_settings()


@pytest.fixture
def clean_db(service_env: dict[str, str]) -> Iterator[None]:
    engine = db.get_engine(service_env["VITRINE_DATABASE_URL"])
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    redis.Redis.from_url(service_env["VITRINE_BROKER_URL"]).flushdb()
    yield


@pytest.fixture(scope="session")
def flipkart_labels() -> list[dict[str, str]]:
    import csv

    assert FLIPKART.is_dir(), f"the Flipkart photos are expected at {FLIPKART}"
    with open(FLIPKART / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))
