"""Each layer against the plain reference written from DESIGN.md's equations, with identical weights."""

from __future__ import annotations

import pytest
import torch
from reference import Attention, DecoderBlock, EncoderBlock, ISTAStep, LinearStep, sincos_table
from torch import nn

from whitebox.layers import (
    ISTA,
    CrateAlphaBlock,
    CrateBlock,
    CrateDecoderBlock,
    OvercompleteISTA,
    SinCosPosEmbed,
    SubspaceAttention,
    sincos_2d,
)

DIM, HEADS = 48, 6


def _attention_pair() -> tuple[SubspaceAttention, Attention]:
    ours = SubspaceAttention(DIM, HEADS).eval()
    ref = Attention(DIM, HEADS).eval()
    ref.qkv.weight.data.copy_(ours.qkv.weight)
    ref.to_out[0].weight.data.copy_(ours.proj.weight)
    ref.to_out[0].bias.data.copy_(torch.randn(DIM))
    ours.proj.bias.data.copy_(ref.to_out[0].bias)
    return ours, ref


@pytest.mark.parametrize("shape", [(2, 17, DIM), (1, 1, DIM), (3, 50, DIM)])
def test_mssa_matches_reference_both_paths(shape):
    ours, ref = _attention_pair()
    x = torch.randn(shape)
    expected = ref(x)
    ours.fused_attn = True
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
    ours.fused_attn = False
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


def test_mssa_returns_attention_maps():
    ours, ref = _attention_pair()
    x = torch.randn(2, 10, DIM)
    out, attn = ours(x, return_attention=True)
    _, ref_attn = ref.attention(x)
    assert attn.shape == (2, HEADS, 10, 10)
    torch.testing.assert_close(attn, ref_attn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, HEADS, 10))
    torch.testing.assert_close(out, ours(x), rtol=1e-5, atol=1e-5)


def test_mssa_subspaces_are_head_slices_of_u():
    ours, _ = _attention_pair()
    x = torch.randn(5, DIM)
    u = ours.subspaces()
    assert u.shape == (HEADS, DIM, DIM // HEADS)
    w = ours.qkv(x)  # z U
    for k in range(HEADS):
        torch.testing.assert_close(x @ u[k], w[:, k * 8 : (k + 1) * 8])


def test_mssa_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        SubspaceAttention(50, 6)


@pytest.mark.parametrize("lambd", [0.1, 0.5, 5.0])
def test_ista_matches_three_product_reference(lambd):
    ours = ISTA(DIM, eta=0.1, lambd=lambd)
    ref = ISTAStep(DIM, eta=0.1, lambd=lambd)
    ref.weight.data.copy_(ours.weight)
    x = torch.randn(4, 9, DIM)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    assert (ours(x) >= 0).all()


def test_ista_is_a_proximal_descent_step_on_the_lasso_objective():
    """ISTA(z) is one proximal-gradient step from a = z on 1/2 ||z - a D^T||^2 + lambda ||a||_1, a >= 0."""
    ista = ISTA(DIM, eta=0.1, lambd=0.1)
    with torch.no_grad():
        ista.weight.copy_(torch.linalg.qr(torch.randn(DIM, DIM))[0])  # orthogonal D: Lipschitz constant 1
    z = torch.relu(torch.randn(64, DIM))

    def objective(a):
        return 0.5 * ((z - a @ ista.weight.t()) ** 2).sum() + 0.1 * a.abs().sum()

    with torch.no_grad():
        a1 = ista(z)
    assert objective(a1) < objective(z) - 1.0
    ista.lambd = 0.0  # without the threshold the same step gives a denser code
    with torch.no_grad():
        assert (a1 == 0).float().mean() > (ista(z) == 0).float().mean()


def test_encoder_block_matches_reference():
    ours = CrateBlock(DIM, HEADS, eta=0.1, lambd=0.5).eval()
    ref = EncoderBlock(DIM, HEADS, eta=0.1, lambd=0.5).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    attn, ista = ref.layers[0]
    attn.norm.load_state_dict(ours.norm1.state_dict())
    attn.fn.qkv.load_state_dict(ours.attn.qkv.state_dict())
    attn.fn.to_out[0].load_state_dict(ours.attn.proj.state_dict())
    ista.norm.load_state_dict(ours.norm2.state_dict())
    ista.fn.weight.data.copy_(ours.ista.weight)
    x = torch.randn(2, 13, DIM)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_decoder_block_matches_reference():
    ours = CrateDecoderBlock(DIM, HEADS).eval()
    ref = DecoderBlock(DIM, HEADS).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    linear, attn = ref.layers[0]
    linear.norm.load_state_dict(ours.norm1.state_dict())
    linear.fn.weight.data.copy_(ours.linear.weight)
    attn.norm.load_state_dict(ours.norm2.state_dict())
    attn.fn.qkv.load_state_dict(ours.attn.qkv.state_dict())
    attn.fn.to_out[0].load_state_dict(ours.attn.proj.state_dict())
    x = torch.randn(2, 13, DIM)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    assert isinstance(linear.fn, LinearStep)


@pytest.mark.parametrize("grid", [1, 4, 14])
def test_sincos_matches_mae_numpy_layout(grid):
    ours = sincos_2d(64, grid)
    ref = torch.from_numpy(sincos_table(64, grid))
    assert ours.shape == (grid * grid + 1, 64)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert (ours[0] == 0).all()


def test_sincos_resamples_to_other_grids_exactly():
    pos = SinCosPosEmbed(32, (4, 4))
    assert pos().shape == (1, 17, 32)
    assert "table" not in pos.state_dict()  # fixed: never stored in checkpoints
    other = pos((3, 5))
    torch.testing.assert_close(other, sincos_2d(32, (3, 5))[None])
    assert pos((3, 5)) is other and "table" not in pos.state_dict()  # built once per grid, never saved
    # row-major tokens: token (r, c) encodes column c in the first half, row r in the second
    torch.testing.assert_close(other[0, 1 + 1 * 5 + 2, :16], sincos_2d(32, (1, 3))[1 + 2, :16])


LAYERS = {
    "mssa": lambda: SubspaceAttention(DIM, HEADS),
    "ista": lambda: ISTA(DIM),
    "encoder": lambda: CrateBlock(DIM, HEADS),
    "decoder": lambda: CrateDecoderBlock(DIM, HEADS),
    "overcomplete_ista": lambda: OvercompleteISTA(DIM),
    "alpha": lambda: CrateAlphaBlock(DIM, HEADS),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_under_bf16_autocast(layer):
    module = LAYERS[layer]()
    x = torch.randn(2, 16, DIM)
    ref = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.parameters())


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_compile_without_graph_breaks(layer):
    module = LAYERS[layer]()
    x = torch.randn(2, 16, DIM)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), module(x), rtol=1e-5, atol=1e-5)


def test_layers_drop_into_a_timm_vision_transformer_and_train():
    """Replace a timm ViT's attention with MSSA and its MLP with ISTA; the network learns."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=3)
    for blk in vit.blocks:
        blk.attn = SubspaceAttention(32, num_heads=4)
        blk.mlp = ISTA(32, eta=0.1, lambd=0.1)
    x = torch.randn(24, 3, 16, 16)
    y = torch.arange(24) % 3
    x[y == 1, 0] += 1.0  # a learnable signal
    x[y == 2, 1] -= 1.0
    opt = torch.optim.AdamW(vit.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(vit(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None for p in vit.blocks[0].mlp.parameters())


def test_mssa_attention_mask_same_on_both_paths():
    ours, _ = _attention_pair()
    x = torch.randn(2, 7, DIM)
    keep = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    keep[..., 5:] = False  # padding tokens nobody attends to
    ours.fused_attn = True
    fused = ours(x, attn_mask=keep)
    ours.fused_attn = False
    explicit, attn = ours(x, attn_mask=keep, return_attention=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    assert (attn[..., 5:] == 0).all()
    # padding must not change the outputs of the real tokens
    torch.testing.assert_close(explicit[:, :5], ours(x[:, :5]), rtol=1e-5, atol=1e-5)


def test_mssa_causal_same_on_both_paths():
    ours, _ = _attention_pair()
    x = torch.randn(2, 6, DIM)
    fused = ours(x, is_causal=True)
    explicit, attn = ours(x, is_causal=True, return_attention=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    assert (attn.triu(1) == 0).all()
