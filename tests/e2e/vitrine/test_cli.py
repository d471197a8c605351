"""The `vitrine` commands a person types: publish a folder, refit, explain one listing."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from typer.testing import CliRunner

from common.delivery.queues import EMBED_QUEUE
from common.jobs.embed import EmbedPipeline
from common.runtime import Runtime
from common.schema import Listing
from common.settings import Settings
from common.vision.backbone import Backbone
from tests.conftest import FLIPKART, LITE0_WEIGHTS
from vitrine.cli import CommandState, app, register

register()
runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def photo_folder(tmp_path: Path, flipkart_labels: list[dict[str, str]]) -> tuple[Path, Path]:
    rows = [r for r in flipkart_labels if r["category"] == "Watches"][:6]
    rows += [r for r in flipkart_labels if r["category"] == "Kitchen & Dining"][:6]
    folder = tmp_path / "photos"
    folder.mkdir()
    for row in rows:
        shutil.copy(FLIPKART / "images" / row["image"], folder / row["image"])
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "category"])
        writer.writeheader()
        writer.writerows({"image": r["image"], "category": r["category"]} for r in rows)
    return folder, labels


def _invoke(settings: Settings, *args: str) -> str:
    # The command reads these settings instead of the environment, as `vitrine` would at start.
    result = runner.invoke(app, list(args), obj=CommandState(settings))
    assert result.exit_code == 0, result.output
    return result.output


def test_publish_refit_and_explain_from_the_command_line(
    settings: Settings, runtime: Runtime, clean_db: None, photo_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, labels = photo_folder
    output = _invoke(
        settings, "publish", "--images", str(folder), "--labels", str(labels), "--seller-share", "0.7"
    )
    assert "'created': 12" in output
    assert redis.Redis.from_url(settings.services.broker_url).llen(EMBED_QUEUE) == 12
    # Publishing the same folder again is a no-op.
    assert "'unchanged': 12" in _invoke(settings, "publish", "--images", str(folder), "--labels", str(labels))
    assert redis.Redis.from_url(settings.services.broker_url).llen(EMBED_QUEUE) == 12

    with runtime.db.transaction() as session:
        listings = session.execute(select(Listing.id, Listing.external_id, Listing.seller_category)).all()
    assert 0 < sum(1 for _id, _ext, category in listings if category) < 12
    # What the embed worker would do with those messages, in process.
    backbone = Backbone.load("efficientnet_lite0", LITE0_WEIGHTS)
    EmbedPipeline(settings, runtime.db, backbone, runtime.store).run([r[0] for r in listings])

    assert "'k': 2" in _invoke(settings, "refit")
    external_id = listings[0][1]
    out = tmp_path / "overlay.png"
    _invoke(settings, "explain", external_id, "--out", str(out))
    assert out.read_bytes().startswith(PNG_MAGIC)


def _error(settings: Settings, *args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "400"}, obj=CommandState(settings))
    assert result.exit_code == 2, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_clear_errors_for_bad_arguments(
    settings: Settings, tmp_path: Path, photo_folder: tuple[Path, Path]
) -> None:
    folder, _labels = photo_folder
    bad_labels = tmp_path / "bad.csv"
    bad_labels.write_text("file,label\na.jpg,Watches\n")
    assert "needs columns 'image' and 'category'" in _error(
        settings, "publish", "--images", str(folder), "--labels", str(bad_labels)
    )
    assert "not a directory" in _error(settings, "publish", "--images", str(tmp_path / "missing"))
    assert "unknown queues" in _error(settings, "worker", "nonsense")


def test_refit_while_another_runs_is_not_an_error(
    settings: Settings, runtime: Runtime, clean_db: None
) -> None:
    from common.jobs.refit import refit_lock

    with refit_lock(runtime.db) as acquired:
        assert acquired
        output = _invoke(settings, "refit")  # exit code 0, checked by _invoke
    assert "another refit is running" in output


def test_publish_sends_titles_from_a_column_of_the_labels(
    settings: Settings, runtime: Runtime, clean_db: None, photo_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, labels = photo_folder
    with open(labels, newline="") as handle:
        rows = list(csv.DictReader(handle))
    titled = tmp_path / "titled.csv"
    with open(titled, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "category", "product_name"])
        writer.writeheader()
        writer.writerows(
            {**row, "product_name": f"A {row['category'].lower()} ({row['image']})"} for row in rows
        )
    _invoke(
        settings,
        "publish",
        "--images",
        str(folder),
        "--labels",
        str(titled),
        "--title-column",
        "product_name",
    )
    with runtime.db.transaction() as session:
        titles = dict(session.execute(select(Listing.external_id, Listing.title)).all())
    assert len(titles) == len(rows)
    assert all(title and title.endswith(".jpg)") for title in titles.values()), titles
