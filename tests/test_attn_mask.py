"""SubspaceAttention: the fused (SDPA) and explicit paths agree for every mask SDPA accepts, and refuse the same."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from whitebox.layers import SubspaceAttention

B, N, D, H = 2, 6, 32, 4


def _layer(dtype: torch.dtype = torch.float32) -> SubspaceAttention:
    layer = SubspaceAttention(D, H, fused_attn=True).eval().to(dtype)
    torch.nn.init.normal_(layer.proj.bias)  # a non-zero bias shows where fully-masked rows end up
    return layer


def _both(layer: SubspaceAttention, x: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    layer.fused_attn = True
    fused = layer(x, **kw)
    explicit, attn = layer(x, return_attention=True, **kw)
    layer.fused_attn = False
    assert torch.equal(layer(x, **kw), explicit)  # fused_attn=False takes the explicit path too
    return fused, explicit, attn


def _reference(layer: SubspaceAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SDPA itself on w = x U (the definition the layer's mask argument follows)."""
    w = layer.qkv(x).unflatten(-1, (H, D // H)).transpose(1, 2)
    out = F.scaled_dot_product_attention(w, w, w, attn_mask=mask)
    return layer.proj(out.transpose(1, 2).flatten(2))


def _bool(*shape: int) -> torch.Tensor:
    return torch.rand(*shape) > 0.4


def _additive(*shape: int) -> torch.Tensor:
    mask = torch.randn(*shape)
    return mask.masked_fill(torch.rand(*shape) > 0.6, float("-inf"))


def _fully_masked_rows_bool() -> torch.Tensor:
    mask = _bool(B, H, N, N)
    mask[0, 1, 2] = False  # query 2 of head 1 of image 0 may attend to nothing
    mask[1, :, 0] = False  # query 0 in every head of image 1
    return mask


def _fully_masked_rows_float() -> torch.Tensor:
    mask = torch.zeros(N, N)
    mask[3] = float("-inf")
    return mask


MASKS = {
    "bool (N, N)": lambda: _bool(N, N),
    "bool (B, 1, N, N)": lambda: _bool(B, 1, N, N),
    "bool (B, H, N, N)": lambda: _bool(B, H, N, N),
    "bool (1, 1, 1, N) padding": lambda: torch.tensor([True] * (N - 2) + [False] * 2).view(1, 1, 1, N),
    "bool (1, N) rank 2": lambda: torch.tensor([True, False] * (N // 2)).view(1, N),
    "bool (H, N, N) rank 3": lambda: _bool(H, N, N),
    "bool fully-masked rows": _fully_masked_rows_bool,
    "bool all masked": lambda: torch.zeros(N, N, dtype=torch.bool),
    "float (N, N) finite": lambda: torch.randn(N, N),
    "float (N, N) with -inf": lambda: _additive(N, N),
    "float (B, 1, N, N) with -inf": lambda: _additive(B, 1, N, N),
    "float (B, H, N, N) with -inf": lambda: _additive(B, H, N, N),
    "float (1, 1, 1, N) with -inf": lambda: torch.tensor([0.0, float("-inf")] * (N // 2)).view(1, 1, 1, N),
    "float fully-masked row": _fully_masked_rows_float,
    "float all -inf": lambda: torch.full((B, 1, N, N), float("-inf")),
}


@pytest.mark.parametrize("kind", list(MASKS))
def test_fused_and_explicit_agree_for_every_mask_kind(kind: str) -> None:
    layer, x, mask = _layer(), torch.randn(B, N, D), MASKS[kind]()
    with torch.no_grad():
        fused, explicit, attn = _both(layer, x, attn_mask=mask)
        reference = _reference(layer, x, mask)
    assert not explicit.isnan().any() and not attn.isnan().any()
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit, reference, rtol=1e-5, atol=1e-5)
    # rows that may attend to nothing: zero attention, output = the projection's bias (SDPA's convention)
    logits_mask = mask if mask.dtype == torch.bool else mask > float("-inf")
    empty = ~logits_mask.expand(B, H, N, N).any(-1)  # (B, H, N)
    assert (attn[empty] == 0).all()
    assert torch.allclose(attn.sum(-1)[~empty], torch.ones(()), atol=1e-5)
    every_head_empty = empty.all(1)  # (B, N)
    torch.testing.assert_close(explicit[every_head_empty], layer.proj.bias.expand(int(every_head_empty.sum()), D))


def test_fully_masked_rows_have_finite_gradients() -> None:
    layer, x = _layer(), torch.randn(B, N, D, requires_grad=True)
    for fused in (True, False):
        layer.fused_attn = fused
        layer(x, attn_mask=_fully_masked_rows_bool()).sum().backward()
        assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())
        x.grad = None
        layer.zero_grad()


def test_float64_layer_takes_a_float64_mask_on_both_paths() -> None:
    layer, x = _layer(torch.float64), torch.randn(B, N, D, dtype=torch.float64)
    mask = _additive(B, H, N, N).double()
    fused, explicit, _ = _both(layer, x, attn_mask=mask)
    torch.testing.assert_close(fused, explicit)


REFUSED = {
    "float16 mask on float32 tokens": (
        lambda: torch.zeros(N, N, dtype=torch.float16),
        TypeError,
        "bool .*float32.*got torch.float16",
    ),
    "float64 mask on float32 tokens": (lambda: torch.zeros(N, N, dtype=torch.float64), TypeError, "got torch.float64"),
    "integer mask": (lambda: torch.ones(N, N, dtype=torch.int64), TypeError, "got torch.int64"),
    "uint8 mask": (lambda: torch.ones(N, N, dtype=torch.uint8), TypeError, "got torch.uint8"),
    "1-D mask": (lambda: torch.ones(N, dtype=torch.bool), ValueError, r"\(6,\) does not broadcast"),
    "5-D mask": (lambda: torch.ones(1, 1, 1, N, N, dtype=torch.bool), ValueError, "2 to 4"),
    "wrong N": (lambda: torch.ones(N + 1, N + 1, dtype=torch.bool), ValueError, r"\(2, 4, 6, 6\)"),
    "batch in the head slot": (lambda: torch.ones(B, N, N, dtype=torch.bool), ValueError, "does not broadcast"),
    "not a tensor": (lambda: [[True] * N] * N, TypeError, "torch.Tensor or None, got list"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_masks_sdpa_refuses_are_refused_alike_on_both_paths(kind: str) -> None:
    make, error, message = REFUSED[kind]
    layer, x = _layer(), torch.randn(B, N, D)
    for fused, ret in ((True, False), (True, True), (False, False)):
        layer.fused_attn = fused
        with pytest.raises(error, match=message):
            layer(x, attn_mask=make(), return_attention=ret)


def test_mask_with_is_causal_is_refused_on_both_paths() -> None:
    layer, x = _layer(), torch.randn(B, N, D)
    for fused, ret in ((True, False), (False, True)):
        layer.fused_attn = fused
        with pytest.raises(ValueError, match="attn_mask or is_causal=True, not both"):
            layer(x, attn_mask=_bool(N, N), is_causal=True, return_attention=ret)
    causal = torch.ones(N, N, dtype=torch.bool).tril()  # the supported spelling of both
    fused, explicit, _ = _both(layer, x, attn_mask=causal & _fully_masked_rows_bool())
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["float (B, H, N, N) with -inf", "float fully-masked row", "bool (B, 1, N, N)"])
def test_float32_masks_under_bf16_autocast_as_sdpa_takes_them(kind: str) -> None:
    """Autocast casts SDPA's inputs, the mask included: a float32 mask is taken on both paths, and agrees."""
    layer, x, mask = _layer(), torch.randn(B, N, D), MASKS[kind]()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused, explicit, _ = _both(layer, x, attn_mask=mask)
    assert fused.dtype == explicit.dtype == torch.bfloat16 and not explicit.isnan().any()
    torch.testing.assert_close(fused.float(), explicit.float(), rtol=0.05, atol=0.05)
