"""whitebox.train building blocks: schedules, parameter groups, atomic checkpoints, RNG, data, sampler, logging."""

from __future__ import annotations

import io
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import whitebox
from whitebox.train import (
    MAEAugment,
    MetricsLogger,
    ResumableBatchSampler,
    SeededDataset,
    atomic_save,
    build_dataset,
    get_rng_state,
    load_checkpoint_file,
    load_npz,
    param_groups_weight_decay,
    read_jsonl,
    scaled_lr,
    set_rng_state,
    warmup_cosine,
)
from whitebox.train.checkpoint import remove_stale_temps
from whitebox.train.data import EvalTransform, JpegPackDataset, dataset_labels

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- schedule and groups
def test_warmup_cosine_shape():
    lrs = [warmup_cosine(s, 100, 10, 1.0, 0.1) for s in range(101)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:11]))  # warmup rises
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # cosine falls
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert lrs[100] == pytest.approx(0.1)
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # MAE: blr * 4096 / 256
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0, 0, 0, 1.0)


def test_no_weight_decay_on_norms_biases_tokens():
    model = whitebox.create_model("crate_mae_tiny", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    decay, no_decay = param_groups_weight_decay(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert {"mask_token", "encoder.cls_token", "encoder.patch_embed.proj.bias", "encoder.norm.weight"} <= undecayed
    assert all(n.endswith(".bias") or "norm" in n or "token" in n for n in undecayed)
    assert decayed == {n for n, p in model.named_parameters() if p.ndim >= 2 and "token" not in n}
    assert len(decayed) + len(undecayed) == len(list(model.parameters()))


# ----------------------------------------------------------------------------- checkpoints and RNG
def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    import random

    state = get_rng_state()
    atomic_save({"rng": state}, tmp_path / "rng.pth")
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(load_checkpoint_file(tmp_path / "rng.pth")["rng"])  # weights_only=True inside
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


_WRITER = """
import sys, torch
from whitebox.train import atomic_save
path = sys.argv[1]
big = torch.empty(24_000_000)  # ~96 MB: each write takes a while
for i in range(1_000_000):
    big.fill_(i)
    atomic_save({"i": i, "x": big}, path)
"""


@pytest.mark.slow
def test_kill9_during_checkpoint_write_keeps_previous_file(tmp_path):
    target = tmp_path / "ckpt.pth"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not target.exists() and time.monotonic() < deadline:  # a first complete checkpoint
            time.sleep(0.01)
        assert target.exists(), "the writer never finished a first checkpoint"
        while not list(tmp_path.glob(".ckpt.pth.*.tmp")) and time.monotonic() < deadline:  # next write under way
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint_file(target)  # the previous checkpoint is whole and loads safely
    assert torch.all(ckpt["x"] == ckpt["i"])
    assert ckpt["x"].numel() == 24_000_000
    leftovers = remove_stale_temps(target)
    assert not list(tmp_path.glob(".ckpt.pth.*.tmp"))
    assert all(p.name.startswith(".ckpt.pth.") for p in leftovers)


# ----------------------------------------------------------------------------- data
def _image(seed: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def test_mae_augment_is_seeded_and_bounded():
    img = Image.fromarray(_image(0, (80, 60)))
    aug = MAEAugment(32)
    a = aug(img, torch.Generator().manual_seed(1))
    b = aug(img, torch.Generator().manual_seed(1))
    c = aug(img, torch.Generator().manual_seed(2))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = aug.crop_box(80, 60, g)
        area = (right - left) * (bottom - top) / (80 * 60)
        assert 0 <= left < right <= 80 and 0 <= top < bottom <= 60
        assert 0.2 * 0.9 <= area <= 1.0  # scale (0.2, 1) up to rounding
    ev = EvalTransform(32)(img)
    assert ev.shape == (3, 32, 32)


def test_sampler_splits_global_batches_across_ranks_and_resumes():
    one = ResumableBatchSampler(50, 8, seed=3)
    two = [ResumableBatchSampler(50, 4, rank=r, world_size=2, seed=3) for r in range(2)]
    for s in (one, *two):
        s.set_epoch(1)
    batches1 = list(one)
    batches2 = [list(s) for s in two]
    assert len(batches1) == 6 == len(batches2[0])  # 50 // 8, incomplete last batch dropped
    for k, b in enumerate(batches1):
        assert b == batches2[0][k] + batches2[1][k]  # same samples and per-sample seeds
    one.set_epoch(1, start_batch=4)
    assert list(one) == batches1[4:]
    one.set_epoch(2)
    assert list(one) != batches1
    ev = ResumableBatchSampler(10, 4, rank=1, world_size=2, shuffle=False, drop_last=False)
    assert [i for b in ev for i, _ in b] == [4, 5, 6, 7, 9]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(5, 4, world_size=2)


def test_seeded_dataset_returns_image_noise_label():
    base = build_dataset(None, sample_length=20)
    ds = SeededDataset(base, MAEAugment(32), num_patches=16)
    first, again = ds[(3, 123)], ds[(3, 123)]
    assert first["image"].shape == (3, 32, 32) and first["noise"].shape == (16,) and first["label"] == 3
    assert first["skipped"] == 0
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["noise"], again["noise"])


def test_npz_layouts_and_jpeg_pack(tmp_path):
    imgs = np.stack([_image(i, (16, 16)) for i in range(6)])
    labels = np.arange(6) % 3
    np.savez(tmp_path / "split.npz", x_train=imgs[:4], y_train=labels[:4], x_test=imgs[4:], y_test=labels[4:])
    np.savez(tmp_path / "plain.npz", x=imgs, y=labels)
    blobs = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")  # lossless, so pixels can be compared
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    np.savez(tmp_path / "pack.npz", jpeg=np.concatenate(blobs), offsets=offsets, y=labels)

    train, test = load_npz(tmp_path / "split.npz", "train"), load_npz(tmp_path / "split.npz", "test")
    assert len(train) == 4 and len(test) == 2
    assert np.array_equal(np.asarray(test[1][0]), imgs[5]) and test[1][1] == labels[5]
    plain = build_dataset(str(tmp_path / "plain.npz"))
    pack = build_dataset(str(tmp_path / "pack.npz"))
    assert isinstance(pack, JpegPackDataset) and len(pack) == len(plain) == 6
    for i in range(6):
        assert np.array_equal(np.asarray(pack[i][0]), np.asarray(plain[i][0])) and pack[i][1] == plain[i][1]
    assert list(dataset_labels(pack)) == list(labels)
    with pytest.raises(ValueError, match="not a 'test' split"):
        load_npz(tmp_path / "pack.npz", "test")  # never the training images in disguise
    assert len(load_npz(tmp_path / "pack.npz", None)) == 6
    np.savez(tmp_path / "bad.npz", images=imgs)
    with pytest.raises(ValueError, match="expected keys"):
        load_npz(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="--data .*nothing_here: no such file or folder"):
        build_dataset(str(tmp_path / "nothing_here"))


def test_image_folder(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_image(i)).save(tmp_path / split / cls / f"{i}.png")
    train, test = build_dataset(str(tmp_path), "train"), build_dataset(str(tmp_path), "test")
    assert len(train) == 6 and len(test) == 4
    img, label = train[5]
    assert img.mode == "RGB" and img.size == (48, 40) and label == 1
    assert len(build_dataset(str(tmp_path / "val"), None)) == 4
    with pytest.raises(ValueError, match="no sub-folder for split 'test'"):
        build_dataset(str(tmp_path / "train"), "test")


@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "data" / "cifar10_jpeg_test.npz").is_file(), reason="../shared/data absent"
)
def test_shared_cifar_jpeg_pack():
    ds = build_dataset(str(ROOT.parent / "shared" / "data" / "cifar10_jpeg_test.npz"))
    img, label = ds[0]
    assert len(ds) == 10_000 and img.size == (32, 32) and 0 <= label < 10


# ----------------------------------------------------------------------------- outputs
def test_metrics_logger_drops_rows_after_resume_step(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for s in range(1, 6):
        log.log({"step": s, "loss": 1.0 / s})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a torn line from a killed run
    log = MetricsLogger(tmp_path, resume_step=3, tensorboard=False)
    log.log({"step": 4, "loss": 0.0})
    log.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_eval_sampler_never_yields_an_empty_batch_and_covers_every_sample():
    from whitebox.train.data import ResumableBatchSampler

    seen = []
    for rank in range(2):
        sampler = ResumableBatchSampler(9, 2, rank=rank, world_size=2, shuffle=False, drop_last=False)
        batches = list(sampler)
        assert all(batches), f"rank {rank} got an empty batch: {batches}"
        seen += [i for batch in batches for i, _ in batch]
    assert sorted(seen) == list(range(9))


def test_demo_defaults_do_not_override_a_named_model():
    from recipes.pretrain import parse_args

    demo = parse_args([])
    assert (demo.img_size, demo.patch_size, demo.embed_dim) == (32, 4, 96)
    named = parse_args(["--model", "crate_mae_base", "--img-size", "224"])
    assert named.img_size == 224 and named.patch_size is None and named.embed_dim is None


def test_flat_folder_of_unlabelled_images_pretrains(tmp_path):
    from whitebox.train.data import build_dataset

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = build_dataset(str(tmp_path), "train")
    assert len(ds) == 3
    img, label = ds[1]
    assert img.size == (48, 40) and label == -1
    with pytest.raises(ValueError, match="no class labels"):
        dataset_labels(ds)  # a probe or fine-tune refuses unlabelled data
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders and no images"):
        build_dataset(str(empty), None)
