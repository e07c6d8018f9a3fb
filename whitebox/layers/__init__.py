"""Reusable white-box building blocks; each is a plain ``nn.Module`` on (B, N, d) tokens."""

from .blocks import CrateAlphaBlock, CrateBlock, CrateDecoderBlock, TransformerBlock
from .declare import AttentionMaps, BlockProbes, Probe
from .ista import ISTA
from .mssa import SubspaceAttention
from .overcomplete_ista import OvercompleteISTA
from .patch_embed import ConvPatchEmbed, LinearPatchEmbed, check_images
from .pos_embed import SinCosPosEmbed, sincos_2d

__all__ = [
    "ISTA",
    "AttentionMaps",
    "BlockProbes",
    "ConvPatchEmbed",
    "CrateAlphaBlock",
    "CrateBlock",
    "CrateDecoderBlock",
    "LinearPatchEmbed",
    "OvercompleteISTA",
    "Probe",
    "SinCosPosEmbed",
    "SubspaceAttention",
    "TransformerBlock",
    "check_images",
    "sincos_2d",
]
