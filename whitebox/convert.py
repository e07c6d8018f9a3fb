"""Checkpoint filters: official CRATE / CRATE-MAE / MAE key layouts -> whitebox, and weight adaptation.

Every loading route (``pretrained=True``, ``pretrained_cfg_overlay=dict(file=...)``,
``checkpoint_path=...``) passes the state dict through the model family's filter, which

1. removes a DataParallel ``module.`` prefix,
2. renames the official layout to ours when it recognises it (our own layout passes unchanged),
3. drops what the official code builds but never uses (``pos_embed``, ``decoder_embed.*``,
   ``decoder_pos_embed`` of the MAE harness; our sin-cos table is computed, not stored),
4. adapts the weights to the model that was asked for: a new ``num_classes`` gets a fresh head,
   a new ``in_chans`` an adapted first layer, a new ``img_size`` a resampled learned position table.

Official layouts (Ma-Lab-Berkeley/CRATE): the MAE harness (``model/crate_ae/crate_ae.py``) keeps
each block as ``blocks.i.layers.0.{0,1}`` with ``PreNorm`` (``.norm`` then ``.fn``); the encoder
block holds attention (``fn.qkv``, ``fn.to_out.0``) then the ISTA dictionary (``fn.weight``); the
decoder block holds the linear step (``fn.weight``) then attention. Supervised CRATE
(``model/crate.py``) uses ``to_patch_embedding.{1,2,3}``, ``pos_embedding``,
``transformer.layers.i.{0,1}`` and ``mlp_head.{0,1}``.

Command line: ``python -m whitebox.convert OFFICIAL.pth OUTDIR --model crate_mae_base`` writes
``config.json`` + ``model.safetensors`` that ``create_model('local-dir:OUTDIR')`` rebuilds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "adapt_state_dict",
    "crate_filter",
    "crate_mae_filter",
    "crate_mae_official_to_native",
    "crate_official_to_native",
    "strip_prefix",
    "vit_mae_filter",
    "vit_mae_official_to_native",
]

_logger = logging.getLogger(__name__)
StateDict = dict[str, torch.Tensor]

# official MAE-harness tensors that its forward pass never reads
_MAE_UNUSED = ("pos_embed", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias")


def strip_prefix(state_dict: StateDict, prefix: str = "module.") -> StateDict:
    """Remove ``prefix`` from keys that all carry it (``torch.nn.DataParallel`` checkpoints)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


# ----------------------------------------------------------------------------- official -> native
def _prenorm_block(rest: str, parts: tuple[str, str]) -> str | None:
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


def _rename_all(state_dict: StateDict, rename: Callable[[str], str | None], layout: str) -> StateDict:
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


def is_official_crate_mae(state_dict: StateDict) -> bool:
    return "blocks.0.layers.0.0.fn.qkv.weight" in state_dict


def crate_mae_official_to_native(state_dict: StateDict) -> StateDict:
    """Official CRATE-MAE (``MaskedAutoencoderViT`` with CRATE blocks) keys -> ``CrateMAE`` keys."""

    def rename(k: str) -> str | None:
        if k in _MAE_UNUSED:
            return ""
        if k in ("mask_token", "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"):
            return k
        if k in ("cls_token", "norm.weight", "norm.bias") or k.startswith("patch_embed."):
            return f"encoder.{k}"
        m = re.fullmatch(r"(blocks|decoder_blocks)\.(\d+)\.layers\.0\.(.+)", k)
        if m is None:
            return None
        decoder = m.group(1) == "decoder_blocks"
        leaf = _prenorm_block(m.group(3), ("linear", "attn") if decoder else ("attn", "ista"))
        if leaf is None:
            return None
        return f"decoder_blocks.{m.group(2)}.{leaf}" if decoder else f"encoder.blocks.{m.group(2)}.{leaf}"

    return _rename_all(state_dict, rename, "official CRATE-MAE")


def is_official_crate(state_dict: StateDict) -> bool:
    return any(k.startswith(("transformer.layers.", "to_patch_embedding.")) for k in state_dict)


def crate_official_to_native(state_dict: StateDict) -> StateDict:
    """Official supervised CRATE (``model/crate.py``) keys -> ``CRATE`` keys."""
    fixed = {
        "pos_embedding": "pos_embed",
        "cls_token": "cls_token",
        "mlp_head.0.weight": "fc_norm.weight",
        "mlp_head.0.bias": "fc_norm.bias",
        "mlp_head.1.weight": "head.weight",
        "mlp_head.1.bias": "head.bias",
    }
    embed = {"1": "patch_embed.norm_in", "2": "patch_embed.proj", "3": "patch_embed.norm_out"}

    def rename(k: str) -> str | None:
        if k in fixed:
            return fixed[k]
        m = re.fullmatch(r"to_patch_embedding\.([123])\.(weight|bias)", k)
        if m:
            return f"{embed[m.group(1)]}.{m.group(2)}"
        m = re.fullmatch(r"transformer\.layers\.(\d+)\.(.+)", k)
        if m:
            leaf = _prenorm_block(m.group(2), ("attn", "ista"))
            return f"blocks.{m.group(1)}.{leaf}" if leaf else None
        return None

    return _rename_all(state_dict, rename, "official CRATE")


def is_official_mae(state_dict: StateDict) -> bool:
    return "blocks.0.attn.qkv.weight" in state_dict or "patch_embed.proj.weight" in state_dict


def vit_mae_official_to_native(state_dict: StateDict) -> StateDict:
    """facebookresearch/mae-style ViT keys (as the CRATE repo's ``mae_vit_*`` builds them) -> ``ViTMAE`` keys."""

    def rename(k: str) -> str | None:
        if k in _MAE_UNUSED:
            return ""
        if k == "mask_token" or k.startswith(("decoder_blocks.", "decoder_norm.", "decoder_pred.")):
            return k
        if k.startswith(("patch_embed.", "blocks.", "norm.")) or k == "cls_token":
            return f"encoder.{k}"
        return None

    return _rename_all(state_dict, rename, "official MAE")


# ----------------------------------------------------------------------------- adapting to the model
def _module_name(model: nn.Module, module: nn.Module) -> str | None:
    return next((name for name, m in model.named_modules() if m is module), None)


def _adapt_channels_last(weight: torch.Tensor, in_chans: int, patch: int) -> torch.Tensor:
    """Adapt a (..., p * p * C) tensor laid out as (p1 p2 c) to ``in_chans`` via timm's conv rule."""
    from timm.models._manipulate import adapt_input_conv

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
                from timm.models._manipulate import adapt_input_conv

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
                from timm.layers import resample_abs_pos_embed

                sd[pos_key] = resample_abs_pos_embed(
                    old.float(), list(patch_embed.grid_size), old_size=[side, side], num_prefix_tokens=1
                ).to(old.dtype)
    return sd


def _check_sincos(table: torch.Tensor | None, model: nn.Module, encoder_prefix: str) -> None:
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


# ----------------------------------------------------------------------------- family filters
def crate_mae_filter(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Checkpoint filter for ``CrateMAE``: official CRATE-MAE or native layout."""
    sd = strip_prefix(state_dict)
    if is_official_crate_mae(sd):
        _check_sincos(sd.get("decoder_pos_embed"), model, "encoder.")
        sd = crate_mae_official_to_native(sd)
    return adapt_state_dict(sd, model, encoder_prefix="encoder.")


def crate_filter(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Checkpoint filter for ``CRATE``: official supervised CRATE, native, or a CRATE-MAE encoder.

    A CRATE-MAE checkpoint (official or ours) gives its encoder; the decoder and mask token are
    dropped (for fine-tuning and probing a pretrained encoder).
    """
    sd = strip_prefix(state_dict)
    if is_official_crate(sd):
        sd = crate_official_to_native(sd)
    elif is_official_crate_mae(sd):
        sd = crate_mae_official_to_native(sd)
    if any(k.startswith("encoder.") for k in sd):
        sd = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    return adapt_state_dict(sd, model)


def vit_mae_filter(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Checkpoint filter for ``ViTMAE``: MAE-style official layout (ViT blocks) or native."""
    sd = strip_prefix(state_dict)
    if not any(k.startswith("encoder.") for k in sd) and is_official_mae(sd):
        _check_sincos(sd.get("decoder_pos_embed"), model, "encoder.")
        sd = vit_mae_official_to_native(sd)
    return adapt_state_dict(sd, model, encoder_prefix="encoder.")


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m whitebox.convert",
        description="Convert an official CRATE / CRATE-MAE checkpoint into config.json + model.safetensors.",
    )
    parser.add_argument("checkpoint", help="the official .pth file (or any checkpoint the family filter reads)")
    parser.add_argument("outdir", help="output folder (created; existing files are replaced atomically)")
    parser.add_argument("--model", required=True, help="architecture or architecture.tag, e.g. crate_mae_base.in1k")
    parser.add_argument(
        "--model-args", default="{}", help="JSON object of model arguments, e.g. '{\"lambd\": 5.0}' (over the tag's)"
    )
    args = parser.parse_args(argv)

    import whitebox
    from registry._download import sha256_file

    try:
        model_args: dict[str, Any] = json.loads(args.model_args)
    except json.JSONDecodeError as err:
        parser.error(f"--model-args is not valid JSON: {err}")
    if not isinstance(model_args, dict):
        parser.error("--model-args must be a JSON object")
    model = whitebox.create_model(
        args.model, pretrained=True, pretrained_cfg_overlay=dict(file=str(args.checkpoint)), **model_args
    )
    cfg = model.pretrained_cfg.replace(file=None)
    model.pretrained_cfg = cfg
    out = whitebox.save_pretrained(model, args.outdir)
    n = sum(t.numel() for t in model.state_dict().values())
    print(f"wrote {out} ({cfg.name}, {n / 1e6:.2f}M values); source sha256 {sha256_file(args.checkpoint)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
