"""Images of another float dtype than the model's: one clear message at the model's entry, every family."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_kwargs

import whitebox

FAMILIES = ["crate_tiny", "crate_alpha_base_patch16", "crate_mae_tiny", "vit_mae_base"]
OTHER = [torch.float16, torch.bfloat16, torch.float64]


def _model(name: str) -> torch.nn.Module:
    return whitebox.create_model(name, **tiny_kwargs(name)).eval()


def _entries(model: torch.nn.Module, x: torch.Tensor):
    """Every public way images enter a model."""
    yield lambda: model(x)
    yield lambda: model.forward_features(x)
    yield lambda: model.forward_intermediates(x)
    if hasattr(model, "reconstruct"):
        yield lambda: model.reconstruct(x)
        yield lambda: model.forward_encoder(x)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("dtype", OTHER, ids=str)
def test_other_dtype_into_fp32_model_is_named(name: str, dtype: torch.dtype) -> None:
    model = _model(name)
    x = torch.randn(2, 3, 32, 32).to(dtype)
    for call in _entries(model, x):
        with pytest.raises(TypeError, match=rf"weights are torch.float32 and the images are {dtype}.*autocast"):
            call()


@pytest.mark.parametrize("name", FAMILIES)
def test_matching_dtype_and_autocast_still_run(name: str) -> None:
    model = _model(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.forward_features(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts the products itself
            assert model.forward_features(x.bfloat16()).shape == ref.shape
        double = model.double().forward_features(x.double())  # a float64 model takes float64 images
    torch.testing.assert_close(double.float(), ref, rtol=1e-4, atol=1e-4)
