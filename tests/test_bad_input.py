"""Bad input gets a clear error that names the problem and what is allowed."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_kwargs

import whitebox

NAMES = ["crate_tiny", "crate_alpha_base_patch16", "crate_mae_tiny", "vit_mae_base"]


def _create(name, **kwargs):
    return whitebox.create_model(name, **{**tiny_kwargs(name), **kwargs}).eval()


@pytest.mark.parametrize("name", NAMES)
def test_wrong_channel_count(name):
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        _create(name).forward_features(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("name", NAMES)
def test_size_not_divisible_by_patch(name):
    with pytest.raises(ValueError, match=r"30x32 is not divisible by the patch size 8"):
        _create(name).forward_features(torch.randn(1, 3, 30, 32))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 1, 3, 32, 32), (32,)])
def test_not_four_dimensional(name, shape):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, H, W\)"):
        _create(name).forward_features(torch.randn(shape))


@pytest.mark.parametrize("name", NAMES)
def test_integer_images(name):
    with pytest.raises(TypeError, match=r"floating-point image tensor, got torch.uint8.*x.float\(\) / 255"):
        _create(name).forward_features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_not_a_tensor():
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        _create("crate_mae_tiny")(torch.zeros(1, 3, 32, 32).numpy())


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_mask_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        _create("crate_mae_tiny")(torch.randn(1, 3, 32, 32), mask_ratio=ratio)


@pytest.mark.parametrize("ratio", ["0.5", True, [0.5]])
def test_mask_ratio_wrong_type(ratio):
    with pytest.raises(TypeError, match="mask_ratio must be a float"):
        _create("crate_mae_tiny")(torch.randn(1, 3, 32, 32), mask_ratio=ratio)


def test_mask_ratio_out_of_range_at_creation():
    with pytest.raises(ValueError, match="mask_ratio"):
        whitebox.create_model("crate_mae_tiny", mask_ratio=1.0)


def test_noise_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"noise must have shape \(batch, num_patches\) = \(2, 16\), got \(2, 15\)"):
        _create("crate_mae_tiny")(torch.randn(2, 3, 32, 32), noise=torch.rand(2, 15))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_keyword_argument(name):
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['embed_dimm'\]; allowed: .*embed_dim"):
        whitebox.create_model(name, embed_dimm=64)


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        whitebox.create_model("crate_tiny", embed_dim=64, num_heads=5)
    with pytest.raises(ValueError, match="img_size .* not divisible by patch_size"):
        whitebox.create_model("crate_mae_tiny", img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="global_pool must be"):
        whitebox.create_model("crate_tiny", global_pool="max")


def test_noise_of_the_wrong_dtype():
    with pytest.raises(TypeError, match="noise must be a floating-point tensor"):
        _create("crate_mae_tiny")(torch.randn(2, 3, 32, 32), noise=torch.randint(0, 9, (2, 16)))


def test_forward_intermediates_indices_out_of_range():
    model = _create("crate_tiny")
    with pytest.raises(ValueError, match=r"last n blocks: 1 <= n <= 2, got 3"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=3)
