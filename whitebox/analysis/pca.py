r"""Patch features as colours: the top three principal components of the tokens mapped to RGB.

PCA is fitted jointly on the patch tokens of all images, so a colour means the same direction in
every image. With ``X`` the centred (M, d) token matrix and ``V`` the eigenvectors of ``X^T X``
(largest eigenvalues first, i.e. the right singular vectors of ``X``), token ``x`` gets
``(x - mean) V[:, :3]``; each component is min-max scaled to [0, 1] over all images. Signs of
the components are fixed (largest-magnitude loading positive), so results are deterministic.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._model import check_block_indices, check_stage, encoder_of, evaluating, image_geometry, run
from .images import annotate, save_png, tile

__all__ = ["feature_pca", "pca_figure", "pca_rgb"]


def pca_rgb(features: torch.Tensor | np.ndarray, n_components: int = 3) -> np.ndarray:
    """Features (..., d) -> their first ``n_components`` principal components in [0, 1] (..., n).

    Components a rank-deficient input does not have (zero variance) come out as 0.

    Args:
        features: (..., d) feature vectors, at least two.
        n_components: how many components to keep (3 for RGB).

    Raises:
        ValueError: fewer than two vectors, ``n_components`` not a positive int, or non-finite features.
    """
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features.detach())
    if x.ndim < 2 or x.shape[-1] < 1 or x[..., 0].numel() < 2:
        raise ValueError(f"need at least two feature vectors (..., d), got shape {tuple(x.shape)}")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components must be a positive int, got {n_components!r}")
    flat = x.reshape(-1, x.shape[-1]).to(torch.float64).cpu()
    if not torch.isfinite(flat).all():
        raise ValueError("features contain NaN or infinite entries")
    flat = flat - flat.mean(dim=0)
    # eigenvectors of the d x d scatter matrix X^T X are the right singular vectors of X; cheaper
    # than an SVD of the (M, d) matrix, and float64 keeps the top components accurate
    evals, evecs = torch.linalg.eigh(flat.T @ flat)
    k = min(n_components, evals.shape[0])
    evals, comps = evals.flip(0)[:k], evecs.flip(1)[:, :k].T  # (k, d), largest first
    # deterministic signs: the largest-magnitude loading of each component is positive
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    proj = flat @ (comps * signs).T
    tol = evals[0].clamp_min(0) * max(flat.shape) * torch.finfo(torch.float64).eps
    out = torch.zeros(flat.shape[0], n_components, dtype=torch.float64)
    for j in range(k):
        lo, hi = proj[:, j].min(), proj[:, j].max()
        if evals[j] > tol and hi > lo:
            out[:, j] = (proj[:, j] - lo) / (hi - lo)
    return out.reshape(*x.shape[:-1], n_components).float().numpy()


def feature_pca(
    model: nn.Module,
    images: torch.Tensor,
    stage: str = "encoder",
    block: int | list[int] = -1,
    upsample: str | None = "nearest",
) -> np.ndarray:
    """PCA-to-RGB of a block's patch-token outputs (class token left out).

    Works for any CRATE, CRATE-MAE or ViT-MAE model; images are seen unmasked. Returns float32
    (B, H, W, 3) in [0, 1] (or (B, gh, gw, 3) with ``upsample=None``); for a list of blocks,
    (len(block), B, H, W, 3) from one forward pass, each block with its own PCA.

    Args:
        model: a CRATE, CRATE-MAE or ViT-MAE model.
        images: normalised (B, C, H, W) images.
        stage: ``'encoder'`` or ``'decoder'`` (masked autoencoders only).
        block: block index of that stage (negative counts from the end), or a list of them.
        upsample: ``'nearest'`` or ``'bilinear'`` to the image size, or ``None`` for the patch grid.

    Raises:
        TypeError: not a model with a supported block stack.
        ValueError: an unknown ``upsample``, ``stage`` or block index.
    """
    if upsample not in ("nearest", "bilinear", None):
        raise ValueError(f"upsample must be 'nearest', 'bilinear' or None, got {upsample!r}")
    stack = check_stage(model, stage)
    indices = check_block_indices(stack, [block] if isinstance(block, int) else block, stage)
    grid = image_geometry(model, images)
    skip = encoder_of(model).num_prefix_tokens
    captured: dict[int, torch.Tensor] = {}
    handles = [
        stack[i].register_forward_hook(lambda _m, _a, out, i=i: captured.__setitem__(i, out)) for i in set(indices)
    ]
    try:
        with evaluating(model):
            run(model, images.to(next(model.parameters()).device), decoder=stage == "decoder")
    finally:
        for h in handles:
            h.remove()
    pictures = []
    for i in indices:
        tokens = captured[i][:, skip:].float().cpu()
        rgb = torch.from_numpy(pca_rgb(tokens.reshape(tokens.shape[0], *grid, -1)))  # (B, gh, gw, 3)
        if upsample is not None:
            kwargs = {"align_corners": False} if upsample == "bilinear" else {}
            rgb = F.interpolate(rgb.permute(0, 3, 1, 2), size=tuple(images.shape[-2:]), mode=upsample, **kwargs)
            rgb = rgb.permute(0, 2, 3, 1).clamp(0, 1)
        pictures.append(rgb.numpy())
    return pictures[0] if isinstance(block, int) else np.stack(pictures)


def pca_figure(
    images: np.ndarray,
    pcas: list[np.ndarray] | np.ndarray,
    path: str | os.PathLike[str] | None = None,
    scale: int = 1,
    col_labels: list[str] | None = None,
) -> np.ndarray:
    """A row per image: the image, then each PCA picture given (e.g. one per block).

    With ``col_labels`` (one per PCA picture, e.g. ``'block 5'``) the columns get headers (``image``
    first) and the rows ``image b`` labels, 8 px apart.

    Args:
        images: uint8 (B, H, W, 3).
        pcas: one (B, H, W, 3) array in [0, 1], or a list of them.
        path: write the grid as a PNG there.
        scale: enlarge each tile by this integer factor (pixel repetition).
    """
    images = np.asarray(images)
    pcas = [pcas] if isinstance(pcas, np.ndarray) and pcas.ndim == 4 else list(pcas)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
    for p in pcas:
        if p.shape != images.shape:
            raise ValueError(f"each PCA picture must match the images' shape {images.shape}, got {p.shape}")
    rows = [
        [images[b]] + [(p[b] * 255).round().clip(0, 255).astype(np.uint8) for p in pcas] for b in range(len(images))
    ]
    if col_labels is None:
        grid = tile(rows, scale=scale)
    else:
        if len(col_labels) != len(pcas):
            raise ValueError(f"col_labels names {len(col_labels)} columns for {len(pcas)} PCA pictures")
        grid = annotate(
            tile(rows, scale=scale, row_pad=8),
            (images.shape[1] * scale, images.shape[2] * scale),
            2,
            col_labels=["image", *col_labels],
            row_labels=[f"image {b}" for b in range(len(images))],
            row_pad=8,
        )
    if path is not None:
        save_png(grid, path)
    return grid
