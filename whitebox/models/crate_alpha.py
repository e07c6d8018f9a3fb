"""CRATE-alpha: the scaled white-box transformer (Yang et al., NeurIPS 2024, arXiv 2405.20299).

Each layer is ``x = x + MSSA(LN(x)); x = x + ODL(LN(x))`` (see ``whitebox.layers.CrateAlphaBlock``):
MSSA without an output bias, and a sparse-coding step against an overcomplete dictionary (d x 4d, two
ISTA steps from zero) decoded by a second dictionary, with a residual. Around the layers: a convolutional
patch embedding with bias, a class token and a learned position table, no final norm, and a head
``LN + Linear`` on the class token, as the authors' ``torch_inference/model/crate_alpha.py`` builds it.
The two published PyTorch files (B/16, L/14) come from the Hugging Face Hub.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from registry import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import CrateAlphaBlock
from ._adapt import adapt_state_dict, clean_state_dict
from ._args import check_float, check_int, check_rates, forwards_to
from ._encoder import TokenEncoder
from ._official import crate_alpha_official_to_native, is_official_crate_alpha

__all__ = ["CrateAlpha"]


@forwards_to(TokenEncoder, fixed=("block_fn", "block_kwargs", "embed_layer", "pos_embed", "final_norm", "fc_norm"))
class CrateAlpha(TokenEncoder):
    """CRATE-alpha backbone / classifier.

    Keyword arguments only; the geometry, width, depth, heads, head and regularisation arguments go to
    ``TokenEncoder`` with its defaults (``inspect.signature(CrateAlpha)`` lists them all).

    Args:
        img_size, patch_size, in_chans: input geometry (the published models: 224 px, patch 8 to 32).
        num_classes: classifier width; 0 for a backbone that returns pooled features.
        global_pool: ``'token'`` (class token, official), ``'avg'`` (mean of patch tokens) or ``''``.
        embed_dim, depth, num_heads: width d, number of layers L, number of subspaces h.
        expansion, eta, lambd: overcompleteness of the dictionary, ISTA step size and threshold (official
            4, 0.1 and 0.1 for every size).
        drop_rate, pos_drop_rate, attn_drop_rate, proj_drop_rate, drop_path_rate: regularisation.
        dynamic_img_size: accept other image sizes at run time by resampling the position table.
        fused_attn: use ``scaled_dot_product_attention`` (``None``: timm's global switch).
    """

    def __init__(
        self,
        *,
        expansion: int = 4,
        eta: float = 0.1,
        lambd: float = 0.1,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        fused_attn: bool | None = None,
        **kwargs: Any,
    ) -> None:
        check_int("expansion", expansion, 1, 64)
        check_float("eta", eta, 0.0, open_low=True)
        check_float("lambd", lambd, 0.0)
        check_rates(attn_drop_rate=attn_drop_rate, proj_drop_rate=proj_drop_rate)
        block_kwargs = dict(
            expansion=expansion,
            eta=eta,
            lambd=lambd,
            attn_drop=attn_drop_rate,
            proj_drop=proj_drop_rate,
            fused_attn=fused_attn,
        )
        super().__init__(
            block_fn=CrateAlphaBlock,
            embed_layer="conv",
            pos_embed="learn",
            final_norm=False,  # the only final norm is the head's LN (eps 1e-5, as the official mlp_head.0)
            fc_norm=True,
            block_kwargs=block_kwargs,
            **kwargs,
        )
        self.init_weights()

    def init_weights(self) -> None:
        """The initialisation the authors trained with (their JAX ``models/crate.py``; the PyTorch port only loads).

        Class token N(0, 1e-6), positions N(0, 0.02), patch convolution kaiming-uniform with zero bias,
        MSSA projections N(0, 0.02), dictionaries as ``OvercompleteISTA`` makes them, head N(0, 0.02) with
        zero bias; LayerNorms 1 and 0.
        """
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.kaiming_uniform_(self.patch_embed.proj.weight)  # flax kaiming_uniform: bound sqrt(6 / fan_in)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for blk in self.blocks:
            nn.init.normal_(blk.attn.qkv.weight, std=0.02)
            nn.init.normal_(blk.attn.proj.weight, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official CRATE-alpha (a plain state dict) or native weights -> ``model``, adapted to its
    ``num_classes`` / ``in_chans`` / ``img_size``."""
    sd = clean_state_dict(state_dict)
    if is_official_crate_alpha(sd):
        sd = crate_alpha_official_to_native(sd)
    return adapt_state_dict(sd, model)


_LICENSE_NOTE = (
    "Licence: recorded as Apache-2.0, as the issue and the JAX sources (Big Vision Apache-2.0 headers) state; "
    "the GitHub repository has no LICENSE file at HEAD (edbd624) and the PyTorch port carries no header. "
    "Check the Hub model card before redistributing the weights."
)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    defaults = dict(
        input_size=(3, 224, 224),
        fixed_input_size=True,  # a learned position table (dynamic_img_size=True resamples it)
        interpolation="bilinear",  # the authors' evaluation: Resize(256) + CenterCrop(224), torchvision default
        crop_pct=0.875,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        num_classes=1000,
        first_conv="patch_embed.proj",
        classifier="head",
        paper_name="Scaling White-Box Transformers for Vision (NeurIPS 2024)",
        paper_ids="arXiv:2405.20299",
        origin_url="https://github.com/UCSC-VLAA/CRATE-alpha",
    )
    return {**defaults, **kwargs}


def _hub(filename: str, top1: float, name: str) -> dict[str, Any]:
    return _cfg(
        hf_hub_id="UCSC-VLAA/CRATE-alpha",
        hf_hub_filename=filename,  # no sha256 published
        license="apache-2.0",
        notes=(
            f"Official CRATE-alpha-{name} PyTorch port (a plain state dict for torch_inference/model/crate_alpha.py): "
            f"ImageNet-21K pre-training, ImageNet-1K fine-tuning at 224 px; published ImageNet-1K top-1 {top1}. "
            "eta = lambda = 0.1, dictionary 4d; evaluation Resize(256) + CenterCrop(224), bilinear.",
            _LICENSE_NOTE,
        ),
    )


default_cfgs = generate_default_cfgs(
    {
        "crate_alpha_base_patch16.in1k": _hub("torch/crate_alpha_B16.pth", 81.2, "B/16"),
        "crate_alpha_large_patch14.in1k": _hub("torch/crate_alpha_L14.pth", 83.9, "L/14"),
        "crate_alpha_base_patch8": _cfg(),
        "crate_alpha_base_patch32": _cfg(),
        "crate_alpha_large_patch8": _cfg(),
        "crate_alpha_large_patch32": _cfg(),
    }
)

BASE = dict(embed_dim=768, depth=12, num_heads=12)
LARGE = dict(embed_dim=1024, depth=24, num_heads=16)


def _create(variant: str, pretrained: bool, defaults: dict[str, Any], **kwargs: Any) -> CrateAlpha:
    """Every entry point: the variant's ``defaults`` under the caller's ``kwargs``."""
    return build_model_with_cfg(
        CrateAlpha, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **{**defaults, **kwargs}
    )


@register_model
def crate_alpha_base_patch32(pretrained: bool = False, **kwargs: Any) -> CrateAlpha:
    """CRATE-alpha-B/32 (d 768, 12 heads, 12 layers; 73.99M parameters at 224 px and 1000 classes)."""
    return _create("crate_alpha_base_patch32", pretrained, dict(BASE, patch_size=32), **kwargs)


@register_model
def crate_alpha_base_patch16(pretrained: bool = False, **kwargs: Any) -> CrateAlpha:
    """CRATE-alpha-B/16 (d 768, 12 heads, 12 layers; 72.33M parameters). Weights: ``.in1k`` (Hub)."""
    return _create("crate_alpha_base_patch16", pretrained, dict(BASE, patch_size=16), **kwargs)


@register_model
def crate_alpha_base_patch8(pretrained: bool = False, **kwargs: Any) -> CrateAlpha:
    """CRATE-alpha-B/8 (d 768, 12 heads, 12 layers; 72.34M parameters)."""
    return _create("crate_alpha_base_patch8", pretrained, dict(BASE, patch_size=8), **kwargs)


@register_model
def crate_alpha_large_patch32(pretrained: bool = False, **kwargs: Any) -> CrateAlpha:
    """CRATE-alpha-L/32 (d 1024, 16 heads, 24 layers; 255.98M parameters)."""
    return _create("crate_alpha_large_patch32", pretrained, dict(LARGE, patch_size=32), **kwargs)


@register_model
def crate_alpha_large_patch14(pretrained: bool = False, **kwargs: Any) -> CrateAlpha:
    """CRATE-alpha-L/14 (d 1024, 16 heads, 24 layers; 253.65M parameters). Weights: ``.in1k`` (Hub)."""
    return _create("crate_alpha_large_patch14", pretrained, dict(LARGE, patch_size=14), **kwargs)


@register_model
def crate_alpha_large_patch8(pretrained: bool = False, **kwargs: Any) -> CrateAlpha:
    """CRATE-alpha-L/8 (d 1024, 16 heads, 24 layers; 253.79M parameters)."""
    return _create("crate_alpha_large_patch8", pretrained, dict(LARGE, patch_size=8), **kwargs)
