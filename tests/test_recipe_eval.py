"""The recipes' evaluations (issue 19 items 4 and 5): the record's transform, saved features, the random
baseline, and the kNN monitor of pretraining."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.finetune import main as finetune
from recipes.linprobe import main as linprobe
from recipes.pretrain import main as pretrain
from whitebox import validate
from whitebox.train import load_checkpoint_file, read_jsonl

TINY = ["--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--no-progress", "--no-tensorboard"]
SHAPE = ["--img-size", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "1", "--num-heads", "2"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs models."""


def _labelled_npz(path: Path, n: int = 36, size: int = 20) -> Path:
    """3 learnable colour classes; images larger than the model (so resize and crop act)."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
    x[np.arange(n), :, :, y] += 120
    cut = 2 * n // 3
    np.savez(path, x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])
    return path


# ----------------------------------------------------------------------------- item 5: kNN monitor
def test_pretrain_knn_monitor_writes_rows_and_picks_best(tmp_path):
    data = _labelled_npz(tmp_path / "d.npz")
    common = ["--samples-per-epoch", "32", "--batch-size", "8", "--epochs", "2", "--img-size", "16"]
    common += ["--patch-size", "8", *TINY, "--knn-data", str(data), "--knn-k", "5"]
    out = tmp_path / "knn"
    result = pretrain([*common, "--output", str(out), "--best-by", "knn", "--save-every", "2"])
    rows = read_jsonl(out / "eval.jsonl")
    assert len(rows) >= 2 and all(0 <= r["knn_top1"] <= 1 and "knn_top5" in r for r in rows)
    best = max(r["knn_top1"] for r in rows)
    assert result["best_knn_top1"] == pytest.approx(best)
    ckpt = load_checkpoint_file(out / "checkpoint-best.pth")
    assert ckpt["best"] == pytest.approx(best)
    first_best = next(r for r in rows if r["knn_top1"] == best)
    assert ckpt["step"] == first_best["step"]  # the first row reaching the best


def test_pretrain_knn_does_not_change_training_and_resumes_exactly(tmp_path):
    data = _labelled_npz(tmp_path / "d.npz")
    common = ["--samples-per-epoch", "32", "--batch-size", "8", "--epochs", "2", "--img-size", "16"]
    common += ["--patch-size", "8", "--log-every", "2", *TINY]
    knn = ["--knn-data", str(data), "--knn-k", "5"]
    plain, full, part = tmp_path / "plain", tmp_path / "full", tmp_path / "part"
    pretrain([*common, "--output", str(plain)])
    pretrain([*common, *knn, "--output", str(full)])
    pretrain([*common, *knn, "--output", str(part), "--stop-after", "3"])
    pretrain([*common, *knn, "--output", str(part), "--resume", "auto"])
    a, b, c = (load_checkpoint_file(p / "checkpoint-last.pth") for p in (plain, full, part))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # the monitor consumes no training randomness
        assert torch.equal(b["model"][k], c["model"][k]), k  # and a resumed run equals an uninterrupted one
    rb, rc = read_jsonl(full / "eval.jsonl"), read_jsonl(part / "eval.jsonl")
    assert [r["knn_top1"] for r in rb][-1] == [r["knn_top1"] for r in rc][-1]
    assert "knn_top1" not in read_jsonl(plain / "eval.jsonl")[0]


def test_knn_monitor_leaves_every_random_stream_as_it_was(tmp_path):
    """Training draws from torch's, NumPy's and Python's global generators (drop-path, a user's augmentation);
    the monitor (its DataLoader draws a base seed) restores all three."""
    import argparse
    import random

    import whitebox
    from recipes.pretrain import KNNMonitor

    data = _labelled_npz(tmp_path / "d.npz")
    model = whitebox.create_model("crate_mae_tiny", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    args = argparse.Namespace(
        knn_data=str(data),
        knn_k=5,
        knn_t=0.07,
        knn_max=None,
        seed=0,
        download=False,
        data_root="data",
        batch_size=8,
        on_bad_image="skip",
    )
    monitor = KNNMonitor(model, args, torch.device("cpu"), "fp32")
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    metrics = monitor.evaluate()
    assert set(metrics) == {"knn_top1", "knn_top5"} and model.training
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]


def test_pretrain_knn_flag_errors(tmp_path):
    with pytest.raises(ValueError, match="--best-by knn needs --knn-data"):
        pretrain(["--best-by", "knn", "--output", str(tmp_path / "a"), *TINY])
    data = _labelled_npz(tmp_path / "d.npz")
    with pytest.raises(ValueError, match="--knn-k 500 is more than the 24 training images"):
        pretrain(["--knn-data", str(data), "--knn-k", "500", "--output", str(tmp_path / "b"), *TINY])
    with pytest.raises(SystemExit):
        pretrain(["--best-by", "accuracy", "--output", str(tmp_path / "c"), *TINY])


# ----------------------------------------------------------------------------- item 4: probe and fine-tuning
def test_linprobe_uses_the_record_transform_and_saves_features(tmp_path, capsys):
    data = _labelled_npz(tmp_path / "d.npz")
    common = ["--model", "crate_mae_tiny", *SHAPE, "--data", str(data), "--no-progress"]
    feats = tmp_path / "f.pth"
    first = linprobe([*common, "--output", str(tmp_path / "a"), "--save-features", str(feats), "--baseline"])
    assert first["eval_transform"]["crop_pct"] == 0.875 and first["eval_transform"]["interpolation"] == "bicubic"
    assert "baseline_top1" in first and "random-init baseline" in capsys.readouterr().err
    again = linprobe([*common, "--output", str(tmp_path / "b"), "--load-features", str(feats), "--baseline"])
    assert again["top1"] == first["top1"] and again["baseline_top1"] == first["baseline_top1"]
    assert "features from" in capsys.readouterr().err
    other_crop = linprobe([*common, "--output", str(tmp_path / "c"), "--crop-pct", "1.0"])
    assert other_crop["eval_transform"]["crop_pct"] == 1.0
    with pytest.raises(ValueError, match="crop_pct.*0.875 there, 1.0 now"):
        linprobe([*common, "--output", str(tmp_path / "d"), "--load-features", str(feats), "--crop-pct", "1.0"])
    with pytest.raises(ValueError, match="pool: 'token' there, 'avg' now"):
        linprobe([*common, "--output", str(tmp_path / "e"), "--load-features", str(feats), "--pool", "avg"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        linprobe([*common, "--output", str(tmp_path / "f"), "--load-features", str(tmp_path / "none.pth")])


def test_linprobe_refuses_features_of_another_checkpoint(tmp_path):
    data = _labelled_npz(tmp_path / "d.npz")
    import whitebox

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = whitebox.create_model("crate_mae_tiny", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
        paths.append(tmp_path / f"w{seed}.pth")
        torch.save(model.state_dict(), paths[-1])
    common = ["--model", "crate_mae_tiny", *SHAPE, "--data", str(data), "--no-progress"]
    feats = tmp_path / "f.pth"
    linprobe([*common, "--checkpoint", str(paths[0]), "--output", str(tmp_path / "a"), "--save-features", str(feats)])
    with pytest.raises(ValueError, match="weights: 'checkpoint sha256:"):
        linprobe(
            [*common, "--checkpoint", str(paths[1]), "--output", str(tmp_path / "b"), "--load-features", str(feats)]
        )


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--crop-pct", "0.9", "--interpolation", "bilinear"]], ids=["record", "flags"])
def test_validate_equals_finetune_with_the_record_transform(tmp_path, extra):
    """Images larger than the model, so the record's crop (0.875, bicubic) or the flags' act on both sides."""
    data = _labelled_npz(tmp_path / "d.npz", n=24, size=23)
    out = tmp_path / "ft"
    argv = ["--model", "crate_tiny", *SHAPE, "--data", str(data), "--epochs", "1", "--batch-size", "8"]
    argv += ["--output", str(out), "--device", "cpu", "--no-progress", "--no-tensorboard", "--mixup", "0"]
    argv += ["--cutmix", "0", "--aa", "", "--reprob", "0", "--warmup-epochs", "0", *extra]
    result = finetune(argv)
    # the checkpoint records finetune's preprocessing flags: validate needs none of them to evaluate the same way
    res = validate.main([str(data), "--checkpoint", str(out / "checkpoint-last.pth"), "--split", "test"])
    assert res["num_images"] == 8 and res["crop_pct"] == (0.9 if extra else 0.875)
    assert res["interpolation"] == ("bilinear" if extra else "bicubic")
    assert res["top1"] == pytest.approx(100 * result["top1"], abs=1e-4)
    assert res["top5"] == pytest.approx(100 * result["top5"], abs=1e-4)
    # and its own flags win
    other = validate.main(
        [str(data), "--checkpoint", str(out / "checkpoint-last.pth"), "--split", "test", "--crop-pct", "0.5"]
    )
    assert other["crop_pct"] == 0.5 and other["loss"] != res["loss"]


def test_eval_transform_uint8_normalised_equals_the_float_transform():
    """The uint8 path (for an on-device-normalising loader) gives the float path's tensor after normalising."""
    from PIL import Image

    import whitebox
    from whitebox.data_config import eval_transform, resolve_eval_config

    model = whitebox.create_model("crate_tiny", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (23, 29, 3), dtype=np.uint8))
    for over in ({}, {"crop_pct": 0.9, "interpolation": "bilinear"}):
        cfg = resolve_eval_config(model, **over)
        x8 = eval_transform(model, uint8=True, **over)(img)
        assert x8.dtype == torch.uint8 and x8.shape == (3, 16, 16)
        mean, std = (torch.tensor(cfg[k]).view(3, 1, 1) for k in ("mean", "std"))
        torch.testing.assert_close((x8.float() / 255 - mean) / std, eval_transform(model, **over)(img))


# ----------------------------------------------------------------------------- normalised once, with the record's
# The loaders (whitebox.data.make_loader) normalise uint8 images on the device with the mean / std they are given
# and pass float images through. A recipe that handed them a transform which normalises itself, or uint8 images
# without the record's mean / std, would evaluate on wrongly scaled pixels with no error: these tests compare the
# batches the recipes' loaders give with the record's float transform applied by hand to the same images.
ODD = {"crop_pct": 0.9, "mean": (0.3, 0.4, 0.5), "std": (0.2, 0.25, 0.3)}  # far from ImageNet's mean / std
ODD_FLAGS = ["--crop-pct", "0.9", "--mean", "0.3", "0.4", "0.5", "--std", "0.2", "0.25", "0.3"]


def _spy_loaders(monkeypatch, module) -> list:
    """Every ``(dataset, sampler, loader)`` that ``module.make_loader`` makes."""
    made, real = [], module.make_loader

    def spy(dataset, sampler, *args, **kwargs):
        loader = real(dataset, sampler, *args, **kwargs)
        made.append((dataset, sampler, loader))
        return loader

    monkeypatch.setattr(module, "make_loader", spy)
    return made


def _check_first_batch(made, source, split: str, model_name: str, overrides: dict) -> None:
    """The first batch of the recorded loader = the record's float transform (timm) on those images, by hand."""
    import whitebox
    from whitebox.data_config import eval_transform
    from whitebox.train import build_dataset

    _, sampler, loader = made
    batch = next(iter(loader))
    indices = [i for i, _ in next(iter(sampler))]
    base = build_dataset(str(source), split)
    model = whitebox.create_model(model_name, img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    by_hand = torch.stack([eval_transform(model, **overrides)(base[i][0]) for i in indices])
    assert batch["image"].dtype == torch.float32
    torch.testing.assert_close(batch["image"], by_hand, atol=1e-5, rtol=0)
    assert batch["label"].tolist() == [base[i][1] for i in indices]


@pytest.mark.slow
def test_finetune_evaluates_images_normalised_once_with_the_record(tmp_path, monkeypatch):
    import recipes.finetune as ft

    made = _spy_loaders(monkeypatch, ft)
    data = _labelled_npz(tmp_path / "d.npz", n=24, size=23)
    argv = ["--model", "crate_tiny", *SHAPE, "--data", str(data), "--epochs", "1", "--batch-size", "8"]
    argv += ["--output", str(tmp_path / "ft"), "--device", "cpu", "--no-progress", "--no-tensorboard"]
    finetune([*argv, "--mixup", "0", "--cutmix", "0", "--aa", "", "--reprob", "0", *ODD_FLAGS])
    assert len(made) == 2  # training, then test
    _check_first_batch(made[1], data, "test", "crate_tiny", ODD)
    # training images are normalised with the same mean / std: their per-channel means sit where the test's do
    train = next(iter(made[0][2]))["image"].mean((0, 2, 3))
    test = next(iter(made[1][2]))["image"].mean((0, 2, 3))
    torch.testing.assert_close(train, test, atol=0.5, rtol=0)


def test_linprobe_features_come_from_images_normalised_once_with_the_record(tmp_path, monkeypatch):
    import whitebox.train.probe as probe

    made = _spy_loaders(monkeypatch, probe)
    data = _labelled_npz(tmp_path / "d.npz")
    common = ["--model", "crate_mae_tiny", *SHAPE, "--data", str(data), "--no-progress"]
    linprobe([*common, "--output", str(tmp_path / "a")])
    linprobe([*common, "--output", str(tmp_path / "b"), *ODD_FLAGS])
    assert len(made) == 4  # train and test features, twice
    _check_first_batch(made[0], data, "train", "crate_mae_tiny", {})
    _check_first_batch(made[1], data, "test", "crate_mae_tiny", {})
    _check_first_batch(made[2], data, "train", "crate_mae_tiny", ODD)


def test_knn_monitor_features_come_from_images_normalised_once_with_the_record(tmp_path, monkeypatch):
    import whitebox.train.probe as probe

    made = _spy_loaders(monkeypatch, probe)
    data = _labelled_npz(tmp_path / "d.npz")
    common = ["--samples-per-epoch", "16", "--batch-size", "8", "--epochs", "1", "--img-size", "16"]
    pretrain([*common, "--patch-size", "8", *TINY, "--knn-data", str(data), "--knn-k", "5", "--output", str(tmp_path)])
    assert len(made) >= 2  # memory bank, queries (per checkpoint)
    _check_first_batch(made[0], data, "train", "crate_mae_tiny", {})
    _check_first_batch(made[1], data, "test", "crate_mae_tiny", {})
