"""Multi-head subspace self-attention (MSSA): the compression step of CRATE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import use_fused_attn
from torch import nn

from .declare import AttentionMaps, linear_flops


def check_attn_mask(attn_mask: object, w: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """The mask as both paths use it, or a named refusal of a mask SDPA would not take for ``w`` (B, h, N, p).

    Under ``torch.autocast`` a float mask is cast to the tokens' dtype, as autocast casts SDPA's inputs.
    """
    if is_causal:
        raise ValueError(
            "give attn_mask or is_causal=True, not both (as scaled_dot_product_attention); "
            "fold the causal pattern into attn_mask (True = attend)"
        )
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.is_floating_point() and attn_mask.dtype != w.dtype and torch.is_autocast_enabled(w.device.type):
        attn_mask = attn_mask.to(w.dtype)
    if attn_mask.dtype != torch.bool and attn_mask.dtype != w.dtype:
        raise TypeError(
            f"attn_mask must be bool (True = attend) or additive with the tokens' dtype {w.dtype} "
            f"(-inf = never attend), got {attn_mask.dtype}"
        )
    b, h, n, _ = w.shape
    shape = tuple(attn_mask.shape)
    if not 2 <= len(shape) <= 4 or any(s not in (1, t) for s, t in zip(shape[::-1], (n, n, h, b), strict=False)):
        raise ValueError(
            f"attn_mask of shape {shape} does not broadcast to (batch, heads, N, N) = {(b, h, n, n)}: give 2 to 4 "
            f"dimensions, e.g. (N, N), (B, 1, N, N), (B, heads, N, N) or (1, 1, 1, N)"
        )
    return attn_mask


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

    def flops(self, num_tokens: int) -> dict[str, int]:
        """Matrix-product FLOPs on N tokens: ``w = z U``, scores ``w_k w_k^T``, values, ``W_out``.

        q = k = v = w is ONE projection; scores and values cost ``2 N^2 d`` each over all heads.
        """
        n, d_attn = num_tokens, self.qkv.out_features
        return {
            "qkv": linear_flops(self.qkv, n),
            "proj": linear_flops(self.proj, n),
            "scores": 2 * n * n * d_attn,
            "values": 2 * n * n * d_attn,
        }

    def attention_maps(self, x: torch.Tensor) -> AttentionMaps:
        """``softmax(w_k w_k^T / sqrt(p))`` of every head on ``x`` (B, N, d): maps (B, h, N, N)."""
        return AttentionMaps(self(x, return_attention=True)[1], queries="tokens", name="attention")

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Apply MSSA to ``x`` (B, N, d); with ``return_attention`` also return (B, h, N, N).

        ``attn_mask`` follows ``scaled_dot_product_attention``: boolean (True = attend) or additive
        with the tokens' float dtype (any float dtype under autocast, which casts it; ``-inf`` = never
        attend), of 2 to 4 dimensions broadcastable to
        (B, h, N, N) ((N, N), (B, 1, N, N), (B, h, N, N), (1, 1, 1, N) ...); ``is_causal`` lets token i
        attend to tokens <= i only, and like SDPA it cannot be combined with ``attn_mask``. A query
        row that may attend to nothing (fully masked) gives zero attention and a zero mix, as SDPA
        does, on both paths: the fused and the explicit path give the same output for every mask.
        With them the layer is a drop-in for timm's ``Attention``.

        Raises:
            TypeError / ValueError: a mask of another dtype, rank or shape, or a mask with
                ``is_causal`` (one message for both paths, naming what is allowed).
        """
        w = self.qkv(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # b n (h p) -> b h n p
        if attn_mask is not None and not isinstance(w, torch.fx.Proxy):
            attn_mask = check_attn_mask(attn_mask, w, is_causal)
        attn = None
        if self.fused_attn and not return_attention:
            drop = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(w, w, w, attn_mask=attn_mask, dropout_p=drop, is_causal=is_causal)
        else:
            logits = w @ w.transpose(-2, -1) * self.scale
            if is_causal:
                n = logits.shape[-1]
                attn_mask = torch.ones(n, n, dtype=torch.bool, device=logits.device).tril()
            if attn_mask is not None:
                logits = (
                    logits.masked_fill(~attn_mask, float("-inf"))
                    if attn_mask.dtype == torch.bool
                    else logits + attn_mask
                )
                # rows with nothing to attend to: zero attention (SDPA's safe softmax), not NaN
                attn = torch.where(logits.isneginf().all(-1, keepdim=True), 0.0, logits.softmax(dim=-1))
            else:
                attn = logits.softmax(dim=-1)
            out = self.attn_drop(attn) @ w
        out = self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))  # b h n p -> b n (h p)
        if return_attention:
            return out, attn
        return out
