"""Transforms that draw their randomness only from the generator they are given, and return uint8.

A transform maps ``(PIL image, torch.Generator) -> uint8 tensor (3, H, W)``; the float cast and the
normalisation ``(x / 255 - mean) / std`` happen later, on the device (``whitebox.data.loader``), so
workers send a quarter of the bytes. Where the crop allows, a JPEG is decoded at a reduced size by
libjpeg itself (``Image.draft``: 1/2, 1/4 or 1/8 scale in the DCT), never below the output size; that
was measured fastest on CPU (``benchmarks/loader.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .base import IMAGENET_MEAN, IMAGENET_STD, to_rgb

__all__ = ["EvalTransform", "MAEAugment", "SeededTransform", "normalize", "to_uint8_tensor"]

Box = tuple[float, float, float, float]


class SeededTransform:
    """A transform that draws its randomness only from the generator it is given."""

    def __call__(self, img: Image.Image, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image as a uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> float32 ``(x / 255 - mean) / std``, on ``x``'s device."""
    m = torch.tensor(mean, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, device=x.device).view(3, 1, 1)
    return (x.float().div_(255) - m) / s


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def resize_box(img: Image.Image, size: tuple[int, int], box: Box) -> Image.Image:
    """``box`` of ``img`` resized to ``size`` (bicubic); a not yet decoded JPEG is decoded at the smallest
    DCT scale that keeps the box at least ``size``."""
    if img.format == "JPEG" and not _loaded(img):
        bw, bh = box[2] - box[0], box[3] - box[1]
        reduce = 1
        while reduce < 8 and bw / (2 * reduce) >= size[0] and bh / (2 * reduce) >= size[1]:
            reduce *= 2
        if reduce > 1:
            full = img.size
            img.draft("RGB", (math.ceil(full[0] / reduce), math.ceil(full[1] / reduce)))
            sx, sy = img.size[0] / full[0], img.size[1] / full[1]
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    img = to_rgb(img)
    return img.resize(size, Image.BICUBIC, box=box)


def _loaded(img: Image.Image) -> bool:
    try:
        return img._im is not None  # Pillow >= 11
    except AttributeError:
        return getattr(img, "im", None) is not None


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
        img = resize_box(img, (self.img_size, self.img_size), box)
        if torch.rand((), generator=g).item() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_uint8_tensor(img)


class EvalTransform(SeededTransform):
    """Resize the short side to ``img_size / crop_pct`` (bicubic), centre-crop ``img_size``; uint8 out."""

    def __init__(self, img_size: int, crop_pct: float = 1.0) -> None:
        self.img_size, self.crop_pct = img_size, crop_pct

    def __call__(self, img: Image.Image, g: torch.Generator | None = None) -> torch.Tensor:
        n = self.img_size
        if img.size != (n, n):
            short = round(n / self.crop_pct)
            s = short / min(img.size)
            w, h = max(short, round(img.width * s)), max(short, round(img.height * s))
            # the centre n x n of the resized (w, h) image, as a box of the original
            left, top = (w - n) // 2, (h - n) // 2
            sx, sy = img.width / w, img.height / h
            img = resize_box(img, (n, n), (left * sx, top * sy, (left + n) * sx, (top + n) * sy))
        return to_uint8_tensor(to_rgb(img))
