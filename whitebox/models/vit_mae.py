"""ViT-MAE built from timm blocks in the CRATE-MAE harness: the paper's comparison baseline.

Same masking, full-sequence encoder, loss and interface as ``CrateMAE``; only the blocks differ
(timm ``Block`` as ``TransformerBlock``: MLP ratio 4, no qkv bias, LayerNorm eps 1e-5, as the official harness builds
them). The decoder has 8 blocks at the encoder's width (16 heads). The official harness also
builds an unused ``decoder_embed`` (0.59M in Base); here it exists only when
``decoder_embed_dim`` differs from the encoder width, where it is used.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from registry import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import TransformerBlock
from ._adapt import adapt_state_dict, check_sincos, clean_state_dict
from ._args import MAX_DEPTH, check_float, check_int, check_width, forwarded, forwards_to
from ._encoder import TokenEncoder
from ._mae import MaskedAutoencoder
from ._official import vit_mae_official_to_native

__all__ = ["ViTMAE"]


@forwards_to(TokenEncoder, fixed=("block_fn", "block_kwargs", "embed_layer", "pos_embed", "final_norm"))
class ViTMAE(MaskedAutoencoder):
    """Masked autoencoder with ViT blocks (encoder over the full sequence, as CRATE-MAE's).

    The CRATE-MAE paper's baseline: the same harness (masking, full-sequence encoder, loss) with timm
    ``Block``s, so that the two differ only in their blocks.

    Args:
        img_size, patch_size, in_chans: image size and patch side in pixels, input channels.
        embed_dim, depth, num_heads: encoder width, blocks and heads.
        decoder_embed_dim: decoder width (``None``: the encoder's, as in the paper's baseline).
        decoder_depth, decoder_num_heads: decoder blocks (paper: 8) and heads (16).
        mlp_ratio, qkv_bias: timm ``Block`` options (MLP width 4d; no qkv bias).
        norm_pix_loss, mask_ratio: as ``MaskedAutoencoder``.
        num_classes, global_pool: the encoder's head (0: none).
        drop_path_rate: stochastic depth of the encoder.

    Keyword arguments only; those not listed in ``__init__`` go to its ``TokenEncoder`` with its
    defaults (``inspect.signature(ViTMAE)`` lists them all).

    Raises:
        ValueError: a width, depth, ratio or rate out of range (named, with the allowed values).
    """

    def __init__(
        self,
        *,
        decoder_embed_dim: int | None = None,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        norm_pix_loss: bool = False,
        mask_ratio: float = 0.75,
        num_classes: int = 0,
        **kwargs: Any,
    ) -> None:
        embed_dim = forwarded(kwargs, TokenEncoder, "embed_dim")
        patch_size, in_chans = (
            forwarded(kwargs, TokenEncoder, "patch_size"),
            forwarded(kwargs, TokenEncoder, "in_chans"),
        )
        decoder_embed_dim = embed_dim if decoder_embed_dim is None else decoder_embed_dim
        check_width(decoder_embed_dim, decoder_num_heads)
        check_int("decoder_depth", decoder_depth, 0, MAX_DEPTH)
        check_float("mlp_ratio", mlp_ratio, 0.0, 64.0, open_low=True)
        super().__init__(embed_dim, norm_pix_loss=norm_pix_loss, mask_ratio=mask_ratio)
        self.encoder = TokenEncoder(
            block_fn=TransformerBlock,
            num_classes=num_classes,
            embed_layer="conv",
            pos_embed="sincos",
            final_norm=True,
            block_kwargs=dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias),
            **kwargs,
        )
        self.decoder_embed = (
            nn.Linear(embed_dim, decoder_embed_dim) if decoder_embed_dim != embed_dim else nn.Identity()
        )
        self.decoder_blocks = nn.Sequential(
            *[
                TransformerBlock(decoder_embed_dim, decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.init_weights()


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """MAE-style official layout (ViT blocks) or native -> ``model``, adapted to its ``num_classes`` / ``in_chans``."""
    sd = clean_state_dict(state_dict)
    if not any(k.startswith("encoder.") for k in sd) and (
        "blocks.0.attn.qkv.weight" in sd or "patch_embed.proj.weight" in sd
    ):
        check_sincos(sd.get("decoder_pos_embed"), model, "encoder.")
        sd = vit_mae_official_to_native(sd)
    return adapt_state_dict(sd, model, encoder_prefix="encoder.")


default_cfgs = generate_default_cfgs(
    {
        name: dict(
            input_size=(3, 224, 224),
            fixed_input_size=False,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            num_classes=0,
            first_conv="encoder.patch_embed.proj",
            classifier="encoder.head",
            paper_name="Masked Autoencoders Are Scalable Vision Learners (CVPR 2022), as CRATE-MAE's baseline",
            paper_ids="arXiv:2111.06377",
        )
        for name in ("vit_mae_base", "vit_mae_large")
    }
)


def _create(variant: str, pretrained: bool, defaults: dict[str, Any], **kwargs: Any) -> ViTMAE:
    """Every entry point: the variant's ``defaults`` under the caller's ``kwargs``."""
    return build_model_with_cfg(
        ViTMAE, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **{**defaults, **kwargs}
    )


@register_model
def vit_mae_base(pretrained: bool = False, **kwargs: Any) -> ViTMAE:
    """ViT-MAE-B/16 twin of CRATE-MAE-B (d 768, 12 heads, 12 encoder + 8 decoder blocks)."""
    return _create("vit_mae_base", pretrained, dict(embed_dim=768, depth=12, num_heads=12), **kwargs)


@register_model
def vit_mae_large(pretrained: bool = False, **kwargs: Any) -> ViTMAE:
    """ViT-MAE-L/16 twin of CRATE-MAE-L (d 1024, 16 heads, 24 encoder + 8 decoder blocks)."""
    return _create("vit_mae_large", pretrained, dict(embed_dim=1024, depth=24, num_heads=16), **kwargs)
