"""A reconstruction grid PNG: rows of masked input / reconstruction / original (Pillow only)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .checkpoint import atomic_write_bytes
from .data import IMAGENET_MEAN, IMAGENET_STD


def to_uint8(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Normalised images (B, 3, H, W) -> (B, H, W, 3) uint8."""
    x = x.detach().float().cpu() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def reconstruction_grid(
    masked: torch.Tensor, reconstruction: torch.Tensor, original: torch.Tensor, pad: int = 2, scale: int = 1
) -> Image.Image:
    """One row per kind (masked input, reconstruction with kept patches pasted, original), one column per image."""
    rows = [to_uint8(t) for t in (masked, reconstruction, original)]
    b, h, w, _ = rows[0].shape
    canvas = np.full((3 * h + 4 * pad, b * w + (b + 1) * pad, 3), 255, np.uint8)
    for r, imgs in enumerate(rows):
        for c in range(b):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            canvas[top : top + h, left : left + w] = imgs[c]
    img = Image.fromarray(canvas)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_png(img: Image.Image, path: str | os.PathLike[str]) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
