"""Multi-head subspace self-attention (MSSA): the compression step of CRATE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import use_fused_attn
from torch import nn


class SubspaceAttention(nn.Module):
    r"""Multi-head subspace self-attention (MSSA).

    With tokens as rows, ``z`` of shape (B, N, d) and ``U`` the d x d shared projection
    (``qkv.weight = U^T``, no bias), each head k uses the same matrix for queries, keys and values::

        w   = z U                                          (split into h heads of p = d / h)
        a_k = softmax(w_k w_k^T / sqrt(p)) w_k
        out = [a_1, ..., a_h] W_out + b_out                (b_out only with ``proj_bias``)

    This is one gradient step that lowers the coding rate of the tokens against the heads'
    subspaces ``U_k``. The fused path calls ``F.scaled_dot_product_attention(w, w, w)`` (memory
    linear in N); the explicit path, used when attention maps are requested or
    ``fused_attn=False``, materialises the N x N softmax.

    Args:
        dim: token width d.
        num_heads: number of subspaces h; ``dim`` must be divisible by it.
        attn_drop: dropout on the attention probabilities (official default 0).
        proj_drop: dropout after the output projection (official default 0).
        fused_attn: use SDPA; ``None`` follows timm's global ``use_fused_attn()`` switch.
        proj_bias: give the output projection a bias (CRATE, CRATE-MAE); CRATE-alpha has none.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attn: bool | None = None,
        proj_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = use_fused_attn() if fused_attn is None else fused_attn
        self.qkv = nn.Linear(dim, dim, bias=False)  # U: q = k = v
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)  # W_out, b_out
        self.proj_drop = nn.Dropout(proj_drop)

    def subspaces(self) -> torch.Tensor:
        """The heads' bases ``U_k`` as a (h, d, p) tensor (token rows map as ``z @ U_k``)."""
        u = self.qkv.weight.t()  # (d, d): z U
        return rearrange(u, "d (h p) -> h d p", h=self.num_heads)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Apply MSSA to ``x`` (B, N, d); with ``return_attention`` also return (B, h, N, N).

        ``attn_mask`` follows ``scaled_dot_product_attention``: boolean (True = attend) or additive,
        broadcastable to (B, h, N, N); ``is_causal`` lets token i attend to tokens <= i only. With
        them the layer is a drop-in for timm's ``Attention``.
        """
        w = self.qkv(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # b n (h p) -> b h n p
        attn = None
        if self.fused_attn and not return_attention:
            drop = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(w, w, w, attn_mask=attn_mask, dropout_p=drop, is_causal=is_causal)
        else:
            logits = w @ w.transpose(-2, -1) * self.scale
            if is_causal:
                n = logits.shape[-1]
                causal = torch.ones(n, n, dtype=torch.bool, device=logits.device).tril()
                attn_mask = causal if attn_mask is None else attn_mask & causal
            if attn_mask is not None:
                logits = (
                    logits.masked_fill(~attn_mask, float("-inf"))
                    if attn_mask.dtype == torch.bool
                    else logits + attn_mask
                )
            attn = logits.softmax(dim=-1)
            out = self.attn_drop(attn) @ w
        out = self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))  # b h n p -> b n (h p)
        if return_attention:
            return out, attn
        return out
