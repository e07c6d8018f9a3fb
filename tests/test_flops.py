"""The analytic FLOP counter against closed forms and against torch's FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_kwargs
from torch.utils.flop_counter import FlopCounterMode

import whitebox
from whitebox.flops import count_flops, format_flops

MAE_MODELS = [n for n in whitebox.list_models() if "_mae_" in n]


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only
        return whitebox.create_model(name, **kwargs)


def _explicit_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Route every attention layer (ours and timm's) through plain matmuls, which FlopCounterMode sees."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


def _measure(model: torch.nn.Module, x: torch.Tensor, backward: bool = False) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if backward:
            out.loss.backward()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


def test_crate_mae_base_closed_form():
    # By hand: encoder layer 8 N d^2 (U, W_out, two ISTA products) + 4 N^2 d (scores, values);
    # decoder layer 6 N d^2 (E, U, W_out) + 4 N^2 d; patch conv on 196 patches; pixel head on 197 tokens.
    for size in (224, 384):
        grid = size // 16
        n, d, depth = grid * grid + 1, 768, 12
        enc = 8 * n * d * d + 4 * n * n * d
        dec = 6 * n * d * d + 4 * n * n * d
        expected = depth * (enc + dec) + 2 * (n - 1) * d * (3 * 16 * 16) + 2 * n * d * (16 * 16 * 3)
        count = count_flops(_meta("crate_mae_base"), img_size=size)
        assert count.total == expected
        assert count.tokens == n
        assert count_flops(_meta("crate_mae_base"), img_size=size, mode="train").total == 3 * expected
    assert count_flops(_meta("crate_mae_base")).total == 22_845_726_720  # the "about 23 GFLOP"


def test_vit_mae_base_closed_form():
    n, d = 197, 768  # ViT block: qkv 6 N d^2, proj 2 N d^2, MLP (ratio 4) 16 N d^2, attention 4 N^2 d
    block = 24 * n * d * d + 4 * n * n * d
    expected = (12 + 8) * block + 2 * 196 * d * 768 + 2 * n * d * 768
    assert count_flops(_meta("vit_mae_base")).total == expected


def test_breakdown_modes_and_encoder_models():
    model = _meta("crate_mae_base")
    fwd, feats, train = (count_flops(model, mode=m) for m in ("forward", "features", "train"))
    assert sum(fwd.breakdown.values()) == fwd.total
    assert {k: 3 * v for k, v in fwd.breakdown.items()} == train.breakdown
    assert not any(k.startswith("decoder") for k in feats.breakdown)
    assert feats.breakdown == {k: v for k, v in fwd.breakdown.items() if not k.startswith("decoder")}
    crate = _meta("crate_base")  # supervised: linear patch embedding, head on the class token only
    with_head, no_head = count_flops(crate), count_flops(crate, mode="features")
    assert with_head.total - no_head.total == with_head.breakdown["head"] == 2 * 768 * 1000
    assert no_head.total == feats.total - feats.breakdown["patch_embed"] + 2 * 196 * 768 * 768
    assert "22.85 GFLOP" in fwd.table() and format_flops(1.5e12) == "1.50 TFLOP"


@pytest.mark.parametrize("name", MAE_MODELS)
def test_matches_flop_counter_mode_exactly(name):
    """With explicit attention every counted product is an aten mm/addmm/bmm/convolution: exact match.

    The backward measured by autograd is 2 x forward minus the patch convolution's input gradient
    (images need none); our 'train' convention is 3 x forward, so the two differ by exactly that.
    """
    model = _explicit_attention(whitebox.create_model(name, **tiny_kwargs(name)))
    x = torch.randn(3, 3, 32, 32)
    analytic = count_flops(model)
    assert sum(_measure(model, x).values()) == 3 * analytic.total
    measured_train = sum(_measure(model, x, backward=True).values())
    assert measured_train == 3 * count_flops(model, mode="train").total - 3 * analytic.breakdown["patch_embed"]


def test_crate_encoder_matches_flop_counter_mode():
    model = _explicit_attention(whitebox.create_model("crate_tiny", **tiny_kwargs("crate_tiny"), num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    assert sum(_measure(model, x).values()) == 2 * count_flops(model).total
    with FlopCounterMode(display=False) as counter:
        model.forward_features(x)
    assert counter.get_total_flops() == 2 * count_flops(model, mode="features").total


def test_crate_alpha_closed_form_and_flop_counter_mode():
    # By hand, per layer: MSSA 4 N d^2 (U, W_out) + 4 N^2 d; ODL with D, D1 of d x 4d and two ISTA steps:
    # x D (8 N d^2), z D^T and (.) D (16 N d^2), z D1^T (8 N d^2). Conv stem on the patches, head on one token.
    for name, patch, d, depth in (
        ("crate_alpha_base_patch16", 16, 768, 12),
        ("crate_alpha_large_patch14", 14, 1024, 24),
    ):
        n = (224 // patch) ** 2 + 1
        layer = 36 * n * d * d + 4 * n * n * d
        expected = depth * layer + 2 * (n - 1) * d * 3 * patch * patch + 2 * d * 1000
        count = count_flops(_meta(name))
        assert count.total == expected
        assert count.breakdown["encoder.ista"] == depth * 24 * n * d * d
        assert count.breakdown["encoder.decode"] == depth * 8 * n * d * d
    model = _explicit_attention(whitebox.create_model("crate_alpha_base_patch16", **tiny_kwargs("crate_tiny")))
    x = torch.randn(2, 3, 32, 32)
    assert sum(_measure(model, x).values()) == 2 * count_flops(model).total
    with FlopCounterMode(display=False) as counter:
        model.forward_features(x)
    assert counter.get_total_flops() == 2 * count_flops(model, mode="features").total
    model.blocks[0].ista.iterations = 3  # one more step: z D^T and (.) D once more
    assert sum(_measure(model, x).values()) == 2 * count_flops(model).total


def test_fused_attention_counted_per_op():
    """On the fused path the products outside SDPA match exactly; SDPA itself is counted by
    FlopCounterMode only where torch registers a formula for the kernel the device dispatches to
    (the CPU flash kernel has none in current torch): then it must equal our scores + values."""
    model = whitebox.create_model("crate_mae_tiny", **tiny_kwargs("crate_mae_tiny"), fused_attn=True)
    x = torch.randn(2, 3, 32, 32)
    analytic = count_flops(model)
    attn = sum(v for k, v in analytic.breakdown.items() if k.endswith((".scores", ".values")))
    per_op = _measure(model, x)
    sdpa = sum(v for k, v in per_op.items() if "attention" in k)
    assert sum(per_op.values()) - sdpa == 2 * (analytic.total - attn)
    assert sdpa in (0, 2 * attn)


def test_errors_are_clear():
    model = _meta("crate_mae_base")
    with pytest.raises(ValueError, match="mode must be one of"):
        count_flops(model, mode="backward")
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        count_flops(model, img_size=200)
    with pytest.raises(TypeError, match="img_size must be"):
        count_flops(model, img_size="224")
    with pytest.raises(TypeError, match="expected a MaskedAutoencoder or TokenEncoder"):
        count_flops(torch.nn.Linear(2, 2))
