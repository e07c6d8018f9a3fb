"""Images in and out of the analysis: loading, ImageNet normalisation, uint8 conversion, PNG files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..io import atomic_path, atomic_write_text

IMAGENET_MEAN = IMAGENET_DEFAULT_MEAN  # timm's, the one definition
IMAGENET_STD = IMAGENET_DEFAULT_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "annotate",
    "default_images",
    "load_images",
    "normalize_images",
    "save_png",
    "to_uint8",
]


def normalize_images(
    images: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> float (B, 3, H, W) tensor, ``(x / 255 - mean) / std``.

    Args:
        images: uint8 (B, H, W, 3).
        mean, std: per-channel statistics on the [0, 1] scale (ImageNet's by default).

    Raises:
        ValueError: not a uint8 (B, H, W, C) array with one mean / std per channel.
    """
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != len(mean):
        raise ValueError(
            f"expected uint8 images of shape (B, H, W, {len(mean)}), got dtype {arr.dtype} shape {arr.shape}"
        )
    x = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def to_uint8(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Normalised float (B, 3, H, W) -> uint8 (B, H, W, 3), undoing ``normalize_images`` and clipping.

    Args:
        images: normalised float (B, 3, H, W).
        mean, std: the statistics they were normalised with (ImageNet's by default).

    Raises:
        ValueError: not a (B, C, H, W) tensor with one mean / std per channel.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != len(mean):
        raise ValueError(f"expected a (B, {len(mean)}, H, W) tensor of normalised images")
    x = images.detach().float().cpu() * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _square(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(img[top : top + s, left : left + s]).resize((size, size), Image.BICUBIC)
    return np.asarray(crop)


def load_images(paths: Sequence[str | os.PathLike[str]], size: int) -> np.ndarray:
    """Image files -> centre square crops resized to ``size``: uint8 (B, size, size, 3).

    Args:
        paths: image files (anything Pillow reads).
        size: side of the square output, in pixels.

    Raises:
        ValueError: no paths given.
        FileNotFoundError: a path does not exist.
    """
    from PIL import Image

    if not paths:
        raise ValueError("no image paths given")
    out = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        with Image.open(path) as im:
            out.append(_square(np.asarray(im.convert("RGB")), size))
    return np.stack(out)


def default_images(size: int, count: int | None = None) -> np.ndarray:
    """The embedded sample photos (``whitebox.sample_images``) as uint8 (B, size, size, 3)."""
    from ..sample_images import sample_batch

    return sample_batch(size, count)


def save_png(image: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 (H, W, 3) or (H, W) array as a PNG, atomically (temp file, fsync, replace).

    Args:
        image: uint8 (H, W), (H, W, 3) or (H, W, 4).
        path: the PNG to write; returned as a ``Path``.

    Raises:
        ValueError: another dtype or shape.
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"expected a uint8 (H, W), (H, W, 3) or (H, W, 4) image, got {arr.dtype} {arr.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)


def write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write a text file atomically (temp file in the same folder, fsync, replace)."""
    return atomic_write_text(path, text)


def tile(
    rows: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: int = 255, scale: int = 1, row_pad: int | None = None
) -> np.ndarray:
    """Arrange equally sized uint8 (H, W, 3) tiles in a grid with ``pad`` pixels between them.

    ``row_pad`` (default ``pad``) is the gap between rows (wider when each row is another image).
    ``scale`` > 1 enlarges every tile by pixel repetition first (small images stay legible).
    """
    if not rows or not rows[0]:
        raise ValueError("nothing to tile")
    if scale > 1:
        rows = [[t.repeat(scale, axis=0).repeat(scale, axis=1) for t in r] for r in rows]
    h, w = rows[0][0].shape[:2]
    rp = pad if row_pad is None else row_pad
    ncols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + rp) - rp, ncols * (w + pad) - pad, 3), fill, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            if t.shape[:2] != (h, w):
                raise ValueError(f"tile ({i}, {j}) is {t.shape[:2]}, expected {(h, w)}")
            out[i * (h + rp) : i * (h + rp) + h, j * (w + pad) : j * (w + pad) + w] = t[..., :3]
    return out


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def annotate(
    grid: np.ndarray,
    tile_size: tuple[int, int],
    pad: int,
    col_labels: Sequence[str] = (),
    row_labels: Sequence[str] = (),
    row_pad: int | None = None,
    title: str | None = None,
    colorbar: tuple[str, str, str] | None = None,
    cmap: str = "inferno",
) -> np.ndarray:
    """Put a grid made by ``tile`` on a white page with column headers, row labels, a title and a colour scale.

    Args:
        grid: uint8 (H, W, 3) from ``tile`` with tiles of ``tile_size`` (h, w) (after scaling), ``pad``
            and ``row_pad`` as given to it.
        col_labels: one header per column, centred above it.
        row_labels: one label per row, left of it.
        title: a line above the headers.
        colorbar: ``(low, high, caption)``: a vertical ``cmap`` scale at the right, ``low`` at the bottom.

    Returns:
        uint8 (H', W', 3) with the grid unchanged inside it.
    """
    from PIL import Image, ImageDraw

    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        box = measure.textbbox((0, 0), text, font=font)
        return box[2] - box[0], box[3] - box[1]

    th, tw = tile_size
    rp = pad if row_pad is None else row_pad
    line = max(size("Ag")[1], 1) + 6
    top = (line if col_labels else 0) + (line if title else 0) + 4
    left = (max(size(t)[0] for t in row_labels) + 10) if row_labels else 4
    bar_w, cap = 0, None
    if colorbar is not None:
        bar_w = 12 + 18 + max(size(colorbar[0])[0], size(colorbar[1])[0]) + 6 + line  # gap, bar, labels, caption
        cap = Image.new("RGB", (size(colorbar[2])[0] + 4, line), "white")
        ImageDraw.Draw(cap).text((2, 0), colorbar[2], fill="black", font=font)
        cap = cap.rotate(90, expand=True)
    height = max(top + grid.shape[0] + 4, top + (cap.height + 4 if cap is not None else 0))
    page = Image.new("RGB", (left + grid.shape[1] + 4 + bar_w, height), "white")
    page.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(page)
    if title:
        draw.text((left, 2), title, fill="black", font=font)
    y_head = top - line
    for j, text in enumerate(col_labels):
        w = size(text)[0]
        draw.text((left + j * (tw + pad) + max(0, (tw - w) // 2), y_head), text, fill="black", font=font)
    for i, text in enumerate(row_labels):
        h = size(text)[1]
        draw.text((4, top + i * (th + rp) + max(0, (th - h) // 2)), text, fill="black", font=font)
    if colorbar is not None:
        low, high, _ = colorbar
        x0, y0, y1 = left + grid.shape[1] + 12, top, top + max(grid.shape[0], cap.height)
        ramp = colorize(np.linspace(1.0, 0.0, y1 - y0)[:, None].repeat(14, axis=1), cmap)
        page.paste(Image.fromarray(ramp), (x0, y0))
        draw.text((x0 + 18, y0), high, fill="black", font=font)
        draw.text((x0 + 18, y1 - line + 4), low, fill="black", font=font)
        page.paste(cap, (page.width - cap.width - 2, y0))
    return np.asarray(page)


def colorize(values: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """Map values in [0, 1] (any shape) to uint8 RGB with a matplotlib colour map."""
    mpl = require_matplotlib()
    rgba = mpl.colormaps[cmap](np.clip(values, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def require_matplotlib():
    """The ``matplotlib`` module, or an ImportError that says how to install it.

    Figures are drawn on a ``Figure`` with an Agg canvas, never through pyplot, so the caller's
    backend and global state are left alone.
    """
    try:
        import matplotlib
        import matplotlib.figure  # the figure code needs the submodules loaded
        from matplotlib.backends import backend_agg  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "whitebox.analysis figures need matplotlib: pip install 'whitebox-transformers[analysis]' "
            "(or pip install matplotlib)"
        ) from err
    return matplotlib


def render(fig) -> np.ndarray:
    """A matplotlib ``Figure`` drawn on an Agg canvas -> uint8 (H, W, 3)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
