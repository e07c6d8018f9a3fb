"""Attention maps, PCA colours and reconstruction grids: shapes, ranges and the values behind them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_kwargs
from PIL import Image

import whitebox
from whitebox.analysis import (
    attention_figure,
    attention_maps,
    feature_pca,
    normalize_images,
    pca_figure,
    pca_rgb,
    reconstruction_grid,
    save_png,
    to_uint8,
)
from whitebox.sample_images import sample_batch


def tiny(name: str) -> torch.nn.Module:
    return whitebox.create_model(name, **tiny_kwargs(name))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return normalize_images(sample_batch(32, 3))


def test_attention_maps_are_mssa_probabilities(images: torch.Tensor) -> None:
    model = tiny("crate_mae_tiny").eval()
    maps = attention_maps(model, images)
    assert maps.shape == (3, 2, 4, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    grid = attention_maps(model, images, blocks=[0], upsample=None)
    assert grid.shape == (3, 1, 4, 4, 4)
    # by hand: the class token's row of block 0's softmax, over the 16 patch keys
    with torch.no_grad():
        blk = model.encoder.blocks[0]
        _, attn = blk.attn(blk.norm1(model.encoder.embed(images)), return_attention=True)
    np.testing.assert_allclose(grid[:, 0], attn[:, :, 0, 1:].reshape(3, 4, 4, 4).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grid.sum(axis=(-2, -1)), 1 - attn[:, :, 0, 0].numpy()[:, None], rtol=1e-5)
    # nearest upsampling repeats each patch's value over its 8 x 8 pixels
    np.testing.assert_array_equal(maps[:, :1, :, ::8, ::8], grid)


def test_attention_map_options_and_errors(images: torch.Tensor) -> None:
    model = tiny("crate_mae_tiny")
    mean = attention_maps(model, images, stage="decoder", blocks=-1, query="mean", upsample="bilinear")
    assert mean.shape == (3, 1, 4, 32, 32) and np.isfinite(mean).all()
    with pytest.raises(TypeError, match="not supported"):
        attention_maps(tiny("vit_mae_base"), images)
    with pytest.raises(ValueError, match="stage must be one of"):
        attention_maps(tiny("crate_tiny"), images, stage="decoder")
    with pytest.raises(ValueError, match="out of range"):
        attention_maps(model, images, blocks=[5])
    with pytest.raises(ValueError, match="query"):
        attention_maps(model, images, query="max")


def test_attention_figure(images: torch.Tensor, tmp_path: Path) -> None:
    model = tiny("crate_tiny")
    maps = attention_maps(model, images)
    picture = to_uint8(images)[0]
    grid = attention_figure(picture, maps[0], path=tmp_path / "a.png", scale=2, labels=False)
    assert grid.shape == (2 * 64 + 2, 5 * 64 + 4 * 2, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:64:2, :64:2], picture)  # first column is the image itself
    assert np.asarray(Image.open(tmp_path / "a.png")).shape == grid.shape
    with pytest.raises(ValueError, match="maps must be"):
        attention_figure(picture, maps[0, :, :, :16, :16])


def test_pca_rgb_on_constructed_features() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.linspace(-3, 3, 40, dtype=torch.float64)  # strongest direction
    b = torch.randn(40, generator=g, dtype=torch.float64) * 0.1  # weaker direction ...
    b = b - b.mean()
    b = b - (b @ a) / (a @ a) * a  # ... uncorrelated with a, so the components are exactly v1 and v2
    v1, v2 = torch.eye(8, dtype=torch.float64)[2], torch.eye(8, dtype=torch.float64)[5]
    feats = a[:, None] * v1 + b[:, None] * v2
    rgb = pca_rgb(feats.reshape(2, 4, 5, 8))
    assert rgb.shape == (2, 4, 5, 3) and rgb.min() >= 0 and rgb.max() <= 1
    first = rgb.reshape(40, 3)[:, 0]
    assert np.all(np.diff(first) > 0)  # ordered along a: the sign is fixed so the loading on v1 is positive
    np.testing.assert_allclose(first, np.linspace(0, 1, 40), atol=1e-6)
    assert np.allclose(rgb.reshape(40, 3)[:, 2], 0)  # rank 2: no third component
    np.testing.assert_array_equal(pca_rgb(feats), pca_rgb(feats.clone()))  # deterministic
    with pytest.raises(ValueError, match="two feature vectors"):
        pca_rgb(torch.randn(1, 8))


@pytest.mark.parametrize("name", ["crate_mae_tiny", "vit_mae_base"])
def test_feature_pca(name: str, images: torch.Tensor, tmp_path: Path) -> None:
    model = tiny(name)
    rgb = feature_pca(model, images, block=-1)
    assert rgb.shape == (3, 32, 32, 3) and rgb.dtype == np.float32
    assert rgb.min() == 0 and rgb.max() == 1  # each component spans [0, 1] over the images
    grid = pca_figure(to_uint8(images), [rgb, feature_pca(model, images, block=0)], path=tmp_path / "p.png")
    assert grid.shape == (3 * 32 + 4, 3 * 32 + 4, 3)
    assert (tmp_path / "p.png").is_file()


def test_reconstruction_grid(images: torch.Tensor, tmp_path: Path) -> None:
    model = tiny("crate_mae_tiny")
    grid = reconstruction_grid(model, images, mask_ratio=0.75, seed=3, path=tmp_path / "r.png", labels=False)
    assert grid.shape == (3 * 32 + 2 * 2, 4 * 32 + 3 * 2, 3) and grid.dtype == np.uint8
    original = to_uint8(images)
    np.testing.assert_array_equal(grid[:32, 3 * 34 :], original[0])  # last column: the original
    masked = grid[:32, :32].reshape(4, 8, 4, 8, 3).transpose(0, 2, 1, 3, 4).reshape(16, 64, 3)
    flat = masked.reshape(16, -1)
    removed = [i for i in range(16) if np.all(flat[i] == np.tile(flat[i][:3], 64))]
    assert len(removed) == 12  # 75 % of 16 patches show one flat colour (normalised zero = the mean colour)
    assert np.array_equal(grid, reconstruction_grid(model, images, seed=3, labels=False))  # seeded: reproducible
    assert np.array_equal(np.asarray(Image.open(tmp_path / "r.png")), grid)
    with pytest.raises(TypeError, match="masked autoencoder"):
        reconstruction_grid(tiny("crate_tiny"), images)


def test_save_png_is_atomic_and_checked(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.png"
    save_png(np.zeros((4, 5, 3), np.uint8), target)
    assert np.asarray(Image.open(target)).shape == (4, 5, 3)
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.png"]
    with pytest.raises(ValueError, match="uint8"):
        save_png(np.zeros((4, 5, 3)), target)
    assert np.asarray(Image.open(target)).shape == (4, 5, 3)  # the old file survives a failed write


# ------------------------------------------------------------------------------------------- labelled pictures
def _find(page: np.ndarray, grid: np.ndarray) -> tuple[int, int]:
    """Where the unlabelled grid sits inside the labelled page (it must be there unchanged)."""
    h, w = grid.shape[:2]
    for top in range(page.shape[0] - h + 1):
        for left in range(page.shape[1] - w + 1):
            if np.array_equal(page[top : top + h, left : left + w], grid):
                return top, left
    raise AssertionError("the grid is not inside the labelled picture")


def _ink(region: np.ndarray) -> int:
    return int((region.min(axis=-1) < 128).sum())  # dark pixels: text


def test_attention_figure_names_blocks_heads_and_its_colour_scale(images: torch.Tensor) -> None:
    model = tiny("crate_tiny")
    maps = attention_maps(model, images, blocks=[1])
    picture = to_uint8(images)[0]
    raw = attention_figure(picture, maps[0], scale=2, labels=False)
    page = attention_figure(picture, maps[0], scale=2, blocks=[1], title="encoder attention")
    top, left = _find(page, raw)
    assert top > 0 and left > 0 and page.shape[1] > left + raw.shape[1] + 20  # headers, row labels, colour bar
    for j in range(5):  # a header above every column: image, head 0 .. head 3
        assert _ink(page[top - 16 : top, left + j * 66 : left + j * 66 + 64]) > 5, j
    assert _ink(page[top : top + 64, :left]) > 5  # "block 1"
    bar = page[top + 2 : top + 60, left + raw.shape[1] + 12 : left + raw.shape[1] + 26]
    assert bar[0].mean() > bar[-1].mean() + 50  # the colour scale runs from bright (max) to dark (min)
    other = attention_figure(picture, maps[0], scale=2, blocks=[7])
    assert not np.array_equal(other, page)  # the row label says which block
    with pytest.raises(ValueError, match="blocks names 2 blocks for 1 rows"):
        attention_figure(picture, maps[0], blocks=[0, 1])


def test_reconstruction_grid_has_column_headers_and_gaps_between_images(images: torch.Tensor) -> None:
    model = tiny("crate_mae_tiny")
    labelled = reconstruction_grid(model, images, seed=3, labels=True)
    assert labelled.shape[0] >= 3 * 32 + 2 * 8 + 12  # gaps and a header band
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(3))
    raw = reconstruction_grid(model, images, noise=noise, labels=False)
    labelled = reconstruction_grid(model, images, noise=noise, labels=True)
    top, left = _find(labelled, raw[:32])
    for b in range(3):  # each image's row sits 32 + 8 px below the last, on white
        per_image = reconstruction_grid(model, images[b : b + 1], noise=noise[b : b + 1], labels=False)
        np.testing.assert_array_equal(labelled[top + b * 40 : top + b * 40 + 32, left : left + raw.shape[1]], per_image)
        if b:
            assert (labelled[top + b * 40 - 8 : top + b * 40, left : left + raw.shape[1]] == 255).all()
        assert _ink(labelled[top + b * 40 : top + b * 40 + 32, :left]) > 5  # "image b"
    for j in range(4):  # masked input / reconstruction / visible + reconstructed / original
        assert _ink(labelled[:top, left + j * 34 : left + j * 34 + 32]) > 5, j


def test_pca_figure_headers_name_the_blocks(images: torch.Tensor) -> None:
    model = tiny("crate_tiny")
    pcas = feature_pca(model, images, block=[0, 1])
    raw = pca_figure(to_uint8(images), list(pcas))
    page = pca_figure(to_uint8(images), list(pcas), col_labels=["after block 0", "after block 1"])
    assert page.shape[0] > raw.shape[0] and page.shape[1] > raw.shape[1]
    with pytest.raises(ValueError, match="col_labels names 1 columns for 2"):
        pca_figure(to_uint8(images), list(pcas), col_labels=["x"])
