"""Every run ends in a known state (issue 17): non-finite runs, signals, short runs, odd output folders.

The programs run for real (subprocess, tiny model) where the behaviour is the program's: its exit
status, its last line, the files it leaves.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.finetune import main as finetune
from recipes.pretrain import MAEPretraining
from recipes.pretrain import main as pretrain
from whitebox.io import json_line, write_json
from whitebox.train import MetricsLogger, RunFolder, load_checkpoint_file, read_jsonl
from whitebox.train.run import NonFiniteError, OutputFolderError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--no-progress", "--no-tensorboard"]
SHORT = ["--samples-per-epoch", "32", "--batch-size", "8", "--epochs", "2", "--save-every", "1", *TINY]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
PRETRAIN = [sys.executable, str(ROOT / "recipes" / "pretrain.py")]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs training loops."""


def _strict_json(text: str) -> object:
    """Parse as RFC 8259 JSON: NaN / Infinity are errors, as in jq or a browser."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _strict_files(out: Path) -> None:
    for name in ("metrics.jsonl", "eval.jsonl"):
        for line in (out / name).read_text().splitlines():
            _strict_json(line)
    for name in ("args.json", "results.json"):
        if (out / name).exists():
            _strict_json((out / name).read_text())


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- non-finite runs
@pytest.mark.slow
def test_a_diverging_pretraining_stops_keeps_the_last_finite_checkpoint_and_stops_again_on_resume(tmp_path):
    """The issue's example: --lr 1e12 --warmup-steps 4 --save-every 1 ran to the end and saved NaN weights."""
    out = tmp_path / "run"
    cmd = [*PRETRAIN, *SHORT, "--lr", "1e12", "--warmup-steps", "4", "--log-every", "1", "--output", str(out)]
    first = _run(cmd)
    assert first.returncode == 1, first.stderr[-2000:]
    last_line = first.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: the run went non-finite at step "), last_line
    assert "Traceback" not in first.stderr
    assert "--lr, now 1e+12" in last_line and "--clip-grad" in last_line and "--max-nonfinite-steps" in last_line
    ckpt = load_checkpoint_file(out / "checkpoint-last.pth")
    assert f"checkpoint-last.pth keeps step {ckpt['step']}, the last finite state" in last_line
    bad_step = int(last_line.split("non-finite at step ")[1].split(":")[0])
    assert ckpt["step"] < bad_step  # the checkpoint is from before the failure
    for name in ("checkpoint-last.pth", "checkpoint-best.pth"):
        assert _finite(load_checkpoint_file(out / name)["model"]), name
    _strict_files(out)
    assert not list(out.glob(".*.tmp"))
    before = (out / "checkpoint-last.pth").read_bytes()
    # --resume auto starts from the last finite checkpoint and stops again, cleanly, at the same step
    again = _run([*cmd, "--resume", "auto"])
    assert again.returncode == 1, again.stderr[-2000:]
    assert f"resume: from {out / 'checkpoint-last.pth'} (step {ckpt['step']})" in again.stderr
    assert again.stderr.strip().splitlines()[-1] == last_line
    assert (out / "checkpoint-last.pth").read_bytes() == before
    _strict_files(out)
    with RunFolder(out):  # the lock was released
        pass


def _poison(monkeypatch, steps: set[int], where: str) -> None:
    """Make the loss (``where='loss'``) or only the gradients (``'grad'``) non-finite at the given 0-based steps."""
    real, hooked = MAEPretraining.loss, []

    def loss(self, batch):
        value = real(self, batch)
        if where == "grad" and not hooked:  # a finite loss, an infinite gradient
            hook = lambda g: g * float("inf") if self.step in steps else g  # noqa: E731
            hooked.append(self.model.decoder_pred.weight.register_hook(hook))
        return value * float("nan") if where == "loss" and self.step in steps else value

    monkeypatch.setattr(MAEPretraining, "loss", loss)


def test_a_few_nonfinite_steps_are_skipped_when_allowed_and_counted_in_the_log(tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {2}, "loss")  # step 3 (1-based)
    out = tmp_path / "run"
    result = pretrain([*SHORT, "--log-every", "2", "--output", str(out), "--max-nonfinite-steps", "1"])
    err = capsys.readouterr().err
    assert "warning: step 3: loss nan, gradient norm nan: skipped, the weights are unchanged (1 of" in err
    assert result["step"] == 8 and math.isfinite(result["loss"])
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r.get("nonfinite_steps_skipped", 0) for r in rows] == [0, 1, 0, 0]
    assert all(math.isfinite(r["loss"]) for r in rows)  # the mean of the finite steps
    assert _finite(load_checkpoint_file(out / "checkpoint-last.pth")["model"])
    _strict_files(out)


def test_a_skipped_step_leaves_the_weights_unchanged(tmp_path, monkeypatch):
    common = [*SHORT, "--warmup-steps", "1", "--max-nonfinite-steps", "1"]
    pretrain([*common, "--output", str(tmp_path / "a"), "--stop-after", "2"])
    _poison(monkeypatch, {2}, "grad")  # a finite loss with an infinite gradient
    pretrain([*common, "--output", str(tmp_path / "b"), "--stop-after", "3"])
    a, b = (load_checkpoint_file(tmp_path / d / "checkpoint-last.pth") for d in "ab")
    assert b["step"] == 3 and a["step"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_nonfinite_gradient_with_a_finite_loss_stops_by_default(tmp_path, monkeypatch):
    _poison(monkeypatch, {1}, "grad")
    with pytest.raises(NonFiniteError, match=r"non-finite at step 2: loss [0-9.]+, gradient norm inf \(not finite\)"):
        pretrain([*SHORT, "--output", str(tmp_path / "run")])
    ckpt = load_checkpoint_file(tmp_path / "run" / "checkpoint-last.pth")
    assert ckpt["step"] == 1 and _finite(ckpt["model"])


def test_more_nonfinite_steps_in_a_row_than_allowed_stop_the_run(tmp_path, monkeypatch):
    _poison(monkeypatch, {2, 3, 4}, "loss")
    with pytest.raises(NonFiniteError, match=r"non-finite at step 5: loss nan"):
        pretrain([*SHORT, "--output", str(tmp_path / "run"), "--max-nonfinite-steps", "2"])
    assert load_checkpoint_file(tmp_path / "run" / "checkpoint-last.pth")["step"] == 4  # skipped steps 3, 4 saved


def test_nonfinite_weights_are_never_saved(tmp_path, monkeypatch):
    real = MAEPretraining.on_step

    def on_step(self):
        real(self)
        if self.step == 3:
            with torch.no_grad():
                self.model.encoder.blocks[0].norm1.weight[0] = float("inf")

    monkeypatch.setattr(MAEPretraining, "on_step", on_step)
    with pytest.raises(NonFiniteError, match=r"step 3: the weights \(encoder.blocks.0.norm1.weight\)"):
        pretrain([*SHORT, "--output", str(tmp_path / "run")])
    assert load_checkpoint_file(tmp_path / "run" / "checkpoint-last.pth")["step"] == 2


def _fp16_on_cpu(monkeypatch) -> None:
    """``--precision fp16`` on CPU: the real ``GradScaler`` (enabled) and fp16 autocast, which CPU supports;
    the recipes refuse fp16 without CUDA only because CPU fp16 is slow, not because the code path differs."""
    import recipes.pretrain

    real = recipes.pretrain.resolve_precision
    monkeypatch.setattr(recipes.pretrain, "resolve_precision", lambda p, d: "fp16" if p == "fp16" else real(p, d))


_FP16 = [*SHORT[:4], "--epochs", "6", "--save-every", "0", *TINY, "--precision", "fp16", "--warmup-steps", "1"]


def test_fp16_overflow_at_every_step_stops_once_the_loss_scale_reaches_its_floor(tmp_path, monkeypatch):
    """Before: the GradScaler skipped every step and halved its scale without end; the loss stayed finite and the
    run 'finished' with the initial weights. After: from the default scale 2**16, 16 skips bring it to 1, the
    floor, and the 17th overflowing step counts as non-finite (--max-nonfinite-steps 0): a named error."""
    _fp16_on_cpu(monkeypatch)
    _poison(monkeypatch, set(range(100)), "grad")  # a finite loss, an infinite gradient at every step
    out = tmp_path / "run"
    pattern = r"non-finite at step 17: loss [0-9.]+, gradient norm (inf|nan) at fp16 loss scale 1 \(not finite\); "
    pattern += r"the loss scale is at its floor 1 .*Try .*--precision bf16 \(fp32's range\) or fp32"
    with pytest.raises(NonFiniteError, match=pattern):
        pretrain([*_FP16, "--output", str(out)])
    ckpt = load_checkpoint_file(out / "checkpoint-last.pth")
    assert ckpt["step"] == 16 and ckpt["scaler"]["scale"] == 1.0 and _finite(ckpt["model"])
    _poison(monkeypatch, set(range(100)), "grad")  # the same on the resumed run's new model
    with pytest.raises(NonFiniteError, match=r"non-finite at step 17: "):  # resumed at scale 1: stops at once
        pretrain([*_FP16, "--output", str(out), "--resume", "auto"])


def test_fp16_overflow_at_the_floor_is_skipped_like_any_nonfinite_step_when_allowed(tmp_path, monkeypatch, capsys):
    _fp16_on_cpu(monkeypatch)
    _poison(monkeypatch, set(range(100)), "grad")
    with pytest.raises(NonFiniteError, match=r"non-finite at step 19: .* at fp16 loss scale 0.25 \(not finite\)"):
        pretrain([*_FP16, "--output", str(tmp_path / "run"), "--max-nonfinite-steps", "2"])
    err = capsys.readouterr().err
    assert "warning: step 17: " in err and "at fp16 loss scale 1: skipped" in err and "warning: step 16" not in err


def test_fp16_overflow_for_a_few_steps_is_the_scalers_business_and_the_run_finishes(tmp_path, monkeypatch):
    _fp16_on_cpu(monkeypatch)
    _poison(monkeypatch, {0, 1, 2}, "grad")
    result = pretrain([*_FP16, "--output", str(tmp_path / "run")])
    ckpt = load_checkpoint_file(tmp_path / "run" / "checkpoint-last.pth")
    assert result["step"] == 24 and ckpt["scaler"]["scale"] == 2.0**13  # halved three times, then no growth
    assert _finite(ckpt["model"]) and math.isfinite(result["loss"])


def test_fp16_a_nonfinite_loss_stops_at_once_whatever_the_loss_scale(tmp_path, monkeypatch):
    _fp16_on_cpu(monkeypatch)
    _poison(monkeypatch, {1}, "loss")
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite at step 2: loss nan, gradient norm nan at fp16 loss scale "
        r"6.554e\+04 \(not finite\); stopped",
    ) as err:
        pretrain([*_FP16, "--output", str(tmp_path / "run")])
    assert "floor" not in str(err.value)


def _labelled_npz(path: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    y = np.arange(n) % 3
    np.savez(path, x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    return path


def test_a_fine_tuning_with_a_nonfinite_loss_stops_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    from recipes.finetune import Finetuning

    real = Finetuning.loss
    monkeypatch.setattr(Finetuning, "loss", lambda self, b: real(self, b) * (math.inf if self.step == 2 else 1.0))
    data = _labelled_npz(tmp_path / "d.npz")
    common = ["--model", "crate_tiny", "--img-size", "16", "--patch-size", "8", *TINY, "--data", str(data)]
    common += ["--epochs", "3", "--batch-size", "8", "--save-every", "1", "--aa", "", "--output", str(tmp_path / "ft")]
    with pytest.raises(NonFiniteError, match=r"non-finite at step 3: loss inf, gradient norm nan") as err:
        finetune(common)
    assert "--precision fp32" not in str(err.value)  # it is fp32 already: not suggested
    ckpt = load_checkpoint_file(tmp_path / "ft" / "checkpoint-last.pth")
    assert ckpt["step"] == 2 and _finite(ckpt["model"])
    with pytest.raises(NonFiniteError, match=r"non-finite at step 3"):  # --resume auto: from step 2, stops again
        finetune([*common, "--resume", "auto"])
    _strict_files(tmp_path / "ft")


@pytest.mark.slow
def test_a_diverging_fine_tuning_stops_too(tmp_path):
    data = _labelled_npz(tmp_path / "d.npz")
    out = tmp_path / "ft"
    cmd = [sys.executable, str(ROOT / "recipes" / "finetune.py"), "--model", "crate_tiny", "--img-size", "16"]
    cmd += ["--patch-size", "8", *TINY[:6], "--data", str(data), "--epochs", "3", "--batch-size", "8"]
    cmd += ["--save-every", "1", "--lr", "1e30", "--warmup-epochs", "0", "--output", str(out), "--no-progress"]
    proc = _run(cmd)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the run went non-finite at step ")
    ckpt = load_checkpoint_file(out / "checkpoint-last.pth")
    assert _finite(ckpt["model"])
    _strict_files(out)


def test_log_files_are_strict_json():
    row = {"loss": float("nan"), "lr": float("inf"), "x": -float("inf"), "n": np.float32(0.5), "t": torch.tensor(2)}
    assert _strict_json(json_line(row)) == {"loss": None, "lr": None, "x": None, "n": 0.5, "t": 2}


def test_the_logger_and_json_files_write_null_for_nonfinite(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log({"step": 1, "loss": float("nan")})
    logger.close()
    assert _strict_json((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": None}
    write_json({"best": float("-inf"), "rows": [float("nan"), 1.0]}, tmp_path / "r.json")
    assert _strict_json((tmp_path / "r.json").read_text()) == {"best": None, "rows": [None, 1.0]}


# ----------------------------------------------------------------------------- signals
_LONG = ["--samples-per-epoch", "32", "--batch-size", "8", "--epochs", "12", "--log-every", "1", *TINY]


def _start(cmd: list[str], out: Path, rows: int, **kwargs) -> subprocess.Popen:
    """Start ``cmd`` and return once ``out/metrics.jsonl`` has ``rows`` rows (a run in progress)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(read_jsonl(out / "metrics.jsonl")) < rows:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.01)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_step_checkpoints_and_resumes_bit_exact(tmp_path, sig, status):
    full, out = tmp_path / "full", tmp_path / "run"
    pretrain([*_LONG, "--output", str(full)])
    proc = _start([*PRETRAIN, *_LONG, "--output", str(out)], out, 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-2000:]
    assert "Traceback" not in err
    step = load_checkpoint_file(out / "checkpoint-last.pth")["step"]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {sig.name} at step {step}: {out / 'checkpoint-last.pth'} holds it")
    assert 2 <= step < 48 and "resume with: python " in last and last.endswith("--resume auto")
    with RunFolder(out):  # the lock was released
        pass
    resume = shlex.split(last.split("resume with: ")[1])
    assert resume[:2] == ["python", PRETRAIN[1]] and "--output" in resume
    proc = _run([sys.executable, *resume[1:]])
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = (load_checkpoint_file(d / "checkpoint-last.pth") for d in (full, out))
    assert a["step"] == b["step"] == 48
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert read_jsonl(out / "metrics.jsonl") != [] and [r["loss"] for r in read_jsonl(out / "metrics.jsonl")] == [
        r["loss"] for r in read_jsonl(full / "metrics.jsonl")
    ]


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_reaches_the_loader_workers_too_and_the_step_still_finishes(tmp_path):
    """A terminal sends SIGINT to the whole foreground process group: the run and its loader workers."""
    out = tmp_path / "run"
    cmd = [*PRETRAIN, *_LONG, "--workers", "2", "--output", str(out)]
    proc = _start(cmd, out, 2, start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.count("SIGINT: finishing this step") == 1 and "Traceback" not in err  # the workers stay quiet
    step = load_checkpoint_file(out / "checkpoint-last.pth")["step"]
    assert err.strip().splitlines()[-1].startswith(f"stopped by SIGINT at step {step}: ")


_SLOW_SAVE = """
import sys, time
from pathlib import Path
from recipes import pretrain as p
from whitebox.train.run import run_main
real, marker = p.MAEPretraining._stop_by_signal, Path(sys.argv[1])
def slow(self):
    marker.write_text("stopping")
    time.sleep(60)
    real(self)
p.MAEPretraining._stop_by_signal = slow
sys.argv = [p.__file__, *sys.argv[2:]]
run_main(p.main)
"""


def test_a_second_ctrl_c_stops_at_once_and_leaves_whole_files(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "saving"
    cmd = [sys.executable, "-c", _SLOW_SAVE, str(marker), *_LONG, "--output", str(out)]
    proc = _start(cmd, out, 2)
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:  # the first stop is under way (slowly)
        time.sleep(0.01)
    assert marker.exists()
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 30  # at once, not after the save
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted: stopped at once")
    assert not list(out.glob(".*.tmp"))


def test_signal_stop_handler_first_asks_then_a_second_sigint_interrupts():
    from whitebox.train.run import SignalStop

    with SignalStop(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a relayed repeat is ignored
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


@pytest.mark.slow
def test_sigterm_during_a_two_process_gloo_run_checkpoints_and_resumes_on_one_process(tmp_path):
    """torchrun relays SIGTERM to both ranks; they agree on a step, rank 0 saves it; the run resumes on one
    process at the same global batch (8 = 4 x 2 ranks) and ends where an uninterrupted run ends.

    Not bit for bit: the samples and their masks are the same (seeded per sample), but 2 ranks average two
    per-rank means of 4 (the loss, and the gradients through DDP's all-reduce) where one process takes one
    mean of 8, so float sums run in another order: the step-1 loss differs in the 8th digit and after 48
    steps the weights by up to 6e-8 (measured; 2 -> 2 is bit-exact, tested below)."""
    common = ["--samples-per-epoch", "64", "--epochs", "6", "--log-every", "1", "--warmup-steps", "2", *TINY]
    full, out = tmp_path / "full", tmp_path / "run"
    pretrain([*common, "--batch-size", "8", "--output", str(full)])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd += [*PRETRAIN[1:], *common, "--batch-size", "4", "--output", str(out)]
    proc = _start(cmd, out, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    ckpt = load_checkpoint_file(out / "checkpoint-last.pth")
    assert f"stopped by SIGTERM at step {ckpt['step']}" in err, err[-3000:]
    assert "resume with: torchrun --nproc_per_node=2 " in err
    assert 3 <= ckpt["step"] < 48 and ckpt["effective_batch"] == 8
    with RunFolder(out):
        pass
    result = pretrain([*common, "--batch-size", "8", "--output", str(out), "--resume", "auto"])
    assert result["step"] == 48
    a, b = (load_checkpoint_file(d / "checkpoint-last.pth")["model"] for d in (full, out))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


_TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]


def _rows(out: Path) -> list[dict]:
    """The metrics rows without the wall-clock throughput (the one column that may differ)."""
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_jsonl(out / "metrics.jsonl")]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pretrain", "finetune"])
def test_sigterm_during_a_two_process_gloo_run_resumes_on_two_processes_bit_exact(tmp_path, recipe):
    """Issue 17 item 2: stopped by SIGTERM under torchrun (2 ranks, gloo) and resumed with the printed command on
    2 ranks, the run ends with the same parameters, optimizer state and metrics rows as an uninterrupted 2-rank
    run, bit for bit. Fine-tuning's drop path and mixup draw from each rank's own generator (seed + rank), so
    it also checks that every rank gets its own random state back."""
    common = ["--log-every", "1", "--batch-size", "4", *TINY]
    if recipe == "pretrain":
        common += ["--samples-per-epoch", "64", "--epochs", "6", "--warmup-steps", "2"]  # 8 steps per epoch
    else:  # 24 images, global batch 8: 3 steps per epoch; drop path 0.1 and mixup 0.8 by default
        common += ["--model", "crate_tiny", "--img-size", "16", "--patch-size", "8", "--aa", "", "--epochs", "16"]
        common += ["--data", str(_labelled_npz(tmp_path / "d.npz"))]
    program = str(ROOT / "recipes" / f"{recipe}.py")
    full, out = tmp_path / "full", tmp_path / "run"
    proc = _run([*_TORCHRUN, program, *common, "--output", str(full)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _start([*_TORCHRUN, program, *common, "--output", str(out)], out, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    step = load_checkpoint_file(out / "checkpoint-last.pth")["step"]
    assert 3 <= step < 48, err[-3000:]
    line = next(x for x in err.splitlines() if x.startswith(f"stopped by SIGTERM at step {step}: "))
    resume = shlex.split(line.split("resume with: ")[1])
    assert resume[:3] == ["torchrun", "--nproc_per_node=2", program]
    proc = _run([*_TORCHRUN, *resume[2:]])  # the printed command (standalone: no fixed port)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resume: from {out / 'checkpoint-last.pth'} (step {step})" in proc.stderr
    a, b = (load_checkpoint_file(d / "checkpoint-last.pth") for d in (full, out))
    assert a["step"] == b["step"] == 48
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    states = zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True)
    for i, (sa, sb) in enumerate(states):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), (i, k)
    assert len(_rows(out)) == 48 and _rows(out) == _rows(full)
    assert read_jsonl(out / "eval.jsonl") == read_jsonl(full / "eval.jsonl")


# ----------------------------------------------------------------------------- short runs and the global batch
def test_steps_derive_the_warmup_from_the_run_and_record_it(tmp_path):
    out = tmp_path / "run"
    common = ["--samples-per-epoch", "256", "--batch-size", "8", "--steps", "16", *TINY]
    pretrain([*common, "--output", str(out)])
    args = json.loads((out / "args.json").read_text())
    assert args["warmup_steps"] == 2 and args["total_steps"] == 16  # the demo's eighth (1 of 8 epochs), not 32
    with pytest.raises(ValueError, match=r"--warmup-steps 16 is not shorter than the run \(--steps 16\)"):
        pretrain([*TINY, "--steps", "16", "--warmup-steps", "16", "--output", str(tmp_path / "x")])
    with pytest.raises(ValueError, match=r"--warmup-epochs 2 \(64 steps\) is not shorter than the run \(16 steps\)"):
        pretrain([*common, "--warmup-epochs", "2", "--output", str(tmp_path / "y")])


CIFAR_TRAIN = ROOT.parent / "shared" / "data" / "cifar10_jpeg_train.npz"


@pytest.mark.skipif(not CIFAR_TRAIN.is_file(), reason=f"{CIFAR_TRAIN} absent (shared data not on this machine)")
def test_the_issue_example_cifar_steps_400_warms_up_for_a_tenth_of_the_run(tmp_path):
    """Before: the 40-epoch default warmup (31,240 steps at 781 per epoch) for a 400-step run, and a warning."""
    shape = ["--img-size", "32", "--patch-size", "4", "--decoder-depth", "1", *TINY]
    pretrain(["--data", str(CIFAR_TRAIN), *shape, "--steps", "400", "--stop-after", "1", "--output", str(tmp_path)])
    args = json.loads((tmp_path / "args.json").read_text())
    assert (args["steps_per_epoch"], args["total_steps"], args["warmup_steps"]) == (781, 400, 40)


def test_a_run_shorter_than_an_epoch_checkpoints_and_draws_every_tenth(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--samples-per-epoch", "256", "--batch-size", "8", "--steps", "20", "--log-every", "5", *TINY]
    pretrain([*common, "--output", str(out)])
    assert [r["step"] for r in read_jsonl(out / "eval.jsonl")] == list(range(2, 21, 2))
    grids = sorted(p.name for p in out.glob("reconstruction_step*.png"))
    assert grids == [f"reconstruction_step{s:07d}.png" for s in range(2, 21, 2)]
    err = capsys.readouterr().err  # --no-progress: a plain line per --log-every
    assert [line.split()[1] for line in err.splitlines() if line.startswith("step ")] == [
        "5/20",
        "10/20",
        "15/20",
        "20/20",
    ]


def test_the_global_batch_not_the_per_rank_batch_defines_the_run(tmp_path):
    common = ["--samples-per-epoch", "32", "--epochs", "2", "--output", str(tmp_path), *TINY]
    pretrain([*common, "--batch-size", "8", "--stop-after", "2"])
    result = pretrain([*common, "--batch-size", "4", "--accum-iter", "2", "--resume", "auto"])  # 4 x 2 = 8
    assert result["step"] == 8
    with pytest.raises(ValueError, match=r"effective batch 8, this run has 16"):
        pretrain([*common, "--batch-size", "16", "--resume", str(tmp_path / "checkpoint-last.pth")])


# ----------------------------------------------------------------------------- odd --output kinds
def _odd_outputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "a_file").write_text("x")
    (tmp / "dangling").symlink_to(tmp / "gone" / "away")
    return {
        "dangling link": (tmp / "dangling", r"is a symbolic link to .*gone/away, which points nowhere"),
        "file": (tmp / "a_file", r"--output .*a_file is a file, not a folder"),
        "under a file": (tmp / "a_file" / "run", r"--output .*a_file/run cannot be created: .*a_file is a file"),
    }


@pytest.mark.parametrize("kind", ["dangling link", "file", "under a file"])
def test_odd_output_paths_are_named(tmp_path, kind):
    path, message = _odd_outputs(tmp_path)[kind]
    with pytest.raises(OutputFolderError, match=message):
        pretrain([*SHORT, "--output", str(path)])
    assert not (tmp_path / "gone").exists()  # nothing created behind the user's back


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_folder_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputFolderError, match=r"no permission to write in .*locked"):
        pretrain([*SHORT, "--output", str(locked / "run")])


def test_a_dangling_symlink_output_ends_the_program_with_its_message(tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    proc = _run([*PRETRAIN, *SHORT, "--output", str(tmp_path / "out")])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --output {tmp_path / 'out'} is a symbolic link to {tmp_path / 'nowhere'}")
    assert "points nowhere" in last and "File exists" not in last


def test_linprobe_names_an_odd_output_too(tmp_path):
    from recipes.linprobe import main as linprobe

    data = _labelled_npz(tmp_path / "d.npz")
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputFolderError, match="points nowhere"):
        linprobe(["--model", "crate_tiny", "--data", str(data), "--output", str(tmp_path / "out")])


def test_finetune_refuses_a_warmup_longer_than_the_run_and_derives_a_default(tmp_path):
    data = _labelled_npz(tmp_path / "d.npz")
    common = ["--model", "crate_tiny", "--img-size", "16", "--patch-size", "8", *TINY[:6], "--data", str(data)]
    common += ["--batch-size", "8", "--no-progress", "--aa", ""]
    with pytest.raises(ValueError, match=r"--warmup-epochs 5 is not shorter than the run \(--epochs 2\)"):
        finetune([*common, "--epochs", "2", "--warmup-epochs", "5", "--output", str(tmp_path / "a")])
    finetune([*common, "--epochs", "2", "--output", str(tmp_path / "b")])
    assert json.loads((tmp_path / "b" / "args.json").read_text())["warmup_epochs"] == pytest.approx(0.1)
