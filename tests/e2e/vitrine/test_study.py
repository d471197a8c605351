"""The evaluation study on real Flipkart photos with the real pretrained efficientnet_lite0 backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from common.settings import load_settings
from tests.conftest import FLIPKART, LITE0_WEIGHTS
from vitrine.cli import app, register
from vitrine.evaluation.dataset import EvaluationError, ModelSpec
from vitrine.evaluation.study import evaluate
from vitrine.local.folder import list_images, read_labels

IMAGES = FLIPKART / "images"
LABELS = FLIPKART / "labels.csv"
LITE0 = ModelSpec("efficientnet_lite0", LITE0_WEIGHTS)
# The study needs no services: the defaults, as a fresh install has them.
SETTINGS = load_settings()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("evaluation")
    labels = read_labels(LABELS, "category")
    paths = list_images(IMAGES)
    titles = read_labels(LABELS, "product_name")
    # A stratified sample of 126 photos (18 per category); seeds=2 keeps t-SNE cheap.
    result = evaluate(
        paths, labels, [LITE0], out, SETTINGS, limit=126, seeds=2, device="cpu", titles=titles,
        cache=out / "cache",
    )  # fmt: skip
    return result, out


def test_report_has_every_setting_and_figure(report: tuple[dict, Path]) -> None:
    result, out = report
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["results"] == result["results"]
    assert result["n_images"] == 126 and result["k"] == 7
    assert set(result["categories"].values()) == {18}
    assert [r["reduction"] for r in result["results"]] == ["none", "pca", "tsne"]
    for row in result["results"]:
        assert row["model"] == "efficientnet_lite0" and row["pretrained"]
        assert {"ari", "ari_std", "nmi", "k", "n_images"} <= set(row)
        assert row["k"] == 7 and row["n_images"] == 126 and len(row["ari_runs"]) == 2
        assert -1.0 <= row["ari"] <= 1.0 and 0.0 <= row["nmi"] <= 1.0
    tsne = next(r for r in result["results"] if r["reduction"] == "tsne")
    assert tsne["dim"] == 2
    methods = ("centroid", "knn", "linear", "title", "fused")
    assert [(s["model"], s["method"]) for s in result["suggestions"]] == [
        ("efficientnet_lite0", method) for method in methods
    ]
    for row in result["suggestions"]:
        assert 0.0 <= row["coverage_at_target"] <= 1.0 and 0.0 <= row["ece"] <= 1.0
        assert row["realised_precision"] is None or 0.0 <= row["realised_precision"] <= 1.0
        assert row["calibration"] and sum(b["n"] for b in row["calibration"]) == 63  # the held-out half
    assert [(r["method"], r["noise"]) for r in result["seller_noise"]] == [
        (method, noise) for method in methods for noise in (0.1, 0.2)
    ]
    # 10 % and 20 % of the 63 labelled listings were given a wrong category.
    assert [r["replaced"] for r in result["seller_noise"][:2]] == [6, 13]
    # The configured crop (the default, full) is embedded first; both are compared.
    assert sorted((c["crop"], c["model"]) for c in result["crops"]) == [
        ("center", "efficientnet_lite0"),
        ("full", "efficientnet_lite0"),
    ]
    assert all(-1.0 <= c["ari"] <= 1.0 and 0.0 <= c["accuracy"] <= 1.0 for c in result["crops"])
    # One file of vectors per crop: a second run reads them instead of embedding again.
    assert len(list((out / "cache").glob("*.npz"))) == 2
    assert result["unreadable"] == []
    figures = ("ari.png", "confusion.png", "tsne.png", "clusters.png", "calibration.png")
    for name in figures:
        assert (out / name).stat().st_size > 5_000, name
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert all(f"src='{name}'" in page for name in figures)
    assert "efficientnet_lite0" in page


def test_clusters_match_categories_far_above_a_shuffled_control(report: tuple[dict, Path]) -> None:
    result, _out = report
    best = result["best"]
    assignments = result["assignments"]
    assert len(assignments) == 126
    truth = [a["category"] for a in assignments]
    clusters = [a["cluster"] for a in assignments]
    assert adjusted_rand_score(truth, clusters) == pytest.approx(best["ari_best"], abs=1e-3)

    rng = np.random.default_rng(0)
    control = [adjusted_rand_score(rng.permutation(truth), clusters) for _ in range(20)]
    assert abs(np.mean(control)) < 0.05
    assert best["ari"] > 0.2
    assert best["ari"] > np.mean(control) + 10 * np.std(control)
    accuracy = {s["method"]: s["accuracy"] for s in result["suggestions"]}
    assert min(accuracy.values()) > 2 / 7  # twice chance over 7 categories
    # The titles name the product: reading them beats the photo alone.
    assert accuracy["fused"] > accuracy["knn"]


def test_unreadable_photos_are_listed_not_fatal(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    labels = {}
    for i, path in enumerate(list_images(IMAGES, 14)):
        (folder / path.name).write_bytes(path.read_bytes())
        labels[path.name] = "a" if i % 2 else "b"
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    labels["broken.jpg"] = "a"

    result = evaluate(
        list_images(folder),
        labels,
        [LITE0],
        tmp_path / "out",
        SETTINGS,
        reductions=["none"],
        seeds=1,
        crops=["center"],
    )

    assert result["n_images"] == 14
    assert [u["image"] for u in result["unreadable"]] == ["broken.jpg"]
    assert result["unreadable"][0]["reason"] in {"not_an_image", "corrupt_image"}


def test_unknown_model_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="unknown timm model 'no_such_net'"):
        evaluate(
            list_images(IMAGES, 20),
            read_labels(LABELS, "category"),
            [ModelSpec("no_such_net")],
            tmp_path,
            SETTINGS,
        )


def invoke(*args: str) -> tuple[int, str]:
    register()
    result = CliRunner().invoke(app, ["evaluate", *args], env={"COLUMNS": "250"})
    # Typer's rich error box wraps long messages; compare on collapsed whitespace.
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    common = ["--images", str(IMAGES), "--out", str(tmp_path / "out")]
    code, output = invoke(*common, "--labels", str(LABELS), "--model", "no_such_net")
    assert code == 2 and "unknown timm model" in output

    code, output = invoke(
        *common,
        "--labels",
        str(LABELS),
        "--label-column",
        "colour",
        "--model",
        f"efficientnet_lite0={LITE0_WEIGHTS}",
    )
    assert code == 2 and "colour" in output

    code, output = invoke(
        *common,
        "--labels",
        str(LABELS),
        "--limit",
        "20",
        "--k",
        "30",
        "--model",
        f"efficientnet_lite0={LITE0_WEIGHTS}",
    )
    assert code == 2 and "fewer than k=30" in output

    code, output = invoke(
        *common, "--labels", str(LABELS), "--model", "efficientnet_lite0=/nonexistent.safetensors"
    )
    assert code == 2 and "not found" in output
    assert not (tmp_path / "out" / "report.json").exists()


def test_another_precision_is_reported_beside_fp32_with_the_cosine_between_them(tmp_path: Path) -> None:
    result = evaluate(
        list_images(IMAGES),
        read_labels(LABELS, "category"),
        [LITE0],
        tmp_path,
        SETTINGS,
        limit=42,
        seeds=1,
        reductions=["none"],
        device="cpu",
        precision="int8",
    )
    assert [row["model"] for row in result["results"]] == ["efficientnet_lite0", "efficientnet_lite0 int8"]
    assert result["results"][1]["backbone_id"] == result["results"][0]["backbone_id"] + "+int8"
    [cosine] = result["precision_cosine"]
    assert cosine["model"] == "efficientnet_lite0" and cosine["precision"] == "int8"
    # efficientnet_lite0 without its classifier has no Linear layer: int8 changes nothing there.
    assert cosine["cosine_min"] > 0.999


def test_a_precision_the_device_cannot_run_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.settings import ConfigError

    # oneDNN capped below bf16 (read by the check only: nothing runs before the refusal).
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(ConfigError, match="bf16"):
        evaluate(list_images(IMAGES, 20), read_labels(LABELS, "category"), [LITE0], tmp_path, SETTINGS,
                 device="cpu", precision="bf16")  # fmt: skip
    assert not (tmp_path / "report.json").exists()
