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
    assert settings.photos.fetch_allowed_hosts == ["images.example.com", ".cdn.example.org"]
    assert settings.photos.allowed_image_formats == ["JPEG", "PNG"]
    assert settings.services.database_url == "postgresql+psycopg://u@db:5432/vitrine"


def test_a_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VITRINE_BATCH_SIZE", raising=False)
    (tmp_path / ".env").write_text("VITRINE_BATCH_SIZE=7\n")
    assert load_settings().embed.batch_size == 7


def test_each_concern_reads_its_own_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITRINE_REFIT_K", "9")
    monkeypatch.setenv("VITRINE_EXPLAIN_BATCH_SIZE", "3")
    monkeypatch.setenv("VITRINE_BATCH_SIZE", "5")
    settings = load_settings()
    assert (settings.refit.k, settings.explain.batch_size, settings.embed.batch_size) == (9, 3, 5)


def test_a_renamed_variable_is_still_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITRINE_GRADCAM_BUCKET", "old-name-bucket")
    assert load_settings().store.overlay_bucket == "old-name-bucket"
    monkeypatch.setenv("VITRINE_OVERLAY_BUCKET", "new-name-bucket")
    assert load_settings().store.overlay_bucket == "new-name-bucket"


def test_replace_validates_and_names_the_variable() -> None:
    settings = load_settings()
    assert settings.replace(refit_k=4).refit.k == 4
    assert settings.refit.k is None  # the original is unchanged
    with pytest.raises(ConfigError, match="VITRINE_BATCH_SIZE"):
        settings.replace(batch_size=0)
    with pytest.raises(ConfigError, match="VITRINE_NO_SUCH_THING: no such setting"):
        settings.replace(no_such_thing=1)
