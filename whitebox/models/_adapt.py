"""Shared pieces of the families' checkpoint filters: renaming official layouts, adapting weights to a model.

Each family's ``checkpoint_filter_fn`` (in its model file, as timm keeps them) recognises its official
layout, renames it to ours (our own layout passes unchanged), drops what the official code builds but
never uses, then calls ``adapt_state_dict`` so that the weights fit the model that was asked for.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv, clean_state_dict
from torch import nn

_logger = logging.getLogger(__name__)
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


def adapt_state_dict(state_dict: StateDict, model: nn.Module, encoder_prefix: str = "") -> StateDict:
    """Fit a checkpoint (already in our layout) to ``model``'s ``num_classes``, ``in_chans``, ``img_size``.

    - head (``get_classifier()``): dropped when the model has none; replaced by the model's freshly
      initialised head when the widths differ or the checkpoint has none;
    - first layer: a convolution ``(d, C, p, p)`` or the linear embedding over ``(p1 p2 c)`` with its
      LayerNorm is adapted to the new channel count (timm's ``adapt_input_conv`` rule: sum for one
      channel, repeat and rescale by ``C / C'`` for more);
    - a learned position table ``(1, 1 + gh * gw, d)`` is resampled (bicubic) to the model's grid.

    Anything else that does not fit is left alone, so loading names it.
    """
    own = model.state_dict()
    sd = dict(state_dict)
    head = _module_name(model, model.get_classifier()) if hasattr(model, "get_classifier") else None
    if head:
        ckpt_head = [k for k in sd if k.startswith(f"{head}.")]
        own_head = [k for k in own if k.startswith(f"{head}.")]
        if ckpt_head and not own_head:
            for k in ckpt_head:
                del sd[k]
        elif own_head and any(k not in sd or sd[k].shape != own[k].shape for k in own_head):
            _logger.info("%s: using a newly initialised head for %s classes", type(model).__name__, model.num_classes)
            for k in own_head:
                sd[k] = own[k]
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
            old = sd[pos_key]
            n_old = old.shape[1] - 1
            side = math.isqrt(n_old)
            if old.ndim == 3 and side * side == n_old and old.shape[-1] == own[pos_key].shape[-1]:
                sd[pos_key] = resample_abs_pos_embed(
                    old.float(), list(patch_embed.grid_size), old_size=[side, side], num_prefix_tokens=1
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
