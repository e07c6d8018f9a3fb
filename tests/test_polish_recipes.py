"""A fresh user's findings in the recipes and the data layer (issues 17-19): every bad input refused by
name with the flag and what is allowed, every run ending with a line that says what happened."""

from __future__ import annotations

import math
import os
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes.finetune import Finetuning
from recipes.finetune import main as finetune
from recipes.linprobe import main as linprobe
from recipes.pretrain import main as pretrain
from whitebox.data import LabelError, SplitNotFoundError, build_dataset, load_npz
from whitebox.train.run import NonFiniteError, resume_command

TINY = ["--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--no-progress", "--no-tensorboard"]
SHORT = ["--samples-per-epoch", "32", "--batch-size", "8", "--epochs", "2", *TINY]
LP = ["--model", "crate_tiny", "--img-size", "16", "--patch-size", "8", *TINY[:6], "--no-progress"]
FT = ["--model", "crate_tiny", "--img-size", "16", "--patch-size", "8", *TINY, "--aa", ""]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Some tests here build models and run a few steps."""


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _images(n: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def _labelled(path: Path, n: int = 24) -> Path:
    x, y = _images(n), np.arange(n) % 3
    return _npz(path, x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])


# ----------------------------------------------------------------------------- 1. CIFAR-10 not there
def _assert_cifar_named(err: BaseException, root: Path) -> None:
    text = str(err)
    assert "CIFAR-10 not found" in text and str(root / "cifar-10-batches-py") in text, text
    assert "--download" in text and "--data-root" in text, text


def test_cifar10_missing_is_a_named_file_not_found_in_the_data_layer(tmp_path):
    for split in ("train", "test"):
        with pytest.raises(FileNotFoundError) as err:
            build_dataset("cifar10", split, data_root=str(tmp_path))
        _assert_cifar_named(err.value, tmp_path)


@pytest.mark.parametrize("program", ["pretrain", "pretrain-knn", "finetune", "linprobe"])
def test_cifar10_missing_is_named_by_every_program(tmp_path, program):
    root, out = tmp_path / "nothing", str(tmp_path / "out")
    if program == "pretrain":
        run = lambda: pretrain(["--data", "cifar10", "--data-root", str(root), *SHORT, "--output", out])  # noqa: E731
    elif program == "pretrain-knn":
        run = lambda: pretrain(["--knn-data", "cifar10", "--data-root", str(root), *SHORT, "--output", out])  # noqa: E731
    elif program == "finetune":
        run = lambda: finetune([*FT, "--data", "cifar10", "--data-root", str(root), "--output", out])  # noqa: E731
    else:
        run = lambda: linprobe([*LP, "--data", "cifar10", "--data-root", str(root), "--output", out])  # noqa: E731
    with pytest.raises(FileNotFoundError) as err:  # run_main prints it as `error: MESSAGE`
        run()
    _assert_cifar_named(err.value, root)


def test_cifar10_download_offline_says_what_and_from_where(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(OSError) as err:
        build_dataset("cifar10", "train", download=True, data_root=str(tmp_path))
    text = str(err.value)
    assert "could not download CIFAR-10 from https://" in text and str(tmp_path) in text, text
    assert "name resolution" in text, text


# ----------------------------------------------------------------------------- 2. split advice that fits
def test_pretraining_knn_data_without_a_test_split_advises_pretrainings_flags(tmp_path):
    folder = tmp_path / "photos"
    for split in ("train", "extra"):
        for c in ("a", "b"):
            (folder / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16)).save(folder / split / c / "x.png")
    single = _npz(tmp_path / "one.npz", x=_images(), y=np.arange(24) % 3)
    for data in (folder, single):
        with pytest.raises(SplitNotFoundError) as err:
            pretrain([*SHORT, "--knn-data", str(data), "--output", str(tmp_path / "out")])
        text = str(err.value)
        assert "--test-data" not in text, text
        assert "'test', 'val', 'test'" not in text and "('test'" not in text, text
        assert "--knn-data" in text and "x_test / y_test" in text and "test/" in text, text
    with pytest.raises(SplitNotFoundError, match=r"looked for test / val; it has the sub-folders extra, train"):
        build_dataset(str(folder), "test")
    with pytest.raises(SplitNotFoundError, match=r"looked for val / test;"):  # the asked-for split once
        build_dataset(str(folder), "val")


def test_finetune_without_a_test_split_advises_test_data_and_test_split(tmp_path):
    single = _npz(tmp_path / "one.npz", x=_images(), y=np.arange(24) % 3)
    with pytest.raises(SplitNotFoundError, match=r"--test-data FILE_OR_FOLDER.*--test-split"):
        finetune([*FT, "--data", str(single), "--output", str(tmp_path / "out")])


# ----------------------------------------------------------------------------- 3. label errors name y_*
BAD_LABELS = {
    "float": np.arange(24, dtype=np.float64) % 3,
    "negative": np.arange(24) % 3 - 1,
    "one-hot": np.eye(3, dtype=np.int64)[np.arange(24) % 3],
    "column": (np.arange(24) % 3)[:, None],
    "string": np.array(["cat", "dog", "eel"] * 8),
    "huge": np.r_[np.arange(23) % 3, 2**40],
}


@pytest.mark.parametrize("kind", sorted(BAD_LABELS))
def test_label_errors_name_the_label_array(tmp_path, kind):
    x, y = _images(), BAD_LABELS[kind]
    path = _npz(tmp_path / "small.npz", x_train=x, y_train=y, x_test=x[:8], y_test=np.arange(8) % 3)
    with pytest.raises(LabelError) as err:
        load_npz(path, "train")
    assert "(y_train)" in str(err.value) and "x_train" not in str(err.value), str(err.value)
    flat = _npz(tmp_path / "flat.npz", x=x, y=y)
    with pytest.raises(LabelError, match=r"flat\.npz \(y\)"):
        load_npz(flat, "train")


def test_label_errors_name_the_label_array_via_knn_data(tmp_path):
    x = _images()
    path = _npz(tmp_path / "small.npz", x_train=x, y_train=np.arange(24) % 3.0, x_test=x[:8], y_test=np.arange(8) % 3)
    with pytest.raises(LabelError, match=r"small\.npz \(y_train\): labels are float64"):
        pretrain([*SHORT, "--knn-data", str(path), "--output", str(tmp_path / "out")])


# ----------------------------------------------------------------------------- 4. missing paths and prefixes
def test_a_missing_data_path_is_named_as_missing(tmp_path):
    for data in (str(tmp_path / "nope"), str(tmp_path / "nope" / "images")):
        with pytest.raises(FileNotFoundError, match="no such file or folder") as err:
            build_dataset(data, "train")
        assert "expected nothing" not in str(err.value)


def test_shards_and_hugging_face_files_without_their_prefix_get_the_prefix(tmp_path):
    tar = tmp_path / "shard-000.tar"
    tar.write_bytes(b"")
    for data in (str(tar), str(tmp_path / "missing.tar"), str(tmp_path / "shard-{000..003}.tar")):
        with pytest.raises(ValueError, match=r"write it as --data '?wds:"):
            build_dataset(data, "train")
    hf = tmp_path / "hf"
    (hf / "train").mkdir(parents=True)
    (hf / "train" / "data-00000-of-00001.arrow").write_bytes(b"")
    (tmp_path / "pq").mkdir()
    (tmp_path / "pq" / "train-0.parquet").write_bytes(b"")
    for data in (hf, tmp_path / "pq", tmp_path / "pq" / "train-0.parquet"):
        with pytest.raises(ValueError, match=r"write it as --data '?hf:"):
            build_dataset(str(data), "train")


# ----------------------------------------------------------------------------- 5. hard links count once
def test_hard_links_count_once_like_symlinks(tmp_path):
    cat = tmp_path / "classes" / "cat"
    cat.mkdir(parents=True)
    (tmp_path / "classes" / "dog").mkdir()
    for name, colour in (("a.png", 0), ("c.png", 255)):
        Image.new("RGB", (8, 8), (colour, 0, 0)).save(cat / name)
    Image.new("RGB", (8, 8)).save(tmp_path / "classes" / "dog" / "d.png")
    os.link(cat / "a.png", cat / "b.png")
    os.link(cat / "c.png", tmp_path / "classes" / "dog" / "e.png")  # across classes too
    ds = build_dataset(str(tmp_path / "classes"), None)
    assert len(ds) == 3 and sorted(Path(f).name for f in ds.files) == ["a.png", "c.png", "d.png"]
    assert any("the same file as" in why for _, why in ds.skipped_files)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    os.link(flat / "a.png", flat / "b.png")
    os.symlink(flat / "a.png", flat / "c.png")
    assert len(build_dataset(str(flat), None)) == 1


# ----------------------------------------------------------------------------- 6. --stop-after and last lines
def test_stop_after_then_resume_at_or_before_the_checkpoint_is_refused_and_lines_say_what_happened(tmp_path, capsys):
    out = ["--output", str(tmp_path / "run")]
    pretrain([*SHORT, *out, "--stop-after", "3"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("stopped after 3 steps (of 8)") and "resume with: " in last and "--resume auto" in last
    assert "done" not in last and "--stop-after" not in last.split("resume with: ")[1], last
    for n in ("3", "1"):
        with pytest.raises(ValueError, match=rf"--stop-after {n} is not beyond the checkpoint's step 3: nothing to do"):
            pretrain([*SHORT, *out, "--resume", "auto", "--stop-after", n])
    pretrain([*SHORT, *out, "--resume", "auto"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("done: step 8") and "images/s" in last, last
    pretrain([*SHORT, *out, "--resume", "auto"])  # finished already: no step ran, so no rate
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("done: step 8") and "images/s" not in last and "0.0 s" not in last, last


# ----------------------------------------------------------------------------- 7. the resume hint
def test_the_resume_hint_runs_a_console_script_by_its_name(tmp_path, monkeypatch):
    import shutil

    script = tmp_path / ".venv" / "bin" / "whitebox-pretrain"
    monkeypatch.setattr(sys, "argv", [str(script), "--data", "d x", "--stop-after", "3", "--overwrite"])
    monkeypatch.setattr(shutil, "which", lambda name: str(script) if name == "whitebox-pretrain" else None)
    assert resume_command(1) == "whitebox-pretrain --data 'd x' --resume auto"
    monkeypatch.setattr(shutil, "which", lambda name: None)  # not on PATH: its path, still without python
    assert resume_command(1) == f"{script} --data 'd x' --resume auto"
    assert resume_command(2).startswith(f"torchrun --nproc_per_node=2 {script} --data")
    monkeypatch.setattr(sys, "argv", ["recipes/pretrain.py", "--data", "d"])
    assert resume_command(1) == "python recipes/pretrain.py --data d --resume auto"
    assert resume_command(2) == "torchrun --nproc_per_node=2 recipes/pretrain.py --data d --resume auto"


# ----------------------------------------------------------------------------- 8. no resume without a checkpoint
def test_a_nonfinite_run_without_a_checkpoint_does_not_suggest_resuming(tmp_path, monkeypatch):
    real = Finetuning.loss
    monkeypatch.setattr(Finetuning, "loss", lambda self, b: real(self, b) * (math.inf if self.step == 0 else 1.0))
    common = [*FT, "--data", str(_labelled(tmp_path / "d.npz")), "--epochs", "3", "--batch-size", "8"]
    with pytest.raises(NonFiniteError, match=r"non-finite at step 1") as err:
        finetune([*common, "--output", str(tmp_path / "ft")])
    text = str(err.value)
    assert "no checkpoint was written" in text and "--resume" not in text and "start the run again" in text, text
    monkeypatch.setattr(Finetuning, "loss", lambda self, b: real(self, b) * (math.inf if self.step == 2 else 1.0))
    with pytest.raises(NonFiniteError, match=r"keeps step 2.*resume with --resume auto"):
        finetune([*common, "--save-every", "1", "--output", str(tmp_path / "ft2")])
