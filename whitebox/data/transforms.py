"""Transforms that draw their randomness only from the generator they are given, and return uint8.

A transform maps ``(PIL image, torch.Generator) -> uint8 tensor (3, H, W)``; the float cast and the
normalisation ``(x / 255 - mean) / std`` happen later, on the device (``whitebox.data.loader``), so
workers send a quarter of the bytes. Decoding was chosen by measurement (``benchmarks/loader.py``,
decoder table, CPU time per image on 500 x 375 JPEGs): ``decode_crop`` decodes a JPEG whose crop is at
least 4x the output size at 1/4 or 1/8 DCT scale (Pillow's ``draft``; about 0.7 against 1.1 ms at 32 px),
any other JPEG with libjpeg-turbo through ``torchvision.io.decode_jpeg`` and crops and resizes it in
torch (bicubic, antialiased, matching Pillow's bicubic to within rounding; about 1.1 against 2.1 ms
for Pillow's decode + resize at 224 px); other formats are decoded by Pillow (``open_image``) and
resized the same way.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from .base import to_rgb

__all__ = [
    "EvalTransform",
    "MAEAugment",
    "SeededTransform",
    "decode",
    "decode_crop",
    "normalize",
    "resized_crop",
    "to_uint8_tensor",
]


class SeededTransform:
    """A transform that draws its randomness only from the generator it is given."""

    def __call__(self, img: Image.Image, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """An image as a uint8 RGB tensor (3, H, W)."""
    return torch.from_numpy(np.asarray(to_rgb(img), dtype=np.uint8).copy()).permute(2, 0, 1)


def decode(img: Image.Image) -> torch.Tensor:
    """The pixels of ``img`` as uint8 (3, H, W): a not yet decoded RGB JPEG through ``torchvision.io``
    (an ``OSError`` for a broken file, like Pillow's), anything else through Pillow."""
    if img.format == "JPEG" and img.mode == "RGB" and _lazy(img) and (decode_jpeg := _decoder()) is not None:
        from torchvision.io import ImageReadMode

        img.fp.seek(0)
        data = img.fp.read()
        img.close()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as err:
            raise OSError(f"broken JPEG data ({str(err).rsplit(', ', 1)[-1]})") from err
    return to_uint8_tensor(img)


@functools.cache
def _decoder() -> Callable[..., torch.Tensor] | None:
    """``torchvision.io.decode_jpeg`` (deprecated since torchvision 0.29 in favour of TorchCodec, still the
    fastest measured here), or None where a torchvision no longer has it: Pillow decodes then."""
    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    return decode_jpeg


def _lazy(img: Image.Image) -> bool:
    """Not yet decoded (Pillow opens files lazily) and still readable."""
    return getattr(img, "_im", None) is None and getattr(img, "fp", None) is not None


def normalize(
    x: torch.Tensor, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None
) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> float32 ``(x / 255 - mean) / std`` on ``x``'s device (ImageNet's by default).

    Computed as ``(x - 255 mean) / (255 std)`` in place on the one float copy: a third of the memory
    traffic of the textbook form (measured 0.34 against 0.98 ms per 224 px image on one CPU thread).
    """
    from .base import IMAGENET_MEAN, IMAGENET_STD

    shift = torch.tensor(mean or IMAGENET_MEAN, device=x.device).mul_(255).view(3, 1, 1)
    scale = torch.tensor(std or IMAGENET_STD, device=x.device).mul_(255).view(3, 1, 1)
    return x.float().sub_(shift).div_(scale)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def dct_reduction(box: tuple[float, float, float, float], size: int) -> int:
    """The largest JPEG DCT scale-down (1, 2, 4, 8) that keeps ``box`` at least ``size`` on both sides."""
    short = min(box[2] - box[0], box[3] - box[1])
    reduce = 1
    while reduce < 8 and short / (2 * reduce) >= size:
        reduce *= 2
    return reduce


def decode_crop(img: Image.Image, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """``box`` (left, top, right, bottom, in ``img``'s pixels) of ``img`` as uint8 (3, size, size), bicubic.

    A not yet decoded JPEG whose box is at least 4x the output on both sides is decoded at 1/4 or 1/8
    DCT scale by Pillow (``draft``) and resized by Pillow; everything else goes through ``decode`` and
    ``resized_crop``. (At 1/2 scale the entropy decoding dominates and torchvision's path was faster.)
    """
    if img.format == "JPEG" and img.mode == "RGB" and _lazy(img) and (reduce := dct_reduction(box, size)) >= 4:
        full = img.size
        img.draft("RGB", (math.ceil(full[0] / reduce), math.ceil(full[1] / reduce)))
        sx, sy = img.size[0] / full[0], img.size[1] / full[1]
        scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        return to_uint8_tensor(img.resize((size, size), Image.BICUBIC, box=scaled))
    left, top, right, bottom = (round(v) for v in box)
    return resized_crop(decode(img), (left, top, max(right, left + 1), max(bottom, top + 1)), size)


def resized_crop(x: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """``box`` (left, top, right, bottom) of uint8 ``x`` (3, H, W) resized to (size, size), bicubic, antialiased."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resized_crop as crop

    left, top, right, bottom = box
    return crop(x, top, left, bottom - top, right - left, [size, size], InterpolationMode.BICUBIC, antialias=True)


class MAEAugment(SeededTransform):
    """MAE pretraining augmentation: RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip, uint8 out.

    The crop follows torchvision's ``RandomResizedCrop`` sampling (area fraction and log-uniform
    aspect ratio, ten tries, then a centre crop), drawing from ``g``.
    """

    def __init__(
        self,
        img_size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
    ) -> None:
        self.img_size, self.scale, self.ratio, self.hflip = img_size, scale, ratio, hflip

    def crop_box(self, width: int, height: int, g: torch.Generator) -> tuple[int, int, int, int]:
        """A RandomResizedCrop box (left, top, right, bottom) in pixels of a ``width`` x ``height`` image,
        drawn from ``g`` as torchvision samples it (ten tries, then a centre crop).
        """
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, *log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return left, top, left + w, top + h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, g: torch.Generator) -> torch.Tensor:
        box = self.crop_box(img.width, img.height, g)
        x = decode_crop(img, box, self.img_size)
        if torch.rand((), generator=g).item() < self.hflip:
            x = x.flip(-1)
        return x


class EvalTransform(SeededTransform):
    """Resize the short side to ``img_size / crop_pct`` (bicubic, antialiased), centre-crop ``img_size``; uint8 out."""

    def __init__(self, img_size: int, crop_pct: float = 1.0) -> None:
        self.img_size, self.crop_pct = img_size, crop_pct

    def __call__(self, img: Image.Image, g: torch.Generator | None = None) -> torch.Tensor:
        n = self.img_size
        if img.size == (n, n):
            return decode(img)
        # the centre n x n of the image resized to short side n / crop_pct, as a box of the original
        side = n * min(img.size) / round(n / self.crop_pct)
        left, top = (img.width - side) / 2, (img.height - side) / 2
        return decode_crop(img, (left, top, left + side, top + side), n)
