"""Patch embeddings (convolutional as in MAE, LayerNorm-linear as in supervised CRATE) and input checks."""

from __future__ import annotations

import torch
from torch import nn

from .declare import linear_flops


def check_images(x: object, in_chans: int, patch_size: int, dtype: torch.dtype | None = None) -> None:
    """Raise a clear error unless ``x`` is a float (B, C, H, W) batch that tiles into patches.

    With ``dtype`` (the model's parameter dtype) the images must have that dtype too, unless
    ``torch.autocast`` is enabled for their device (it casts every product itself): a float16,
    bfloat16 or float64 batch into a float32 model is a TypeError that says what to do, the same
    for every family, instead of three different errors from inside the first layer.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got a {x.ndim}-D tensor of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point image tensor, got {x.dtype}; convert it first, e.g. x.float() / 255 "
            "followed by the model's mean/std normalisation"
        )
    if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"this model's weights are {dtype} and the images are {x.dtype}: give {dtype} images "
            f"(images.to({dtype})), convert the model (model.to({x.dtype})), or run it under "
            f"torch.autocast('{x.device.type}', dtype=...)"
        )
    if x.shape[0] == 0:
        raise ValueError(f"got an empty batch (input shape {tuple(x.shape)}); give at least one image")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
    h, w = x.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"image size {h}x{w} is not divisible by the patch size {patch_size}; "
            f"use a height and width that are multiples of {patch_size}"
        )


class _PatchEmbedBase(nn.Module):
    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int) -> None:
        super().__init__()
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {patch_size}")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def dynamic_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid (gh, gw) of an image batch, after checking the batch.

        Under FX symbolic tracing (torchvision's feature extraction) the shape is unknown: the grid
        the model was built for is assumed, as timm's ViT assumes its ``img_size``.
        """
        if isinstance(x, torch.fx.Proxy):
            return self.grid_size
        check_images(x, self.in_chans, self.patch_size, self.weight_dtype)
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    @property
    def weight_dtype(self) -> torch.dtype | None:
        """The dtype images must have outside autocast: the projection's."""
        proj = getattr(self, "proj", None)
        return None if proj is None else proj.weight.dtype


class ConvPatchEmbed(_PatchEmbedBase):
    """Non-overlapping p x p convolution with bias (MAE / timm ``PatchEmbed``): (B, C, H, W) -> (B, N, d).

    Args:
        img_size: the image size the model is built for (int or (H, W)), in pixels.
        patch_size: patch side p in pixels; ``img_size`` must be divisible by it.
        in_chans: input channels C.
        embed_dim: token width d.

    Raises:
        ValueError: ``img_size`` not divisible by ``patch_size``.
    """

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__(img_size, patch_size, in_chans)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def flops(self, grid_size: tuple[int, int]) -> dict[str, int]:
        """One (C p p)-long dot product per output channel and patch: ``2 * patches * d * C * p * p``."""
        return {"": 2 * grid_size[0] * grid_size[1] * self.proj.weight.numel()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> patch tokens (B, H/p * W/p, d), row-major over the patch grid.

        Unchecked: the encoder checks the images first with ``dynamic_grid`` (``check_images``).
        """
        return self.proj(x).flatten(2).transpose(1, 2)


class LinearPatchEmbed(_PatchEmbedBase):
    """Supervised CRATE's embedding: patches as (p1 p2 c) vectors -> LN -> Linear -> LN.

    Args:
        img_size: the image size the model is built for (int or (H, W)), in pixels.
        patch_size: patch side p in pixels; ``img_size`` must be divisible by it.
        in_chans: input channels C.
        embed_dim: token width d.

    Raises:
        ValueError: ``img_size`` not divisible by ``patch_size``.

    Source: official supervised CRATE ``to_patch_embedding`` (Rearrange, LayerNorm, Linear, LayerNorm).
    """

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__(img_size, patch_size, in_chans)
        patch_dim = in_chans * patch_size * patch_size
        self.norm_in = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, embed_dim)
        self.norm_out = nn.LayerNorm(embed_dim)

    def flops(self, grid_size: tuple[int, int]) -> dict[str, int]:
        """The linear map of every flattened patch (the LayerNorms are element-wise, not counted)."""
        return {"": linear_flops(self.proj, grid_size[0] * grid_size[1])}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> patch tokens (B, H/p * W/p, d): patches, LN, Linear, LN.

        Unchecked: the encoder checks the images first with ``dynamic_grid`` (``check_images``).
        """
        # b c (h p1) (w p2) -> b (h w) (p1 p2 c), with plain reshapes so that FX and torch.export trace it
        (gh, gw), p, c = self.dynamic_grid(x), self.patch_size, self.in_chans
        x = x.reshape(-1, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(-1, gh * gw, p * p * c)
        return self.norm_out(self.proj(self.norm_in(x)))
