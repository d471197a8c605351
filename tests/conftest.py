"""Real services for the tests: the machine's Postgres and Redis when running, private ones otherwise.

An unreachable service is never a skip: either a private instance starts from the local
binaries, or the session fails with a message that says what is missing.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub (through timm): it reads this once, at import. Tests
# never download; a missing file must fail at once, not after the hub's retries.
os.environ["HF_HUB_OFFLINE"] = "1"
# The tests own the configuration: nothing from the developer's shell leaks into a run.
for _key in [key for key in os.environ if key.startswith("VITRINE_")]:
    del os.environ[_key]

import fcntl  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import text  # noqa: E402

from common.db import Database, drop_database, migrate  # noqa: E402
from common.object_store import ObjectStore  # noqa: E402
from common.runtime import Runtime  # noqa: E402
from common.schema import DEFAULT_SOURCE_ID  # noqa: E402
from common.settings import Settings, with_environment  # noqa: E402
from common.vision.backbone import Backbone  # noqa: E402
from vitrine.local.services import LocalServices, create_scratch_database, port_open  # noqa: E402

# The review app's fixtures (client, tokens, flagged items), for every tier that needs them.
pytest_plugins = ["tests.fixtures.review"]

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FLIPKART = SHARED / "data" / "flipkart"
LITE0_WEIGHTS = SHARED / "weights" / "efficientnet_lite0.safetensors"
TABLES = (
    "webhook_delivery",
    "webhook_subscription",
    "review_lease",
    "api_token",
    "account_session",
    "account",
    "moderator_decision",
    "suggestion",
    "embedding",
    "clustering_version",
    "listing",
    "broker_state",
)


@pytest.fixture(scope="session")
def service_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """VITRINE_* variables pointing at real Postgres, Redis and S3 endpoints for this session."""
    local = LocalServices(tmp_path_factory.mktemp("services"))
    try:
        if port_open("127.0.0.1", 5432):
            server_url = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        else:
            server_url = local.start_postgres()
        if port_open("127.0.0.1", 6379):
            # A database of its own on the machine's Redis: tests flush it freely.
            broker_url = f"redis://127.0.0.1:6379/{_claim_redis_database()}"
        else:
            broker_url = local.start_redis()
        s3_endpoint = local.start_s3()
        database_url = create_scratch_database(server_url, "vitrine_test")
        env = {
            "VITRINE_DATABASE_URL": database_url,
            "VITRINE_BROKER_URL": broker_url,
            "VITRINE_S3_ENDPOINT": s3_endpoint,
            "VITRINE_S3_ACCESS_KEY": "testing",
            "VITRINE_S3_SECRET_KEY": "testing",
            "VITRINE_MODEL": "efficientnet_lite0",
            "VITRINE_WEIGHTS": str(LITE0_WEIGHTS),
        }
        redis.Redis.from_url(broker_url).flushdb()
        migrate(database_url)
        yield env
        drop_database(database_url)
    finally:
        local.stop()


def _claim_redis_database() -> int:
    """A Redis database number no other test session on this machine is using (held by a lock)."""
    for number in range(1, 16):
        handle = open(f"{tempfile.gettempdir()}/vitrine-test-redis-{number}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held_locks.append(handle)  # released when this session's process ends
        return number
    raise RuntimeError("every Redis database 1-15 is taken by another test session")


_held_locks: list[object] = []


@pytest.fixture(scope="session")
def base_settings(service_env: dict[str, str]) -> Settings:
    return with_environment(service_env)


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """This session's settings; a test may change its copy (`model_copy`) without affecting others."""
    return base_settings.model_copy(deep=True)


@pytest.fixture(scope="session")
def runtime(base_settings: Settings) -> Iterator[Runtime]:
    """One engine, one publisher and one store for the whole session, as a process would hold them."""
    made = Runtime(base_settings)
    yield made
    made.close()


@pytest.fixture(scope="session")
def db(runtime: Runtime) -> Database:
    return runtime.db


@pytest.fixture(scope="session")
def store(runtime: Runtime) -> ObjectStore:
    return runtime.store


@pytest.fixture
def child_env(service_env: dict[str, str]) -> dict[str, str]:
    """The environment of a process (worker, command) that should talk to this session's services."""
    return {**os.environ, **service_env}


@pytest.fixture
def clean_db(db: Database, service_env: dict[str, str]) -> Iterator[None]:
    with db.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        # Every source but the default one, which the migrations made and the code relies on.
        connection.execute(text("DELETE FROM source WHERE id <> :default"), {"default": DEFAULT_SOURCE_ID})
    redis.Redis.from_url(service_env["VITRINE_BROKER_URL"]).flushdb()
    yield


@pytest.fixture(scope="session")
def lite0() -> Backbone:
    """The real pretrained efficientnet_lite0, with its classifier (Grad-CAM's ImageNet target)."""
    assert LITE0_WEIGHTS.is_file(), f"pretrained weights expected at {LITE0_WEIGHTS}"
    return Backbone.load("efficientnet_lite0", LITE0_WEIGHTS, "cpu", with_classifier=True)


@pytest.fixture
def overlay_bucket(settings: Settings, store: ObjectStore) -> Iterator[str]:
    """The Grad-CAM bucket, emptied."""
    store.ensure_bucket(settings.store.overlay_bucket)
    for item in store.client.list_objects(settings.store.overlay_bucket, recursive=True):
        store.client.remove_object(settings.store.overlay_bucket, item.object_name)
    yield settings.store.overlay_bucket


@pytest.fixture(scope="session")
def flipkart_labels() -> list[dict[str, str]]:
    import csv

    assert FLIPKART.is_dir(), f"the Flipkart photos are expected at {FLIPKART}"
    with open(FLIPKART / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))
