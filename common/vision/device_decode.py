"""JPEG decoding and preprocessing on the model's device (`VITRINE_DECODE=device`).

On a GPU, Pillow on a few cores cannot decode thousands of photos a second; nvJPEG, through
`torchvision.io.decode_jpeg` on the CUDA device, can, and decodes a whole batch in one call. The
photo's bytes are still checked on the host first (`common.photos.fetch.open_checked`: format, pixel
count, side, frames), so nothing the safe decoder would refuse reaches a decoder. What the
device cannot decode (a CMYK JPEG, data nvJPEG rejects) goes through the host's path, which
gives the photo its true failure reason when it is broken.

Preprocessing is timm's eval transform for the model, on tensors: the same data config (input
size, crop fraction, interpolation, mean and std) and the same `full` / `center` crop. The
pixels differ from the host path only by resampling and by the codec's reduced decode, which the
host uses for large JPEGs (`draft`); the tests bound the difference in embedding space.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

# JPEG modes the device decodes to RGB; others (CMYK, YCCK) take the host path.
DEVICE_JPEG_MODES = ("RGB", "L")
INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


JPEG_END = b"\xff\xd9"


def decodable_on_device(header: Image.Image, data: bytes) -> bool:
    """Whether a checked (opened, not decoded) photo goes to the device's decoder.

    Only RGB or grey JPEGs that end with the end-of-image marker: a file cut short might be
    decoded in part by a lenient codec, so it goes to the host's strict decoder, which refuses it
    with the true reason. A JPEG with bytes after its marker takes the host path too, and is
    decoded there.
    """
    return (
        header.format == "JPEG" and header.mode in DEVICE_JPEG_MODES and data.rstrip(b"\0")[-2:] == JPEG_END
    )


class UnsupportedOnDevice(ValueError):
    """A model whose eval transform the device path does not reproduce."""


@dataclass(frozen=True)
class TensorTransform:
    """timm's eval transform on a decoded uint8 CHW tensor: resize, centre crop, scale, normalise."""

    size: int
    crop_pct: float
    interpolation: InterpolationMode
    mean: list[float]
    std: list[float]
    pad_square: bool

    @classmethod
    def from_config(cls, config: dict[str, Any], crop: str) -> TensorTransform:
        """From timm's resolved data config (`common.vision.transforms.crop_data_config`)."""
        _, height, width = config["input_size"]
        if height != width or config.get("crop_mode", "center") != "center":
            raise UnsupportedOnDevice(
                f"decoding on the device needs a square input and timm's centre crop; this model has "
                f"{height}x{width}, crop mode {config.get('crop_mode')!r}"
            )
        return cls(
            size=int(height),
            crop_pct=float(config.get("crop_pct") or 1.0),
            interpolation=INTERPOLATIONS.get(config.get("interpolation", ""), InterpolationMode.BILINEAR),
            mean=[float(v) for v in config["mean"]],
            std=[float(v) for v in config["std"]],
            pad_square=crop == "full",
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.pad_square:
            image = pad_to_square(image)
        # As timm's eval transform: the shorter side to size / crop_pct, then the centre cut out.
        shorter = math.floor(self.size / self.crop_pct)
        pixels = TF.resize(image.float(), [shorter], self.interpolation, antialias=True)
        pixels = TF.center_crop(pixels, [self.size, self.size])
        # A resized PIL image holds 0..255; then timm's ToTensor scale and normalisation.
        pixels = pixels.clamp_(0, 255).round_().div_(255)
        return TF.normalize(pixels, self.mean, self.std)


def pad_to_square(image: torch.Tensor) -> torch.Tensor:
    """The photo centred on a square of its border's median colour.

    As `common.vision.transforms.pad_to_square` does it on the host.
    """
    _, height, width = image.shape
    if height == width:
        return image
    border = torch.cat([image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]], dim=1)
    # As numpy's median (the mean of the middle two), cut to an integer; offsets rounded as Pillow's.
    colour = torch.quantile(border.float(), 0.5, dim=1).floor().to(image.dtype)
    side = max(height, width)
    square = colour.view(3, 1, 1).expand(3, side, side).clone()
    top, left = round((side - height) * 0.5), round((side - width) * 0.5)
    square[:, top : top + height, left : left + width] = image
    return square


def decode_batch(
    encoded: Sequence[bytes], device: torch.device, fallback: Callable[[int, BaseException], None]
) -> list[torch.Tensor | None]:
    """RGB uint8 CHW tensors on `device`, upright (EXIF), in order; one call for the whole batch.

    Should the batch call fail (one photo the device's decoder rejects fails them all), each
    photo is decoded alone, and `fallback(index, error)` is told of the ones that still fail.
    """
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
    if not tensors:
        return []
    try:
        return list(_decode_jpeg(tensors, device))
    except RuntimeError:
        pass
    decoded: list[torch.Tensor | None] = []
    for index, tensor in enumerate(tensors):
        try:
            decoded.append(_decode_jpeg([tensor], device)[0])
        except RuntimeError as error:
            fallback(index, error)
            decoded.append(None)
    return decoded


def _decode_jpeg(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's batched JPEG decoder (nvJPEG on CUDA); all or nothing for the list.

    torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; this is the one place
    to change when TorchCodec's CUDA decoder is adopted (docs/performance.md).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
