"""What the ToST and CBT parts declare about themselves (``whitebox.layers.declare``, issue 20 item 1):
FLOPs checked against PyTorch's own count of the products the forward runs, and probe points / attention
maps (these run once the declarations module is merged)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import whitebox
from whitebox.layers import (
    CausalTokenStatisticsAttention,
    ContractBroadcastAttention,
    ContractBroadcastBlock,
    ConvStemPatchEmbed,
    TokenStatisticsAttention,
    TokenStatisticsBlock,
)
from whitebox.models.tost import ClassAttentionBlock, FourierPosEmbed, ToSTBlock

SHAPE = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


def _measured(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def _total(flops: dict[str, int], without: tuple[str, ...] = ()) -> int:
    return sum(v for k, v in flops.items() if not k.endswith(without))


# ----------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("n", [17, 196])
def test_layer_flops_equal_the_products_the_forward_runs(n):
    x = torch.randn(1, n, 64)
    tssa = TokenStatisticsAttention(64, 4)
    assert _total(tssa.flops(n)) == _measured(tssa, x)
    assert tssa.flops(n)["stats"] == 2 * n * 64  # linear in N: no N x N term
    causal = CausalTokenStatisticsAttention(64, 4, max_len=256)
    assert _total(causal.flops(n), without=("stats",)) == _measured(causal, x)  # cumulative sums: not products
    side = int((n - 1) ** 0.5)
    cbsa = ContractBroadcastAttention(64, 4, grid_size=(side, side))
    tokens = torch.randn(1, 1 + side * side, 64)
    assert _total(cbsa.flops(tokens.shape[1])) == _measured(cbsa, tokens)
    whitebox_block = TokenStatisticsBlock(64, 4)
    assert _total(whitebox_block.flops(tokens.shape[1])) == _measured(whitebox_block, tokens)
    block = ContractBroadcastBlock(64, 4, grid_size=(side, side))
    assert _total(block.flops(tokens.shape[1])) == _measured(block, tokens)
    assert block.flops(tokens.shape[1])["ista"] == 4 * tokens.shape[1] * 64 * 64


def test_block_stem_and_position_flops_equal_the_products_the_forward_runs():
    x = torch.randn(1, 16, 64)
    block = ToSTBlock(64, 4)
    assert _total(block.flops(16)) == _measured(block, x)
    cab = ClassAttentionBlock(64, 4)
    tokens = torch.randn(1, 17, 64)  # its scores are an element-wise product and a sum: not a matmul op
    assert _total(cab.flops(17), without=("scores",)) == _measured(cab, tokens)
    for patch in (8, 16):
        stem = ConvStemPatchEmbed(64, patch, 3, 64)
        assert stem.flops((64 // patch, 64 // patch))[""] == _measured(stem, torch.randn(1, 3, 64, 64))
    pos = FourierPosEmbed(64)
    assert pos.flops((3, 5))[""] == _measured(pos, (3, 5))


def test_tost_model_flops_equal_the_products_of_its_forward():
    model = whitebox.create_model("tost_cab_tiny_12_p16", **SHAPE).eval()
    flops = model.flops((4, 4))
    assert {"patch_embed", "pos_embed", "encoder.attn.stats", "class_attention.attn.scores", "head"} <= set(flops)
    assert _total(flops, without=("scores",)) == _measured(model, torch.randn(1, 3, 32, 32))
    assert "head" not in model.flops((4, 4), features_only=True)


@pytest.mark.parametrize(("name", "published"), [("cbt_tiny_patch16", 1.1), ("cbt_small_patch16", 4.0)])
def test_cbt_matrix_products_are_the_published_gflops(name, published):
    """The products CBT-T/S run at 224 px (counted by PyTorch, shapes only) round to the published GFLOPs."""
    with torch.device("meta"):
        model = whitebox.create_model(name).eval()
        total = _measured(model, torch.randn(1, 3, 224, 224))
    assert round(total / 1e9, 1) == published
    blocks = sum(_total(b.flops(197)) for b in model.blocks)
    assert blocks + model.patch_embed.flops((14, 14))[""] + 2 * model.embed_dim * 1000 == total


# ----------------------------------------------------------------------------- probe points (after the merge)
def test_blocks_declare_their_probe_points_and_maps():
    declare = pytest.importorskip("whitebox.layers.declare", reason="the declarations module of issue 20 item 1")
    tssa_block, cbsa_block, cab = (
        ToSTBlock(64, 4),
        ContractBroadcastBlock(64, 4, grid_size=(4, 4)),
        ClassAttentionBlock(64, 4),
    )
    for block in (tssa_block, cbsa_block, TokenStatisticsBlock(64, 4)):
        probes = block.probes()
        assert isinstance(probes, declare.BlockProbes)
        before, after = probes.compression
        assert (before.module, before.side, after.module, after.side) == (block, "input", block.norm2, "input")
        assert probes.subspaces().shape == (4, 64, 16) and probes.maps is block.attn
    x = torch.randn(2, 17, 64)
    membership = tssa_block.attn.attention_maps(x)
    assert membership.maps.shape == (2, 4, 1, 17) and (membership.queries, membership.name) == ("other", "membership")
    torch.testing.assert_close(membership.maps.sum(dim=1), torch.ones(2, 1, 17))  # a softmax over heads
    contraction = cbsa_block.attn.attention_maps(x)
    assert contraction.maps.shape == (2, 4, 64, 17) and contraction.name == "contraction"
    assert cab.probes().compression is None and cab.probes().maps is cab.attn
    assert cab.attn.attention_maps(x).maps.shape == (2, 4, 1, 17)
    model = whitebox.create_model("tost_cab_tiny_12_p16", **SHAPE)
    assert list(model.analysis_stacks()) == ["encoder", "class_attention"]


def test_count_flops_takes_the_new_families():
    flops = pytest.importorskip("whitebox.flops")
    if not hasattr(whitebox.models.TokenEncoder, "flops"):
        pytest.skip("TokenEncoder.flops arrives with issue 20 item 1")
    for name in ("tost_cab_tiny_12_p16", "cbt_tiny_patch16"):
        model = whitebox.create_model(name, **SHAPE).eval()
        count = flops.count_flops(model, mode="forward")
        assert count.total == _measured(model, torch.randn(1, 3, 32, 32)) + (
            sum(v for k, v in count.breakdown.items() if k.endswith("scores")) if name.startswith("tost") else 0
        )
