"""Reusable white-box building blocks; each is a plain ``nn.Module`` on (B, N, d) tokens."""

from .blocks import CrateAlphaBlock, CrateBlock, CrateDecoderBlock
from .ista import ISTA
from .mssa import SubspaceAttention
from .overcomplete_ista import OvercompleteISTA
from .patch_embed import ConvPatchEmbed, LinearPatchEmbed, check_images
from .pos_embed import SinCosPosEmbed, sincos_2d

__all__ = [
    "ISTA",
    "ConvPatchEmbed",
    "CrateAlphaBlock",
    "CrateBlock",
    "CrateDecoderBlock",
    "LinearPatchEmbed",
    "OvercompleteISTA",
    "SinCosPosEmbed",
    "SubspaceAttention",
    "check_images",
    "sincos_2d",
]
