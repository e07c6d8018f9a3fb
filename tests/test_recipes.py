"""The recipes end to end: the default run, exact resume, torchrun equivalence, linear probe, fine-tuning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.finetune import main as finetune
from recipes.linprobe import main as linprobe
from recipes.pretrain import DEMO_DEFAULTS
from recipes.pretrain import main as pretrain
from whitebox.train import load_checkpoint_file, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CIFAR_SMALL = DATA / "cifar10_small.npz"
TINY = ["--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--no-progress", "--no-tensorboard"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs training loops."""


def test_default_run_few_steps(tmp_path):
    out = tmp_path / "pretrain"
    result = pretrain(["--output", str(out), "--stop-after", "4", "--log-every", "2", "--no-progress"])
    args = json.loads((out / "args.json").read_text())
    assert args["data"] is None and args["embed_dim"] == DEMO_DEFAULTS["embed_dim"]
    assert args["effective_batch"] == DEMO_DEFAULTS["batch_size"]
    assert args["lr"] == pytest.approx(DEMO_DEFAULTS["blr"] * DEMO_DEFAULTS["batch_size"] / 256)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert {"step", "epoch", "loss", "lr", "images_per_s"} <= set(r) and np.isfinite(r["loss"])
    ckpt = load_checkpoint_file(out / "checkpoint-last.pth")  # weights_only=True
    assert ckpt["step"] == 4 and ckpt["model_name"] == "crate_mae_tiny"
    assert (out / "checkpoint-best.pth").is_file()
    assert result["step"] == 4 and result["params"] > 0
    # the checkpoint describes its model: no shape flags needed to rebuild it, a conflicting one is named
    import whitebox
    from whitebox.analysis.__main__ import main as analysis

    last = out / "checkpoint-last.pth"
    for model in (
        whitebox.create_model(checkpoint_path=last),
        whitebox.create_model("crate_mae_tiny", checkpoint_path=last),
    ):
        assert torch.equal(model.decoder_pred.weight, ckpt["model"]["decoder_pred.weight"])
        assert model.encoder.patch_embed.patch_size == DEMO_DEFAULTS["patch_size"]
    probe = whitebox.create_model("crate_mae_tiny", checkpoint_path=last, num_classes=3)  # a head is adaptable
    assert probe.encoder.head.out_features == 3
    with pytest.raises(ValueError, match=r"embed_dim=128 here, embed_dim=96 in the checkpoint"):
        whitebox.create_model("crate_mae_tiny", checkpoint_path=last, embed_dim=128)
    assert (
        analysis(["crate_mae_tiny", "--checkpoint", str(last), "--out", str(tmp_path / "r"), "--num-images", "2"]) == 0
    )
    assert analysis(["--checkpoint", str(last), "--out", str(tmp_path / "r2"), "--num-images", "2"]) == 0


def test_epoch_end_writes_reconstruction_grid_and_eval(tmp_path):
    out = tmp_path / "run"
    pretrain(["--output", str(out), "--epochs", "1", "--samples-per-epoch", "32", "--batch-size", "16", *TINY])
    grid = Image.open(out / "reconstruction_latest.png")
    # a row per probe image (8), 32-px tiles enlarged 4x: masked / reconstruction / pasted / original
    assert grid.size == (4 * 128 + 3 * 2, 8 * 128 + 7 * 2) and (out / "reconstruction_step0000002.png").is_file()
    assert read_jsonl(out / "eval.jsonl")[0]["step"] == 2


def test_resume_is_exact(tmp_path):
    common = ["--epochs", "2", "--samples-per-epoch", "64", "--batch-size", "8", "--accum-iter", "2"]
    common += ["--log-every", "2", "--warmup-steps", "2", "--clip-grad", "1.0", *TINY]
    full, part = tmp_path / "full", tmp_path / "part"
    pretrain([*common, "--output", str(full)])
    pretrain([*common, "--output", str(part), "--stop-after", "3"])  # stops mid-epoch and mid log interval
    assert load_checkpoint_file(part / "checkpoint-last.pth")["step"] == 3
    pretrain([*common, "--output", str(part), "--resume", "auto"])
    a, b = (load_checkpoint_file(p / "checkpoint-last.pth") for p in (full, part))
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"])
    ra, rb = read_jsonl(full / "metrics.jsonl"), read_jsonl(part / "metrics.jsonl")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [2, 4, 6, 8]
    assert [r["loss"] for r in ra] == pytest.approx([r["loss"] for r in rb], rel=1e-12, abs=0)
    assert [r["lr"] for r in ra] == [r["lr"] for r in rb]


def test_resume_refuses_a_different_effective_batch(tmp_path):
    common = ["--samples-per-epoch", "32", "--output", str(tmp_path), *TINY]
    pretrain([*common, "--batch-size", "8", "--stop-after", "1"])
    with pytest.raises(ValueError, match="effective batch"):
        pretrain([*common, "--batch-size", "16", "--resume", "auto"])


def test_vit_mae_and_bad_model(tmp_path):
    result = pretrain(
        [
            *("--model", "vit_mae_base", "--decoder-depth", "1", "--decoder-num-heads", "2", "--stop-after", "1"),
            *("--samples-per-epoch", "16", "--batch-size", "8", "--log-every", "1", "--output", str(tmp_path), *TINY),
        ]
    )
    assert np.isfinite(result["loss"])
    with pytest.raises(ValueError, match="not a masked autoencoder"):
        pretrain(["--model", "crate_tiny", "--output", str(tmp_path / "x"), *TINY])
    with pytest.raises(ValueError, match="unknown model"):
        pretrain(["--model", "no_such_model", "--output", str(tmp_path / "y"), *TINY])


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    common = ["--epochs", "1", "--samples-per-epoch", "64", "--log-every", "1", "--warmup-steps", "1"]
    common += ["--stop-after", "3", *TINY]
    pretrain([*common, "--batch-size", "16", "--output", str(tmp_path / "one")])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd += [str(ROOT / "recipes" / "pretrain.py"), *common, "--batch-size", "8", "--output", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (load_checkpoint_file(tmp_path / d / "checkpoint-last.pth") for d in ("one", "two"))
    assert b["effective_batch"] == a["effective_batch"] == 16
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    ra, rb = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["loss"] for r in ra] == pytest.approx([r["loss"] for r in rb], rel=1e-5)
    assert json.loads((tmp_path / "two" / "args.json").read_text())["world_size"] == 2


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_SMALL.is_file(), reason=f"{CIFAR_SMALL} absent (shared data not on this machine)")
def test_linprobe_after_pretraining_beats_random_encoder(tmp_path):
    shape = ["--img-size", "32", "--patch-size", "4", "--embed-dim", "64", "--depth", "2", "--num-heads", "4"]
    pretrain(
        [
            *("--data", str(CIFAR_SMALL), "--output", str(tmp_path / "pre"), "--epochs", "3", "--batch-size", "64"),
            *("--blr", "6e-3", "--warmup-epochs", "0.5", "--norm-pix-loss", "--no-progress", "--no-tensorboard"),
            *shape,
        ]
    )
    probe = ["--data", str(CIFAR_SMALL), "--pool", "avg"]
    trained = linprobe(
        [*probe, "--checkpoint", str(tmp_path / "pre" / "checkpoint-last.pth"), "--output", str(tmp_path / "a")]
    )
    random_init = linprobe([*probe, "--model", "crate_mae_tiny", *shape, "--output", str(tmp_path / "b")])
    assert trained["num_test"] == 1000 and trained["num_classes"] == 10
    assert trained["top1"] > random_init["top1"] + 0.01, (trained["top1"], random_init["top1"])
    assert json.loads((tmp_path / "a" / "results.json").read_text())["top1"] == pytest.approx(trained["top1"])


def _tiny_labelled_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)
    y = np.arange(48) % 3
    x[y == 1, :, :, 0] = 255  # learnable: class 1 is red, class 2 is dark
    x[y == 2] //= 4
    np.savez(path, x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
    return path


def test_linprobe_intermediate_layer_and_sgd(tmp_path):
    data = _tiny_labelled_npz(tmp_path / "d.npz")
    common = ["--model", "crate_mae_tiny", "--img-size", "16", "--patch-size", "8", *TINY[:6], "--data", str(data)]
    res = linprobe([*common, "--layer", "0", "--pool", "token", "--output", str(tmp_path / "p")])
    assert res["feature_dim"] == 32 and res["num_test"] == 16 and res["top1"] >= 0.75  # chance: 1/3
    res = linprobe(
        [*common, "--solver", "sgd", "--epochs", "30", "--batch-size", "16", "--output", str(tmp_path / "q")]
    )
    assert res["top1"] >= 0.75


def test_finetune_from_pretrain_checkpoint_and_resume(tmp_path):
    data = _tiny_labelled_npz(tmp_path / "d.npz")
    pre = tmp_path / "pre"
    pretrain(
        [
            *("--img-size", "16", "--patch-size", "8", "--samples-per-epoch", "16", "--batch-size", "8"),
            *("--stop-after", "1", "--output", str(pre), *TINY),
        ]
    )
    common = ["--checkpoint", str(pre / "checkpoint-last.pth"), "--data", str(data), "--epochs", "2"]
    common += ["--batch-size", "8", "--warmup-epochs", "1", "--log-every", "1", "--no-progress", "--workers", "0"]
    out = tmp_path / "ft"
    first = finetune([*common, "--output", str(out), "--stop-after", "3"])
    assert 0.0 <= first["top1"] <= 1.0
    result = finetune([*common, "--output", str(out), "--resume", "auto"])
    ckpt = load_checkpoint_file(out / "checkpoint-last.pth")
    assert ckpt["step"] == 8 and ckpt["model"]["head.weight"].shape == (3, 32)
    assert ckpt["model_name"] == "crate_mae_tiny"
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 9))
    assert [r["step"] for r in read_jsonl(out / "eval.jsonl")] == [3, 4, 8]
    assert result["best_top1"] >= first["top1"]
    # a fine-tuned checkpoint (encoder weights + head) loads back for probing
    probe = linprobe(
        ["--checkpoint", str(out / "checkpoint-best.pth"), "--data", str(data), "--output", str(out / "p")]
    )
    assert probe["num_test"] == 16


@pytest.mark.slow
def test_torchrun_fsdp_matches_one_process_and_resumes(tmp_path):
    common = ["--epochs", "1", "--samples-per-epoch", "64", "--log-every", "1", "--warmup-steps", "1"]
    common += ["--clip-grad", "1.0", *TINY]
    pretrain([*common, "--batch-size", "16", "--stop-after", "3", "--output", str(tmp_path / "one")])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd += [str(ROOT / "recipes" / "pretrain.py"), *common, "--batch-size", "8", "--fsdp", "--output"]
    cmd += [str(tmp_path / "fsdp")]
    for extra in (["--stop-after", "2"], ["--stop-after", "3", "--resume", "auto"]):  # stop, then resume sharded
        proc = subprocess.run([*cmd, *extra], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (load_checkpoint_file(tmp_path / d / "checkpoint-last.pth") for d in ("one", "fsdp"))
    assert b["fsdp"] and b["step"] == 3 and sorted(a["model"]) == sorted(b["model"])  # full, unsharded weights
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    common = ["--samples-per-epoch", "16", "--batch-size", "8", "--stop-after", "2", *TINY]
    pretrain([*common, "--output", str(tmp_path / "a")])
    pretrain([*common, "--output", str(tmp_path / "b"), "--grad-checkpointing"])
    a, b = (load_checkpoint_file(tmp_path / d / "checkpoint-last.pth")["model"] for d in "ab")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)
