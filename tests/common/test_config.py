"""Configuration: one settings class; a wrong value names its environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import ConfigError, load_settings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VITRINE_BATCH_SIZE", "0"),
        ("VITRINE_FLUSH_INTERVAL", "-1"),
        ("VITRINE_DATABASE_URL", "mysql://db/vitrine"),
        ("VITRINE_BROKER_URL", "amqp://guest@localhost//"),
        ("VITRINE_DEVICE", "tpu"),
        ("VITRINE_WEIGHTS", "/nonexistent/weights.safetensors"),
        ("VITRINE_CONFIDENCE_THRESHOLD", "1.5"),
        ("VITRINE_SUGGESTION_METHOD", "vibes"),
        ("VITRINE_PRECISION", "fp16"),
        ("VITRINE_TORCH_THREADS", "0"),
    ],
)
def test_a_wrong_value_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_lists_and_urls_are_normalised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the working directory
    monkeypatch.setenv("VITRINE_FETCH_ALLOWED_HOSTS", "images.example.com, .cdn.example.org")
    monkeypatch.setenv("VITRINE_ALLOWED_IMAGE_FORMATS", "jpeg,png")
    monkeypatch.setenv("VITRINE_DATABASE_URL", "postgresql://u@db:5432/vitrine")
    settings = load_settings()
    assert settings.fetch_allowed_hosts == ["images.example.com", ".cdn.example.org"]
    assert settings.allowed_image_formats == ["JPEG", "PNG"]
    assert settings.database_url == "postgresql+psycopg://u@db:5432/vitrine"


def test_a_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VITRINE_BATCH_SIZE", raising=False)
    (tmp_path / ".env").write_text("VITRINE_BATCH_SIZE=7\n")
    assert load_settings().batch_size == 7
