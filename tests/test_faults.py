"""Recipes and loaders under faults: no crash without a clear message, no silent wrong result, nothing lost.

Two runs into one folder; a kill between the checkpoint writes; damaged checkpoints; changed
arguments on resume; finished runs; unreadable images; unlabelled test data; damaged weight files;
nonsense model arguments; a full disk.
"""

from __future__ import annotations

import io
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import registry
import whitebox
from recipes.finetune import main as finetune
from recipes.linprobe import main as linprobe
from recipes.pretrain import main as pretrain
from whitebox.train import BadImageError, FolderInUseError, RunFolder, load_checkpoint_file, read_jsonl
from whitebox.train import run as run_module
from whitebox.train.run import OutputFolderError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--no-progress", "--no-tensorboard"]
SHORT = ["--samples-per-epoch", "32", "--batch-size", "8", "--epochs", "2", "--save-every", "1", *TINY]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs training loops."""


def _params(folder: Path, name: str = "checkpoint-last.pth") -> dict[str, torch.Tensor]:
    return load_checkpoint_file(folder / name)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- one run per output folder
_HOLDER = """
import sys, time
from whitebox.train import RunFolder
with RunFolder(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_into_a_held_folder_refuses_at_once_and_a_killed_holder_leaves_no_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        with pytest.raises(FolderInUseError, match=rf"{out} is in use by another run \(pid {holder.pid} on "):
            pretrain(["--output", str(out), *SHORT])
        assert time.perf_counter() - start < 5  # at once: before the model or the data are built
        assert sorted(p.name for p in out.iterdir()) == [".run.lock"]  # the holder's folder is untouched
        os.kill(holder.pid, signal.SIGKILL)  # a crashed run
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    with RunFolder(out) as folder:  # the kernel released its lock
        assert folder == out


# ----------------------------------------------------------------------------- the checkpoint set under kills
class Crash(BaseException):
    """A process killed at a chosen point (BaseException: nothing in the loop catches it)."""


def _crash_after(monkeypatch, name: str, step: int) -> None:
    """Die right after the atomic write of ``name`` at ``step`` (before anything else is written)."""
    real = run_module.atomic_save

    def save(state, path):
        real(state, path)
        if Path(path).name == name and state["step"] == step:
            raise Crash(f"killed after writing {name} at step {step}")

    monkeypatch.setattr(run_module, "atomic_save", save)


def test_killed_between_best_and_last_resumes_from_the_newer_best(tmp_path, monkeypatch, capsys):
    pretrain([*SHORT, "--output", str(tmp_path / "full")])
    best_steps = [r["step"] for r in read_jsonl(tmp_path / "full" / "eval.jsonl")]
    assert best_steps == [1, 2, 3, 4, 5, 6, 7, 8]
    part = tmp_path / "part"
    _crash_after(monkeypatch, "checkpoint-best.pth", 3)  # best of step 3 written, last still at step 2
    with pytest.raises(Crash):
        pretrain([*SHORT, "--output", str(part)])
    monkeypatch.undo()
    last, best = (load_checkpoint_file(part / n) for n in ("checkpoint-last.pth", "checkpoint-best.pth"))
    assert (last["step"], best["step"]) == (2, 3)
    assert last["best"] == last["eval_rows"][-1]["probe_loss"] or last["best"] <= min(
        r["probe_loss"] for r in last["eval_rows"]
    )
    pretrain([*SHORT, "--output", str(part), "--resume", "auto"])
    assert "resume: from " + str(part / "checkpoint-best.pth") + " (step 3)" in capsys.readouterr().err
    assert _same(_params(part), _params(tmp_path / "full"))
    assert read_jsonl(part / "eval.jsonl") == read_jsonl(tmp_path / "full" / "eval.jsonl")
    best_row = min(read_jsonl(part / "eval.jsonl"), key=lambda r: r["probe_loss"])
    assert load_checkpoint_file(part / "checkpoint-best.pth")["step"] == best_row["step"]


def test_killed_after_the_last_checkpoint_keeps_every_eval_row(tmp_path, monkeypatch):
    pretrain([*SHORT, "--output", str(tmp_path / "full")])
    part = tmp_path / "part"
    _crash_after(monkeypatch, "checkpoint-last.pth", 5)  # the eval row of step 5 is never appended
    with pytest.raises(Crash):
        pretrain([*SHORT, "--output", str(part)])
    monkeypatch.undo()
    assert [r["step"] for r in read_jsonl(part / "eval.jsonl")] == [1, 2, 3, 4]
    pretrain([*SHORT, "--output", str(part), "--resume", "auto"])
    assert read_jsonl(part / "eval.jsonl") == read_jsonl(tmp_path / "full" / "eval.jsonl")
    assert _same(_params(part), _params(tmp_path / "full"))


def test_resume_auto_skips_a_damaged_last_checkpoint_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    pretrain([*SHORT, "--output", str(out), "--stop-after", "3"])
    last = out / "checkpoint-last.pth"
    last.write_bytes(last.read_bytes()[:1000])  # truncated by a dying disk
    pretrain([*SHORT, "--output", str(out), "--resume", "auto"])
    err = capsys.readouterr().err
    assert f"resume: skipped {last}: {last} is a damaged PyTorch file" in err
    assert "resume: from " + str(out / "checkpoint-best.pth") in err
    assert load_checkpoint_file(last)["step"] == 8
    last.write_bytes(b"")
    with pytest.raises(registry.CheckpointFormatError, match=rf"{last} is empty \(0 bytes\)"):
        pretrain([*SHORT, "--output", str(out), "--resume", str(last)])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--seed", "1"], "--seed 1 (checkpoint: 0)"),
        (["--steps", "5"], "--steps 5 (checkpoint: None)"),
        (["--data", "samples"], "--data 'samples' (checkpoint: None)"),  # not the demo: another architecture
        (["--mask-ratio", "0.5"], "--mask-ratio 0.5 (checkpoint: 0.75)"),
    ],
)
def test_resume_with_other_data_seed_or_schedule_is_refused_unless_forced(tmp_path, capsys, change, named):
    out = tmp_path / "run"
    pretrain([*SHORT, "--output", str(out), "--stop-after", "2"])
    with pytest.raises(ValueError, match="was written by a run with other arguments: ") as err:
        pretrain([*SHORT, "--output", str(out), "--resume", "auto", *change])
    assert named in str(err.value) and "pass --force-resume to continue anyway" in str(err.value)
    assert load_checkpoint_file(out / "checkpoint-last.pth")["step"] == 2  # nothing was touched
    forced = [*SHORT, "--output", str(out), "--resume", "auto", "--force-resume", *change]
    if "--data" in change:  # forcing cannot load weights of another shape: named, not a raw traceback
        with pytest.raises(ValueError, match=r"cannot load .*checkpoint-last.pth into CrateMAE: shape mismatches"):
            pretrain(forced)
        return
    result = pretrain(forced)
    assert "continuing (--force-resume)" in capsys.readouterr().err and result["step"] > 2


def test_resuming_a_finished_run_reports_it_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    done = pretrain([*SHORT, "--output", str(out)])
    before = (out / "checkpoint-last.pth").read_bytes(), (out / "eval.jsonl").read_text()
    again = pretrain([*SHORT, "--output", str(out), "--resume", "auto"])
    assert "this run already finished at step 8; nothing to do" in capsys.readouterr().err
    assert again["step"] == 8 and again["loss"] == done["loss"] and again["best_probe_loss"] == done["best_probe_loss"]
    assert ((out / "checkpoint-last.pth").read_bytes(), (out / "eval.jsonl").read_text()) == before


_KILLABLE = [*SHORT[: -len(TINY)], "--epochs", "30", *TINY]  # 120 steps, a checkpoint at every one


@pytest.mark.slow
def test_kill9_at_any_moment_leaves_a_consistent_set_and_an_exact_resume(tmp_path):
    """Kill -9 a real run at several moments; after each, the files agree and resuming ends bit-exact."""
    pretrain([*_KILLABLE, "--output", str(tmp_path / "full")])
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "recipes" / "pretrain.py"), *_KILLABLE, "--output", str(out), "--resume", "auto"]
    steps = [0]
    for delay in (0.1, 0.7, 1.3):
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            not (out / "eval.jsonl").exists() or len(read_jsonl(out / "eval.jsonl")) <= steps[-1]
        ):
            time.sleep(0.005)  # until this run has written a checkpoint of its own
        time.sleep(delay)
        assert proc.poll() is None, "the run ended before it could be killed: make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        last, best = (load_checkpoint_file(out / n) for n in ("checkpoint-last.pth", "checkpoint-best.pth"))
        rows = read_jsonl(out / "eval.jsonl")
        assert [r["step"] for r in last["eval_rows"]] == list(range(1, last["step"] + 1))
        assert rows[: len(last["eval_rows"])] == last["eval_rows"][: len(rows)]  # the log never disagrees
        # the best checkpoint is the one whose loss the last checkpoint calls best, or newer than it
        assert best["step"] > last["step"] or best["eval_rows"][-1]["probe_loss"] == last["best"]
        steps.append(max(last["step"], best["step"]))
    assert steps == sorted(steps) and steps[-1] < 120  # every kill hit a run in progress
    subprocess.run(cmd, env=ENV, check=True, capture_output=True, timeout=300)
    assert _same(_params(out), _params(tmp_path / "full"))
    assert read_jsonl(out / "eval.jsonl") == read_jsonl(tmp_path / "full" / "eval.jsonl")


# ----------------------------------------------------------------------------- unreadable images
def _folder_with_a_truncated_jpeg(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.jpg")
    bad = root / "b" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    (root / "a" / "notes.jpg").write_bytes(b"this is not an image")  # a garbage entry
    return bad


def test_unreadable_images_are_skipped_by_name_and_counted_and_resume_does_not_repeat_a_crash(tmp_path, capsys):
    bad = _folder_with_a_truncated_jpeg(tmp_path / "imgs")
    common = ["--data", str(tmp_path / "imgs"), "--batch-size", "6", "--epochs", "2", "--log-every", "1", *TINY]
    common += ["--img-size", "32"]
    result = pretrain([*common, "--output", str(tmp_path / "run"), "--stop-after", "2"])
    err = capsys.readouterr().err
    assert f"warning: skipped {bad} cannot be read as an image" in err
    assert f"warning: skipped {tmp_path / 'imgs' / 'a' / 'notes.jpg'} cannot be read as an image" in err
    assert "skipped 2 unreadable images" in err or "skipped 1 unreadable images" in err
    skipped = sum(r.get("skipped_images", 0) for r in read_jsonl(tmp_path / "run" / "eval.jsonl"))
    assert skipped >= 1 and np.isfinite(result["loss"])
    resumed = pretrain([*common, "--output", str(tmp_path / "run"), "--resume", "auto"])
    assert resumed["step"] == 4
    either = rf"({re.escape(str(bad))}|{re.escape(str(tmp_path / 'imgs' / 'a' / 'notes.jpg'))})"
    with pytest.raises(BadImageError, match=either + r" cannot be read as an image .*--on-bad-image skip"):
        pretrain([*common, "--output", str(tmp_path / "strict"), "--on-bad-image", "error"])


def test_a_garbage_entry_in_a_jpeg_pack_is_named(tmp_path):
    from whitebox.train import SeededDataset, build_dataset
    from whitebox.train.data import EvalTransform

    blobs = []
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buf, format="JPEG")
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    blobs[1] = np.frombuffer(b"garbage" * 5, np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    np.savez(tmp_path / "pack.npz", jpeg=np.concatenate(blobs), offsets=offsets, y=np.arange(3))
    pack = build_dataset(str(tmp_path / "pack.npz"))
    strict = SeededDataset(pack, EvalTransform(8), on_bad_image="error")
    with pytest.raises(BadImageError, match=rf"image 1 of the JPEG pack {tmp_path / 'pack.npz'} cannot be read"):
        strict[(1, 0)]
    lenient = SeededDataset(pack, EvalTransform(8))
    sample = lenient[(1, 0)]
    assert sample["skipped"] == 1 and sample["label"] == 2  # the next readable image, deterministically


def _labelled_npz(path: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(n) % 3)
    return path


def test_unlabelled_test_data_is_an_error_not_zero_accuracy(tmp_path):
    data = _labelled_npz(tmp_path / "train.npz")
    np.savez(tmp_path / "unlabelled.npz", x=np.zeros((6, 16, 16, 3), np.uint8))
    common = ["--model", "crate_mae_tiny", "--img-size", "16", "--patch-size", "8", *TINY[:6], "--data", str(data)]
    with pytest.raises(ValueError, match=r"the test images has no class labels"):
        linprobe([*common, "--test-data", str(tmp_path / "unlabelled.npz"), "--output", str(tmp_path / "p")])
    with pytest.raises(ValueError, match=rf"the test images \({tmp_path / 'unlabelled.npz'}\) has no class labels"):
        finetune([*common, "--test-data", str(tmp_path / "unlabelled.npz"), "--output", str(tmp_path / "f")])


# ----------------------------------------------------------------------------- damaged weight files
def _tiny():
    return whitebox.create_model("crate_tiny", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


def _damaged_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    sd = _tiny().state_dict()
    torch.save(sd, tmp_path / "good.pth")
    save_file(sd, str(tmp_path / "good.safetensors"))
    good_pt, good_st = (tmp_path / "good.pth").read_bytes(), (tmp_path / "good.safetensors").read_bytes()
    header = struct.unpack("<Q", good_st[:8])[0]
    files = {
        "empty .pth": (b"", r"is empty \(0 bytes\)"),
        "random bytes": (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "is not a weights"),
        "truncated .pth": (good_pt[: len(good_pt) // 2], "is a damaged PyTorch file"),
        "pickle of random bytes": (b"\x80\x02" + bytes(range(200)), "is a damaged or foreign pickle"),
        "truncated .safetensors": (good_st[: len(good_st) // 2], "is a damaged safetensors file"),
        "lying header": (
            struct.pack("<Q", header) + good_st[8:].replace(b'"shape":[32', b'"shape":[33', 1),
            "is a damaged safetensors file",
        ),
        "text file": (b"hello, I am a README\n" * 10, r"is not a weights file \(210 bytes starting with b'hello"),
    }
    out = {}
    for i, (what, (data, message)) in enumerate(files.items()):
        path = tmp_path / f"bad{i}{'.safetensors' if 'safetensors' in what or 'header' in what else '.pth'}"
        path.write_bytes(data)
        out[what] = (path, message)
    return out


def test_every_damaged_weight_file_is_named_with_what_it_is(tmp_path):
    for what, (path, message) in _damaged_files(tmp_path).items():
        for load in (
            lambda p: whitebox.create_model("crate_tiny", checkpoint_path=p),
            lambda p: whitebox.create_model("crate_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(p))),
        ):
            with pytest.raises(registry.CheckpointFormatError) as err:
                load(path)
            assert str(path) in str(err.value), what
            assert re.search(message, str(err.value)), (what, str(err.value))
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, tmp_path / "no_tensors.pth")
    with pytest.raises(registry.CheckpointFormatError, match=r"no_tensors.pth holds no state dict of tensors"):
        whitebox.create_model("crate_tiny", checkpoint_path=tmp_path / "no_tensors.pth")


def test_a_damaged_file_in_the_download_cache_says_to_delete_it(tmp_path, monkeypatch):
    from _servers import LocalServer

    monkeypatch.setenv("WHITEBOX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("WHITEBOX_OFFLINE", raising=False)
    torch.save(_tiny().state_dict(), tmp_path / "w.pth")
    with LocalServer() as server:
        server.files["w.pth"] = (tmp_path / "w.pth").read_bytes()
        overlay = dict(url=f"{server.url}/files/w.pth")
        kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, pretrained=True)
        whitebox.create_model("crate_tiny", pretrained_cfg_overlay=overlay, **kw)
        (cached,) = (tmp_path / "home" / "checkpoints").glob("url-*/w.pth")  # one entry per address
        cached.write_bytes(cached.read_bytes()[:500])  # damaged after the download
        with pytest.raises(registry.CheckpointFormatError, match=rf"{cached} is a damaged .* delete it to fetch it"):
            whitebox.create_model("crate_tiny", pretrained_cfg_overlay=overlay, **kw)


# ----------------------------------------------------------------------------- nonsense model arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(embed_dim="64"), TypeError, r"embed_dim must be an integer in \[1, 16384\], got '64' \(str\)"),
        (dict(embed_dim=1e7), TypeError, r"embed_dim must be an integer in \[1, 16384\], got 10000000.0 \(float\)"),
        (dict(embed_dim=10**7), ValueError, r"embed_dim must be an integer in \[1, 16384\], got 10000000"),
        (dict(patch_size=0), ValueError, r"patch_size must be an integer in \[1, 32\], got 0"),
        (dict(num_heads=0), ValueError, r"num_heads must be an integer in \[1, 64\], got 0"),
        (dict(num_heads=5), ValueError, r"embed_dim \(64\) must be divisible by num_heads \(5\)"),
        (dict(depth=-1), ValueError, r"depth must be an integer in \[1, 512\], got -1"),
        (dict(depth=0), ValueError, r"depth must be an integer in \[1, 512\], got 0"),
        (dict(img_size=30), ValueError, r"img_size \(30, 30\) is not divisible by patch_size 8"),
        (dict(drop_path_rate=1.5), ValueError, r"drop_path_rate must be a finite number in \[0.0, 1.0\]"),
        (dict(eta=0.0), ValueError, r"eta must be a finite number in \(0.0, inf\], got 0.0"),
        (dict(lambd=float("nan")), ValueError, r"lambd must be a finite number in \[0.0, inf\], got nan"),
        (dict(decoder_depth=-2), ValueError, r"decoder_depth must be an integer in \[0, 512\], got -2"),
        (dict(num_classes=-1), ValueError, r"num_classes must be an integer in \[0, 10000000\], got -1"),
    ],
)
def test_nonsense_model_arguments_are_refused_with_the_allowed_range(kwargs, error, message):
    base = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
    start = time.perf_counter()
    with pytest.raises(error, match=message):
        whitebox.create_model("crate_mae_tiny", **{**base, **kwargs})
    assert time.perf_counter() - start < 2  # up front, before anything large is allocated


def test_nonsense_inputs_are_refused():
    model = whitebox.create_model("crate_mae_tiny", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
    with pytest.raises(ValueError, match=r"an empty batch \(input shape \(0, 3, 32, 32\)\)"):
        model(torch.zeros(0, 3, 32, 32))
    with pytest.raises(TypeError, match="noise must be a torch.Tensor of shape .* got ndarray"):
        model(torch.zeros(1, 3, 32, 32), noise=np.random.rand(1, 16))
    with pytest.raises(ValueError, match=r"block indices must be in \[-2, 1\], got \[1.5\]"):
        model.forward_intermediates(torch.zeros(1, 3, 32, 32), indices=[1.5])


# ----------------------------------------------------------------------------- a full disk
_FULL_DISK = """
import resource, signal, sys, torch
from whitebox.train import atomic_save
atomic_save({"x": torch.zeros(10)}, sys.argv[1])  # a first, small checkpoint fits
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit now fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    atomic_save({"x": torch.zeros(1_000_000)}, sys.argv[1])
except OSError as err:
    print(err)
"""


def test_a_full_disk_during_a_checkpoint_write_says_so_and_keeps_the_previous_file(tmp_path):
    target = tmp_path / "checkpoint-last.pth"
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(target)], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"could not write {target}" in out.stdout and "a full disk or a quota?" in out.stdout
    assert "MiB free on that file system" in out.stdout and "previous file, if any, is unchanged" in out.stdout
    assert load_checkpoint_file(target)["x"].numel() == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last.pth"]  # no temporary file left


# ----------------------------------------------------------------------------- more of the same kinds
def test_flags_and_files_that_cannot_work_are_named(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputFolderError, match=r"--output .*a_file is a file, not a folder; give a folder"):
        pretrain([*SHORT, "--output", str(tmp_path / "a_file")])
    for flag, value, message in (
        ("--stop-after", "0", "argument --stop-after: must be a whole number > 0, got '0'"),
        ("--save-every", "-1", "argument --save-every: must be a whole number >= 0, got '-1'"),
        ("--batch-size", "0", "argument --batch-size: must be a whole number > 0, got '0'"),
    ):
        with pytest.raises(SystemExit):
            pretrain([*SHORT, flag, value, "--output", str(tmp_path / "o")])
        assert message in capsys.readouterr().err
    (tmp_path / "garbage.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"garbage.npz is not a readable .npz of image arrays"):
        pretrain([*SHORT, "--data", str(tmp_path / "garbage.npz"), "--output", str(tmp_path / "g")])
    with pytest.raises(SystemExit):  # argparse: "argument --model-kwargs: not valid JSON (...)"
        pretrain([*SHORT, "--model-kwargs", "{lambd: 5}", "--output", str(tmp_path / "j")])


def test_a_pretraining_checkpoint_cannot_be_resumed_as_a_fine_tuning(tmp_path):
    data = _labelled_npz(tmp_path / "d.npz")
    pre = tmp_path / "pre"
    pretrain(["--img-size", "16", "--patch-size", "8", *SHORT, "--stop-after", "1", "--output", str(pre)])
    common = ["--data", str(data), "--test-split", "train", "--batch-size", "8", "--no-progress", "--epochs", "1"]
    with pytest.raises(
        ValueError, match=r"is a pretrain checkpoint, this is finetune: start from it with --checkpoint"
    ):
        finetune([*common, "--checkpoint", str(pre / "checkpoint-last.pth"), "--output", str(pre), "--resume", "auto"])


def test_a_new_run_never_overwrites_an_earlier_one_unless_asked(tmp_path):
    out = tmp_path / "run"
    first = pretrain([*SHORT, "--output", str(out), "--stop-after", "2"])
    before = (out / "checkpoint-last.pth").read_bytes()
    with pytest.raises(FileExistsError, match=r"checkpoints of an earlier run; pass --resume auto .*--overwrite"):
        pretrain([*SHORT, "--output", str(out)])
    assert (out / "checkpoint-last.pth").read_bytes() == before
    again = pretrain([*SHORT, "--output", str(out), "--stop-after", "2", "--overwrite"])
    assert again["step"] == first["step"] == 2
    assert [r["step"] for r in read_jsonl(out / "eval.jsonl")] == [1, 2]  # the new run's rows only


def test_the_programs_end_a_user_error_with_its_message_not_a_traceback(tmp_path):
    cmd = [sys.executable, str(ROOT / "recipes" / "pretrain.py"), "--samples-per-epoch", "4", "--batch-size", "8"]
    out = subprocess.run([*cmd, "--output", str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and last.startswith("error: ") and "4 samples" in last and "lower --batch-size" in last
    assert "Traceback" not in out.stderr
