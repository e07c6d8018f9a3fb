"""Contract-and-broadcast self-attention (CBSA) and the CBT layer: compression through a few representatives."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from .ista import ISTA

Pooling = Literal["official", "patch"]


class ContractBroadcastAttention(nn.Module):
    r"""Contract-and-broadcast self-attention (Wen, Huang, Li, NeurIPS 2025, arXiv 2509.16875).

    Tokens are rows: ``x`` is (B, N, d), split into h heads of p = d / h. Per head k::

        w = x U                                  (``qkv``: d x d, no bias)
        R = pool(w)                              (m = 8 x 8 = 64 representatives: average pooling on the grid)
        A = softmax_rows(R w^T / sqrt(p))        (m x N: contraction, each representative attends to the tokens)
        R <- R + alpha_k A w
        S = softmax(R R^T / sqrt(p)) R           (m x p: the representatives compress among themselves)
        dx = beta_k A^T S                        (N x p: broadcast back to the tokens)
        out = [dx_1, ..., dx_h] W_out + b_out    (``proj``)

    Linear in N: two (m x N x p) products per head. As the authors' ``CBSA`` (``attn_layers.py``): their
    ``proj``, ``step_rep``, ``step_x``, ``to_out`` are our ``qkv``, ``alpha``, ``beta``, ``proj``.

    ``pooling`` says which tokens form the grid that is pooled:

    - ``'official'``: the authors' rule, which their weights depend on. With N tokens it takes the first
      N - 1 (``w[:, :-1]``) as a square grid of side sqrt(N - 1): for a class-token-first sequence the grid
      holds the class token and drops the last patch. Needs a square patch grid.
    - ``'patch'`` (corrected): the patch tokens only (after ``num_prefix_tokens``), on the grid
      ``grid_size`` (any H x W), or a square one inferred from the token count.

    Args:
        dim, num_heads: width d and heads h (d divisible by h).
        grid_size: the patch grid (gh, gw) of the model, for ``'patch'`` pooling (and FX tracing).
        pool_size: the grid of representatives (official 8 x 8, m = 64).
        pooling: ``'official'`` or ``'patch'``.
        num_prefix_tokens: tokens before the patches (the class token) that ``'patch'`` pooling skips.
        attn_drop, proj_drop: dropout on A and after ``proj`` (the authors have none).

    Raises:
        ValueError: bad arguments; in forward, tokens that do not form the grid the pooling needs.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        grid_size: tuple[int, int] = (14, 14),
        pool_size: tuple[int, int] = (8, 8),
        pooling: Pooling = "official",
        num_prefix_tokens: int = 1,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if pooling not in ("official", "patch"):
            raise ValueError(f"pooling must be 'official' or 'patch', got {pooling!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.grid_size = tuple(grid_size)
        self.pool_size = tuple(pool_size)
        self.pooling = pooling
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, dim, bias=False)  # U
        self.alpha = nn.Parameter(torch.randn(num_heads, 1, 1))  # contraction step, as the authors draw it
        self.beta = nn.Parameter(torch.randn(num_heads, 1, 1))  # broadcast step
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def num_representatives(self) -> int:
        """m, the number of representatives (``pool_size[0] * pool_size[1]``; official 64)."""
        return self.pool_size[0] * self.pool_size[1]

    def _grid(self, x: torch.Tensor, grid_size: tuple[int, int] | None) -> tuple[torch.Tensor, tuple[int, int]]:
        """The tokens that are pooled and their grid."""
        n = x.shape[1]
        if self.pooling == "official":
            tokens = x[:, :-1]
            if isinstance(n, torch.fx.Proxy):
                return tokens, self.grid_size
            side = math.isqrt(n - 1)
            if side * side != n - 1:
                raise ValueError(
                    f"pooling='official' takes the first N - 1 of N tokens as a square grid; {n} tokens give {n - 1}, "
                    "not a square. Use a square image, or pooling='patch' (any grid)"
                )
            return tokens, (side, side)
        tokens = x[:, self.num_prefix_tokens :]
        if isinstance(n, torch.fx.Proxy):
            return tokens, grid_size or self.grid_size
        count = n - self.num_prefix_tokens
        if grid_size is not None:
            if grid_size[0] * grid_size[1] != count:
                raise ValueError(f"{count} patch tokens do not form the grid_size {tuple(grid_size)} given")
            return tokens, tuple(grid_size)
        if math.prod(self.grid_size) == count:
            return tokens, self.grid_size
        side = math.isqrt(count)
        if side * side != count:
            raise ValueError(
                f"{count} patch tokens do not form the grid {self.grid_size} nor a square one; "
                "pass grid_size=(H, W) of the patch grid"
            )
        return tokens, (side, side)

    def subspaces(self) -> torch.Tensor:
        """The heads' bases ``U_k`` as a (h, d, p) tensor (token rows map as ``x @ U_k``)."""
        return self.qkv.weight.t().unflatten(1, (self.num_heads, self.head_dim)).permute(1, 0, 2)

    def flops(self, num_tokens: int) -> dict[str, int]:
        """Matrix-product FLOPs for N tokens and m representatives (``whitebox.layers.declare``): ``qkv`` and
        ``proj`` 2 N d^2 each; ``contract`` (R w^T and A w) 4 m N d; ``compress`` (among the representatives)
        4 m^2 d; ``broadcast`` (A^T S) 2 N m d. Pooling is averaging, not counted."""
        n, d, m = num_tokens, self.qkv.in_features, self.num_representatives
        return {
            "qkv": 2 * n * d * self.qkv.out_features,
            "contract": 4 * m * n * d,
            "compress": 4 * m * m * d,
            "broadcast": 2 * n * m * d,
            "proj": 2 * n * d * self.proj.out_features,
        }

    def attention_maps(self, x: torch.Tensor):  # -> whitebox.layers.declare.AttentionMaps
        """The contraction A (B, h, m, N) of ``x`` (B, N, d): how each representative gathers the tokens."""
        from .declare import AttentionMaps

        return AttentionMaps(maps=self(x, return_attention=True)[1], queries="other", name="contraction")

    def representatives(self, w: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The m pooled representatives (B, m, d) of the projected tokens ``w`` (B, N, d)."""
        tokens, (gh, gw) = self._grid(w, grid_size)
        grid = tokens.reshape(w.shape[0], gh, gw, w.shape[-1]).permute(0, 3, 1, 2)
        return F.adaptive_avg_pool2d(grid, self.pool_size).flatten(2).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, grid_size: tuple[int, int] | None = None, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """CBSA of ``x`` (B, N, d) -> (B, N, d); with ``return_attention`` also the contraction A (B, h, m, N)."""
        w = self.qkv(x)
        rep = self.representatives(w, grid_size).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        w = w.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, h, N, p)
        attn = torch.softmax(rep @ w.transpose(-2, -1) * self.scale, dim=-1)  # A: (B, h, m, N)
        dropped = self.attn_drop(attn)  # one mask for both uses of A
        rep = rep + self.alpha * (dropped @ w)
        compressed = torch.softmax(rep @ rep.transpose(-2, -1) * self.scale, dim=-1) @ rep  # S: (B, h, m, p)
        out = self.beta * (dropped.transpose(-2, -1) @ compressed)  # (B, h, N, p)
        out = self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))
        return (out, attn) if return_attention else out

    def extra_repr(self) -> str:
        """``pooling``, ``pool_size`` and ``grid_size``, shown by ``print(module)``."""
        return f"pooling={self.pooling!r}, pool_size={self.pool_size}, grid_size={self.grid_size}"


class ContractBroadcastBlock(nn.Module):
    r"""The CBT layer: compress with CBSA, then sparsify with one ISTA step (as CRATE's layer, MSSA -> CBSA)::

        z  = x + CBSA(LN_1(x))
        x' = ISTA(LN_2(z))          (no residual around ISTA; eta 0.1, lambda 0.1)

    The authors' ``Transformer`` in ``CBSA_image_classification/models.py`` (``PreNorm``, LayerNorm eps 1e-5).
    ``drop_path`` applies to the CBSA branch only.

    Args:
        dim, num_heads: width d and heads h (d divisible by h).
        eta, lambd: ISTA step size and threshold (official 0.1 and 0.1).
        grid_size, pool_size, pooling, num_prefix_tokens: as ``ContractBroadcastAttention``.
        attn_drop, proj_drop: CBSA dropouts (the authors have none).
        drop_path: stochastic-depth rate of the CBSA branch.
        norm_eps: LayerNorm epsilon (official 1e-5).

    Raises:
        ValueError: bad arguments (from ``ContractBroadcastAttention``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        eta: float = 0.1,
        lambd: float = 0.1,
        grid_size: tuple[int, int] = (14, 14),
        pool_size: tuple[int, int] = (8, 8),
        pooling: Pooling = "official",
        num_prefix_tokens: int = 1,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ContractBroadcastAttention(
            dim, num_heads, grid_size, pool_size, pooling, num_prefix_tokens, attn_drop, proj_drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.ista = ISTA(dim, eta=eta, lambd=lambd)

    def flops(self, num_tokens: int) -> dict[str, int]:
        """CBSA's FLOPs under ``attn.`` and ISTA's two products (4 N d^2) as ``ista``."""
        d = self.ista.weight.shape[0]
        return {**{f"attn.{k}": v for k, v in self.attn.flops(num_tokens).items()}, "ista": 4 * num_tokens * d * d}

    def probes(self):  # -> whitebox.layers.declare.BlockProbes
        """Compression read around the CBSA step (block input, ``norm2`` input); maps: the contraction A."""
        from .declare import BlockProbes, Probe

        return BlockProbes(
            compression=(Probe(self, "input"), Probe(self.norm2, "input")),
            subspaces=self.attn.subspaces,
            maps=self.attn,
        )

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``x = x + CBSA(LN(x)); x = ISTA(LN(x))``: tokens (B, N, d) -> (B, N, d).

        ``grid_size`` is the patch grid of this input for ``'patch'`` pooling (default: the block's own).
        """
        x = x + self.drop_path(self.attn(self.norm1(x), grid_size))
        return self.ista(self.norm2(x))
