"""The labelled photos a study runs on: which photos, their labels and titles, checked like listings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from common.photos.decode import LoadedImage, decode_image
from common.photos.failures import FailureReason, ImageRejected
from common.settings import Settings

# start(description, total) → advance(n)
ProgressFactory = Callable[[str, int], Callable[[int], None]]


# The fixed seed of every split and sample, so that two runs measure the same photos.
SPLIT_SEED = 0
# Side of the photo thumbnails the report shows.
THUMBNAIL_SIZE = 96


class EvaluationError(ValueError):
    """The inputs cannot be evaluated as given; the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    weights: Path | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """`NAME` or `NAME=WEIGHTS`."""
        name, _, weights = text.partition("=")
        if not name.strip():
            raise EvaluationError(f"model {text!r}: expected NAME or NAME=WEIGHTS")
        return cls(name.strip(), Path(weights.strip()) if weights.strip() else None)

    def label(self, models: Sequence[ModelSpec]) -> str:
        """The name, with the weights file when the same model is evaluated with several."""
        if sum(m.name == self.name for m in models) == 1:
            return self.name
        return f"{self.name} ({self.weights.name if self.weights else 'default weights'})"

    def check(self) -> None:
        """Fail before any work for a name timm does not know or a missing weights file."""
        import timm

        if not timm.is_model(self.name) and not timm.list_models(self.name.split(".")[0]):
            raise EvaluationError(f"unknown timm model {self.name!r}")
        if self.weights is not None and not self.weights.is_file():
            raise EvaluationError(f"weights file for {self.name!r} not found: {self.weights}")


@dataclass
class Dataset:
    """The photos to evaluate, their categories, and what was left out and why."""

    paths: list[Path]
    labels: list[str]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    unlabelled: int = 0
    thumbnails: list[Image.Image] = field(default_factory=list)
    # Each photo's listing title when the label file has a title column; None: no titles at all.
    titles: list[str | None] | None = None

    @property
    def categories(self) -> list[str]:
        return sorted(set(self.labels))


def select_images(
    paths: Sequence[Path],
    labels: dict[str, str],
    limit: int | None = None,
    seed: int = SPLIT_SEED,
    titles: dict[str, str] | None = None,
) -> Dataset:
    """The photos that have a category; with `limit`, a stratified sample of that many."""
    labelled = [p for p in paths if p.name in labels]
    names = [labels[p.name] for p in labelled]
    unlabelled = len(paths) - len(labelled)

    def titled(chosen: list[Path]) -> list[str | None] | None:
        return [titles.get(p.name) or None for p in chosen] if titles is not None else None

    if limit is None or limit >= len(labelled):
        return Dataset(labelled, names, unlabelled=unlabelled, titles=titled(labelled))
    n_categories = len(set(names))
    if limit < n_categories:
        raise EvaluationError(f"--limit {limit} is below the number of categories ({n_categories})")
    chosen, _rest = train_test_split(
        np.arange(len(labelled)), train_size=limit, stratify=names, random_state=seed
    )
    keep = sorted(int(i) for i in chosen)
    kept = [labelled[i] for i in keep]
    return Dataset(kept, [names[i] for i in keep], unlabelled=unlabelled, titles=titled(kept))


def read_photo(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ImageRejected(FailureReason.fetch_failed, f"cannot read {path.name}: {error}") from None


def load_photo(path: Path, settings: Settings) -> LoadedImage:
    """A photo file through the live system's safe decoder."""
    return decode_image(read_photo(path), settings)


def check_images(dataset: Dataset, settings: Settings) -> Dataset:
    """Decode every photo with the live system's safe decoder; unreadable ones are listed, not fatal."""
    kept = Dataset([], [], list(dataset.unreadable), dataset.unlabelled)
    titles = dataset.titles if dataset.titles is not None else [None] * len(dataset.paths)
    kept_titles: list[str | None] = []
    for path, label, title in zip(dataset.paths, dataset.labels, titles, strict=True):
        try:
            image = load_photo(path, settings).image
        except ImageRejected as error:
            kept.unreadable.append({"image": path.name, "reason": str(error.reason), "detail": error.detail})
            continue
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        kept.paths.append(path)
        kept.labels.append(label)
        kept.thumbnails.append(image)
        kept_titles.append(title)
    kept.titles = kept_titles if dataset.titles is not None else None
    return kept
