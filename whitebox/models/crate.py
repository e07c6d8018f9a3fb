"""CRATE: the white-box transformer backbone and classifier (Yu et al., arXiv 2306.01129).

Each layer is ``x = x + MSSA(LN(x)); x = ISTA(LN(x))`` (see ``whitebox.layers.CrateBlock``).
The supervised variants use the official embedding (patches -> LN -> Linear -> LN), a learned
position table and class token, and a head ``LN + Linear`` on the class token. The same class,
with a convolutional embedding, fixed sin-cos positions and a final LN, is the CRATE-MAE encoder.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from registry import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import CrateBlock
from ._adapt import adapt_state_dict, clean_state_dict
from ._args import check_float, check_rates, forwards_to
from ._encoder import TokenEncoder
from ._official import crate_mae_official_to_native, crate_official_to_native, is_official_crate, is_official_crate_mae

__all__ = ["CRATE"]


@forwards_to(TokenEncoder, fixed=("block_fn", "block_kwargs"))
class CRATE(TokenEncoder):
    """CRATE backbone / classifier.

    Keyword arguments only; those not listed in the signature of ``__init__`` (geometry, width, depth,
    heads, head, regularisation, ``dynamic_img_size``) go to ``TokenEncoder`` with its defaults
    (``inspect.signature(CRATE)`` lists them all).

    Args:
        img_size, patch_size, in_chans: input geometry.
        num_classes: classifier width; 0 for a backbone that returns pooled features.
        global_pool: ``'token'`` (class token, official), ``'avg'`` (mean of patch tokens, timm's rule;
            the official ``pool='mean'`` also averages the class token) or ``''``.
        embed_dim, depth, num_heads: width d, number of layers L, number of subspaces h.
        eta, lambd: ISTA step size and threshold (official: 0.1 and 0.1 supervised, 0.5 for MAE).
        embed_layer: ``'linear'`` (official supervised) or ``'conv'`` (MAE).
        pos_embed: ``'learn'`` (official supervised, N(0, 1) init) or ``'sincos'`` (fixed, MAE).
        final_norm: LN(eps 1e-6) after the last layer (the MAE encoder has one).
        fc_norm: LN on the pooled token before the head (the official ``mlp_head`` has one).
        drop_rate, pos_drop_rate, attn_drop_rate, proj_drop_rate, drop_path_rate: regularisation.
        dynamic_img_size: accept other image sizes at run time by resampling a learned table.
        fused_attn: use ``scaled_dot_product_attention`` (``None``: timm's global switch).
    """

    def __init__(
        self,
        *,
        eta: float = 0.1,
        lambd: float = 0.1,
        embed_layer: Literal["conv", "linear"] = "linear",
        pos_embed: Literal["sincos", "learn"] = "learn",
        final_norm: bool = False,
        fc_norm: bool = True,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        fused_attn: bool | None = None,
        **kwargs: Any,
    ) -> None:
        check_float("eta", eta, 0.0, open_low=True)
        check_float("lambd", lambd, 0.0)
        check_rates(attn_drop_rate=attn_drop_rate, proj_drop_rate=proj_drop_rate)
        block_kwargs = dict(
            eta=eta, lambd=lambd, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate, fused_attn=fused_attn
        )
        super().__init__(
            block_fn=CrateBlock,
            embed_layer=embed_layer,
            pos_embed=pos_embed,
            final_norm=final_norm,
            fc_norm=fc_norm,
            block_kwargs=block_kwargs,
            **kwargs,
        )
        # Official initialisation: PyTorch defaults, N(0, 1) class token and learned positions.
        nn.init.normal_(self.cls_token)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official supervised CRATE, native, or a CRATE-MAE checkpoint (official or ours: its encoder, for
    fine-tuning and probing) -> ``model``, adapted to its ``num_classes`` / ``in_chans`` / ``img_size``."""
    sd = clean_state_dict(state_dict)
    if is_official_crate(sd):
        sd = crate_official_to_native(sd)
    elif is_official_crate_mae(sd):
        sd = crate_mae_official_to_native(sd)
    if any(k.startswith("encoder.") for k in sd):
        sd = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    return adapt_state_dict(sd, model)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    defaults = dict(
        input_size=(3, 224, 224),
        fixed_input_size=True,  # a learned position table (dynamic_img_size=True resamples it)
        interpolation="bicubic",
        crop_pct=0.875,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        num_classes=1000,
        first_conv="patch_embed.proj",
        classifier="head",
        paper_name="White-Box Transformers via Sparse Rate Reduction (NeurIPS 2023)",
        paper_ids="arXiv:2306.01129",
        origin_url="https://github.com/Ma-Lab-Berkeley/CRATE",
    )
    return {**defaults, **kwargs}


default_cfgs = generate_default_cfgs(
    {
        "crate_tiny": _cfg(),
        "crate_small.in1k": _cfg(
            gdrive_id="1hYgDJl4EKHYfKprwhEjmWmWHuxnK6_h8",  # no sha256 published; the authors' training checkpoint
            interpolation="bilinear",
            license="mit",
            notes=(
                "Official supervised CRATE-S/16 ImageNet-1K release ({'state_dict': ...} saved from "
                "DataParallel, 'module.' prefix). Official defaults eta = 0.1, lambda = 0.1; evaluation "
                "Resize(256) + CenterCrop(224), bilinear.",
            ),
        ),
        "crate_base": _cfg(),
        "crate_large": _cfg(),
    }
)


def _create(variant: str, pretrained: bool, defaults: dict[str, Any], **kwargs: Any) -> CRATE:
    """Every entry point: the variant's ``defaults`` under the caller's ``kwargs``."""
    return build_model_with_cfg(
        CRATE, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **{**defaults, **kwargs}
    )


@register_model
def crate_tiny(pretrained: bool = False, **kwargs: Any) -> CRATE:
    """CRATE-T/16 (d 384, 6 heads, 12 layers; 6.09M parameters at 1000 classes)."""
    return _create("crate_tiny", pretrained, dict(embed_dim=384, depth=12, num_heads=6), **kwargs)


@register_model
def crate_small(pretrained: bool = False, **kwargs: Any) -> CRATE:
    """CRATE-S/16 (d 576, 12 heads, 12 layers; 13.12M parameters)."""
    return _create("crate_small", pretrained, dict(embed_dim=576, depth=12, num_heads=12), **kwargs)


@register_model
def crate_base(pretrained: bool = False, **kwargs: Any) -> CRATE:
    """CRATE-B/16 (d 768, 12 heads, 12 layers; 22.80M parameters)."""
    return _create("crate_base", pretrained, dict(embed_dim=768, depth=12, num_heads=12), **kwargs)


@register_model
def crate_large(pretrained: bool = False, **kwargs: Any) -> CRATE:
    """CRATE-L/16 (d 1024, 16 heads, 24 layers; 77.64M parameters)."""
    return _create("crate_large", pretrained, dict(embed_dim=1024, depth=24, num_heads=16), **kwargs)
