"""Fine-tuning resumes bit-exactly (issue 18 item 4): every augmentation draw (crop, flip, RandAugment, random
erasing) is seeded by its sample, mixup / cutmix and drop path draw from the saved global streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recipes.finetune import main as finetune
from whitebox.data import SeededDataset, seeded_call
from whitebox.train import load_checkpoint_file, read_jsonl

MODEL = ["--model", "crate_tiny", "--img-size", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "2"]
MODEL += ["--num-heads", "2", "--drop-path", "0.2", "--no-progress", "--no-tensorboard"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Training loops."""


@pytest.mark.parametrize("workers", [0, 2])
def test_finetune_stopped_and_resumed_equals_uninterrupted(tmp_path, workers):
    """main: 7e-4 apart after a stop at step 12 (timm's transforms drew from the global streams)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 20, 20, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x[:24], y_train=np.arange(24) % 3, x_test=x[24:], y_test=np.arange(6) % 3)
    common = [*MODEL, "--data", str(tmp_path / "d.npz"), "--epochs", "2", "--batch-size", "4", "--log-every", "1"]
    common += ["--warmup-epochs", "0.5", "--workers", str(workers)]  # default RandAugment, mixup, cutmix, erasing
    finetune([*common, "--output", str(tmp_path / "full")])
    finetune([*common, "--output", str(tmp_path / "part"), "--stop-after", "4"])  # mid-epoch (6 steps each)
    finetune([*common, "--output", str(tmp_path / "part"), "--resume", "auto"])
    a, b = (load_checkpoint_file(tmp_path / d / "checkpoint-last.pth") for d in ("full", "part"))
    assert a["step"] == b["step"] == 12
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    la, lb = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("full", "part"))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_plain_transforms_draw_from_their_sample_seed_and_leave_the_global_streams_alone():
    import random

    def draw(_img):
        return torch.tensor([random.random(), float(np.random.rand()), float(torch.rand(()))])

    torch.manual_seed(3)
    before = torch.get_rng_state()
    a, b, c = seeded_call(draw, 7, None), seeded_call(draw, 7, None), seeded_call(draw, 8, None)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)
    ds = SeededDataset([(None, 0)] * 3, draw)
    assert torch.equal(ds[(0, 7)]["image"], a) and torch.equal(ds[(2, 7)]["image"], a)
