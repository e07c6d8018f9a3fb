"""XCiT's convolutional patch stem (3x3 stride-2 convolutions with BatchNorm), as ToST and CBT use it."""

from __future__ import annotations

import torch
from timm.models import adapt_input_conv
from torch import nn

from .patch_embed import _PatchEmbedBase


def _conv_bn(in_chans: int, out_chans: int) -> nn.Sequential:
    """3x3 convolution, stride 2, padding 1, no bias, then BatchNorm (the authors' ``conv3x3``)."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_chans)
    )


def check_stem_patch(patch_size: object) -> None:
    """A model's up-front check, before anything is built: ``ValueError`` unless ``patch_size`` is 8 or 16, the
    patch sizes the stem's stages make."""
    if patch_size not in (8, 16):
        raise ValueError(f"patch_size must be 8 or 16 (the convolutional stem's stages), got {patch_size}")


class ConvStemPatchEmbed(_PatchEmbedBase):
    """(B, C, H, W) -> (B, N, d) through log2(p) stride-2 3x3 conv + BN stages with GELU between them.

    Patch 16: widths d/8, d/4, d/2, d; patch 8: d/4, d/2, d (XCiT's ``ConvPatchEmbed``, copied by ToST's
    ``tost_vision/tost.py`` and CBSA's ``models.py``). The authors use ``SyncBatchNorm``; this is
    ``BatchNorm2d`` with the same parameter and buffer names (``proj.{0,2,4,6}.{0,1}``), so their
    checkpoints load unchanged and it runs on one device (``nn.SyncBatchNorm.convert_sync_batchnorm``
    turns it back for multi-device training).

    Raises:
        ValueError: a patch size other than 8 or 16, or a width too small for the stages.

    Args:
        img_size: the image size built for (int or (H, W)), in pixels; a multiple of ``patch_size``.
        patch_size: 8 or 16 (three or four stride-2 stages).
        in_chans: input channels C.
        embed_dim: token width d.
    """

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__(img_size, patch_size, in_chans)
        if patch_size not in (8, 16):
            raise ValueError(f"the convolutional stem has patch_size 8 or 16, got {patch_size}")
        widths = [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim][-(3 if patch_size == 8 else 4) :]
        if widths[0] < 1:
            raise ValueError(f"embed_dim must be at least {patch_size // 2} for the stem, got {embed_dim}")
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.GELU())
            layers.append(_conv_bn(widths[i - 1] if i else in_chans, width))
        self.proj = nn.Sequential(*layers)

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the first convolution (what images must have outside autocast)."""
        return self.proj[0][0].weight.dtype

    def flops(self, grid_size: tuple[int, int]) -> dict[str, int]:
        """Convolution FLOPs for a (gh, gw) patch grid: stage i runs at 2^(stages - 1 - i) times the grid."""
        convs = [m[0] for m in self.proj if isinstance(m, nn.Sequential)]
        total = 0
        for i, conv in enumerate(convs):
            scale = 2 ** (len(convs) - 1 - i)
            rows = grid_size[0] * scale * grid_size[1] * scale
            total += 2 * rows * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        return {"": total}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> patch tokens (B, H/p * W/p, d) through the conv + BN stages."""
        return self.proj(x).flatten(2).transpose(1, 2)


def adapt_stem_channels(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict whose first stem convolution (``patch_embed.proj.0.0.weight``) fits ``model``'s input
    channels, by timm's ``adapt_input_conv`` rule (sum for one channel, repeat and rescale for more)."""
    key = "patch_embed.proj.0.0.weight"
    own, w = model.state_dict().get(key), state_dict.get(key)
    if own is None or w is None or w.shape == own.shape or w.shape[0] != own.shape[0]:
        return state_dict
    return {**state_dict, key: adapt_input_conv(own.shape[1], w.float()).to(w.dtype)}
