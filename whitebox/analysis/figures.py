"""Reconstruction grids of a masked autoencoder: masked input / reconstruction / pasted / original."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from ..models._mae import MaskedAutoencoder
from ._model import evaluating, image_geometry
from .images import IMAGENET_MEAN, IMAGENET_STD, annotate, save_png, tile, to_uint8

__all__ = ["COLUMN_TITLES", "reconstruction_grid"]

COLUMN_TITLES = ("masked input", "reconstruction", "visible + reconstructed", "original")


def reconstruction_grid(
    model: nn.Module,
    images: torch.Tensor,
    mask_ratio: float = 0.75,
    seed: int = 0,
    noise: torch.Tensor | None = None,
    path: str | os.PathLike[str] | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    scale: int = 1,
    pixel_stats: str = "patch",
    labels: bool = False,
) -> np.ndarray:
    """A row per image: masked input, reconstruction, visible patches pasted over it, original.

    Args:
        model: a masked autoencoder (CRATE-MAE or ViT-MAE).
        images: (B, 3, H, W) images normalised with ``mean`` / ``std``.
        mask_ratio: fraction of patches removed.
        seed: seeds the masking noise when ``noise`` is not given, so grids are reproducible.
        noise: (B, L) masking noise (MAE's argsort convention), overrides ``seed``.
        path: write the grid as a PNG there.
        scale: enlarge each tile by this integer factor (pixel repetition).
        pixel_stats: how a ``norm_pix_loss`` prediction is un-normalised (see ``MAEReconstruction``):
            ``'patch'`` (MAE's display convention: each patch's own true mean and std, which for
            removed patches come from the hidden pixels) or ``'visible'`` (leak-free: removed patches
            get the average statistics of the visible ones).

        labels: head the columns (``masked input``, ``reconstruction``, ``visible + reconstructed``,
            ``original``) and name the rows (``image b``); rows are 8 px apart so images do not run together.
            The report draws it with labels; the default (off) keeps the bare grid of earlier versions.

    Returns:
        uint8 (B * H + gaps, 4 * W + gaps, 3) without labels, on a page with margins for them with labels;
        removed patches of the masked input show the mean colour.
    """
    if not isinstance(model, MaskedAutoencoder):
        raise TypeError(
            f"reconstruction grids need a masked autoencoder (CRATE-MAE or ViT-MAE), got {type(model).__name__}"
        )
    gh, gw = image_geometry(model, images)
    if noise is None:
        noise = torch.rand(images.shape[0], gh * gw, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    with evaluating(model):
        rec = model.reconstruct(
            images.to(device), mask_ratio=mask_ratio, noise=noise.to(device), pixel_stats=pixel_stats
        )
    columns = [to_uint8(t, mean, std) for t in (rec.masked, rec.reconstruction, rec.pasted, images)]
    row_pad = 8 if labels else 2
    grid = tile([[c[b] for c in columns] for b in range(images.shape[0])], scale=scale, row_pad=row_pad)
    if labels:
        grid = annotate(
            grid,
            (images.shape[-2] * scale, images.shape[-1] * scale),
            2,
            col_labels=COLUMN_TITLES,
            row_labels=[f"image {b}" for b in range(images.shape[0])],
            row_pad=row_pad,
        )
    if path is not None:
        save_png(grid, path)
    return grid
