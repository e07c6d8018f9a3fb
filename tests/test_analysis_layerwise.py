"""layerwise_stats: the right tokens are measured at every block, and training makes ISTA sparser."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, tiny_kwargs
from PIL import Image

import whitebox
from whitebox.analysis import (
    COLUMNS,
    coding_rate,
    compression,
    default_model_images,
    layerwise_stats,
    normalize_images,
    sparsity,
    unit_tokens,
)
from whitebox.analysis.layerwise import write_layerwise
from whitebox.sample_images import sample_batch


def tiny(name: str) -> torch.nn.Module:
    return whitebox.create_model(name, **tiny_kwargs(name))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return normalize_images(sample_batch(32, 4))


def test_rows_columns_and_ranges(images: torch.Tensor) -> None:
    stats = layerwise_stats(tiny("crate_mae_tiny"), images)
    assert [(r["stage"], r["block"]) for r in stats] == [("encoder", 0), ("encoder", 1), ("decoder", 0), ("decoder", 1)]
    assert stats.columns == COLUMNS and all(set(r) == set(COLUMNS) for r in stats)
    for r in stats:
        for c in COLUMNS[2:]:
            assert isinstance(r[c], float) and math.isfinite(r[c]), (r, c)
        assert 0.0 <= r["sparsity"] <= 1.0 and r["compression"] > 0 and r["coding_rate"] > 0
    assert all(s > 0.2 for s in stats.column("sparsity", "encoder"))  # ISTA ends in a ReLU: exact zeros
    assert stats.info["num_images"] == 4 and stats.info["normalize"] == "unit"


def test_measures_the_tokens_it_says(images: torch.Tensor) -> None:
    """Recompute block by block by hand: encoder (x, z, out) and decoder (y, out) with each block's U."""
    model = tiny("crate_mae_tiny").eval()
    stats = layerwise_stats(model, images, eps=0.5)
    with torch.no_grad():
        x = model.encoder.embed(images)
        for i, blk in enumerate(model.encoder.blocks):
            z = x + blk.attn(blk.norm1(x))
            out = blk.ista(blk.norm2(z))
            row = stats.rows[i]
            u = blk.attn.subspaces()
            assert row["compression_in"] == pytest.approx(compression(unit_tokens(x), u).mean().item(), rel=1e-6)
            assert row["compression"] == pytest.approx(compression(unit_tokens(z), u).mean().item(), rel=1e-6)
            assert row["coding_rate"] == pytest.approx(coding_rate(unit_tokens(out)).mean().item(), rel=1e-6)
            assert row["sparsity"] == pytest.approx(sparsity(out).mean().item(), abs=1e-12)
            assert row["l1"] == pytest.approx(out.abs().sum(-1).mean().item(), rel=1e-5)
            x = out
        x = model.encoder.norm(x)
        for i, blk in enumerate(model.decoder_blocks):
            y = blk.linear(blk.norm1(x))
            out = y - blk.attn(blk.norm2(y))
            row = stats.rows[len(model.encoder.blocks) + i]
            u = blk.attn.subspaces()
            assert row["compression_in"] == pytest.approx(compression(unit_tokens(y), u).mean().item(), rel=1e-6)
            assert row["compression"] == pytest.approx(compression(unit_tokens(out), u).mean().item(), rel=1e-6)
            x = out


def test_crate_alpha_sparsity_is_measured_on_the_sparse_code(images: torch.Tensor) -> None:
    """CRATE-alpha: compression after MSSA with the block's U; sparsity and l1 of the code c (N, 4d), not of the
    block output (which adds the residual and has no zeros); coding rate of the output."""
    model = tiny("crate_alpha_base_patch16").eval()
    stats = layerwise_stats(model, images, eps=0.5)
    assert [(r["stage"], r["block"]) for r in stats] == [("encoder", 0), ("encoder", 1)]
    with torch.no_grad():
        x = model.embed(images)
        for i, blk in enumerate(model.blocks):
            z = x + blk.attn(blk.norm1(x))
            odl, h = blk.ista, blk.norm2(z)
            c1 = torch.relu(odl.eta * (h @ odl.D) - odl.eta * odl.lambd)
            code = torch.relu(c1 - odl.eta * ((c1 @ odl.D.t() - h) @ odl.D) - odl.eta * odl.lambd)
            out = z + code @ odl.D1.t()
            row, u = stats.rows[i], blk.attn.subspaces()
            assert row["compression_in"] == pytest.approx(compression(unit_tokens(x), u).mean().item(), rel=1e-6)
            assert row["compression"] == pytest.approx(compression(unit_tokens(z), u).mean().item(), rel=1e-6)
            assert row["coding_rate"] == pytest.approx(coding_rate(unit_tokens(out)).mean().item(), rel=1e-5)
            assert row["sparsity"] == pytest.approx(sparsity(code).mean().item(), abs=1e-12)
            assert row["l1"] == pytest.approx(code.abs().sum(-1).mean().item(), rel=1e-4)
            assert 0.2 < row["sparsity"] < 1.0 and sparsity(out).max() == 0
            x = out
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_options_change_what_is_measured(images: torch.Tensor) -> None:
    model = tiny("crate_tiny")
    unit = layerwise_stats(model, images)
    raw = layerwise_stats(model, images, normalize="none")
    patches = layerwise_stats(model, images, include_class_token=False)
    assert [r["stage"] for r in unit] == ["encoder", "encoder"]  # supervised CRATE: no decoder
    assert raw.rows[0]["coding_rate"] != pytest.approx(unit.rows[0]["coding_rate"])
    assert raw.rows[0]["sparsity"] == unit.rows[0]["sparsity"]  # sparsity is always on raw tokens
    assert patches.rows[0]["coding_rate"] != pytest.approx(unit.rows[0]["coding_rate"])
    with pytest.raises(ValueError, match="normalize"):
        layerwise_stats(model, images, normalize="layer")
    with pytest.raises(ValueError, match="eps"):
        layerwise_stats(model, images, eps=-1.0)
    with pytest.raises(TypeError, match="whitebox model"):
        layerwise_stats(torch.nn.Linear(3, 3), images)


def test_model_state_is_left_alone(images: torch.Tensor) -> None:
    model = tiny("crate_mae_tiny").train()
    layerwise_stats(model, images, mask_ratio=0.5)
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_vit_mae_measures_what_applies(images: torch.Tensor) -> None:
    stats = layerwise_stats(tiny("vit_mae_base"), images)
    assert len(stats) == 4
    assert all(r["compression"] is None and r["compression_in"] is None for r in stats)
    assert all(math.isfinite(r["coding_rate"]) for r in stats)
    assert "| encoder | 0 | - | - | - |" in stats.to_markdown()


def test_markdown_csv_and_plot(images: torch.Tensor, tmp_path: Path) -> None:
    stats = layerwise_stats(tiny("crate_mae_tiny"), images)
    md = stats.to_markdown(digits=3).splitlines()
    assert len(md) == 2 + len(stats) and md[0].startswith("| stage | block | compression_in")
    text = stats.to_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == text
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert float(parsed[1]["compression"]) == stats.rows[1]["compression"]  # lossless round trip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    picture = stats.plot(tmp_path / "plot.png", title="tiny")
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[-1] == 3
    assert picture.std() > 10  # something was drawn
    assert np.array_equal(np.asarray(Image.open(tmp_path / "plot.png").convert("RGB")), picture)


def _train(model: torch.nn.Module, data: torch.Tensor, steps: int, batch: int, seed: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (min(batch, len(data)),), generator=g)
        loss = model(data[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def _encoder_sparsity(model: torch.nn.Module, images: torch.Tensor) -> float:
    return float(np.mean(layerwise_stats(model, images).column("sparsity", "encoder")))


@pytest.fixture
def one_thread():
    # tiny models train faster on one thread, and far faster when the CPU is shared
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_brief_training_makes_ista_sparser_on_sample_photos(one_thread) -> None:
    torch.manual_seed(0)
    model = tiny("crate_mae_tiny")
    photos = default_model_images(model)
    at_init = _encoder_sparsity(model, photos)
    _train(model, photos, steps=60, batch=10, seed=0)
    assert _encoder_sparsity(model, photos) > at_init + 0.01


def test_brief_training_makes_ista_sparser_on_cifar(one_thread) -> None:
    path = SHARED_DATA / "cifar10_small.npz"
    if not path.is_file():
        pytest.skip(f"real data not available: {path} is absent")
    with np.load(path) as data:
        train, held_out = normalize_images(data["x_train"][:1024]), normalize_images(data["x_test"][:64])
    torch.manual_seed(0)
    model = tiny("crate_mae_tiny")
    at_init = _encoder_sparsity(model, held_out)
    _train(model, train, steps=60, batch=32, seed=0)
    assert _encoder_sparsity(model, held_out) > at_init + 0.02  # measured on images it never saw


def test_plot_numbers_blocks_as_the_table_and_keeps_stages_apart(images: torch.Tensor, tmp_path: Path) -> None:
    """Table and plot both count blocks from 0 within a stage; the decoder does not continue the encoder's axis."""
    stats = layerwise_stats(tiny("crate_mae_tiny"), images)
    fig = stats.figure()
    for ax in fig.axes:
        lines = {line.get_label(): list(line.get_xdata()) for line in ax.lines}
        assert lines["encoder"] == stats.column("block", "encoder") == [0, 1]
        assert lines["decoder"] == stats.column("block", "decoder") == [0, 1]
        assert "0-based, as in the table" in ax.get_xlabel()
    files = write_layerwise(stats, tmp_path)
    text = files["markdown"].read_text()
    assert "`l1` = mean l1 norm" in text and "counts from 0 within its stage" in text
