"""The unit tier: no services, no weights file, no `../shared`; settings are the defaults.

A unit test that asks for a service fixture fails at once, saying which tier it belongs to.
"""

from __future__ import annotations

import pytest

from common.settings import Settings, load_settings


@pytest.fixture(scope="session")
def service_env() -> dict[str, str]:
    raise pytest.UsageError(
        "a unit test asked for Postgres, Redis or S3: it belongs in tests/integration or tests/e2e"
    )


@pytest.fixture
def settings() -> Settings:
    """The defaults, as a process without any VITRINE_* variable reads them."""
    return load_settings()
