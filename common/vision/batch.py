"""The one path from photos to vectors: fetch, check, decode and prepare a batch, then embed it.

The embed worker, the study and the benchmarks all go through `prepare_batch` and
`embed_prepared`; a photo that cannot be used carries its reason, the others are unaffected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

# Through the module, so that a test can stand in for the decoder (tests/faults/crash_on_marker).
from common.photos import decode as decoding
from common.photos.failures import ImageRejected
from common.settings import Settings
from common.vision.backbone import Backbone
from common.vision.device_decode import (
    decodable_on_device,
    decode_batch,
)

log = logging.getLogger(__name__)

Source = TypeVar("Source")


@dataclass
class Prepared(Generic[Source]):
    """One photo on its way to the model: its input tensor, or why it has none."""

    source: Source
    tensor: torch.Tensor | None = None
    sha256: str | None = None
    error: ImageRejected | None = None
    # Checked bytes of a JPEG waiting for the device's decoder (`Backbone.decode == "device"`).
    encoded: bytes | None = None


def prepare_batch(
    backbone: Backbone,
    sources: Sequence[Source],
    fetch: Callable[[Source], bytes],
    settings: Settings,
    pool: Executor | None = None,
) -> list[Prepared[Source]]:
    """Fetch, check, decode and prepare each photo (fetching and host decoding in `pool` when given).

    This is the one way photos reach the model: the embed worker, the study and the benchmarks
    all call it. A photo that cannot be used carries its reason; the others are unaffected.
    """

    def guarded(source: Source, work: Callable[[], Prepared[Source]]) -> Prepared[Source]:
        try:
            return work()
        except ImageRejected as error:
            return Prepared(source, error=error)
        except Exception as error:  # a bug, not the photo's fault: isolated here, retried by the caller
            log.exception("unexpected error preparing %r", source)
            return Prepared(source, error=ImageRejected.internal(error))

    def on_host(source: Source, data: bytes) -> Prepared[Source]:
        loaded = decoding.decode_image(data, settings, backbone.min_side)
        return Prepared(source, backbone.prepare(loaded.image), loaded.sha256)

    def fetched(source: Source) -> Prepared[Source]:
        data = fetch(source)
        if backbone.decode == "device" and decodable_on_device(decoding.open_checked(data, settings), data):
            return Prepared(source, sha256=decoding.sha256_of(data), encoded=data)
        return on_host(source, data)

    def one(source: Source) -> Prepared[Source]:
        return guarded(source, lambda: fetched(source))

    prepared = list(pool.map(one, sources) if pool is not None else map(one, sources))
    waiting = [p for p in prepared if p.encoded is not None]
    if waiting:
        refused = _decode_on_device(backbone, waiting)
        for item, data in refused:
            done = guarded(item.source, lambda: on_host(item.source, data))  # noqa: B023 - called at once
            item.tensor, item.sha256, item.error = done.tensor, done.sha256, done.error
    return prepared


def _decode_on_device(
    backbone: Backbone, waiting: Sequence[Prepared[Source]]
) -> list[tuple[Prepared[Source], bytes]]:
    """One batched decode on the device, then its transform; returns what the device refused."""
    transform = backbone.device_transform
    assert transform is not None
    refused: dict[int, BaseException] = {}
    encoded = [p.encoded or b"" for p in waiting]
    with torch.inference_mode():
        images = decode_batch(encoded, backbone.device, refused.__setitem__)
        for item, image in zip(waiting, images, strict=True):
            item.encoded = None
            if image is not None:
                item.tensor = transform(image)
    for index, error in refused.items():
        log.info("the device's decoder refused %r (%s); decoding on the host", waiting[index].source, error)
    return [(waiting[index], encoded[index]) for index in sorted(refused)]


def embed_prepared(backbone: Backbone, prepared: Sequence[Prepared[Source]]) -> np.ndarray:
    """Vectors of the prepared photos that have a tensor, in their order."""
    return backbone.forward([p.tensor for p in prepared if p.tensor is not None])
