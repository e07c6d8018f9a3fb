"""CBT: the contract-and-broadcast transformer (Wen, Huang, Li, NeurIPS 2025, arXiv 2509.16875).

CRATE's layer with its attention replaced by contract-and-broadcast self-attention: each layer is
``x = x + CBSA(LN(x)); x = ISTA(LN(x))`` (``whitebox.layers.ContractBroadcastBlock``), linear in the number
of tokens. Around the layers, as the authors' ``CBSA_image_classification/models.py`` builds them: XCiT's
convolutional stem with BatchNorm, a class token and a learned position table, and a head ``LN + Linear``
on the class token. ImageNet-1K weights for CBT-T/S/B/L are on Google Drive.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from registry import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import ContractBroadcastBlock, adapt_stem_channels
from ..layers.conv_stem import check_stem_patch
from ._adapt import adapt_state_dict, clean_state_dict
from ._args import check_float, check_int, check_rates, forwarded, forwards_to
from ._encoder import TokenEncoder, use_conv_stem
from ._official import cbsa_repo_to_native

__all__ = ["CBT"]


@forwards_to(TokenEncoder, fixed=("block_fn", "block_kwargs", "embed_layer", "pos_embed", "final_norm", "fc_norm"))
class CBT(TokenEncoder):
    """CBT backbone / classifier.

    Keyword arguments only; those not listed in ``__init__`` go to ``TokenEncoder`` (``inspect.signature``
    lists them all).

    Args:
        img_size, patch_size, in_chans: input geometry (patch 8 or 16: the stem's stages).
        num_classes: classifier width; 0 for a backbone that returns pooled features.
        global_pool: ``'token'`` (class token, official), ``'avg'`` (mean of patch tokens) or ``''``.
        embed_dim, depth, num_heads: width d, number of layers L, heads h.
        eta, lambd: ISTA step size and threshold (official 0.1 and 0.1).
        pooling: which tokens CBSA pools into representatives. ``'official'`` (default): the authors' rule
            that their weights were trained with (the first N - 1 of the 1 + N tokens as a square grid: the
            class token in, the last patch out; square grids only). ``'patch'``: the patch tokens on the
            model's grid (any H x W), for new models.
        pool_size: the representatives' grid (official 8 x 8 = 64).
        drop_rate, pos_drop_rate, attn_drop_rate, proj_drop_rate, drop_path_rate: regularisation (official 0).
        dynamic_img_size: accept other image sizes at run time by resampling the position table.

    Raises:
        ValueError / TypeError: an argument outside its allowed range, named with the range.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 384,
        num_heads: int = 6,
        eta: float = 0.1,
        lambd: float = 0.1,
        pooling: Literal["official", "patch"] = "official",
        pool_size: int | tuple[int, int] = 8,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        img_size, patch_size = (forwarded(kwargs, TokenEncoder, k) for k in ("img_size", "patch_size"))
        check_stem_patch(patch_size)
        check_float("eta", eta, 0.0, open_low=True)
        check_float("lambd", lambd, 0.0)
        check_rates(attn_drop_rate=attn_drop_rate, proj_drop_rate=proj_drop_rate)
        if pooling not in ("official", "patch"):
            raise ValueError(f"pooling must be 'official' (the authors' rule) or 'patch' (corrected), got {pooling!r}")
        pool = (pool_size, pool_size) if isinstance(pool_size, int) and not isinstance(pool_size, bool) else pool_size
        if not isinstance(pool, (tuple, list)) or len(pool) != 2:
            raise TypeError(f"pool_size must be an integer or a pair (H, W), got {pool_size!r}")
        pool = tuple(check_int("pool_size", s, 1, 1024) for s in pool)
        size = (img_size, img_size) if isinstance(img_size, int) and not isinstance(img_size, bool) else img_size
        grid = tuple(s // patch_size for s in size) if isinstance(size, (tuple, list)) and len(size) == 2 else (1, 1)
        if pooling == "official" and grid[0] != grid[1]:
            raise ValueError(
                f"pooling='official' needs a square patch grid, got {grid[0]}x{grid[1]} from img_size {img_size}; "
                "use pooling='patch' for other grids"
            )
        super().__init__(
            block_fn=ContractBroadcastBlock,
            embed_dim=embed_dim,
            num_heads=num_heads,
            embed_layer="conv",
            pos_embed="learn",
            final_norm=False,  # the only final norm is the head's LN (eps 1e-5, the official mlp_head.0)
            fc_norm=True,
            block_kwargs=dict(
                eta=eta,
                lambd=lambd,
                grid_size=grid,
                pool_size=pool,
                pooling=pooling,
                attn_drop=attn_drop_rate,
                proj_drop=proj_drop_rate,
            ),
            **kwargs,
        )
        use_conv_stem(self)  # XCiT's stem; the authors' N(0, 1) class token and positions


# ----------------------------------------------------------------------------- the authors' layout
def is_official_cbt(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("transformer.layers.", "to_patch_embedding.")) for k in state_dict)


def cbt_official_to_native(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' keys (``models.py``: ``to_patch_embedding.proj``, ``pos_embedding``, ``cls_token``,
    ``transformer.layers.i.{0,1}`` with ``PreNorm`` around ``CBSA`` / ``ISTA``, ``mlp_head.{0,1}``) -> ours."""
    attn = {
        "proj.weight": "attn.qkv.weight",
        "step_rep": "attn.alpha",
        "step_x": "attn.beta",
        "to_out.weight": "attn.proj.weight",
        "to_out.bias": "attn.proj.bias",
    }
    return cbsa_repo_to_native(state_dict, attn, "official CBT")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The authors' CBT layout (their files: ``{'state_dict': ...}`` from DataParallel, ``module.`` prefix; the
    loader unwraps both) or ours -> ``model``, adapted to its ``num_classes`` / ``in_chans`` / ``img_size``."""
    sd = clean_state_dict(state_dict)
    if is_official_cbt(sd):
        sd = cbt_official_to_native(sd)
    return adapt_state_dict(adapt_stem_channels(sd, model), model)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    defaults = dict(
        input_size=(3, 224, 224),
        fixed_input_size=True,  # a learned position table (dynamic_img_size=True resamples it)
        interpolation="bilinear",  # the authors' evaluation: Resize(256) + CenterCrop(224), torchvision default
        crop_pct=0.875,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        num_classes=1000,
        first_conv="patch_embed.proj.0.0",
        classifier="head",
        license="mit",
        paper_name="Towards Interpretable and Efficient Attention: Compressing All by Contracting a Few (NeurIPS 2025)",
        paper_ids="arXiv:2509.16875",
        origin_url="https://github.com/QishuaiWen/CBSA",
    )
    return {**defaults, **kwargs}


def _drive(file_id: str, name: str, top1: float, gflops: float, params: str) -> dict[str, Any]:
    return _cfg(
        gdrive_id=file_id,  # no sha256 published
        notes=(
            f"Official CBT-{name} ImageNet-1K release (the authors' training checkpoint: {{'state_dict': ...}} "
            f"saved from DataParallel, 'module.' prefix), trained from scratch on ImageNet-1K at 224 px with "
            f"'naive data augmentation'. Published: top-1 {top1}, {gflops} GFLOPs, {params} parameters. "
            "Representatives pooled by the authors' rule (pooling='official'); evaluation Resize(256) + "
            "CenterCrop(224), bilinear. Licence MIT (QishuaiWen/CBSA LICENSE).",
        ),
    )


default_cfgs = generate_default_cfgs(
    {
        "cbt_tiny_patch16.in1k": _drive("1GovOGBPDkHJDpOYX8KVJJeDrjwQvHfhb", "T", 63.2, 1.1, "1.8M"),
        "cbt_small_patch16.in1k": _drive("1sKZBbIxvgPJmfO89TKaggKD0EdUJ7jSu", "S", 71.4, 4.0, "6.7M"),
        "cbt_base_patch16.in1k": _drive("1CouOjiy3T9YRhYJFk4gL8PVOgiJ-bFgn", "B", 73.4, 15.1, "25.7M"),
        "cbt_large_patch16.in1k": _drive("1xdEClU6xb5qSwxvDZROKfLac8mJ7R6vb", "L", 74.4, 47.3, "83.1M"),
    }
)


def _create(variant: str, pretrained: bool, defaults: dict[str, Any], **kwargs: Any) -> CBT:
    return build_model_with_cfg(
        CBT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **{**defaults, **kwargs}
    )


@register_model
def cbt_tiny_patch16(pretrained: bool = False, **kwargs: Any) -> CBT:
    """CBT-T/16 (d 192, 3 heads, 12 layers; 1.79M parameters). Weights: ``.in1k`` (Drive)."""
    return _create("cbt_tiny_patch16", pretrained, dict(embed_dim=192, depth=12, num_heads=3), **kwargs)


@register_model
def cbt_small_patch16(pretrained: bool = False, **kwargs: Any) -> CBT:
    """CBT-S/16 (d 384, 6 heads, 12 layers; 6.7M parameters). Weights: ``.in1k`` (Drive)."""
    return _create("cbt_small_patch16", pretrained, dict(embed_dim=384, depth=12, num_heads=6), **kwargs)


@register_model
def cbt_base_patch16(pretrained: bool = False, **kwargs: Any) -> CBT:
    """CBT-B/16 (d 768, 12 heads, 12 layers; 25.7M parameters). Weights: ``.in1k`` (Drive)."""
    return _create("cbt_base_patch16", pretrained, dict(embed_dim=768, depth=12, num_heads=12), **kwargs)


@register_model
def cbt_large_patch16(pretrained: bool = False, **kwargs: Any) -> CBT:
    """CBT-L/16 (d 1024, 16 heads, 24 layers; 83.1M parameters). Weights: ``.in1k`` (Drive)."""
    return _create("cbt_large_patch16", pretrained, dict(embed_dim=1024, depth=24, num_heads=16), **kwargs)
