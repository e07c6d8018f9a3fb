r"""Attention maps of MSSA, per block and head, upsampled onto the image.

MSSA's attention in head k is ``softmax(w_k w_k^T / sqrt(p))`` with ``w = LN(z) U`` (see
``SubspaceAttention``). Each block names the layer whose maps it shows (``probes().maps``, see
``whitebox.layers.declare``); that layer's ``attention_maps`` is run on exactly the tokens it saw
during a normal forward pass (MSSA: the explicit path, ``return_attention=True``). Blocks that name
none (ViT-MAE's timm blocks: their fused attention exposes no maps) are refused by name.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers.declare import AttentionMaps, require
from ._model import check_block_indices, check_stage, encoder_of, evaluating, image_geometry, run
from .images import annotate, colorize, save_png, tile

__all__ = ["attention_figure", "attention_maps"]


def attention_maps(
    model: nn.Module,
    images: torch.Tensor,
    stage: str = "encoder",
    blocks: int | list[int] | None = None,
    query: str = "cls",
    upsample: str | None = "nearest",
    return_names: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[str]]:
    """Attention of a query over the patch tokens, for every chosen block and head.

    With ``return_names`` also returns what each block's maps are (``AttentionMaps.name``:
    ``'attention'`` for MSSA, ``'membership'`` ... for other families), for titles.

    Args:
        model: a CRATE or CRATE-MAE model (blocks with ``SubspaceAttention``).
        images: normalised (B, C, H, W) images (masked autoencoders see them unmasked).
        stage: ``'encoder'`` or ``'decoder'`` (masked autoencoders only).
        blocks: block indices of that stage (``None``: all; negative counts from the end).
        query: ``'cls'`` (the class token's attention, as in the CRATE and DINO figures) or
            ``'mean'`` (the attention a patch receives, averaged over all patch queries). Layers whose
            maps have no class-token row (``num_prefix_tokens=0``) or rows that are not tokens
            (memberships, representatives) show the mean over their rows for either.
        upsample: ``'nearest'`` or ``'bilinear'`` to the image size, or ``None`` for the patch grid.

    Returns:
        float32 array (B, len(blocks), heads, H, W) (or (..., gh, gw) without upsampling); values
        are attention probabilities in [0, 1] (over the patches they sum to at most 1; the rest
        goes to the class token).
    """
    if query not in ("cls", "mean"):
        raise ValueError(f"query must be 'cls' or 'mean', got {query!r}")
    if upsample not in ("nearest", "bilinear", None):
        raise ValueError(f"upsample must be 'nearest', 'bilinear' or None, got {upsample!r}")
    stack = check_stage(model, stage)
    indices = check_block_indices(stack, blocks, stage)
    layers, prefixes = {}, {}
    for i in indices:
        probes = require(stack[i], "probes", f"{stage} block {i}", "show the maps of")()
        layer = probes.maps
        prefixes[i] = probes.num_prefix_tokens
        if layer is None or not callable(getattr(layer, "attention_maps", None)):
            raise TypeError(
                f"attention maps need a layer that exposes them; {stage} block {i} of {type(model).__name__} "
                f"({type(stack[i]).__name__}) names none, which is not supported (use a CRATE or CRATE-MAE model)"
            )
        layers[i] = layer
    grid = image_geometry(model, images)
    prefix = encoder_of(model).num_prefix_tokens
    inputs: dict[int, torch.Tensor] = {}
    handles = [
        layers[i].register_forward_pre_hook(lambda _m, args, i=i: inputs.__setitem__(i, args[0])) for i in indices
    ]
    try:
        with evaluating(model):
            run(model, images.to(next(model.parameters()).device), decoder=stage == "decoder")
            maps, names = [], []
            for i in indices:
                found: AttentionMaps = layers[i].attention_maps(inputs[i])
                names.append(found.name)
                attn = found.maps  # (B, h, Q, N)
                # leading non-patch keys: as the maps say, else as the block says, else the model's
                declared = found.num_prefix_tokens if found.num_prefix_tokens is not None else prefixes[i]
                skip = prefix if declared is None else declared
                if found.queries != "tokens":  # rows that are not tokens (memberships, representatives): their mean
                    attn = attn[..., skip:].mean(dim=2)
                elif query == "cls" and skip > 0:
                    attn = attn[:, :, 0, skip:]
                else:
                    attn = attn[:, :, skip:, skip:].mean(dim=2)
                maps.append(attn.float().reshape(*attn.shape[:2], *grid))
    finally:
        for h in handles:
            h.remove()
    out = torch.stack(maps, dim=1)  # (B, blocks, h, gh, gw)
    if upsample is not None:
        b, nb, nh = out.shape[:3]
        size = tuple(images.shape[-2:])
        kwargs = {"align_corners": False} if upsample == "bilinear" else {}
        out = F.interpolate(out.flatten(0, 1), size=size, mode=upsample, **kwargs).reshape(b, nb, nh, *size)
    result = out.clamp(0, 1).cpu().numpy()
    return (result, names) if return_names else result


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6, cmap: str = "inferno") -> np.ndarray:
    """Blend a heat map (H, W), rescaled to [0, 1] by its own range, over a uint8 image (H, W, 3)."""
    lo, hi = float(heat.min()), float(heat.max())
    scaled = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(scaled, cmap).astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def attention_figure(
    image: np.ndarray,
    maps: np.ndarray,
    path: str | os.PathLike[str] | None = None,
    alpha: float = 0.6,
    scale: int = 1,
    max_side: int | None = None,
    labels: bool = True,
    blocks: list[int] | None = None,
    title: str | None = None,
) -> np.ndarray:
    """One image's maps as a grid: a row per block, the image then one overlay per head.

    With ``labels`` (default) the grid says what it shows: ``image`` / ``head j`` column headers,
    ``block i`` row labels (``blocks``: the block indices the rows are, 0-based as in the layer-wise
    table; default 0, 1, ...), an optional ``title``, and the colour scale (each map is scaled to its own
    range, so the scale runs from that map's minimum to its maximum).

    Args:
        image: uint8 (H, W, 3).
        maps: (blocks, heads, H, W) upsampled maps of that image (``attention_maps(...)[b]``).
        path: write the grid as a PNG there.
        alpha: weight of the colour-mapped attention against the image.
        scale: enlarge each tile by this integer factor (pixel repetition).
        max_side: shrink larger tiles to this longest side first (keeps many-block grids small).

    Returns:
        uint8 (rows * H + pad, (1 + heads) * W + pad, 3) without labels (each head map is scaled by its
        own range); with labels the same grid on a page with margins for them.
    """
    image = np.asarray(image)
    maps = np.asarray(maps)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if maps.ndim != 4 or maps.shape[-2:] != image.shape[:2]:
        raise ValueError(f"maps must be (blocks, heads, H, W) with H, W = {image.shape[:2]}, got {maps.shape}")
    h, w = image.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        from PIL import Image

        size = (max(1, round(h * max_side / max(h, w))), max(1, round(w * max_side / max(h, w))))
        image = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BICUBIC))
        maps = F.interpolate(torch.from_numpy(maps.astype(np.float32)), size=size, mode="area").numpy()
    rows = [[image] + [overlay(image, m, alpha) for m in block_maps] for block_maps in maps]
    grid = tile(rows, scale=scale)
    if labels:
        if blocks is None:
            blocks = list(range(len(maps)))
        if len(blocks) != len(maps):
            raise ValueError(f"blocks names {len(blocks)} blocks for {len(maps)} rows of maps")
        grid = annotate(
            grid,
            (image.shape[0] * scale, image.shape[1] * scale),
            2,
            col_labels=["image"] + [f"head {j}" for j in range(maps.shape[1])],
            row_labels=[f"block {i}" for i in blocks],
            title=title,
            colorbar=("min", "max", "each map scaled to its own range"),
        )
    if path is not None:
        save_png(grid, path)
    return grid
