"""CRATE encoder layer f^l, decoder layer g^l and the CRATE-alpha layer, each built from two optimisation steps."""

from __future__ import annotations

import torch
from timm.layers import DropPath
from timm.models.vision_transformer import Block
from torch import nn

from .declare import BlockProbes, Probe, linear_flops, merge, prefixed
from .ista import ISTA
from .mssa import SubspaceAttention
from .overcomplete_ista import OvercompleteISTA


class CrateBlock(nn.Module):
    r"""CRATE encoder layer f^l: compress with MSSA, then sparsify with one ISTA step.

    ::

        z = x + MSSA(LN_1(x))
        x' = ISTA(LN_2(z))          (no residual around ISTA)

    ``drop_path`` (stochastic depth, for fine-tuning) applies to the MSSA branch only, since the
    ISTA step has no residual to fall back to.

    Args:
        dim: token width d.
        num_heads: MSSA heads h (``dim`` divisible by h).
        eta: ISTA step size (official 0.1).
        lambd: ISTA threshold (official 0.1 for supervised CRATE, 0.5 in CRATE-MAE's encoder).
        attn_drop, proj_drop: MSSA dropouts (official 0).
        drop_path: stochastic-depth rate of the MSSA branch.
        norm_eps: LayerNorm epsilon (official 1e-5).
        fused_attn: use SDPA; ``None`` follows timm's ``use_fused_attn()``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.

    Source: Yu et al., arXiv 2306.01129 (the CRATE layer); the official ``model/crate.py`` (Ma-Lab-Berkeley/CRATE).
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

    def flops(self, num_tokens: int) -> dict[str, int]:
        """MSSA's four products and ISTA's two, on N tokens (see ``declare``)."""
        return merge(prefixed("attn", self.attn.flops(num_tokens)), prefixed("ista", self.ista.flops(num_tokens)))

    def probes(self) -> BlockProbes:
        """Compression on ``x`` and ``z`` (the input of ``norm2``); the output is the sparse code."""
        return BlockProbes(
            compression=(Probe(self, "input"), Probe(self.norm2, "input")),
            subspaces=self.attn.subspaces,
            maps=self.attn,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x = x + MSSA(LN(x)); x = ISTA(LN(x))``: tokens (B, N, d) -> (B, N, d)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return self.ista(self.norm2(x))


class CrateDecoderBlock(nn.Module):
    r"""CRATE-MAE decoder layer g^l: undo the ISTA step linearly, then undo the compression.

    With E the d x d matrix held by ``linear`` (no bias)::

        y  = LN_1(x) E^T
        x' = y - MSSA(LN_2(y))      (the minus sign reverses the compression step)

    Args:
        dim: token width d.
        num_heads: MSSA heads h (``dim`` divisible by h).
        attn_drop, proj_drop: MSSA dropouts (official 0).
        drop_path: stochastic-depth rate of the MSSA branch.
        norm_eps: LayerNorm epsilon (official 1e-5).
        fused_attn: use SDPA; ``None`` follows timm's ``use_fused_attn()``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.

    Source: Pai et al., ICLR 2024 (arXiv 2404.02446), the decoder layer; the official
    ``model/crate_ae/crate_decoder.py``.
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

    def flops(self, num_tokens: int) -> dict[str, int]:
        """The linear step ``E`` and MSSA's four products, on N tokens."""
        return merge({"linear": linear_flops(self.linear, num_tokens)}, prefixed("attn", self.attn.flops(num_tokens)))

    def probes(self) -> BlockProbes:
        """Compression on ``y`` (the input of ``norm2``) and on the output (after the reversed MSSA step)."""
        return BlockProbes(
            compression=(Probe(self.norm2, "input"), Probe(self, "output")),
            subspaces=self.attn.subspaces,
            maps=self.attn,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = LN(x) E^T; x = y - MSSA(LN(y))``: tokens (B, N, d) -> (B, N, d)."""
        y = self.linear(self.norm1(x))
        return y - self.drop_path(self.attn(self.norm2(y)))


class CrateAlphaBlock(nn.Module):
    r"""CRATE-alpha layer: compress with MSSA, then sparse-code against an overcomplete dictionary.

    Pre-norm, with a residual around each step (``ODL`` is ``OvercompleteISTA``)::

        x = x + MSSA(LN_1(x))       (output projection without bias)
        x = x + ODL(LN_2(x))        (two ISTA steps from zero on LN_2(x), decoded by D1)

    LayerNorm eps is 1e-6 as in the authors' ``PreNorm``. ``drop_path`` (stochastic depth, off in the
    released models) applies to both branches, since both now have a residual to fall back to.

    Args:
        dim: token width d.
        num_heads: MSSA heads h (``dim`` divisible by h).
        expansion: overcompleteness of the dictionaries (official 4: d x 4d).
        eta, lambd: ISTA step size and threshold (official 0.1 and 0.1).
        attn_drop, proj_drop: MSSA dropouts (official 0).
        drop_path: stochastic-depth rate of both branches.
        norm_eps: LayerNorm epsilon (official 1e-6).
        fused_attn: use SDPA; ``None`` follows timm's ``use_fused_attn()``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.

    Source: Yang et al., arXiv 2405.20299; the authors' ``torch_inference/model/crate_alpha.py``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        expansion: int = 4,
        eta: float = 0.1,
        lambd: float = 0.1,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        fused_attn: bool | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SubspaceAttention(dim, num_heads, attn_drop, proj_drop, fused_attn, proj_bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.ista = OvercompleteISTA(dim, expansion=expansion, eta=eta, lambd=lambd)

    def flops(self, num_tokens: int) -> dict[str, int]:
        """MSSA's products, the sparse coding (``ista``) and its decoding by ``D1`` (``decode``)."""
        odl = self.ista.flops(num_tokens)
        return merge(prefixed("attn", self.attn.flops(num_tokens)), {"ista": odl["code"], "decode": odl["decode"]})

    def probes(self) -> BlockProbes:
        """Compression on ``x`` and ``z``; sparsity and l1 on the code c (N, r d), not on the residual output."""
        return BlockProbes(
            compression=(Probe(self, "input"), Probe(self.norm2, "input")),
            subspaces=self.attn.subspaces,
            sparse_code=Probe(self.ista.code, "output"),
            maps=self.attn,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x = x + MSSA(LN(x)); x = x + OvercompleteISTA(LN(x))``: tokens (B, N, d) -> (B, N, d)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.ista(self.norm2(x)))


class TransformerBlock(Block):
    """timm's ViT ``Block`` (same arguments, same state-dict keys) that states its FLOPs and probe points.

    ViT-MAE's blocks: pre-norm attention and MLP with residuals. It has no subspaces and its fused
    attention exposes no maps, so its probes are the block output only.
    """

    def flops(self, num_tokens: int) -> dict[str, int]:
        """qkv, scores, values and the output projection (and any gate) of the attention; the MLP's linears."""
        n, attn = num_tokens, self.attn
        d_attn = attn.num_heads * attn.head_dim
        others = [m for name, m in attn.named_modules() if isinstance(m, nn.Linear) and name != "qkv"]
        mlp = [m for m in self.mlp.modules() if isinstance(m, nn.Linear)]
        return merge(
            {
                "attn.qkv": linear_flops(attn.qkv, n),
                "attn.proj": sum(linear_flops(m, n) for m in others),
                "attn.scores": 2 * n * n * d_attn,
                "attn.values": 2 * n * n * d_attn,
            },
            {"mlp": sum(linear_flops(m, n) for m in mlp)},
        )

    def probes(self) -> BlockProbes:
        """No compression step, no subspaces, no maps: the analysis measures the block output only.

        Returns:
            An empty ``BlockProbes``: the compression columns stay empty by design, sparsity and l1 are
            read from the block output (B, N, d), and the block has no attention pictures.
        """
        return BlockProbes()
