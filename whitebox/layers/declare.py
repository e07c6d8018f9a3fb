"""What a part declares about itself: its matrix-product FLOPs and its white-box probe points.

``whitebox.flops`` and ``whitebox.analysis`` ask the parts, never their types (see ``/docs`` "Adding
a model family"): a block (or layer) defines

* ``flops(num_tokens) -> dict[str, int]``: forward matrix-product FLOPs of one sample of N tokens,
  2 FLOPs per multiply-add (an (m x k) @ (k x n) product costs ``2 m n k``); element-wise work is not
  counted. Keys are relative component names (``attn.qkv``, ``ista`` ...); ``""`` is the part as a
  whole. Patch embeddings take the patch grid instead: ``flops(grid_size) -> dict[str, int]``.
* ``probes() -> BlockProbes``: where the tokens before and after its compression step, its sparse
  code and its attention-like maps can be read (forward hooks; nothing in the forward changes).

A part without them is refused by name (``require``), so no measurement is silently lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["AttentionMaps", "BlockProbes", "Probe", "linear_flops", "merge", "prefixed", "require"]


@dataclass(frozen=True)
class Probe:
    """A place to read tokens: ``module``'s first positional input or its output.

    The analysis installs a forward pre-hook (``side='input'``) or a forward hook (``side='output'``) on
    ``module``, so the forward itself is unchanged and fused paths stay fused.

    Attributes:
        module: the module to hook; what it reads are tokens (B, N, d).
        side: ``'input'`` (the module's first positional input) or ``'output'`` (its output).

    Raises:
        ValueError: ``side`` is neither ``'input'`` nor ``'output'``.
    """

    module: nn.Module
    side: Literal["input", "output"] = "output"

    def __post_init__(self) -> None:
        if self.side not in ("input", "output"):
            raise ValueError(f"Probe side must be 'input' or 'output', got {self.side!r}")


@dataclass(frozen=True)
class BlockProbes:
    """A block's white-box probe points.

    Attributes:
        compression: tokens (B, N, d) before and after the block's compression step (R^c is measured
            on both against ``subspaces``); ``None``: the block has no compression step.
        subspaces: returns the step's bases ``U_k`` as (h, d, p); required with ``compression``.
        sparse_code: tokens whose sparsity and l1 are measured; ``None``: the block output.
        maps: a layer defining ``attention_maps(x) -> AttentionMaps`` (x: its input during the forward);
            ``None``: the block has no maps to show.
        num_prefix_tokens: leading non-patch tokens (class token ...) in the tokens this block (and its
            maps layer) sees; ``None``: the model's ``num_prefix_tokens`` (set it, e.g. to 0, for blocks
            that see patch tokens only, as ToST's TSSA blocks).
    """

    compression: tuple[Probe, Probe] | None = None
    subspaces: Callable[[], torch.Tensor] | None = None
    sparse_code: Probe | None = None
    maps: nn.Module | None = None
    num_prefix_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.compression is not None and self.subspaces is None:
            raise ValueError("BlockProbes: compression probes need subspaces (the step's U_k as (h, d, p))")


@dataclass(frozen=True)
class AttentionMaps:
    """Attention-like maps of one layer over its N input tokens.

    Attributes:
        maps: (B, h, Q, N) float in [0, 1].
        queries: ``'tokens'``: Q == N and row i is what token i attends to (MSSA's softmax);
            ``'other'``: rows that are not tokens (e.g. memberships, Q = 1; representatives, Q = m).
        name: what the maps are (``'attention'``, ``'membership'``, ``'contraction'``), for titles.
        num_prefix_tokens: leading non-patch tokens among the N (the class token ...); ``None``: the
            block's ``BlockProbes.num_prefix_tokens``, else the model's. The pictures keep the patches only.
    """

    maps: torch.Tensor
    queries: Literal["tokens", "other"] = "tokens"
    name: str = "attention"
    num_prefix_tokens: int | None = None


def linear_flops(layer: nn.Linear, rows: int) -> int:
    """``2 * rows * in_features * out_features``: a linear layer applied to ``rows`` tokens."""
    return 2 * rows * layer.in_features * layer.out_features


def prefixed(prefix: str, flops: dict[str, int]) -> dict[str, int]:
    """Component names under ``prefix`` (the empty name becomes ``prefix`` itself)."""
    return {(f"{prefix}.{k}" if k and prefix else k or prefix): v for k, v in flops.items()}


def merge(*parts: dict[str, int]) -> dict[str, int]:
    """Sum FLOP breakdowns (equal names add up; first-seen order; zero entries dropped)."""
    out: dict[str, int] = {}
    for part in parts:
        for k, v in part.items():
            if v:
                out[k] = out.get(k, 0) + int(v)
    return out


def require(part: nn.Module, method: str, what: str, purpose: str) -> Callable:
    """``part.<method>``, or a TypeError that names the part and what it lacks."""
    fn = getattr(part, method, None)
    if not callable(fn):
        raise TypeError(
            f"cannot {purpose} {what} ({type(part).__name__}): it declares no {method}() method; "
            "see whitebox.layers.declare for what a block states about itself"
        )
    return fn
