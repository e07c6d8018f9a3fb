"""CRATE-MAE: masked completion with a white-box encoder and decoder (Pai et al., ICLR 2024).

Encoder: conv patch embedding, mask tokens in place of removed patches, fixed 2-D sin-cos
positions, L CRATE layers ``f^l``, LN. Decoder: L layers ``g^l`` that undo them
(``y = LN(x) E^T; x = y - MSSA(LN(y))``), LN, linear prediction of p * p * C pixels.

Unlike the official code, no ``decoder_embed`` layer (built there but never used, 0.59M in Base)
and no second copy of the position table are created.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from registry import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import CrateDecoderBlock
from ._adapt import adapt_state_dict, check_sincos, clean_state_dict
from ._args import MAX_DEPTH, check_int, check_width, forwarded, forwards_to
from ._mae import MaskedAutoencoder
from ._official import crate_mae_official_to_native, is_official_crate_mae
from .crate import CRATE

__all__ = ["CrateMAE"]


@forwards_to(CRATE, fixed=("embed_layer", "pos_embed", "final_norm", "fc_norm"))
class CrateMAE(MaskedAutoencoder):
    """CRATE-MAE autoencoder.

    Keyword arguments only; those not listed in ``__init__`` go to its encoder, a ``CRATE`` (with a conv
    patch embedding, fixed sin-cos positions and a final norm), with CRATE's defaults
    (``inspect.signature(CrateMAE)`` lists them all).

    Args:
        img_size, patch_size, in_chans: input geometry (any size divisible by the patch runs).
        embed_dim, depth, num_heads: encoder width d, layers L, subspaces h.
        decoder_depth, decoder_num_heads: decoder layers (default L) and heads (default h).
        eta, lambd: ISTA step and threshold of the encoder (official default 0.5; the authors'
            notebook for the released Base weights uses 5.0).
        norm_pix_loss: regress per-patch normalised pixels.
        mask_ratio: default fraction of patches removed in ``forward``.
        num_classes, global_pool: the encoder's head, for probing or fine-tuning (0: none).
        drop_path_rate, fused_attn: as for ``CRATE``.
    """

    def __init__(
        self,
        *,
        decoder_depth: int | None = None,
        decoder_num_heads: int | None = None,
        lambd: float = 0.5,
        norm_pix_loss: bool = False,
        mask_ratio: float = 0.75,
        num_classes: int = 0,
        fused_attn: bool | None = None,
        **kwargs: Any,
    ) -> None:
        embed_dim, depth, num_heads = (forwarded(kwargs, CRATE, k) for k in ("embed_dim", "depth", "num_heads"))
        patch_size, in_chans = forwarded(kwargs, CRATE, "patch_size"), forwarded(kwargs, CRATE, "in_chans")
        decoder_depth = depth if decoder_depth is None else check_int("decoder_depth", decoder_depth, 0, MAX_DEPTH)
        decoder_num_heads = num_heads if decoder_num_heads is None else decoder_num_heads
        check_width(embed_dim, decoder_num_heads)
        super().__init__(embed_dim, norm_pix_loss=norm_pix_loss, mask_ratio=mask_ratio)
        self.encoder = CRATE(
            lambd=lambd,
            num_classes=num_classes,
            embed_layer="conv",
            pos_embed="sincos",
            final_norm=True,
            fc_norm=False,
            fused_attn=fused_attn,
            **kwargs,
        )
        self.decoder_embed = nn.Identity()  # decoder width = encoder width
        self.decoder_blocks = nn.Sequential(
            *[CrateDecoderBlock(embed_dim, decoder_num_heads, fused_attn=fused_attn) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_chans)
        self.init_weights()

    def init_weights(self) -> None:
        """The shared MAE initialisation, then Kaiming-uniform decoder steps E (as the official code, whose E
        is not an ``nn.Linear``)."""
        super().init_weights()
        for blk in self.decoder_blocks:  # the official E is not an nn.Linear: it keeps kaiming init
            nn.init.kaiming_uniform_(blk.linear.weight)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official CRATE-MAE or native layout -> ``model``, adapted to its ``num_classes`` / ``in_chans``."""
    sd = clean_state_dict(state_dict)
    if is_official_crate_mae(sd):
        check_sincos(sd.get("decoder_pos_embed"), model, "encoder.")
        sd = crate_mae_official_to_native(sd)
    return adapt_state_dict(sd, model, encoder_prefix="encoder.")


def _cfg(**kwargs: Any) -> dict[str, Any]:
    defaults = dict(
        input_size=(3, 224, 224),
        fixed_input_size=False,  # fixed sin-cos positions: any size divisible by the patch
        interpolation="bicubic",
        crop_pct=0.875,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        num_classes=0,
        first_conv="encoder.patch_embed.proj",
        classifier="encoder.head",
        paper_name="Masked Completion via Structured Diffusion with White-Box Transformers (ICLR 2024)",
        paper_ids="arXiv:2404.02446",
        origin_url="https://github.com/Ma-Lab-Berkeley/CRATE",
    )
    return {**defaults, **kwargs}


default_cfgs = generate_default_cfgs(
    {
        "crate_mae_tiny": _cfg(),
        "crate_mae_small": _cfg(),
        "crate_mae_base.in1k": _cfg(
            gdrive_id="11i5BMwymqOsunq44WD3omN5mS6ZREQPO",  # no sha256 published by the authors
            model_args=dict(lambd=5.0),
            license="mit",
            notes=(
                "Official CRATE-MAE-B/16 ImageNet-1K pretraining (facebookresearch/mae-style {'model': ...}).",
                "lambda = 5.0: the weights were published (2024-03-14) with code whose encoder ISTA step "
                "hard-coded lambd = 5.0; the default became 0.5 two weeks later together with the "
                "visualisation scripts, and the authors' notebook for these weights sets 5.0. The 5.0 in the "
                "official decoder's linear step is unused (that step has no threshold).",
            ),
        ),
        "crate_mae_large": _cfg(),
    }
)


def _create(variant: str, pretrained: bool, defaults: dict[str, Any], **kwargs: Any) -> CrateMAE:
    """Every entry point: the variant's ``defaults`` under the caller's ``kwargs``."""
    return build_model_with_cfg(
        CrateMAE, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **{**defaults, **kwargs}
    )


@register_model
def crate_mae_tiny(pretrained: bool = False, **kwargs: Any) -> CrateMAE:
    """CRATE-MAE-T/16 (d 384, 6 heads, 12 + 12 layers)."""
    return _create("crate_mae_tiny", pretrained, dict(embed_dim=384, depth=12, num_heads=6), **kwargs)


@register_model
def crate_mae_small(pretrained: bool = False, **kwargs: Any) -> CrateMAE:
    """CRATE-MAE-S/16 (d 576, 12 heads, 12 + 12 layers)."""
    return _create("crate_mae_small", pretrained, dict(embed_dim=576, depth=12, num_heads=12), **kwargs)


@register_model
def crate_mae_base(pretrained: bool = False, **kwargs: Any) -> CrateMAE:
    """CRATE-MAE-B/16 (d 768, 12 heads, 12 + 12 layers; 43.75M trainable parameters)."""
    return _create("crate_mae_base", pretrained, dict(embed_dim=768, depth=12, num_heads=12), **kwargs)


@register_model
def crate_mae_large(pretrained: bool = False, **kwargs: Any) -> CrateMAE:
    """CRATE-MAE-L/16 (d 1024, 16 heads, 24 + 24 layers)."""
    return _create("crate_mae_large", pretrained, dict(embed_dim=1024, depth=24, num_heads=16), **kwargs)
