"""Shared pieces of the families' checkpoint filters: renaming official layouts, adapting weights to a model.

Each family's ``checkpoint_filter_fn`` (in its model file, as timm keeps them) recognises its official
layout, renames it to ours (our own layout passes unchanged), drops what the official code builds but
never uses, then calls ``adapt_state_dict`` so that the weights fit the model that was asked for.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv, clean_state_dict
from torch import nn

from registry import HeadAdaptedWarning

StateDict = dict[str, torch.Tensor]

# official MAE-harness tensors that its forward pass never reads
MAE_UNUSED = ("pos_embed", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias")

__all__ = ["MAE_UNUSED", "adapt_state_dict", "check_sincos", "clean_state_dict", "prenorm_block", "rename_all"]


def prenorm_block(rest: str, parts: tuple[str, str]) -> str | None:
    """Map ``{0,1}.norm.*`` / ``{0,1}.fn.*`` of an official block to our block's names.

    ``parts`` names what slot 0 and slot 1 hold: ``'attn'`` or the dictionary step (``'ista'``,
    ``'linear'``). Our blocks number their norms by slot: ``norm1`` before slot 0, ``norm2`` before slot 1.
    """
    m = re.fullmatch(r"([01])\.(norm|fn)\.(.+)", rest)
    if m is None:
        return None
    slot, kind, leaf = int(m.group(1)), m.group(2), m.group(3)
    if kind == "norm":
        return f"norm{slot + 1}.{leaf}"
    part = parts[slot]
    if part == "attn":
        return {
            "qkv.weight": "attn.qkv.weight",
            "to_out.0.weight": "attn.proj.weight",
            "to_out.0.bias": "attn.proj.bias",
        }.get(leaf)
    return f"{part}.weight" if leaf == "weight" else None


def rename_all(state_dict: StateDict, rename: Callable[[str], str | None], layout: str) -> StateDict:
    out: StateDict = {}
    unknown = []
    for k, v in state_dict.items():
        new = rename(k)
        if new is None:
            unknown.append(k)
        elif new:  # '' = drop
            out[new] = v
    if unknown:
        raise ValueError(f"{layout} checkpoint has keys this converter does not know: {unknown[:20]}")
    return out


def _module_name(model: nn.Module, module: nn.Module) -> str | None:
    return next((name for name, m in model.named_modules() if m is module), None)


def _adapt_channels_last(weight: torch.Tensor, in_chans: int, patch: int) -> torch.Tensor:
    """Adapt a (..., p * p * C) tensor laid out as (p1 p2 c) to ``in_chans`` via timm's conv rule."""
    lead = weight.shape[:-1]
    w = weight.reshape(-1, patch, patch, weight.shape[-1] // patch**2).permute(0, 3, 1, 2)
    w = adapt_input_conv(in_chans, w.float()).to(weight.dtype)
    return w.permute(0, 2, 3, 1).reshape(*lead, patch * patch * in_chans)


def _adapt_norm_channels(param: torch.Tensor, in_chans: int, patch: int) -> torch.Tensor:
    """LayerNorm affine over (p1 p2 c): channel mean for one channel, channel repetition for more."""
    w = param.reshape(patch, patch, -1)
    if in_chans == 1:
        return w.mean(dim=-1, keepdim=True).reshape(-1)
    reps = math.ceil(in_chans / w.shape[-1])
    return w.repeat(1, 1, reps)[..., :in_chans].reshape(-1)


def _shapes(sd: StateDict, keys: list[str]) -> str:
    return ", ".join(f"{k} {tuple(sd[k].shape)}" for k in sorted(keys, key=lambda k: (not k.endswith("weight"), k)))


def _adapt_head(sd: StateDict, own: StateDict, head: str, model: nn.Module) -> None:
    """Drop or replace the checkpoint's classifier ``head.*`` in place, with a warning naming keys and shapes."""
    ckpt_head = sorted(k for k in sd if k.startswith(f"{head}."))
    own_head = sorted(k for k in own if k.startswith(f"{head}."))
    name, shapes = type(model).__name__, tuple(tuple(sd[k].shape) for k in ckpt_head)
    if ckpt_head and not own_head:
        message = (
            f"{name} has no classifier (num_classes=0): the checkpoint's head ({_shapes(sd, ckpt_head)}) is dropped"
        )
        for k in ckpt_head:
            del sd[k]
    elif not own_head or all(k in sd and sd[k].shape == own[k].shape for k in own_head):
        return
    elif ckpt_head and set(ckpt_head) < set(own_head):
        return  # part of a head: a damaged file, refused by loading with the missing key named
    else:
        found = f"a head of other shapes ({_shapes(sd, ckpt_head)})" if ckpt_head else "no head"
        advice = "pass num_classes matching the checkpoint to load its head" if ckpt_head else "train it first"
        message = (
            f"the checkpoint has {found}; {name} has num_classes={getattr(model, 'num_classes', '?')} "
            f"({_shapes(own, own_head)}): its head is newly initialised, not loaded ({advice})"
        )
        for k in ckpt_head:
            del sd[k]
        for k in own_head:
            sd[k] = own[k]
    width = shapes[ckpt_head.index(f"{head}.weight")][0] if f"{head}.weight" in ckpt_head else None
    warnings.warn(HeadAdaptedWarning(message, tuple(ckpt_head), shapes, width), stacklevel=4)


def _size2(size: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[-2]), int(size[-1]))


def source_grid(model: nn.Module, key: str, n: int, patch: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) patch grid a checkpoint's ``n``-position table was trained on, never guessed.

    It comes from ``model.pretrained_model_args`` (timm's record of the source checkpoint's
    arguments: ``img_size`` and ``patch_size``), which the loaders fill from a saved model's
    ``config.json``, a recipe checkpoint's recorded arguments or a tag's record. A table whose
    grid is not recorded, or does not fit it, is refused: ``n`` positions could be any r x c = n.
    """
    args = getattr(model, "pretrained_model_args", None) or {}
    if args.get("img_size") is not None:
        (h, w), p = _size2(args["img_size"]), int(args.get("patch_size") or patch)
        if (h // p) * (w // p) == n:
            return h // p, w // p
        problem = f"the weights' recorded img_size {(h, w)} and patch_size {p} give a {h // p}x{w // p} grid, not {n}"
    else:
        shapes = [f"{r}x{n // r}" for r in range(1, n + 1) if n % r == 0][:6]
        problem = f"the checkpoint does not record its image size, and {n} positions could be {', '.join(shapes)}"
    raise ValueError(
        f"cannot resample the position table {key} ({n} patch positions) to {type(model).__name__}'s "
        f"{grid[0]}x{grid[1]} grid: {problem}. Say what it was trained at with create_model(..., "
        "pretrained_model_args=dict(img_size=(H, W), patch_size=P)), or load a file that records it (a "
        "save_pretrained folder, a recipe checkpoint)"
    )


def adapt_state_dict(state_dict: StateDict, model: nn.Module, encoder_prefix: str = "") -> StateDict:
    """Fit a checkpoint (already in our layout) to ``model``'s ``num_classes``, ``in_chans``, ``img_size``.

    - head (``get_classifier()``), never silently (a ``registry.HeadAdaptedWarning`` names the keys and
      shapes): the checkpoint's head is dropped when the model has none (``num_classes=0``) and
      replaced by the model's freshly initialised head when its shapes differ or the checkpoint has
      no head at all; a checkpoint with only part of a head (``head.bias`` without ``head.weight``) is
      left as it is, so that loading refuses it naming the missing key. ``create_model(...,
      checkpoint_path=...)`` without ``num_classes`` builds the checkpoint's width instead;
    - first layer: a convolution ``(d, C, p, p)`` or the linear embedding over ``(p1 p2 c)`` with its
      LayerNorm is adapted to the new channel count (timm's ``adapt_input_conv`` rule: sum for one
      channel, repeat and rescale by ``C / C'`` for more);
    - a learned position table ``(1, 1 + gh * gw, d)`` is resampled (bicubic) from its TRUE grid
      (``source_grid``: recorded, never guessed from the token count) to the model's grid.

    Anything else that does not fit is left alone, so loading names it.
    """
    own = model.state_dict()
    sd = dict(state_dict)
    head = _module_name(model, model.get_classifier()) if hasattr(model, "get_classifier") else None
    if head:
        _adapt_head(sd, own, head, model)
    encoder = model.get_submodule(encoder_prefix.rstrip(".")) if encoder_prefix else model
    patch_embed = getattr(encoder, "patch_embed", None)
    pre = encoder_prefix
    if patch_embed is not None:
        p, c = patch_embed.patch_size, patch_embed.in_chans
        w_key = f"{pre}patch_embed.proj.weight"
        if w_key in sd and w_key in own and sd[w_key].shape != own[w_key].shape:
            w = sd[w_key]
            if w.ndim == 4 and w.shape[0] == own[w_key].shape[0] and w.shape[2:] == own[w_key].shape[2:]:
                sd[w_key] = adapt_input_conv(c, w.float()).to(w.dtype)
            elif w.ndim == 2 and w.shape[0] == own[w_key].shape[0] and w.shape[1] % (p * p) == 0:
                sd[w_key] = _adapt_channels_last(w, c, p)
                for name in ("weight", "bias"):
                    k = f"{pre}patch_embed.norm_in.{name}"
                    if k in sd and k in own and sd[k].shape != own[k].shape:
                        sd[k] = _adapt_norm_channels(sd[k], c, p)
        pred, w_own = "decoder_pred", own.get("decoder_pred.weight")
        w_ckpt = sd.get("decoder_pred.weight")
        if (
            w_own is not None
            and w_ckpt is not None
            and w_ckpt.shape[0] != w_own.shape[0]
            and w_ckpt.shape[1:] == w_own.shape[1:]
        ):
            # pixels of a different channel count cannot be predicted by the old projection
            warnings.warn(
                f"{type(model).__name__}: decoder_pred does not fit {c} channels; it is newly initialised",
                stacklevel=3,
            )
            sd[f"{pred}.weight"], sd[f"{pred}.bias"] = own[f"{pred}.weight"], own[f"{pred}.bias"]
        pos_key = f"{pre}pos_embed"
        if pos_key in sd and pos_key in own and sd[pos_key].shape != own[pos_key].shape:
            old, prefix = sd[pos_key], own[pos_key].shape[1] - patch_embed.num_patches
            if old.ndim == 3 and old.shape[-1] == own[pos_key].shape[-1] and old.shape[1] > prefix:
                src = source_grid(model, pos_key, old.shape[1] - prefix, p, tuple(patch_embed.grid_size))
                sd[pos_key] = resample_abs_pos_embed(
                    old.float(), list(patch_embed.grid_size), old_size=list(src), num_prefix_tokens=prefix
                ).to(old.dtype)
    return sd


def check_sincos(table: torch.Tensor | None, model: nn.Module, encoder_prefix: str) -> None:
    """The official MAE stores its fixed sin-cos table; when the grid matches, it must equal ours."""
    if table is None:
        return
    encoder = model.get_submodule(encoder_prefix.rstrip(".")) if encoder_prefix else model
    ours = getattr(getattr(encoder, "pos_embed", None), "table", None)
    if ours is None or ours.shape != table.shape:
        return
    err = (ours.float() - table.float()).abs().max().item()
    if err > 1e-3:
        raise ValueError(
            f"the checkpoint's fixed position table differs from the 2-D sin-cos table this model computes "
            f"(max abs difference {err:.3g}); it was not made by the MAE sin-cos recipe"
        )
