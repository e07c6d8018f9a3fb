"""Generic suite over every registered model (timm's backbone interface), at small sizes."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_kwargs

import whitebox
from whitebox.models import MaskedAutoencoder

MODELS = whitebox.list_models()
IMG = torch.randn(2, 3, 32, 32)


def _create(name: str, **kwargs) -> torch.nn.Module:
    return whitebox.create_model(name, **{**tiny_kwargs(name), **kwargs})


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The training objective of the model: MAE loss (fixed noise) or logits."""
    if isinstance(model, MaskedAutoencoder):
        noise = torch.rand(
            x.shape[0], model.encoder.patch_embed.num_patches, generator=torch.Generator().manual_seed(1)
        )
        return model(x, noise=noise).loss
    return model(x)


def test_every_family_is_registered():
    expected = {f"crate_{s}" for s in ("tiny", "small", "base", "large")}
    expected |= {f"crate_mae_{s}" for s in ("tiny", "small", "base", "large")} | {"vit_mae_base", "vit_mae_large"}
    expected |= {f"crate_alpha_{s}_patch{p}" for s, p in [("base", 8), ("base", 16), ("base", 32), ("large", 8)]}
    expected |= {"crate_alpha_large_patch14", "crate_alpha_large_patch32"}
    expected |= {f"cbt_{s}_patch16" for s in ("tiny", "small", "base", "large")}
    expected |= {f"tost_cab_{s}_{d}_p{p}" for s, d in [("tiny", 12), ("small", 12), ("medium", 24)] for p in (8, 16)}
    assert expected <= set(MODELS)


# trainable parameters at 224 px; DESIGN.md's table minus the tensors the official code builds but never uses
PARAMS = {
    "crate_tiny": 6.09,
    "crate_small": 13.12,
    "crate_base": 22.80,
    "crate_large": 77.64,
    "crate_mae_tiny": 11.56 - 0.15 - 0.15,  # - decoder_embed - fixed pos tables
    "crate_mae_small": 25.41 - 0.33 - 0.23,
    "crate_mae_base": 43.75,
    "crate_mae_large": 154.27 - 1.05 - 0.40,
    "vit_mae_base": 143.49 - 0.59,  # official harness: unused decoder_embed
    "crate_alpha_base_patch32": 73.99,  # CRATE-alpha: the official class, all parameters used
    "crate_alpha_base_patch16": 72.33,
    "crate_alpha_base_patch8": 72.34,
    "crate_alpha_large_patch32": 255.98,
    "crate_alpha_large_patch14": 253.65,
    "crate_alpha_large_patch8": 253.79,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_match_the_official_architectures(name):
    with torch.device("meta"):
        model = whitebox.create_model(name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    assert trainable == pytest.approx(PARAMS[name], abs=0.01)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = _create(name).train()
    out = _run(model, IMG)
    assert torch.isfinite(out).all()
    (out.sum() if out.ndim else out).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    # an MAE encoder's classifier head is Identity by default; nothing trainable is allowed to be dead
    assert not missing, f"parameters without gradient: {missing}"


def _count_calls(module: torch.nn.Module) -> list[int]:
    """Count forward calls (hooks do not fire on checkpoint recomputation, a wrapped forward does)."""
    calls: list[int] = []
    forward = module.forward
    module.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]
    return calls


@pytest.mark.parametrize("name", MODELS)
def test_gradient_checkpointing_gives_the_same_output_and_gradients(name):
    model = _create(name).train()
    encoder = getattr(model, "encoder", model)
    blocks = [encoder.blocks[0]] + ([model.decoder_blocks[0]] if hasattr(model, "decoder_blocks") else [])
    counters = [_count_calls(b) for b in blocks]
    out = _run(model, IMG)
    (out.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = _run(model, IMG)
    out_ckpt.sum().backward()
    assert [len(c) for c in counters] == [3] * len(blocks)  # once plain, twice with recomputation
    torch.testing.assert_close(out_ckpt, out)
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier_and_headless_give_num_features(name):
    model = _create(name, num_classes=7).eval()
    assert model.num_classes == 7
    feats = model.forward_features(IMG)
    assert feats.shape == (2, 1 + 16, model.num_features)
    assert model.forward_head(feats).shape == (2, 7)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(0)
    assert model.forward_head(feats).shape == (2, model.num_features)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    model.reset_classifier(3, global_pool="avg")
    assert model.forward_head(feats).shape == (2, 3)
    encoder = getattr(model, "encoder", model)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), encoder.fc_norm(feats[:, 1:].mean(1)))
    headless = _create(name, num_classes=0).eval()
    assert headless.forward_head(headless.forward_features(IMG)).shape == (2, headless.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_agree_with_forward_features(name):
    model = _create(name).eval()
    final, inter = model.forward_intermediates(IMG)
    torch.testing.assert_close(final, model.forward_features(IMG))
    assert len(inter) == 2 and inter[0].shape == (2, model.num_features, 4, 4)
    last = model.forward_intermediates(IMG, indices=[-1], norm=True, output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(last[0], final[:, 1:])
    encoder = getattr(model, "encoder", model)
    calls = _count_calls(encoder.blocks[1])
    first = model.forward_intermediates(IMG, indices=[0], stop_early=True, intermediates_only=True)
    assert len(first) == 1 and not calls  # the second block never ran
    torch.testing.assert_close(first[0], inter[0])
    with pytest.raises(ValueError, match=r"block indices must be in \[-2, 1\], got \[5\]"):
        model.forward_intermediates(IMG, indices=[5])


@pytest.mark.parametrize("name", MODELS)
def test_other_input_sizes_and_channels(name):
    model = _create(name, img_size=48, in_chans=1).eval()
    x = torch.randn(1, 1, 48, 48)
    assert model.forward_features(x).shape == (1, 1 + 36, model.num_features)
    out = _run(model, x)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_optimizer_interface(name):
    model = _create(name)
    params = dict(model.named_parameters())
    no_wd = model.no_weight_decay()
    assert no_wd and all(any(k == n or n.startswith(k) for n in params) for k in no_wd)
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher())
    grouped = [n for names in groups.values() for n in names]
    assert sorted(grouped) == sorted(n for n, p in params.items() if p.requires_grad)
    order = list(groups)
    stem = next(g for g, names in groups.items() if any("patch_embed" in n for n in names))
    first_block = next(g for g, names in groups.items() if any(".0." in n and "blocks" in n for n in names))
    assert order.index(stem) < order.index(first_block)


@pytest.mark.parametrize(
    "name", [n for n in MODELS if n.startswith(("crate_", "cbt_", "tost_ista_")) and "mae" not in n]
)
def test_learned_positions_resize(name):
    model = _create(name)
    with pytest.raises(ValueError, match="dynamic_img_size"):
        model(torch.randn(1, 3, 48, 48))
    dynamic = _create(name, dynamic_img_size=True).eval()
    assert dynamic(torch.randn(1, 3, 48, 48)).shape == (1, dynamic.num_classes)


@pytest.mark.parametrize("name", ["crate_tiny", "crate_mae_tiny", "vit_mae_base"])
def test_features_only_through_timm_and_whitebox(name):
    import timm

    for create in (timm.create_model, whitebox.create_model):
        model = create(name, features_only=True, out_indices=[0, 1], **tiny_kwargs(name)).eval()
        feats = model(IMG)
        assert [f.shape for f in feats] == [(2, 64, 4, 4)] * 2
        assert model.feature_info.channels() == [64, 64]


@pytest.mark.parametrize("fused", [True, False])
def test_dropout_and_drop_path_are_active_in_training_only(fused):
    model = _create(
        "crate_tiny", drop_rate=0.5, pos_drop_rate=0.5, attn_drop_rate=0.5, proj_drop_rate=0.5, drop_path_rate=0.5
    )
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    model.train()
    assert not torch.allclose(model(IMG), model(IMG))
    model.eval()
    torch.testing.assert_close(model(IMG), model(IMG))
    plain = _create("crate_tiny").eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(IMG), plain(IMG))  # eval: regularisation leaves the function unchanged


def test_timm_data_config_resolves():
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(_create("crate_tiny"))
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    assert resolve_model_data_config(whitebox.create_model("crate_small", depth=1))["interpolation"] == "bilinear"


def test_crate_mae_decoder_depth_zero_is_a_linear_decoder():
    model = _create("crate_mae_tiny", decoder_depth=0)
    assert len(model.decoder_blocks) == 0
    assert torch.isfinite(model(IMG).loss)
