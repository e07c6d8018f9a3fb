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
from torch import nn

from registry import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import CrateDecoderBlock
from ._mae import MaskedAutoencoder
from .crate import CRATE

__all__ = ["CrateMAE"]


class CrateMAE(MaskedAutoencoder):
    """CRATE-MAE autoencoder.

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
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_depth: int | None = None,
        decoder_num_heads: int | None = None,
        eta: float = 0.1,
        lambd: float = 0.5,
        norm_pix_loss: bool = False,
        mask_ratio: float = 0.75,
        num_classes: int = 0,
        global_pool: str = "token",
        drop_path_rate: float = 0.0,
        fused_attn: bool | None = None,
    ) -> None:
        super().__init__(embed_dim, norm_pix_loss=norm_pix_loss, mask_ratio=mask_ratio)
        self.encoder = CRATE(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            eta=eta,
            lambd=lambd,
            embed_layer="conv",
            pos_embed="sincos",
            final_norm=True,
            fc_norm=False,
            drop_path_rate=drop_path_rate,
            fused_attn=fused_attn,
        )
        self.decoder_embed = nn.Identity()  # decoder width = encoder width
        self.decoder_blocks = nn.Sequential(
            *[
                CrateDecoderBlock(
                    embed_dim, num_heads if decoder_num_heads is None else decoder_num_heads, fused_attn=fused_attn
                )
                for _ in range(depth if decoder_depth is None else decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_chans)
        self.init_weights()

    def init_weights(self) -> None:
        super().init_weights()
        for blk in self.decoder_blocks:  # the official E is not an nn.Linear: it keeps kaiming init
            nn.init.kaiming_uniform_(blk.linear.weight)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a checkpoint onto ``model`` (official CRATE-MAE or native; see ``whitebox.convert.crate_mae_filter``)
    and adapt it to ``num_classes`` / ``in_chans``."""
    from ..convert import crate_mae_filter

    return crate_mae_filter(state_dict, model)


pretrained_cfgs = generate_default_cfgs(
    {
        "crate_mae_base.in1k": dict(
            gdrive_id="11i5BMwymqOsunq44WD3omN5mS6ZREQPO",
            filename="crate_mae_base_in1k.pth",
            sha256=None,  # not published by the authors
            model_args=dict(lambd=5.0),
            input_size=(3, 224, 224),
            interpolation="bicubic",
            crop_pct=0.875,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            num_classes=0,
            first_conv="encoder.patch_embed.proj",
            classifier="encoder.head",
            license="mit",
            paper=(
                "Masked Completion via Structured Diffusion with White-Box Transformers, Pai et al., "
                "ICLR 2024 (arXiv 2404.02446)"
            ),
            origin_url="https://github.com/Ma-Lab-Berkeley/CRATE",
            notes=(
                "Official CRATE-MAE-B/16 ImageNet-1K pretraining (facebookresearch/mae-style {'model': ...}). "
                "lambda = 5.0: the weights were published (2024-03-14) with code whose encoder ISTA step "
                "hard-coded lambd = 5.0; the default became 0.5 two weeks later together with the "
                "visualisation scripts, and the authors' notebook for these weights sets 5.0. The 5.0 in the "
                "official decoder's linear step is unused (that step has no threshold)."
            ),
        ),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CrateMAE:
    return build_model_with_cfg(CrateMAE, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_model
def crate_mae_tiny(pretrained: bool = False, **kwargs: Any) -> CrateMAE:
    """CRATE-MAE-T/16 (d 384, 6 heads, 12 + 12 layers)."""
    return _create("crate_mae_tiny", pretrained, **dict(dict(embed_dim=384, depth=12, num_heads=6), **kwargs))


@register_model
def crate_mae_small(pretrained: bool = False, **kwargs: Any) -> CrateMAE:
    """CRATE-MAE-S/16 (d 576, 12 heads, 12 + 12 layers)."""
    return _create("crate_mae_small", pretrained, **dict(dict(embed_dim=576, depth=12, num_heads=12), **kwargs))


@register_model
def crate_mae_base(pretrained: bool = False, **kwargs: Any) -> CrateMAE:
    """CRATE-MAE-B/16 (d 768, 12 heads, 12 + 12 layers; 43.75M trainable parameters)."""
    return _create("crate_mae_base", pretrained, **dict(dict(embed_dim=768, depth=12, num_heads=12), **kwargs))


@register_model
def crate_mae_large(pretrained: bool = False, **kwargs: Any) -> CrateMAE:
    """CRATE-MAE-L/16 (d 1024, 16 heads, 24 + 24 layers)."""
    return _create("crate_mae_large", pretrained, **dict(dict(embed_dim=1024, depth=24, num_heads=16), **kwargs))
