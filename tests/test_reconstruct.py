"""Reconstructions under norm_pix_loss: MAE's display convention by default, a leak-free view on request."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_kwargs

import whitebox
from whitebox.analysis import reconstruction_grid

P, L = 8, 16  # 32 px images, patch 8


def _model(name: str = "crate_mae_tiny", norm_pix_loss: bool = True) -> torch.nn.Module:
    return whitebox.create_model(name, **tiny_kwargs(name), norm_pix_loss=norm_pix_loss).eval()


def _hidden_pixels_changed(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with only the pixels of removed patches changed (scaled and shifted, so their statistics move)."""
    hidden = mask.expand_as(x).bool()
    return torch.where(hidden, 3.0 * x + 2.0, x)


def _patch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std (as MAE's norm_pix_loss computes them), looped over patches by hand."""
    b, _, h, w = x.shape
    mean, std = torch.empty(b, h // P, w // P), torch.empty(b, h // P, w // P)
    for i in range(h // P):
        for j in range(w // P):
            patch = x[:, :, i * P : (i + 1) * P, j * P : (j + 1) * P].reshape(b, -1)
            mean[:, i, j] = patch.mean(-1)
            std[:, i, j] = (patch.var(-1) + 1e-6).sqrt()
    return mean, std


def _expand(stat: torch.Tensor) -> torch.Tensor:
    return stat.repeat_interleave(P, 1).repeat_interleave(P, 2).unsqueeze(1)  # (B, 1, H, W)


@pytest.mark.parametrize("name", ["crate_mae_tiny", "vit_mae_base"])
def test_leak_free_view_ignores_hidden_pixels_and_default_does_not(name: str) -> None:
    """The issue's example: change only hidden pixels; the prediction is identical."""
    model, x, noise = _model(name), torch.randn(2, 3, 32, 32), torch.rand(2, L)
    before = model.reconstruct(x, noise=noise, pixel_stats="visible")
    changed = _hidden_pixels_changed(x, before.mask)
    after = model.reconstruct(changed, noise=noise, pixel_stats="visible")
    torch.testing.assert_close(model(changed, noise=noise).pred, model(x, noise=noise).pred)  # same prediction
    torch.testing.assert_close(after.reconstruction, before.reconstruction)  # the whole picture is unchanged
    torch.testing.assert_close(after.pasted, before.pasted)
    assert before.pixel_stats == "visible"
    # MAE's convention (the default) un-normalises hidden patches with their own, hidden, statistics
    default_before = model.reconstruct(x, noise=noise)
    default_after = model.reconstruct(changed, noise=noise)
    hidden = before.mask.expand_as(x).bool()
    assert (default_after.reconstruction - default_before.reconstruction)[hidden].abs().max() > 1.0
    torch.testing.assert_close(default_after.reconstruction[~hidden], default_before.reconstruction[~hidden])
    assert default_before.pixel_stats == "patch"


def test_default_is_maes_convention_and_visible_uses_visible_averages() -> None:
    model, x, noise = _model(), torch.randn(2, 3, 32, 32) * 2 + 0.5, torch.rand(2, L)
    pred = model.unpatchify(model(x, noise=noise).pred, (4, 4))  # normalised prediction as an image
    mean, std = _patch_stats(x)
    rec = model.reconstruct(x, noise=noise)
    torch.testing.assert_close(rec.reconstruction, pred * _expand(std) + _expand(mean), rtol=1e-5, atol=1e-5)
    visible = model.reconstruct(x, noise=noise, pixel_stats="visible")
    kept = visible.mask[:, 0, ::P, ::P] == 0  # (B, 4, 4)
    avg_mean = torch.stack([mean[b][kept[b]].mean() for b in range(2)]).view(2, 1, 1).expand(-1, 4, 4)
    avg_std = torch.stack([std[b][kept[b]].mean() for b in range(2)]).view(2, 1, 1).expand(-1, 4, 4)
    want = pred * _expand(torch.where(kept, std, avg_std)) + _expand(torch.where(kept, mean, avg_mean))
    torch.testing.assert_close(visible.reconstruction, want, rtol=1e-5, atol=1e-5)
    keep = (visible.mask == 0).expand_as(x)
    torch.testing.assert_close(visible.reconstruction[keep], rec.reconstruction[keep])  # visible: own stats


def test_without_norm_pix_loss_both_views_agree() -> None:
    model, x, noise = _model(norm_pix_loss=False), torch.randn(2, 3, 32, 32), torch.rand(2, L)
    a, b = model.reconstruct(x, noise=noise), model.reconstruct(x, noise=noise, pixel_stats="visible")
    torch.testing.assert_close(a.reconstruction, b.reconstruction)
    assert a.pixel_stats is None and b.pixel_stats is None


@pytest.mark.parametrize("bad", ["own", "hidden", None, 1])
def test_pixel_stats_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match=r"pixel_stats must be 'patch' .* or 'visible'"):
        _model().reconstruct(torch.randn(1, 3, 32, 32), pixel_stats=bad)


def test_reconstruction_grid_offers_the_leak_free_view() -> None:
    model, x, noise = _model(), torch.randn(1, 3, 32, 32), torch.rand(1, L)
    mask = model.reconstruct(x, noise=noise).mask
    changed = _hidden_pixels_changed(x, mask)
    leak_free = [
        reconstruction_grid(model, im, noise=noise, pixel_stats="visible", labels=False) for im in (x, changed)
    ]
    shown = [reconstruction_grid(model, im, noise=noise, labels=False) for im in (x, changed)]
    # column 1 (the reconstruction) and 2 (pasted) are identical in the leak-free view; the original differs
    assert not np.array_equal(leak_free[0], leak_free[1])
    middle = slice(32 + 2, 3 * 32 + 2 * 2)  # tiles of 32 px, 2 px apart: columns 1 and 2
    assert np.array_equal(leak_free[0][:, middle], leak_free[1][:, middle])
    assert not np.array_equal(shown[0][:, middle], shown[1][:, middle])
