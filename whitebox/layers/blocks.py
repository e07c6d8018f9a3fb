"""CRATE encoder layer f^l and decoder layer g^l, each built from the two optimisation steps."""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from .ista import ISTA
from .mssa import SubspaceAttention


class CrateBlock(nn.Module):
    r"""CRATE encoder layer f^l: compress with MSSA, then sparsify with one ISTA step.

    ::

        z = x + MSSA(LN_1(x))
        x' = ISTA(LN_2(z))          (no residual around ISTA)

    ``drop_path`` (stochastic depth, for fine-tuning) applies to the MSSA branch only, since the
    ISTA step has no residual to fall back to.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        eta: float = 0.1,
        lambd: float = 0.1,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
        fused_attn: bool | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SubspaceAttention(dim, num_heads, attn_drop, proj_drop, fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.ista = ISTA(dim, eta=eta, lambd=lambd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return self.ista(self.norm2(x))


class CrateDecoderBlock(nn.Module):
    r"""CRATE-MAE decoder layer g^l: undo the ISTA step linearly, then undo the compression.

    With E the d x d matrix held by ``linear`` (no bias)::

        y  = LN_1(x) E^T
        x' = y - MSSA(LN_2(y))      (the minus sign reverses the compression step)
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
        fused_attn: bool | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.linear = nn.Linear(dim, dim, bias=False)
        nn.init.kaiming_uniform_(self.linear.weight)  # as the official code
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SubspaceAttention(dim, num_heads, attn_drop, proj_drop, fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(self.norm1(x))
        return y - self.drop_path(self.attn(self.norm2(y)))
