"""Coding rate, compression, sparsity and l1 against closed forms on constructed tokens."""

from __future__ import annotations

import math

import pytest
import torch

from whitebox.analysis import coding_rate, compression, l1_norm, sparsity, unit_tokens
from whitebox.layers import SubspaceAttention


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def with_singular_values(n: int, d: int, s: list[float], seed: int = 0) -> torch.Tensor:
    """Z = A diag(s) B^T with orthonormal A (N x r), B (d x r): its singular values are exactly s."""
    r = len(s)
    return orthonormal(n, r, seed) @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ orthonormal(d, r, seed + 1).T


def closed_form_rate(s: list[float], n: int, d: int, eps: float) -> float:
    c = d / (n * eps**2)
    return 0.5 * sum(math.log1p(c * v**2) for v in s)


@pytest.mark.parametrize(("n", "d"), [(50, 8), (6, 16)])  # both Gram branches: d <= N and d > N
def test_coding_rate_known_singular_values(n: int, d: int) -> None:
    s = [3.0, 1.5, 0.25, 0.01][: min(n, d)]
    z = with_singular_values(n, d, s)
    for eps in (0.5, 0.1):
        assert coding_rate(z, eps=eps).item() == pytest.approx(closed_form_rate(s, n, d, eps), rel=1e-10)


def test_coding_rate_rank_deficient_and_zero() -> None:
    z = with_singular_values(40, 12, [2.0, 1.0])  # rank 2 of 12
    assert coding_rate(z).item() == pytest.approx(closed_form_rate([2.0, 1.0], 40, 12, 0.5), rel=1e-10)
    assert coding_rate(torch.zeros(40, 12)).item() == 0.0
    u = torch.eye(12).reshape(12, 3, 4).permute(1, 0, 2)  # identity split into 3 heads
    assert compression(torch.zeros(40, 12), u).item() == 0.0
    # repeated tokens (rank 1, singular value sqrt(N d)) in float32 with a tiny eps: large but finite
    rank_one = torch.ones(64, 32)
    heads = torch.eye(32).reshape(32, 4, 8).permute(1, 0, 2)
    assert torch.isfinite(compression(rank_one, heads, eps=1e-4))
    assert coding_rate(rank_one, eps=1e-4).item() == pytest.approx(closed_form_rate([math.sqrt(64 * 32)], 64, 32, 1e-4))


def test_compression_closed_form_axis_aligned() -> None:
    """Z with orthogonal, axis-aligned columns and U = I: each head sees its own singular values."""
    n, d, h = 30, 12, 3
    p = d // h
    s = torch.linspace(0.2, 3.0, d, dtype=torch.float64)
    z = orthonormal(n, d, 3) * s  # column j has norm s_j, columns orthogonal
    u = torch.eye(d, dtype=torch.float64).reshape(d, h, p).permute(1, 0, 2)  # U_k = columns k*p .. k*p+p-1
    expected = sum(0.5 * math.log1p(p / (n * 0.5**2) * s[j].item() ** 2) for j in range(d))
    assert compression(z, u).item() == pytest.approx(expected, rel=1e-10)


def test_compression_one_full_head_is_the_coding_rate() -> None:
    z = torch.randn(20, 16, dtype=torch.float64)
    u = orthonormal(16, 16, 7)[None]  # one head, an orthonormal basis of the whole space
    assert compression(z, u).item() == pytest.approx(coding_rate(z).item(), rel=1e-10)


def test_compression_matches_the_definition_on_random_data() -> None:
    g = torch.Generator().manual_seed(0)
    z, u = torch.randn(25, 12, generator=g), torch.randn(4, 12, 3, generator=g)
    n, p = 25, 3
    expected = 0.0
    for k in range(4):
        w = (z @ u[k]).double()
        expected += 0.5 * torch.logdet(torch.eye(p, dtype=torch.float64) + p / (n * 0.25) * w.T @ w).item()
    assert compression(z, u).item() == pytest.approx(expected, rel=1e-8)


def test_invariances_rotation_and_token_order() -> None:
    g = torch.Generator().manual_seed(1)
    z, u = (
        torch.randn(20, 16, generator=g, dtype=torch.float64),
        torch.randn(4, 16, 4, generator=g, dtype=torch.float64),
    )
    q = orthonormal(16, 16, 5)
    perm = torch.randperm(20, generator=g)
    assert coding_rate(z @ q).item() == pytest.approx(coding_rate(z).item(), rel=1e-10)
    assert coding_rate(z[perm]).item() == pytest.approx(coding_rate(z).item(), rel=1e-10)
    # rotating tokens and subspaces together: (Z Q)(Q^T U_k) = Z U_k
    assert compression(z @ q, q.T @ u).item() == pytest.approx(compression(z, u).item(), rel=1e-10)
    assert compression(z[perm], u).item() == pytest.approx(compression(z, u).item(), rel=1e-10)
    # rotating within a head's subspace does not change its rate either
    r = orthonormal(4, 4, 9)
    assert compression(z, u @ r).item() == pytest.approx(compression(z, u).item(), rel=1e-10)


def test_batched_is_per_sample() -> None:
    g = torch.Generator().manual_seed(2)
    z, u = torch.randn(3, 10, 8, generator=g), torch.randn(2, 8, 4, generator=g)
    rates, comps = coding_rate(z), compression(z, u)
    assert rates.shape == comps.shape == (3,) and rates.dtype == torch.float64
    for b in range(3):
        assert rates[b].item() == pytest.approx(coding_rate(z[b]).item(), rel=1e-12)
        assert comps[b].item() == pytest.approx(compression(z[b], u).item(), rel=1e-12)


def test_compression_takes_the_attention_module() -> None:
    attn = SubspaceAttention(16, num_heads=4)
    z = torch.randn(9, 16)
    assert compression(z, attn).item() == compression(z, attn.subspaces()).item()
    assert attn.subspaces().shape == (4, 16, 4)


def test_sparsity_counts_exact_zeros_and_l1_per_token() -> None:
    z = torch.tensor([[0.0, 1e-30, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 0.0]])
    assert sparsity(z).item() == pytest.approx(7 / 12)  # 1e-30 is not zero
    assert l1_norm(z).tolist() == pytest.approx([2.0, 0.0, 2.5])
    batched = torch.stack([z, torch.zeros_like(z)])
    assert sparsity(batched).tolist() == pytest.approx([7 / 12, 1.0])
    assert l1_norm(batched).shape == (2, 3)
    assert sparsity(torch.relu(torch.randn(100, 50))).item() == pytest.approx(0.5, abs=0.03)


def test_unit_tokens_keeps_zero_rows() -> None:
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = unit_tokens(z)
    assert out.flatten().tolist() == pytest.approx([0.6, 0.8, 0.0, 0.0])
    assert torch.isfinite(coding_rate(out))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: coding_rate(torch.randn(4)), ValueError, r"\(N, d\)"),
        (lambda: coding_rate([[1.0, 2.0]]), TypeError, "torch.Tensor"),
        (lambda: coding_rate(torch.tensor([[math.nan, 1.0]])), ValueError, "NaN"),
        (lambda: coding_rate(torch.randn(3, 4), eps=0), ValueError, "eps"),
        (lambda: coding_rate(torch.randn(0, 4)), ValueError, "at least one token"),
        (lambda: compression(torch.randn(3, 8), torch.randn(2, 6, 4)), ValueError, "heads, d=8"),
        (lambda: compression(torch.randn(3, 8), torch.randn(8, 8)), ValueError, "heads, d=8"),
        (lambda: compression(torch.randn(3, 8), "U"), TypeError, "SubspaceAttention"),
        (lambda: sparsity(torch.ones(2, 2, dtype=torch.bool)), TypeError, "real-valued"),
    ],
)
def test_bad_input_is_named(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()
