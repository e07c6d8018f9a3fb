"""Reusable white-box building blocks; each is a plain ``nn.Module`` on (B, N, d) tokens."""

from .blocks import CrateAlphaBlock, CrateBlock, CrateDecoderBlock, TransformerBlock
from .cbsa import ContractBroadcastAttention, ContractBroadcastBlock
from .conv_stem import ConvStemPatchEmbed, adapt_stem_channels
from .declare import AttentionMaps, BlockProbes, Probe
from .ista import ISTA
from .mssa import SubspaceAttention
from .overcomplete_ista import OvercompleteISTA
from .patch_embed import ConvPatchEmbed, LinearPatchEmbed, check_images
from .pos_embed import SinCosPosEmbed, sincos_2d
from .tssa import CausalTokenStatisticsAttention, TokenStatisticsAttention, TokenStatisticsBlock

__all__ = [
    "ISTA",
    "AttentionMaps",
    "BlockProbes",
    "CausalTokenStatisticsAttention",
    "ContractBroadcastAttention",
    "ContractBroadcastBlock",
    "ConvPatchEmbed",
    "ConvStemPatchEmbed",
    "CrateAlphaBlock",
    "CrateBlock",
    "CrateDecoderBlock",
    "LinearPatchEmbed",
    "OvercompleteISTA",
    "Probe",
    "SinCosPosEmbed",
    "SubspaceAttention",
    "TokenStatisticsAttention",
    "TokenStatisticsBlock",
    "TransformerBlock",
    "adapt_stem_channels",
    "check_images",
    "sincos_2d",
]
