r"""The quantities a CRATE layer claims to optimise, measured on token matrices.

Tokens are rows: ``Z`` is (N, d), or (B, N, d) for a batch, where every measure is computed per
sample and returned as a (B,) tensor (average it yourself: ``coding_rate(Z).mean()``). With
``c = d / (N eps^2)``::

    coding_rate(Z)    R(Z)      = 1/2 logdet(I_d + c Z^T Z)
    compression(Z, U) R^c(Z; U) = sum_k 1/2 logdet(I_p + p / (N eps^2) (Z U_k)^T (Z U_k))
    sparsity(Z)                 = fraction of entries that are exactly 0
    l1_norm(Z)                  = ||z_i||_1 for every token row z_i

Log-determinants are taken in float64 with a Cholesky factorisation of ``I + c G`` (``G`` the
smaller of the two Gram matrices ``Z^T Z`` and ``Z Z^T``, which share their non-zero eigenvalues,
so ``logdet(I_d + c Z^T Z) = logdet(I_N + c Z Z^T)``). ``I + c G`` is symmetric with every
eigenvalue >= 1, so the factorisation exists for any finite input, zero and rank-deficient ones
included; ``slogdet`` is the fallback should rounding ever defeat it.
"""

from __future__ import annotations

import math

import torch

from ..layers import SubspaceAttention

__all__ = ["coding_rate", "compression", "l1_norm", "sparsity", "unit_tokens"]


def _check_tokens(z: object, name: str = "Z") -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of tokens (N, d) or (B, N, d), got {type(z).__name__}")
    if z.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (N, d) or (B, N, d) (tokens as rows), got {tuple(z.shape)}")
    if z.shape[-2] == 0 or z.shape[-1] == 0:
        raise ValueError(f"{name} needs at least one token and one feature, got shape {tuple(z.shape)}")
    if z.is_complex() or z.dtype == torch.bool:
        raise TypeError(f"{name} must be a real-valued tensor, got dtype {z.dtype}")
    if not torch.isfinite(z).all():
        raise ValueError(f"{name} contains NaN or infinite entries")
    return z


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number (the coding precision), got {eps!r}")
    return float(eps)


def half_logdet_identity_plus_gram(z: torch.Tensor, scale: float) -> torch.Tensor:
    r"""``1/2 logdet(I + scale Z^T Z)`` over the last two dims of ``z``, in float64."""
    z = z.to(torch.float64)
    n, d = z.shape[-2:]
    gram = z.mT @ z if d <= n else z @ z.mT
    eye = torch.eye(gram.shape[-1], dtype=torch.float64, device=z.device)
    mat = eye + scale * gram
    mat = 0.5 * (mat + mat.mT)  # exact symmetry for the factorisation
    chol, info = torch.linalg.cholesky_ex(mat)
    half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    if bool((info != 0).any()):
        half_logdet = torch.where(info == 0, half_logdet, 0.5 * torch.linalg.slogdet(mat).logabsdet)
    return half_logdet


def coding_rate(z: torch.Tensor, eps: float = 0.5) -> torch.Tensor:
    r"""Coding rate ``R(Z) = 1/2 logdet(I_d + d / (N eps^2) Z^T Z)`` of tokens ``Z`` (N, d) or (B, N, d).

    Returns a float64 scalar, or a (B,) tensor for a batch (one rate per sample, N its tokens).
    It is invariant to rotating the features (``Z Q``, ``Q`` orthogonal) and to reordering tokens.

    Args:
        z: tokens as rows, (N, d) or (B, N, d).
        eps: coding precision epsilon (> 0; CRATE's default 0.5).

    Raises:
        TypeError, ValueError: ``z`` is not a real (N, d) or (B, N, d) tensor with at least one token and
            feature, or holds NaN / infinite entries.
        ValueError: ``eps`` not a positive finite number.

    Source: Yu et al., arXiv 2306.01129, the coding rate R(Z); computed in float64 with a Cholesky factorisation.
    """
    return _coding_rate(_check_tokens(z), _check_eps(eps))


def _coding_rate(z: torch.Tensor, eps: float) -> torch.Tensor:
    n, d = z.shape[-2:]
    return half_logdet_identity_plus_gram(z, d / (n * eps**2))


def _check_subspaces(u: object, d: int) -> torch.Tensor:
    if isinstance(u, SubspaceAttention):
        u = u.subspaces()
    if not isinstance(u, torch.Tensor):
        raise TypeError(
            f"U must be a SubspaceAttention or a (heads, d, p) tensor of subspace bases, got {type(u).__name__}"
        )
    if u.ndim != 3 or u.shape[1] != d:
        raise ValueError(
            f"U must have shape (heads, d={d}, p) like SubspaceAttention.subspaces(), got {tuple(u.shape)}"
        )
    if not torch.isfinite(u).all():
        raise ValueError("U contains NaN or infinite entries")
    return u.detach()


def compression(z: torch.Tensor, u: torch.Tensor | SubspaceAttention, eps: float = 0.5) -> torch.Tensor:
    r"""Compression term ``R^c(Z; U) = sum_k 1/2 logdet(I_p + p / (N eps^2) (Z U_k)^T (Z U_k))``.

    ``U`` is a (h, d, p) tensor of the heads' bases (``SubspaceAttention.subspaces()``), or the
    ``SubspaceAttention`` module itself. Lower means the tokens are better compressed against the
    layer's subspaces. Returns a float64 scalar, or (B,) for a batch.

    Args:
        z: tokens as rows, (N, d) or (B, N, d).
        u: the heads' bases (h, d, p), or a ``SubspaceAttention``.
        eps: coding precision epsilon (> 0).

    Raises:
        TypeError, ValueError: ``z`` is not a real (N, d) or (B, N, d) tensor with at least one token and
            feature, or holds NaN / infinite entries.
        TypeError, ValueError: ``u`` not an (h, d, p) tensor of ``z``'s width, or not finite.
        ValueError: ``eps`` not a positive finite number.

    Source: Yu et al., arXiv 2306.01129, the compression term R^c(Z; U) that MSSA descends.
    """
    z = _check_tokens(z)
    return _compression(z, _check_subspaces(u, z.shape[-1]), _check_eps(eps))


def _compression(z: torch.Tensor, u: torch.Tensor, eps: float) -> torch.Tensor:
    n, p = z.shape[-2], u.shape[-1]
    projected = torch.einsum("...nd,hdp->...hnp", z.to(torch.float64), u.to(device=z.device, dtype=torch.float64))
    return half_logdet_identity_plus_gram(projected, p / (n * eps**2)).sum(-1)


def sparsity(z: torch.Tensor) -> torch.Tensor:
    """Fraction of entries of ``Z`` that are exactly zero (float64; (B,) for a batch).

    Exact zeros, not small values: the ISTA step ends in a ReLU, so its zeros are exact.

    Args:
        z: tokens as rows, (N, d) or (B, N, d).

    Raises:
        TypeError, ValueError: ``z`` is not a real (N, d) or (B, N, d) tensor with at least one token and
            feature, or holds NaN / infinite entries.
    """
    z = _check_tokens(z)
    return (z == 0).to(torch.float64).mean(dim=(-2, -1))


def l1_norm(z: torch.Tensor) -> torch.Tensor:
    """``||z_i||_1`` of every token row: (N,), or (B, N) for a batch, in float64.

    Args:
        z: tokens as rows, (N, d) or (B, N, d).

    Raises:
        TypeError, ValueError: ``z`` is not a real (N, d) or (B, N, d) tensor with at least one token and
            feature, or holds NaN / infinite entries.
    """
    z = _check_tokens(z)
    return z.to(torch.float64).abs().sum(-1)


def unit_tokens(z: torch.Tensor) -> torch.Tensor:
    """Each token row scaled to unit l2 norm; all-zero rows stay zero (no division by zero).

    Args:
        z: tokens as rows, (N, d) or (B, N, d).

    Raises:
        TypeError, ValueError: ``z`` is not a real (N, d) or (B, N, d) tensor with at least one token and
            feature, or holds NaN / infinite entries.
    """
    return _unit_tokens(_check_tokens(z))


def _unit_tokens(z: torch.Tensor) -> torch.Tensor:
    z = z.to(torch.float64)
    norm = z.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, z / norm.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(z))
