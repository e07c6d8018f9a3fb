"""A ViT-shaped token encoder with timm's backbone interface, parameterised by its block.

CRATE (supervised), the CRATE-MAE encoder and the ViT-MAE encoder are all this class with a
different block, patch embedding and position table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models import checkpoint_seq
from torch import nn

from ..layers import ConvPatchEmbed, ConvStemPatchEmbed, LinearPatchEmbed, SinCosPosEmbed
from ..layers.declare import linear_flops, merge, prefixed, require
from ._args import MAX_DEPTH, check_image_size, check_int, check_rates, check_width

GlobalPool = Literal["token", "avg", ""]


def use_conv_stem(model: TokenEncoder) -> None:
    """Give ``model`` XCiT's convolutional stem (``ConvStemPatchEmbed``, BatchNorm) for its conv patch embedding,
    and N(0, 1) class token and position table: the harness of the CBSA authors' ``models.py`` (CBT and their
    white-box ToST baseline)."""
    embed = model.patch_embed
    model.patch_embed = ConvStemPatchEmbed(embed.img_size, embed.patch_size, embed.in_chans, model.embed_dim)
    nn.init.normal_(model.cls_token)
    nn.init.normal_(model.pos_embed)


def take_block_indices(num_blocks: int, indices: int | list[int] | None) -> tuple[list[int], int]:
    """Block indices as timm takes them (``None``: all, an int n: the last n, a list: those, negatives
    counted from the end) -> (the indices in [0, num_blocks), the largest of them).

    Raises:
        ValueError: an int outside [1, num_blocks], or a list that is empty, holds a non-integer, or holds
            an index outside [-num_blocks, num_blocks - 1].
    """
    n = num_blocks
    if indices is None:
        return list(range(n)), n - 1
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= n:
            raise ValueError(f"indices as an int takes the last n blocks: 1 <= n <= {n}, got {indices}")
        return list(range(n - indices, n)), n - 1
    wanted = list(indices)
    if not wanted or any(isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n for i in wanted):
        raise ValueError(f"block indices must be in [{-n}, {n - 1}], got {wanted} (a non-empty list of integers)")
    take = [i % n for i in wanted]
    return take, max(take)


class TokenEncoder(nn.Module):
    """Patch embedding, class token, position table, a stack of blocks, and a classifier head.

    ``forward_features`` returns all tokens (B, 1 + N, d); ``forward_head`` pools them (class token
    or mean of patch tokens), applies ``fc_norm`` and the linear head.

    Args:
        block_fn: builds one block as ``block_fn(dim=, num_heads=, drop_path=, **block_kwargs)``.
        img_size: the image size built for, in pixels (int or (H, W)); a multiple of ``patch_size``.
        patch_size: patch side p in pixels.
        in_chans: input channels C.
        num_classes: classes of the linear head (0: no head, ``forward`` returns pooled features).
        global_pool: ``'token'`` (class token), ``'avg'`` (mean of patch tokens) or ``''`` (all tokens).
        embed_dim: token width d.
        depth: number of blocks.
        num_heads: attention heads (``embed_dim`` divisible by it).
        embed_layer: ``'conv'`` (``ConvPatchEmbed``) or ``'linear'`` (``LinearPatchEmbed``).
        pos_embed: ``'sincos'`` (fixed, any grid) or ``'learn'`` (a learned table, resampled for another size).
        final_norm: LayerNorm after the blocks (eps 1e-6).
        fc_norm: LayerNorm on the pooled features before the head.
        drop_rate, pos_drop_rate, drop_path_rate: head dropout, dropout after the positions, stochastic depth
            (linearly increasing over the blocks).
        dynamic_img_size: accept other image sizes at run time (learned positions are resampled).
        block_kwargs: more keyword arguments for ``block_fn``.

    Raises:
        ValueError: a size, width, depth, rate or choice out of range; the message names the argument and
            the allowed values (checked before anything is allocated).
    """

    def __init__(
        self,
        block_fn: Callable[..., nn.Module],
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: GlobalPool = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        embed_layer: Literal["conv", "linear"] = "conv",
        pos_embed: Literal["sincos", "learn"] = "sincos",
        final_norm: bool = True,
        fc_norm: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dynamic_img_size: bool = False,
        block_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_image_size(img_size, patch_size)
        check_int("in_chans", in_chans, 1, 1024)
        check_int("num_classes", num_classes, 0, 10_000_000)
        check_width(embed_dim, num_heads, 4 if pos_embed == "sincos" else 1)
        check_int("depth", depth, 1, MAX_DEPTH)
        check_rates(drop_rate=drop_rate, pos_drop_rate=pos_drop_rate, drop_path_rate=drop_path_rate)
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if embed_layer not in ("conv", "linear"):
            raise ValueError(f"embed_layer must be 'conv' or 'linear', got {embed_layer!r}")
        if pos_embed not in ("sincos", "learn"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learn', got {pos_embed!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.in_chans = in_chans
        self.num_prefix_tokens = 1
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        embed_cls = ConvPatchEmbed if embed_layer == "conv" else LinearPatchEmbed
        self.patch_embed = embed_cls(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if pos_embed == "sincos":
            self.pos_embed: nn.Module | nn.Parameter = SinCosPosEmbed(embed_dim, self.patch_embed.grid_size)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth, linear rule
        self.blocks = nn.Sequential(
            *[
                block_fn(dim=embed_dim, num_heads=num_heads, drop_path=dpr[i], **(block_kwargs or {}))
                for i in range(depth)
            ]
        )
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if final_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim) if fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # ----------------------------------------------------------------------------- init
    def init_weights_mae(self) -> None:
        """MAE initialisation: xavier-uniform linears and patch projection, N(0, 0.02) class token."""
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.data.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            trunc_normal_(self.pos_embed, std=0.02)

    # ----------------------------------------------------------------------------- timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay (tokens and a learned position table)."""
        return {"cls_token", "pos_embed"} if isinstance(self.pos_embed, nn.Parameter) else {"cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay (timm's contract): the stem, then one group per block."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The head module (``nn.Identity`` when ``num_classes`` is 0)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: GlobalPool | None = None) -> None:
        """A new head for ``num_classes`` (0: none, the pooled features are returned).

        Args:
            num_classes: classes of the new head, 0 to 10,000,000.
            global_pool: ``'token'`` (class token), ``'avg'`` (mean of patch tokens) or ``''`` (no pooling);
                ``None`` keeps the current one.

        Raises:
            ValueError: ``num_classes`` out of range or ``global_pool`` not one of the three.
        """
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = check_int("num_classes", num_classes, 0, 10_000_000)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # ----------------------------------------------------------------------------- declarations
    @property
    def task(self) -> str:
        """The Hub pipeline tag of what this model does: a classifier, or features without a head."""
        return "image-classification" if self.num_classes > 0 else "image-feature-extraction"

    def flops(self, grid_size: tuple[int, int], features_only: bool = False) -> dict[str, int]:
        """Matrix-product FLOPs of one image with a (gh, gw) patch grid, from each part's own ``flops``.

        Names: ``patch_embed``, ``encoder.<block component>`` (summed over blocks), ``head`` (on the
        class token / pooled token, or on every token with ``global_pool=''``) unless ``features_only``.
        Raises TypeError naming a block that declares no ``flops``.
        """
        n = self.num_prefix_tokens + grid_size[0] * grid_size[1]
        embed_flops = require(self.patch_embed, "flops", "patch embedding", "count FLOPs of")
        parts = [prefixed("patch_embed", embed_flops(grid_size))]
        for i, blk in enumerate(self.blocks):
            parts.append(prefixed("encoder", require(blk, "flops", f"encoder block {i}", "count FLOPs of")(n)))
        if not features_only and isinstance(self.head, nn.Linear):
            parts.append({"head": linear_flops(self.head, n if self.global_pool == "" else 1)})
        return merge(*parts)

    # ----------------------------------------------------------------------------- forward
    def position_table(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """The (1, 1 + gh * gw, d) position table for a patch grid."""
        if isinstance(self.pos_embed, SinCosPosEmbed):
            return self.pos_embed(grid_size)
        if grid_size == self.patch_embed.grid_size:
            return self.pos_embed
        if not self.dynamic_img_size:
            h, w = self.patch_embed.img_size
            p = self.patch_embed.patch_size
            raise ValueError(
                f"this model was built for {h}x{w} images and its position table is learned; got a "
                f"{grid_size[0] * p}x{grid_size[1] * p} image. Create it with img_size=... (positions are "
                "resampled) or dynamic_img_size=True"
            )
        return resample_abs_pos_embed(
            self.pos_embed, list(grid_size), old_size=list(self.patch_embed.grid_size), num_prefix_tokens=1
        )

    def embed(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, 1 + N, d) with class token and positions.

        Where ``mask`` (B, N) is 1 the patch's embedding is replaced by ``mask_token`` (1, 1, d)
        before the positions are added, as CRATE-MAE's encoder does.
        """
        grid = self.patch_embed.dynamic_grid(x)
        tokens = self.patch_embed(x)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1).bool(), mask_token.to(tokens.dtype), tokens)
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.position_table(grid)
        return self.pos_drop(tokens)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + N, d) through the block stack (with gradient checkpointing when enabled)."""
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, 1 + N, d): embedding, blocks, final norm."""
        return self.norm(self.forward_blocks(self.embed(x)))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + N, d) -> (B, d): the class token (``'token'``) or the mean of the patch tokens
        (``'avg'``); unchanged for ``''``.
        """
        if self.global_pool == "token":
            return x[:, 0]
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, 1 + N, d) -> logits (B, num_classes): pool, ``fc_norm``, dropout, head;
        ``pre_logits=True`` stops before the head (B, d).
        """
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes) (or pooled features when there is no head)."""
        return self.forward_head(self.forward_features(x))

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the norm / head), as timm's ViT does."""
        take_indices, max_index = take_block_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take_indices

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs of selected blocks, as timm's ViT returns them.

        Args:
            indices: ``None`` for all blocks, an int for the last n, or a list of block indices.
            norm: apply the final norm to each intermediate.
            stop_early: stop after the last requested block (only with ``intermediates_only``).
            output_fmt: ``'NCHW'`` (patch tokens as a feature map) or ``'NLC'`` (token rows).
            intermediates_only: return only the intermediates.
            return_prefix_tokens: also return the class token of each intermediate (as pairs).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = take_block_indices(len(self.blocks), indices)
        grid = self.patch_embed.dynamic_grid(x)
        x = self.embed(x)
        blocks = self.blocks if not (stop_early and intermediates_only) else self.blocks[: max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in take_indices:
                out = self.norm(x) if norm else x
                prefix, patches = out[:, : self.num_prefix_tokens], out[:, self.num_prefix_tokens :]
                if output_fmt == "NCHW":
                    patches = patches.reshape(x.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append((patches, prefix) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates
