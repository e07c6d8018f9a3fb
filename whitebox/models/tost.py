"""ToST: the Token Statistics Transformer for vision (Wu et al., ICLR 2025, arXiv 2412.17810).

XCiT's network with token-statistics self-attention (``whitebox.layers.TokenStatisticsAttention``) in
place of its attention, as the authors' ``tost_vision/tost.py`` builds it: a convolutional patch stem
with BatchNorm, Fourier positions, ``depth`` blocks ``x = x + g1 * TSSA(LN(x)); x = x + g2 * MLP(LN(x))``
on the patch tokens (LayerScale g, init 1.0 at depth 12 and 1e-5 at depth 24), then a class token and two
class-attention blocks (CaiT), a final LayerNorm and a linear head on the class token. Attention cost is
linear in the number of tokens. The authors have published no weights (ToST#2); the architectures load
their key layout (``checkpoint_filter_fn``) so that their files work when they appear.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import checkpoint_seq
from torch import nn

from registry import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import ConvStemPatchEmbed, TokenStatisticsAttention, TokenStatisticsBlock, adapt_stem_channels
from ..layers.conv_stem import check_stem_patch
from ._adapt import adapt_state_dict, clean_state_dict, rename_all
from ._args import MAX_DEPTH, check_float, check_image_size, check_int, check_rates, check_width, forwarded, forwards_to
from ._encoder import GlobalPool, TokenEncoder, take_block_indices, use_conv_stem
from ._official import cbsa_repo_to_native

__all__ = ["ClassAttentionBlock", "FourierPosEmbed", "ToST", "ToSTBlock", "WhiteBoxToST"]


class FourierPosEmbed(nn.Module):
    r"""DETR / XCiT Fourier positions, projected by a 1x1 convolution (``token_projection``).

    For a patch grid (H, W), with y = 2 pi i / (H + 1e-6) for rows i = 1..H (x likewise for columns) and
    t_k = 10000^(2 floor(k / 2) / 32), k = 0..31: features ``[sin(y / t_0), cos(y / t_1), sin(y / t_2), ...,
    sin(x / t_0), cos(x / t_1), ...]`` (64 channels) -> Linear(64, d) with bias. Returns (1, H * W, d).
    """

    def __init__(self, dim: int, hidden_dim: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)

    def forward(self, grid_size: tuple[int, int]) -> torch.Tensor:
        h, w = grid_size
        device = self.token_projection.weight.device
        scale, eps = 2 * math.pi, 1e-6
        y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
        x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
        k = torch.arange(self.hidden_dim, dtype=torch.float32, device=device)
        t = self.temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / self.hidden_dim)

        def features(pos: torch.Tensor) -> torch.Tensor:  # (L,) -> (L, hidden): sin on even k, cos on odd k
            angles = pos[:, None] / t
            return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

        fy = features(y)[:, None, :].expand(h, w, -1)
        fx = features(x)[None, :, :].expand(h, w, -1)
        pos = torch.cat((fy, fx), dim=-1).permute(2, 0, 1)[None]  # (1, 2 * hidden, H, W)
        return self.token_projection(pos).flatten(2).transpose(1, 2)

    def flops(self, grid_size: tuple[int, int]) -> dict[str, int]:
        """The 1x1 projection's FLOPs for a (gh, gw) grid (the sines and cosines are not matrix products)."""
        conv = self.token_projection
        return {"": 2 * grid_size[0] * grid_size[1] * conv.in_channels * conv.out_channels}


def _mlp_flops(mlp: Mlp, rows: int) -> int:
    return 2 * rows * (mlp.fc1.in_features * mlp.fc1.out_features + mlp.fc2.in_features * mlp.fc2.out_features)


class ToSTBlock(nn.Module):
    r"""ToST layer with LayerScale: ``x = x + g1 * TSSA(LN_1(x)); x = x + g2 * MLP(LN_2(x))`` (GELU MLP).

    The authors' ``Block`` (``gamma1``, ``gamma2`` init ``layer_scale_init``; LayerNorm eps 1e-6).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_scale_init: float = 1.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = TokenStatisticsAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.gamma1 = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.gamma2 = nn.Parameter(layer_scale_init * torch.ones(dim))

    def flops(self, num_tokens: int) -> dict[str, int]:
        """TSSA's FLOPs under ``attn.`` and the MLP's (``mlp``), for N tokens (``whitebox.layers.declare``)."""
        attn = {f"attn.{k}": v for k, v in self.attn.flops(num_tokens).items()}
        return {**attn, "mlp": _mlp_flops(self.mlp, num_tokens)}

    def probes(self):  # -> whitebox.layers.declare.BlockProbes
        """Compression read around the TSSA step (block input, ``norm2`` input); maps: the memberships Pi."""
        from ..layers.declare import BlockProbes, Probe

        return BlockProbes(
            compression=(Probe(self, "input"), Probe(self.norm2, "input")),
            subspaces=self.attn.subspaces,
            maps=self.attn,
            num_prefix_tokens=0,  # TSSA sees the patch tokens only; the class token joins later
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))


class ClassAttention(nn.Module):
    r"""CaiT class attention: only the class token (first) queries; the other rows pass through unchanged.

    ``q, k, v = x W_qkv``; ``c = softmax(q_0 k^T / sqrt(p)) v`` per head; returns ``[c W_out + b, x_1..x_N]``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def class_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The class token's attention over all tokens (B, h, N), and the values (B, h, N, p)."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        return torch.softmax((q[:, :, :1] * k).sum(dim=-1) * self.scale, dim=-1), v

    def attention_maps(self, x: torch.Tensor):  # -> whitebox.layers.declare.AttentionMaps
        """The class token's attention (B, h, 1, N) over the tokens of ``x``."""
        from ..layers.declare import AttentionMaps

        return AttentionMaps(maps=self.class_attention(x)[0].unsqueeze(2), queries="other", name="class attention")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn, v = self.class_attention(x)
        cls = (self.attn_drop(attn).unsqueeze(2) @ v).transpose(1, 2).flatten(2)  # (B, 1, d)
        return torch.cat([self.proj_drop(self.proj(cls)), x[:, 1:]], dim=1)


class ClassAttentionBlock(nn.Module):
    r"""CaiT / XCiT class-attention block, as the authors' ``ClassAttentionBlock`` computes it::

        x = x + g1 * CA(LN_1(x))        (patch rows: x_i + g1 * LN_1(x)_i, since CA passes them through)
        x = LN_2(x)                     (all tokens with ``tokens_norm``, the ToST models; else the class token)
        x = x + [g2 * MLP(x_0), x_1, ..., x_N]

    The last line doubles the patch rows. The next block reads them through a LayerNorm, which is
    scale-invariant, so the class token (and the logits) barely notice; the patch tokens that
    ``forward_features`` returns do, and they are kept equal to the authors'.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_scale_init: float = 1.0,
        tokens_norm: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ClassAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.gamma1 = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.gamma2 = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.tokens_norm = tokens_norm

    def flops(self, num_tokens: int) -> dict[str, int]:
        """FLOPs for N tokens: ``qkv`` on every token (as the authors compute it), the class token's scores
        and values (2 N d each), ``proj`` and ``mlp`` on the class token only."""
        n, d = num_tokens, self.attn.qkv.in_features
        return {
            "attn.qkv": 2 * n * d * self.attn.qkv.out_features,
            "attn.scores": 2 * n * d,
            "attn.values": 2 * n * d,
            "attn.proj": 2 * d * self.attn.proj.out_features,
            "mlp": _mlp_flops(self.mlp, 1),
        }

    def probes(self):  # -> whitebox.layers.declare.BlockProbes
        """No compression step (CaiT's class attention); maps: the class token's attention."""
        from ..layers.declare import BlockProbes

        return BlockProbes(maps=self.attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x))
        x = self.norm2(x) if self.tokens_norm else torch.cat([self.norm2(x[:, :1]), x[:, 1:]], dim=1)
        return x + torch.cat([self.gamma2 * self.mlp(x[:, :1]), x[:, 1:]], dim=1)


class ToST(nn.Module):
    """ToST vision backbone / classifier with timm's interface.

    Args:
        img_size, patch_size, in_chans: input geometry (patch 8 or 16: the stem's stages). Any image size
            that tiles into patches runs: the positions are computed, not learned.
        num_classes: classifier width; 0 for a backbone that returns pooled features.
        global_pool: ``'token'`` (class token, official), ``'avg'`` (mean of patch tokens) or ``''``.
        embed_dim, depth, num_heads: width d, number of TSSA layers L, heads h.
        mlp_ratio, qkv_bias: MLP hidden width / d (4) and the bias on TSSA's projection (official True).
        layer_scale_init: LayerScale init (official 1.0 at depth 12, 1e-5 at depth 24).
        cls_attn_layers: class-attention blocks after the TSSA layers (official 2).
        use_pos_embed: add Fourier positions (official True).
        tokens_norm: class-attention blocks normalise all tokens (official True).
        drop_rate, pos_drop_rate, attn_drop_rate, proj_drop_rate: dropout (official 0).
        drop_path_rate: stochastic depth, the SAME rate for every TSSA layer (XCiT's and the authors' rule).

    Raises:
        ValueError / TypeError: an argument outside its allowed range, named with the range.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: GlobalPool = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_scale_init: float = 1.0,
        cls_attn_layers: int = 2,
        use_pos_embed: bool = True,
        tokens_norm: bool = True,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        check_image_size(img_size, patch_size)
        check_stem_patch(patch_size)
        check_int("in_chans", in_chans, 1, 1024)
        check_int("num_classes", num_classes, 0, 10_000_000)
        check_width(embed_dim, num_heads)
        if embed_dim < patch_size // 2:
            raise ValueError(f"embed_dim must be at least {patch_size // 2} for the stem, got {embed_dim}")
        check_int("depth", depth, 1, MAX_DEPTH)
        check_int("cls_attn_layers", cls_attn_layers, 0, MAX_DEPTH)
        check_float("mlp_ratio", mlp_ratio, 0.0, 64.0, open_low=True)
        check_float("layer_scale_init", layer_scale_init, 0.0, open_low=True)
        check_rates(
            drop_rate=drop_rate,
            pos_drop_rate=pos_drop_rate,
            attn_drop_rate=attn_drop_rate,
            proj_drop_rate=proj_drop_rate,
            drop_path_rate=drop_path_rate,
        )
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        super().__init__()
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1  # in the output; the TSSA layers see patch tokens only
        self.grad_checkpointing = False

        self.patch_embed = ConvStemPatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.pos_embed = FourierPosEmbed(embed_dim) if use_pos_embed else None
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        common = dict(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        drops = dict(layer_scale_init=layer_scale_init, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate)
        self.blocks = nn.Sequential(*[ToSTBlock(**common, **drops, drop_path=drop_path_rate) for _ in range(depth)])
        self.cls_attn_blocks = nn.Sequential(
            *[ClassAttentionBlock(**common, **drops, tokens_norm=tokens_norm) for _ in range(cls_attn_layers)]
        )
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """The authors' initialisation: linears trunc-normal(0.02) with zero bias, LayerNorms 1 / 0, class token
        trunc-normal(0.02); convolutions, BatchNorm, temperatures (1) and LayerScale as constructed."""
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------- timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The class token and every TSSA temperature (tau): no weight decay."""
        return {"cls_token"} | {n for n, _ in self.named_parameters() if n.endswith("attn.temperature")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay (timm's contract): the stem, the TSSA blocks, then the
        class-attention blocks and the final norm.
        """
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=r"^blocks\.(\d+)",
            cls_attn_blocks=[(r"^cls_attn_blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the TSSA blocks' activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The head module (``nn.Identity`` when ``num_classes`` is 0)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: GlobalPool | None = None) -> None:
        """A new head for ``num_classes`` (0: none), optionally a new ``global_pool``.

        Raises:
            ValueError: ``num_classes`` out of range or ``global_pool`` not 'token', 'avg' or ''.
        """
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = check_int("num_classes", num_classes, 0, 10_000_000)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def flops(self, grid_size: tuple[int, int], features_only: bool = False) -> dict[str, int]:
        """Matrix-product FLOPs of one image with a (gh, gw) patch grid (``whitebox.flops.count_flops``).

        Names: ``patch_embed``, ``pos_embed``, ``encoder.<component>`` (the TSSA layers on N patch tokens,
        summed), ``class_attention.<component>`` (on 1 + N tokens), ``head`` unless ``features_only``.
        """
        n = grid_size[0] * grid_size[1]
        out: dict[str, int] = {"patch_embed": self.patch_embed.flops(grid_size)[""]}
        if self.pos_embed is not None:
            out["pos_embed"] = self.pos_embed.flops(grid_size)[""]
        for stage, blocks, tokens in (("encoder", self.blocks, n), ("class_attention", self.cls_attn_blocks, n + 1)):
            for blk in blocks:
                for k, v in blk.flops(tokens).items():
                    out[f"{stage}.{k}"] = out.get(f"{stage}.{k}", 0) + v
        if not features_only and isinstance(self.head, nn.Linear):
            out["head"] = 2 * (n + 1 if self.global_pool == "" else 1) * self.head.in_features * self.head.out_features
        return out

    def analysis_stacks(self) -> dict[str, nn.Sequential]:
        """The stacks the layer-wise analysis walks, in forward order: the TSSA layers, then class attention."""
        return {"encoder": self.blocks, "class_attention": self.cls_attn_blocks}

    # ----------------------------------------------------------------------------- forward
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) -> patch tokens with positions (B, N, d), and the patch grid."""
        grid = self.patch_embed.dynamic_grid(x)
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed(grid).to(x.dtype)
        return self.pos_drop(x), grid

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, d) -> class token prepended, through the class-attention blocks (B, 1 + N, d)."""
        x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.cls_attn_blocks:
            x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> all tokens after the final norm (B, 1 + N, d), class token first."""
        x, _ = self.embed(x)
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(self.forward_cls(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, 1 + N, d) -> logits (B, num_classes): pool (class token or mean of patch tokens),
        ``fc_norm``, dropout, head; ``pre_logits=True`` stops before the head (B, d).
        """
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes) (or pooled features when there is no head)."""
        return self.forward_head(self.forward_features(x))

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the TSSA layers after the last of ``indices``; with ``prune_head`` also the class attention."""
        take_indices, max_index = take_block_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.cls_attn_blocks = nn.Sequential()
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
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs of selected TSSA layers (patch tokens; the class token enters after them), as timm's XCiT.

        Args:
            indices: ``None`` for all layers, an int for the last n, or a list of layer indices.
            norm: apply the final norm to each intermediate.
            stop_early: stop after the last requested layer (only with ``intermediates_only``).
            output_fmt: ``'NCHW'`` (a feature map) or ``'NLC'`` (token rows).
            intermediates_only: return only the intermediates.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = take_block_indices(len(self.blocks), indices)
        x, grid = self.embed(x)
        blocks = self.blocks if not (stop_early and intermediates_only) else self.blocks[: max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in take_indices:
                out = self.norm(x) if norm else x
                if output_fmt == "NCHW":
                    out = out.reshape(x.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append(out)
        if intermediates_only:
            return intermediates
        return self.norm(self.forward_cls(x)), intermediates


@forwards_to(TokenEncoder, fixed=("block_fn", "block_kwargs", "embed_layer", "pos_embed", "final_norm", "fc_norm"))
class WhiteBoxToST(TokenEncoder):
    """A fully white-box ToST: CRATE's network with TSSA for MSSA (``whitebox.layers.TokenStatisticsBlock``:
    ``x = x + TSSA(LN(x)); x = ISTA(LN(x))``), no MLP, no LayerScale, no class attention.

    The harness is the one the CBSA authors trained their ToST baseline in (``ToST_tiny`` / ``ToST_small`` of
    ``CBSA_image_classification/models.py``): XCiT's convolutional stem with BatchNorm, a class token and a
    learned position table, a head ``LN + Linear`` on the class token. No weights are published.

    Keyword arguments only; those not listed in ``__init__`` go to ``TokenEncoder`` (``inspect.signature``
    lists them all).

    Args:
        img_size, patch_size, in_chans: input geometry (patch 8 or 16: the stem's stages).
        num_classes, global_pool: the head (``'token'``, ``'avg'`` or ``''``).
        embed_dim, depth, num_heads: width d, layers L, heads h.
        eta, lambd: ISTA step size and threshold (0.1 and 0.1).
        qkv_bias: a bias on TSSA's projection (the authors' baseline: none).
        drop_rate, pos_drop_rate, attn_drop_rate, proj_drop_rate, drop_path_rate: regularisation (0).
        dynamic_img_size: accept other image sizes by resampling the position table.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 384,
        num_heads: int = 6,
        eta: float = 0.1,
        lambd: float = 0.1,
        qkv_bias: bool = False,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        check_stem_patch(forwarded(kwargs, TokenEncoder, "patch_size"))
        check_float("eta", eta, 0.0, open_low=True)
        check_float("lambd", lambd, 0.0)
        check_rates(attn_drop_rate=attn_drop_rate, proj_drop_rate=proj_drop_rate)
        super().__init__(
            block_fn=TokenStatisticsBlock,
            embed_dim=embed_dim,
            num_heads=num_heads,
            embed_layer="conv",
            pos_embed="learn",
            final_norm=False,  # the head's LN (eps 1e-5) is the only final norm
            fc_norm=True,
            block_kwargs=dict(
                eta=eta, lambd=lambd, qkv_bias=qkv_bias, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate
            ),
            **kwargs,
        )
        use_conv_stem(self)  # the authors' harness: XCiT's stem, N(0, 1) class token and positions

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Class token, position table and every TSSA temperature (tau)."""
        return super().no_weight_decay() | {n for n, _ in self.named_parameters() if n.endswith("attn.temperature")}


# ----------------------------------------------------------------------------- the authors' layouts
def is_official_tost(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("pos_embeder.") or ".attn.to_out.0." in k or k.endswith(".attn.temp") for k in state_dict)


def tost_official_to_native(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' keys (``tost_vision/tost.py``: ``pos_embeder``, ``blocks.i.attn.{temp,to_out.0}``) -> ours.

    Everything else (stem ``patch_embed.proj.{0,2,4,6}.{0,1}``, ``blocks``, ``cls_attn_blocks``, ``norm``,
    ``head``, ``cls_token``) has the same name in both.
    """
    own = re.compile(
        r"(patch_embed\.proj\.\d+\.[01]\.\w+|cls_token|norm\.(weight|bias)|head\.(weight|bias)"
        r"|(blocks|cls_attn_blocks)\.\d+\.(norm[12]\.(weight|bias)|gamma[12]|mlp\.fc[12]\.(weight|bias)"
        r"|attn\.(qkv|proj)\.(weight|bias)))"
    )

    def rename(k: str) -> str | None:
        if k.startswith("pos_embeder.token_projection."):
            return "pos_embed." + k.removeprefix("pos_embeder.")
        if m := re.fullmatch(r"blocks\.(\d+)\.attn\.temp", k):
            return f"blocks.{m.group(1)}.attn.temperature"
        if m := re.fullmatch(r"blocks\.(\d+)\.attn\.to_out\.0\.(weight|bias)", k):
            return f"blocks.{m.group(1)}.attn.proj.{m.group(2)}"
        return k if own.fullmatch(k) else None

    return rename_all(state_dict, rename, "official ToST")


def whitebox_tost_official_to_native(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The CBSA authors' white-box ToST keys (``models.py``: ``to_patch_embedding.proj``, ``pos_embedding``,
    ``transformer.layers.i.{0,1}`` with ``PreNorm`` around ``TSSA`` / ``ISTA``, ``mlp_head``) -> ``WhiteBoxToST``."""
    attn = {
        "qkv.weight": "attn.qkv.weight",
        "qkv.bias": "attn.qkv.bias",
        "temp": "attn.temperature",
        "to_out.weight": "attn.proj.weight",
        "to_out.bias": "attn.proj.bias",
    }
    return cbsa_repo_to_native(state_dict, attn, "official white-box ToST")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The authors' ToST layout (their training checkpoints keep it under ``'model'``), the CBSA authors'
    white-box ToST layout, or ours -> ``model``, adapted to its ``num_classes``, ``in_chans`` (and, with a
    learned table, ``img_size``); a model without positions drops theirs."""
    sd = clean_state_dict(state_dict)
    if any(k.startswith(("transformer.layers.", "to_patch_embedding.")) for k in sd):
        sd = whitebox_tost_official_to_native(sd)
    elif is_official_tost(sd):
        sd = tost_official_to_native(sd)
    if getattr(model, "pos_embed", None) is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("pos_embed.")}  # theirs always builds one
    return adapt_state_dict(adapt_stem_channels(sd, model), model)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    defaults = dict(
        input_size=(3, 224, 224),
        fixed_input_size=False,  # Fourier positions: any size that tiles into patches
        interpolation="bicubic",  # the authors' DeiT / XCiT evaluation: Resize(256, bicubic) + CenterCrop(224)
        crop_pct=0.875,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        num_classes=1000,
        first_conv="patch_embed.proj.0.0",
        classifier="head",
        license="apache-2.0",
        paper_name="Token Statistics Transformer: Linear-Time Attention via Variational Rate Reduction (ICLR 2025)",
        paper_ids="arXiv:2412.17810",
        origin_url="https://github.com/RobinWu218/ToST",
        notes=(
            "No weights are published (RobinWu218/ToST#2); architecture only, loading the authors' key layout. "
            "Licence: tost_vision/LICENSE.txt is Apache-2.0 (from XCiT); the repository root LICENSE is MIT.",
        ),
    )
    return {**defaults, **kwargs}


_SIZES = {  # name -> (embed_dim, num_heads)
    "tiny": (192, 4),
    "small": (384, 8),
    "medium": (512, 8),
    "large": (768, 16),
}
_VARIANTS = [
    (size, depth, patch)
    for patch in (16, 8)
    for size, depth in [("tiny", 12), ("small", 12), ("tiny", 24), ("small", 24), ("medium", 24), ("large", 24)]
]
_WHITEBOX_NOTE = (
    "Fully white-box ToST (TSSA + ISTA, no class attention) in the harness of the CBSA authors' ToST baseline "
    "(QishuaiWen/CBSA, CBSA_image_classification/models.py, MIT); no weights are published.",
)
default_cfgs = generate_default_cfgs(
    {f"tost_cab_{s}_{d}_p{p}": _cfg() for s, d, p in _VARIANTS}
    | {
        f"tost_ista_{s}_patch16": _cfg(
            fixed_input_size=True, interpolation="bilinear", license="mit", notes=_WHITEBOX_NOTE
        )
        for s in ("tiny", "small")
    }
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> ToST:
    size, depth, patch = re.fullmatch(r"tost_cab_(\w+)_(\d+)_p(\d+)", variant).groups()
    dim, heads = _SIZES[size]
    defaults = dict(patch_size=int(patch), embed_dim=dim, depth=int(depth), num_heads=heads)
    defaults["layer_scale_init"] = 1.0 if int(depth) == 12 else 1e-5  # the authors' eta
    return build_model_with_cfg(
        ToST, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **{**defaults, **kwargs}
    )


@register_model
def tost_cab_tiny_12_p16(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-T12/16 (d 192, 4 heads, 12 TSSA layers, LayerScale 1.0)."""
    return _create("tost_cab_tiny_12_p16", pretrained, **kwargs)


@register_model
def tost_cab_small_12_p16(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-S12/16 (d 384, 8 heads, 12 TSSA layers, LayerScale 1.0)."""
    return _create("tost_cab_small_12_p16", pretrained, **kwargs)


@register_model
def tost_cab_tiny_24_p16(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-T24/16 (d 192, 4 heads, 24 TSSA layers, LayerScale 1e-5)."""
    return _create("tost_cab_tiny_24_p16", pretrained, **kwargs)


@register_model
def tost_cab_small_24_p16(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-S24/16 (d 384, 8 heads, 24 TSSA layers, LayerScale 1e-5)."""
    return _create("tost_cab_small_24_p16", pretrained, **kwargs)


@register_model
def tost_cab_medium_24_p16(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-M24/16 (d 512, 8 heads, 24 TSSA layers, LayerScale 1e-5)."""
    return _create("tost_cab_medium_24_p16", pretrained, **kwargs)


@register_model
def tost_cab_large_24_p16(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-L24/16 (d 768, 16 heads, 24 TSSA layers, LayerScale 1e-5)."""
    return _create("tost_cab_large_24_p16", pretrained, **kwargs)


@register_model
def tost_cab_tiny_12_p8(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-T12/8 (d 192, 4 heads, 12 TSSA layers, LayerScale 1.0)."""
    return _create("tost_cab_tiny_12_p8", pretrained, **kwargs)


@register_model
def tost_cab_small_12_p8(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-S12/8 (d 384, 8 heads, 12 TSSA layers, LayerScale 1.0)."""
    return _create("tost_cab_small_12_p8", pretrained, **kwargs)


@register_model
def tost_cab_tiny_24_p8(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-T24/8 (d 192, 4 heads, 24 TSSA layers, LayerScale 1e-5)."""
    return _create("tost_cab_tiny_24_p8", pretrained, **kwargs)


@register_model
def tost_cab_small_24_p8(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-S24/8 (d 384, 8 heads, 24 TSSA layers, LayerScale 1e-5)."""
    return _create("tost_cab_small_24_p8", pretrained, **kwargs)


@register_model
def tost_cab_medium_24_p8(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-M24/8 (d 512, 8 heads, 24 TSSA layers, LayerScale 1e-5)."""
    return _create("tost_cab_medium_24_p8", pretrained, **kwargs)


@register_model
def tost_cab_large_24_p8(pretrained: bool = False, **kwargs: Any) -> ToST:
    """ToST-L24/8 (d 768, 16 heads, 24 TSSA layers, LayerScale 1e-5)."""
    return _create("tost_cab_large_24_p8", pretrained, **kwargs)


def _create_whitebox(variant: str, pretrained: bool, defaults: dict[str, Any], **kwargs: Any) -> WhiteBoxToST:
    return build_model_with_cfg(
        WhiteBoxToST, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **{**defaults, **kwargs}
    )


@register_model
def tost_ista_tiny_patch16(pretrained: bool = False, **kwargs: Any) -> WhiteBoxToST:
    """White-box ToST-T/16: TSSA + ISTA layers (d 192, 3 heads, 12 layers), the CBSA authors' ``ToST_tiny``."""
    return _create_whitebox("tost_ista_tiny_patch16", pretrained, dict(embed_dim=192, depth=12, num_heads=3), **kwargs)


@register_model
def tost_ista_small_patch16(pretrained: bool = False, **kwargs: Any) -> WhiteBoxToST:
    """White-box ToST-S/16: TSSA + ISTA layers (d 384, 6 heads, 12 layers), the CBSA authors' ``ToST_small``."""
    return _create_whitebox("tost_ista_small_patch16", pretrained, dict(embed_dim=384, depth=12, num_heads=6), **kwargs)
