"""Overcomplete sparse coding (ODL): the sparsification step of CRATE-alpha."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class OvercompleteISTA(nn.Module):
    r"""Non-negative ISTA from zero against an overcomplete dictionary, decoded by a second one.

    With tokens as rows, ``x`` of shape (B, N, d) (the LayerNorm'd tokens), dictionaries ``D`` and
    ``D1`` both stored d x r d (r = ``expansion``), step size ``eta`` and threshold ``lambd``; for the
    default two iterations::

        z1  = relu(eta * x D - eta * lambd)                          (one ISTA step from z0 = 0)
        z2  = relu(z1 - eta * (z1 D^T - x) D - eta * lambd)          (a second step)
        out = z2 D1^T                                                (r d -> d, no bias)

    Each further iteration repeats the second line. This is CRATE-alpha's ODL block exactly as the
    authors' ``OvercompleteISTABlock`` computes it (UCSC-VLAA/CRATE-alpha,
    ``torch_inference/model/crate_alpha.py``); the residual ``x + out`` belongs to the block. The
    sparse code ``z`` (B, N, r d) passes through ``self.code`` (an identity), so a forward hook on it
    sees the code, e.g. to measure its sparsity.

    Args:
        dim: token width d.
        expansion: overcompleteness r of the dictionary (official 4).
        eta: step size (official 0.1).
        lambd: sparsity threshold (official 0.1).
        iterations: ISTA steps from zero (official 2).
    """

    def __init__(self, dim: int, expansion: int = 4, eta: float = 0.1, lambd: float = 0.1, iterations: int = 2) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {iterations}")
        self.eta, self.lambd, self.iterations = eta, lambd, iterations
        self.D = nn.Parameter(torch.empty(dim, expansion * dim))  # encoding dictionary
        self.D1 = nn.Parameter(torch.empty(dim, expansion * dim))  # decoding dictionary
        self.code = nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The authors trained with flax's kaiming_uniform on (d, r d), whose fan-in is d (their PyTorch port
        # calls torch's kaiming_uniform_, fan-in r d, but only to load weights): bound sqrt(6 / d).
        """Uniform in +-sqrt(6 / d) for D and D1: flax's kaiming_uniform on (d, r d), as the authors trained."""
        bound = math.sqrt(6.0 / self.D.shape[0])
        nn.init.uniform_(self.D, -bound, bound)
        nn.init.uniform_(self.D1, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``iterations`` ISTA steps from zero against D, then decode: x (..., d) -> ``z2 D1^T`` (..., d).

        The sparse code ``z2`` (..., r d) passes through ``self.code`` on the way (a hook point).
        """
        threshold = self.eta * self.lambd
        z = F.relu(self.eta * (x @ self.D) - threshold)
        for _ in range(self.iterations - 1):
            z = F.relu(z - self.eta * ((z @ self.D.t() - x) @ self.D) - threshold)
        return self.code(z) @ self.D1.t()

    def flops(self, num_tokens: int) -> dict[str, int]:
        """``code``: ``x D`` then ``(z D^T - x) D`` per further iteration; ``decode``: ``z D1^T``."""
        d, code = self.D.shape
        n = num_tokens
        return {"code": (1 + 2 * (self.iterations - 1)) * 2 * n * d * code, "decode": 2 * n * code * d}

    def extra_repr(self) -> str:
        """``dim``, ``expansion``, ``eta``, ``lambd`` and ``iterations``, shown by ``print(module)``."""
        d, rd = self.D.shape
        return f"dim={d}, expansion={rd // d}, eta={self.eta}, lambd={self.lambd}, iterations={self.iterations}"
