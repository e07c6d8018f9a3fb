"""Extension points: FLOPs and analysis ask the parts (whitebox.layers.declare), never their types."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_kwargs
from torch import nn

import whitebox
from whitebox.analysis import attention_maps, layerwise_stats
from whitebox.analysis.images import normalize_images
from whitebox.analysis.measures import compression, unit_tokens
from whitebox.flops import count_flops
from whitebox.layers import AttentionMaps, BlockProbes, Probe
from whitebox.layers.declare import linear_flops, merge, prefixed
from whitebox.sample_images import sample_batch


class Undeclared(nn.Module):
    """A block from a family that states nothing about itself."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


class Memberships(nn.Module):
    """A token mixer whose picture is a per-head membership of each token (rows that are not tokens)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.w = nn.Linear(dim, heads, bias=False)

    def attention_maps(self, x: torch.Tensor) -> AttentionMaps:
        pi = self.w(x).softmax(dim=-1).transpose(1, 2).unsqueeze(2)  # (B, h, 1, N), softmax over heads
        return AttentionMaps(pi, queries="other", name="membership")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention_maps(x).maps.squeeze(2).sum(1, keepdim=True).transpose(1, 2)


class Declared(Undeclared):
    """A new block that declares its FLOPs and probe points: compression around ``fc``, maps from ``mix``."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__(dim)
        self.mix = Memberships(dim, heads)
        self.u = nn.Parameter(torch.randn(heads, dim, dim // heads))

    def flops(self, num_tokens: int) -> dict[str, int]:
        return merge({"fc": linear_flops(self.fc, num_tokens)}, prefixed("mix", {"": 2 * num_tokens * 64 * 4}))

    def probes(self) -> BlockProbes:
        return BlockProbes(
            compression=(Probe(self.fc, "input"), Probe(self.fc, "output")), subspaces=lambda: self.u, maps=self.mix
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(self.mix(x)))


def _tiny(name: str) -> nn.Module:
    return whitebox.create_model(name, **tiny_kwargs(name))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return normalize_images(sample_batch(32, 2))


@pytest.mark.parametrize("stage", ["encoder", "decoder"])
def test_undeclared_block_is_named_in_flops_and_analysis(stage: str, images: torch.Tensor) -> None:
    model = _tiny("crate_mae_tiny")
    stack = model.encoder.blocks if stage == "encoder" else model.decoder_blocks
    stack[1] = Undeclared(64)
    with pytest.raises(TypeError, match=rf"count FLOPs of {stage} block 1 \(Undeclared\).*flops\(\)"):
        count_flops(model)
    with pytest.raises(TypeError, match=rf"analyse {stage} block 1 \(Undeclared\).*probes\(\)"):
        layerwise_stats(model, images)
    with pytest.raises(TypeError, match=rf"{stage} block 1 \(Undeclared\)"):
        attention_maps(model, images, stage=stage, blocks=1)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # nothing left behind


def test_undeclared_patch_embedding_is_named() -> None:
    model = _tiny("crate_tiny")
    model.patch_embed.flops = None  # a stem that states nothing
    with pytest.raises(TypeError, match=r"count FLOPs of patch embedding \(LinearPatchEmbed\)"):
        count_flops(model)


def test_new_block_needs_no_edit_elsewhere(images: torch.Tensor) -> None:
    """A block that declares itself is counted and measured by its own declarations."""
    model = _tiny("crate_tiny")
    model.blocks[0] = Declared(64)
    n = 1 + 16
    count = count_flops(model, mode="features")
    assert count.breakdown["encoder.fc"] == 2 * n * 64 * 64
    assert count.breakdown["encoder.mix"] == 2 * n * 64 * 4
    stats = layerwise_stats(model, images)
    x = model.embed(images)
    z = model.blocks[0].fc(model.blocks[0].mix(x))
    u = model.blocks[0].u.detach()
    assert stats.rows[0]["compression"] == pytest.approx(compression(unit_tokens(z), u).mean().item(), rel=1e-5)
    maps = attention_maps(model, images, blocks=[0, 1], upsample=None)
    pi = model.blocks[0].mix.attention_maps(x).maps[:, :, 0, 1:]  # memberships of the patch tokens
    torch.testing.assert_close(torch.from_numpy(maps[:, 0]), pi.reshape(2, 4, 4, 4).detach())


def test_vit_blocks_declare_no_maps(images: torch.Tensor) -> None:
    with pytest.raises(TypeError, match="encoder block 0 of ViTMAE .*names none"):
        attention_maps(_tiny("vit_mae_base"), images)


def test_probe_and_probes_check_themselves() -> None:
    with pytest.raises(ValueError, match="side must be 'input' or 'output'"):
        Probe(nn.Identity(), "middle")
    with pytest.raises(ValueError, match="need subspaces"):
        BlockProbes(compression=(Probe(nn.Identity()), Probe(nn.Identity())))
    assert prefixed("attn", {"": 1, "qkv": 2}) == {"attn": 1, "attn.qkv": 2}
    assert merge({"a": 1, "b": 0}, {"a": 2, "c": 3}) == {"a": 3, "c": 3}


class PatchesOnly(Declared):
    """A block whose mixing layer sees the patch tokens only (as ToST's TSSA layers): 0 prefix tokens there."""

    def probes(self) -> BlockProbes:
        return BlockProbes(maps=self.mix, num_prefix_tokens=0, sparse_code=Probe(self.mix, "output"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], self.mix(x[:, 1:])], dim=1)


def test_blocks_that_see_patch_tokens_only_declare_it(images: torch.Tensor) -> None:
    model = _tiny("crate_tiny")
    model.blocks[0] = PatchesOnly(64)
    maps, names = attention_maps(model, images, blocks=0, upsample=None, return_names=True)  # 16 keys kept
    assert names == ["membership"]
    x = model.embed(images)
    pi = model.blocks[0].mix.attention_maps(x[:, 1:]).maps[:, :, 0]
    torch.testing.assert_close(torch.from_numpy(maps[:, 0]), pi.reshape(2, 4, 4, 4).detach())
    patches = layerwise_stats(model, images, include_class_token=False)
    code = model.blocks[0].mix(x[:, 1:]).detach().double()
    assert patches.rows[0]["l1"] == pytest.approx(code.abs().sum(-1).mean().item())  # all 16 patch tokens
