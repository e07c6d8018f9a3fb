"""Masked-autoencoder behaviour, and whole models against the plain reference with identical weights."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_kwargs
from reference import RefCRATE, RefCrateMAE, crate_mae_to_official, crate_to_official, randomize_

import whitebox
from whitebox.models import MAEOutput

MAE_MODELS = whitebox.list_models("*mae*")
L = 16  # 32 px, patch 8


def _create(name: str, **kwargs):
    return whitebox.create_model(name, **{**tiny_kwargs(name), **kwargs})


@pytest.mark.parametrize("name", MAE_MODELS)
def test_noise_makes_masking_and_output_deterministic(name):
    model = _create(name).eval()
    x = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, L)
    a, b = model(x, noise=noise), model(x, noise=noise)
    assert isinstance(a, MAEOutput)
    torch.testing.assert_close(a.mask, b.mask, rtol=0, atol=0)
    torch.testing.assert_close(a.pred, b.pred)
    assert a.pred.shape == (3, L, 8 * 8 * 3) and a.mask.shape == (3, L)
    # MAE's rule: the patches with the smallest noise are kept
    kept = torch.argsort(noise, dim=1)[:, : int(L * 0.25)]
    assert (a.mask.gather(1, kept) == 0).all()
    loss, pred, mask = a  # unpacks like the MAE reference code
    assert loss is a.loss and pred is a.pred and mask is a.mask


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9, 0.93])
def test_mask_ratio_is_honoured(ratio):
    model = _create("crate_mae_tiny").eval()
    out = model(torch.randn(4, 3, 32, 32), mask_ratio=ratio)
    removed = L - int(L * (1 - ratio))
    assert (out.mask.sum(dim=1) == removed).all()
    assert torch.isfinite(out.loss)


def test_a_mask_that_keeps_no_patch_is_refused():
    model = _create("crate_mae_tiny").eval()
    with pytest.raises(ValueError, match=r"mask_ratio 0.95 keeps none of the 16 patches.*below 0.9375"):
        model(torch.randn(1, 3, 32, 32), mask_ratio=0.95)


def test_loss_is_over_masked_patches_only():
    model = _create("crate_mae_tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x, noise=torch.rand(2, L))
    target = model.patchify(x)
    per_patch = ((out.pred - target) ** 2).mean(-1)
    expected = (per_patch * out.mask).sum() / out.mask.sum()
    torch.testing.assert_close(out.loss, expected)
    # changing the prediction of a kept patch does not change the loss
    pred = out.pred.clone()
    pred[out.mask == 0] += 10.0
    torch.testing.assert_close(model.forward_loss(x, pred, out.mask), out.loss)


def test_mask_ratio_zero_does_not_divide_by_zero():
    model = _create("crate_mae_tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x, mask_ratio=0.0)
    assert out.mask.sum() == 0
    expected = ((out.pred - model.patchify(x)) ** 2).mean()
    torch.testing.assert_close(out.loss, expected)  # plain autoencoding: all patches count


def test_norm_pix_loss_targets_are_normalised_per_patch():
    model = _create("crate_mae_tiny", norm_pix_loss=True).eval()
    x = torch.rand(2, 3, 32, 32) * 5 + 3
    out = model(x, noise=torch.rand(2, L))
    t = model.patchify(x)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
    expected = ((((out.pred - t) ** 2).mean(-1)) * out.mask).sum() / out.mask.sum()
    torch.testing.assert_close(out.loss, expected)


def test_patchify_roundtrip_and_layout():
    model = _create("crate_mae_tiny")
    x = torch.randn(2, 3, 32, 48)
    patches = model.patchify(x)
    assert patches.shape == (2, 4 * 6, 8 * 8 * 3)
    torch.testing.assert_close(model.unpatchify(patches, (4, 6)), x, rtol=0, atol=0)
    # patch (row 1, col 2), pixel (p=3, q=5), channel 2 sits at index (3 * 8 + 5) * 3 + 2
    assert patches[0, 1 * 6 + 2, (3 * 8 + 5) * 3 + 2] == x[0, 2, 8 + 3, 16 + 5]
    with pytest.raises(ValueError, match="square"):
        model.unpatchify(patches)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruct_returns_images(norm_pix):
    model = _create("crate_mae_tiny", norm_pix_loss=norm_pix).eval()
    x = torch.randn(2, 3, 32, 32)
    rec = model.reconstruct(x, noise=torch.rand(2, L))
    for img in (rec.masked, rec.reconstruction, rec.pasted):
        assert img.shape == x.shape and torch.isfinite(img).all()
    assert rec.mask.shape == (2, 1, 32, 32)
    assert rec.mask.mean() == pytest.approx(0.75)
    keep = rec.mask == 0
    torch.testing.assert_close(rec.pasted[keep.expand_as(x)], x[keep.expand_as(x)])
    assert (rec.masked[(~keep).expand_as(x)] == 0).all()


def test_default_mask_ratio_is_a_model_argument():
    model = _create("crate_mae_tiny", mask_ratio=0.5).eval()
    assert (model(torch.randn(1, 3, 32, 32)).mask.sum() == 8).all()


# --------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("ratio", [0.75, 0.5])
def test_crate_mae_matches_reference(norm_pix_loss, ratio):
    model = _create("crate_mae_tiny", norm_pix_loss=norm_pix_loss, lambd=5.0).eval()
    randomize_(model)
    ref = RefCrateMAE(img_size=32, patch=8, dim=64, depth=2, heads=4, lambd=5.0, norm_pix_loss=norm_pix_loss).eval()
    ref.load_state_dict(crate_mae_to_official(model, ref))
    x = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, L)
    ours = model(x, mask_ratio=ratio, noise=noise)
    loss, pred, mask = ref(x, mask_ratio=ratio, noise=noise)
    torch.testing.assert_close(ours.mask, mask, rtol=0, atol=0)
    torch.testing.assert_close(ours.pred, pred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, loss, rtol=1e-5, atol=1e-6)


def test_crate_mae_gradients_match_reference():
    model = _create("crate_mae_tiny").train()
    randomize_(model)
    ref = RefCrateMAE(img_size=32, patch=8, dim=64, depth=2, heads=4).train()
    ref.load_state_dict(crate_mae_to_official(model, ref))
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, L)
    model(x, noise=noise).loss.backward()
    ref(x, noise=noise)[0].backward()
    torch.testing.assert_close(model.encoder.blocks[1].ista.weight.grad, ref.blocks[1].layers[0][1].fn.weight.grad)
    torch.testing.assert_close(
        model.decoder_blocks[0].attn.qkv.weight.grad, ref.decoder_blocks[0].layers[0][1].fn.qkv.weight.grad
    )
    torch.testing.assert_close(model.mask_token.grad, ref.mask_token.grad)


def test_crate_classifier_matches_reference():
    model = whitebox.create_model(
        "crate_tiny", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10
    )
    model.eval()
    randomize_(model)
    ref = RefCRATE(img_size=32, patch=8, dim=64, depth=2, heads=4, num_classes=10).eval()
    ref.load_state_dict(crate_to_official(model))
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
