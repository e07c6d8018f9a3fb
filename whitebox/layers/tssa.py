"""Token-statistics self-attention (TSSA): ToST's compression step, linear in the number of tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from .ista import ISTA


def _check(dim: int, num_heads: int) -> None:
    if dim % num_heads != 0:
        raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}); each head takes dim / num_heads")


class TokenStatisticsAttention(nn.Module):
    r"""Token-statistics self-attention (Wu et al., ToST, ICLR 2025, arXiv 2412.17810, Eq. 10-11).

    Tokens are rows: ``x`` is (B, N, d), split into h heads of p = d / h features. Per head k::

        w        = x W + b                                   (``qkv``: one d x d map, q = k = v = w)
        w_n      = w / ||w||                                 (each feature column normalised over the N tokens)
        Pi[k, i] = softmax_k(tau_k * sum_j w_n[k, i, j]^2)   (softmax over the HEADS: token i's membership)
        pi~[k]   = Pi[k] / (sum_i Pi[k, i] + 1e-8)
        m[k, j]  = sum_i pi~[k, i] * w[k, i, j]^2            (second moment of feature j in head k)
        a[k, i]  = -(Pi[k, i] * w[k, i]) / (1 + m[k])
        out      = [a_1, ..., a_h] W_out + b_out             (``proj``)

    ``tau`` (``temperature``, shape (h, 1), init 1) takes no weight decay. No N x N matrix is formed:
    cost 2 N d^2 + O(N d). Computed as the authors' ``AttentionTSSA`` (``tost_vision/tost.py``) computes
    it: their ``qkv``, ``temp`` and ``to_out.0`` are our ``qkv``, ``temperature`` and ``proj``.

    Args:
        dim: token width d.
        num_heads: number of heads h; ``dim`` must be divisible by it.
        qkv_bias: bias on ``qkv`` (the ToST vision models have one; the class default is without).
        attn_drop: dropout on the factor ``1 / (1 + m)`` (official default 0).
        proj_drop: dropout after ``proj``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.
    """

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        _check(dim, num_heads)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim, bias=qkv_bias)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1))
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``w`` split into heads: (B, N, d) -> (B, h, N, p)."""
        return self.qkv(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def membership(self, w: torch.Tensor) -> torch.Tensor:
        """``Pi`` (B, h, N) from ``w`` (B, h, N, p): each token's soft assignment to the heads (sums to 1 over h)."""
        w_sq = F.normalize(w, dim=-2) ** 2
        return torch.softmax(w_sq.sum(dim=-1) * self.temperature, dim=1)

    def subspaces(self) -> torch.Tensor:
        """The heads' bases as a (h, d, p) tensor (token rows map as ``x @ W_k``)."""
        return self.qkv.weight.t().unflatten(1, (self.num_heads, self.head_dim)).permute(1, 0, 2)

    def flops(self, num_tokens: int) -> dict[str, int]:
        """Matrix-product FLOPs for N tokens (``whitebox.layers.declare``): 2 N d^2 each for ``qkv`` and
        ``proj``, 2 N d for the membership-weighted second moments (``stats``); no N x N term."""
        n, d = num_tokens, self.qkv.in_features
        return {
            "qkv": 2 * n * d * self.qkv.out_features,
            "stats": 2 * n * d,
            "proj": 2 * n * d * self.proj.out_features,
        }

    def attention_maps(self, x: torch.Tensor):  # -> whitebox.layers.declare.AttentionMaps
        """The memberships ``Pi`` of ``x`` (B, N, d) as maps (B, h, 1, N): which head each token belongs to."""
        from .declare import AttentionMaps

        return AttentionMaps(maps=self.membership(self.heads(x)).unsqueeze(2), queries="other", name="membership")

    def forward(
        self, x: torch.Tensor, return_membership: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """TSSA of ``x`` (B, N, d) -> (B, N, d); with ``return_membership`` also ``Pi`` (B, h, N)."""
        w = self.heads(x)
        pi = self.membership(w)
        weights = (pi / (pi.sum(dim=-1, keepdim=True) + 1e-8)).unsqueeze(-2)  # (B, h, 1, N)
        second_moment = weights @ (w**2)  # (B, h, 1, p)
        out = -(w * pi.unsqueeze(-1)) * self.attn_drop(1.0 / (1.0 + second_moment))
        out = self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))
        return (out, pi) if return_membership else out


class CausalTokenStatisticsAttention(nn.Module):
    r"""TSSA for sequences: every statistic is cumulative, so token t sees tokens <= t only.

    The authors' ``CausalSelfAttention_TSSA`` (``tost_lang/model_TSSA.py``), per head k and position t::

        w          = x W + b                                  (``qkv``)
        s[k, t, j] = w[k, t, j]^2 / max(sum_{u<=t} w[k, u, j]^2, 1e-12) + c[k, t]
        Pi[k, t]   = softmax_k(tau_k * sum_j s[k, t, j])
        m[k, t, j] = sum_{u<=t} Pi[k, u] w[k, u, j]^2 / (sum_{u<=t} Pi[k, u] + 1e-8)
        a[k, t]    = -(Pi[k, t] * w[k, t]) / (1 + m[k, t])
        out        = [a_1, ..., a_h] W_out + b_out            (``proj``)

    ``c`` (``position_bias``, (h, max_len, 1), init 0) is a learned per-position offset (their
    ``denom_bias``); ``tau`` is ``temperature`` (their ``temp``). Their ``c_attn`` / ``c_proj`` are our
    ``qkv`` / ``proj``. Cost O(N d^2), memory O(N d).

    Args:
        dim, num_heads: width d and heads h (d divisible by h).
        max_len: longest sequence (their ``block_size``).
        bias: biases on ``qkv`` and ``proj`` (their ``config.bias``).
        attn_drop, proj_drop: dropout on ``1 / (1 + m)`` and after ``proj``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``; in forward, a sequence longer than ``max_len``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        max_len: int = 1024,
        bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        _check(dim, num_heads)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.max_len = max_len
        self.qkv = nn.Linear(dim, dim, bias=bias)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1))
        self.position_bias = nn.Parameter(torch.zeros(num_heads, max_len, 1))
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def flops(self, num_tokens: int) -> dict[str, int]:
        """Matrix-product FLOPs for T tokens: ``qkv`` and ``proj`` (2 T d^2 each) and the cumulative
        membership-weighted moments (``stats``, 2 T d multiply-adds)."""
        n, d = num_tokens, self.qkv.in_features
        return {
            "qkv": 2 * n * d * self.qkv.out_features,
            "stats": 2 * n * d,
            "proj": 2 * n * d * self.proj.out_features,
        }

    def forward(
        self, x: torch.Tensor, return_membership: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Causal TSSA of ``x`` (B, T, d), T <= ``max_len``; with ``return_membership`` also ``Pi`` (B, h, T)."""
        t = x.shape[1]
        if not isinstance(t, torch.fx.Proxy) and t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {self.max_len}; build the layer with max_len >= {t}")
        w = self.qkv(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, h, T, p)
        w_sq = w**2
        share = w_sq / w_sq.cumsum(dim=-2).clamp_min(1e-12) + self.position_bias[:, :t]
        pi = torch.softmax(share.sum(dim=-1) * self.temperature, dim=1)  # (B, h, T)
        moment = (w_sq * pi.unsqueeze(-1)).cumsum(dim=-2) / (pi.cumsum(dim=-1) + 1e-8).unsqueeze(-1)
        out = -(w * pi.unsqueeze(-1)) * self.attn_drop(1.0 / (1.0 + moment))
        out = self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))
        return (out, pi) if return_membership else out


class TokenStatisticsBlock(nn.Module):
    r"""A fully white-box ToST layer: compress with TSSA, sparsify with one ISTA step (CRATE's layer, MSSA -> TSSA)::

        z  = x + TSSA(LN_1(x))
        x' = ISTA(LN_2(z))          (no residual around ISTA; eta 0.1, lambda 0.1)

    As the CBSA authors' ToST baseline builds it (``CBSA_image_classification/models.py``, ``ToST_tiny``:
    ``TSSA`` without a bias on its projection, LayerNorm eps 1e-5). ``drop_path`` applies to the TSSA branch.

    Args:
        dim, num_heads: width d and heads h (d divisible by h).
        eta, lambd: ISTA step size and threshold (0.1 and 0.1).
        qkv_bias: a bias on TSSA's projection (the CBSA authors' baseline: none).
        attn_drop, proj_drop: TSSA dropouts.
        drop_path: stochastic-depth rate of the TSSA branch.
        norm_eps: LayerNorm epsilon (1e-5).

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        eta: float = 0.1,
        lambd: float = 0.1,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = TokenStatisticsAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.ista = ISTA(dim, eta=eta, lambd=lambd)

    def flops(self, num_tokens: int) -> dict[str, int]:
        """TSSA's FLOPs under ``attn.`` and ISTA's two products (4 N d^2) as ``ista``."""
        d = self.ista.weight.shape[0]
        return {**{f"attn.{k}": v for k, v in self.attn.flops(num_tokens).items()}, "ista": 4 * num_tokens * d * d}

    def probes(self):  # -> whitebox.layers.declare.BlockProbes
        """Compression read around the TSSA step (block input, ``norm2`` input); maps: the memberships Pi."""
        from .declare import BlockProbes, Probe

        return BlockProbes(
            compression=(Probe(self, "input"), Probe(self.norm2, "input")),
            subspaces=self.attn.subspaces,
            maps=self.attn,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x = x + TSSA(LN(x)); x = ISTA(LN(x))``: tokens (B, N, d) -> (B, N, d)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return self.ista(self.norm2(x))
