"""One non-negative ISTA step: the sparsification step of CRATE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ISTA(nn.Module):
    r"""One step of non-negative ISTA against a learned dictionary D (d x d).

    With tokens as rows, ``z`` of shape (B, N, d), step size ``eta`` and threshold ``lambd``::

        ISTA(z) = relu(z + eta * (z D - z D^T D) - eta * lambd)
                = relu(z + eta * (z - z D^T) D - eta * lambd)

    The second form is what is computed: two matrix products instead of three. ``weight``
    holds D, the same tensor the official ``FeedForward.weight`` holds.

    Args:
        dim: token width d.
        eta: step size (official default 0.1).
        lambd: sparsity threshold (official: 0.1 for supervised CRATE, 0.5 for CRATE-MAE).
    """

    def __init__(self, dim: int, eta: float = 0.1, lambd: float = 0.1) -> None:
        super().__init__()
        self.eta = eta
        self.lambd = lambd
        self.weight = nn.Parameter(torch.empty(dim, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform D, as the official ``FeedForward.weight``."""
        nn.init.kaiming_uniform_(self.weight)  # as the official code

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``relu(z + eta (z - z D^T) D - eta lambd)``: tokens (..., d) -> sparse codes (..., d), non-negative."""
        residual = z - F.linear(z, self.weight)  # z - z D^T
        return F.relu(z + self.eta * (residual @ self.weight) - self.eta * self.lambd)

    def flops(self, num_tokens: int) -> dict[str, int]:
        """Two products per token, ``z D^T`` then ``(z - z D^T) D``: ``4 N d^2``."""
        d_out, d_in = self.weight.shape
        return {"": 2 * (2 * num_tokens * d_in * d_out)}

    def extra_repr(self) -> str:
        """``dim``, ``eta`` and ``lambd``, shown by ``print(module)``."""
        return f"dim={self.weight.shape[0]}, eta={self.eta}, lambd={self.lambd}"
