"""``python -m whitebox.analysis`` inputs: --images kinds, a checkpoint's own data, flags checked first."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

import whitebox
from whitebox.analysis.__main__ import main
from whitebox.analysis.sources import read_images

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = [f"{k}={v}" for k, v in TINY.items()]
BASE = ["crate_tiny", "--model-args", *TINY_ARGS, "--show", "1"]


def _photo(seed: int, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _jpeg_pack(images: list[np.ndarray]) -> dict[str, np.ndarray]:
    blobs = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG")
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    return dict(jpeg=np.concatenate(blobs), offsets=offsets, y=np.arange(len(images)))


def _report(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "report"
    assert main([*BASE, "--out", str(out), *args]) == 0
    return json.loads((out / "report.json").read_text())


# ------------------------------------------------------------------------------------------- --images kinds
def test_text_file_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    monkeypatch.setattr(whitebox, "create_model", None)  # refused before any model is built
    with pytest.raises(ValueError, match=r"--images .*notes.txt is not an image that can be read.*folders of images"):
        main([*BASE, "--out", str(tmp_path / "r"), "--images", str(notes)])
    assert not (tmp_path / "r").exists()  # refused before any file is written
    for bad in ([], ["samples", str(notes)], [str(tmp_path / "missing")], [str(tmp_path / "none.npz")]):
        with pytest.raises((ValueError, FileNotFoundError), match="--images"):
            main([*BASE, "--out", str(tmp_path / "r"), "--images", *bad])


def test_broken_image_with_an_image_name_is_refused_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_photo(0)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(ValueError, match=r"b.jpg is not an image that can be read"):
        read_images([str(folder)], 32)


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--images .*nowhere.png: no such file or folder"):
        read_images([str(tmp_path / "nowhere.png")], 32)
    with pytest.raises(FileNotFoundError, match=r"--images .*nowhere.npz: no such .npz file"):
        read_images([str(tmp_path / "nowhere.npz")], 32)


def test_folders_flat_and_with_class_subfolders(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(_photo(i)).save(flat / f"{i}.png")
    (flat / "README.txt").write_text("ignored: not an image extension")
    record = _report(tmp_path, "--images", str(flat))
    assert record["images"] == f"3 images of {flat}" and record["num_images"] == 3
    classes = tmp_path / "classes"
    for name in ("cat", "dog"):
        (classes / name).mkdir(parents=True)
        Image.fromarray(_photo(len(name))).save(classes / name / "x.jpg")
    assert read_images([str(classes)], 32).images.shape == (2, 32, 32, 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        read_images([str(empty)], 32)


def test_npz_arrays_and_jpeg_packs(tmp_path: Path) -> None:
    photos = [_photo(i, (32, 32)) for i in range(5)]
    arrays, pack, splits = tmp_path / "x.npz", tmp_path / "pack.npz", tmp_path / "splits.npz"
    np.savez(arrays, x=np.stack(photos), y=np.arange(5))
    np.savez(pack, **_jpeg_pack(photos))
    np.savez(splits, x_train=np.stack(photos[:3]), x_test=np.stack(photos[3:]))
    got = read_images([str(arrays)], 32)
    np.testing.assert_array_equal(got.images, np.stack(photos))  # 32 px already: taken as they are
    assert got.description == f"5 images of {arrays}"
    assert read_images([str(pack)], 32, count=4).images.shape == (4, 32, 32, 3)
    assert read_images([f"{splits}:test"], 32).images.shape == (2, 32, 32, 3)
    record = _report(tmp_path, "--images", str(pack), "--num-images", "2")
    assert record["images"] == f"the first 2 of 5 images of {pack}"
    with pytest.raises(ValueError, match=r"holds the splits \['test', 'train'\]; name one, e.g. --images .*:train"):
        read_images([str(splits)], 32)
    with pytest.raises(ValueError, match=r"no split 'val'"):
        read_images([f"{splits}:val"], 32)


@pytest.mark.parametrize(
    "content, message",
    [
        (dict(x=np.zeros((2, 8, 8, 3), dtype=np.float32)), "must be uint8"),
        (dict(labels=np.arange(3)), r"no images \(keys \['labels'\]\)"),
        (b"PK not a zip", "not a readable .npz"),
    ],
    ids=["float-array", "no-image-key", "not-a-zip"],
)
def test_bad_npz_is_named(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "data.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.savez(path, **content)
    with pytest.raises(ValueError, match=message):
        read_images([str(path)], 32)


def test_folders_and_packs_are_capped_and_say_so(tmp_path: Path) -> None:
    path = tmp_path / "many.npz"
    np.savez(path, x=np.zeros((300, 8, 8, 3), dtype=np.uint8))
    got = read_images([str(path)], 8)
    assert len(got.images) == 256 and got.description == f"the first 256 of 300 images of {path}"


# ------------------------------------------------------------------------------------------- checkpoints
def _recipe_checkpoint(tmp_path: Path, data: str | None, step: int = 7) -> Path:
    model = whitebox.create_model("crate_tiny", **TINY)
    path = tmp_path / "checkpoint-last.pth"
    args = {"data": data, "model": "crate_tiny", "lr": 1e-3}
    torch.save(dict(model=model.state_dict(), model_name="crate_tiny", model_kwargs=TINY, step=step, args=args), path)
    return path


@pytest.mark.parametrize("data", ["cifar10", "/data/my_photos", "train.npz"])
def test_model_trained_on_other_data_needs_its_images(tmp_path: Path, data: str) -> None:
    ckpt = _recipe_checkpoint(tmp_path, data)
    with pytest.raises(ValueError, match=rf"trained on --data {data}.*--images samples"):
        main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_report_names_checkpoint_step_and_images(tmp_path: Path) -> None:
    ckpt = _recipe_checkpoint(tmp_path, "cifar10", step=123)
    out = tmp_path / "r"
    assert main(["--checkpoint", str(ckpt), "--out", str(out), "--images", "samples", "--num-images", "2"]) == 0
    record = json.loads((out / "report.json").read_text())
    assert record["checkpoint"] == str(ckpt) and record["step"] == 123 and record["trained_on"] == "cifar10"
    assert record["images"] == "the 2 bundled sample photos (whitebox.sample_images)"
    page = (out / "index.html").read_text()
    assert str(ckpt) in page and "<b>step</b>: 123" in page and "bundled sample photos" in page
    (tmp_path / "on_samples").mkdir()
    samples_ckpt = _recipe_checkpoint(tmp_path / "on_samples", None)  # trained on the bundled photos: their default
    assert main(["--checkpoint", str(samples_ckpt), "--out", str(tmp_path / "r2"), "--num-images", "1"]) == 0


# ------------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize(
    "flag, value, allowed",
    [
        ("--num-images", "0", "a whole number >= 1"),
        ("--num-images", "2.5", "a whole number >= 1"),
        ("--show", "-1", "a whole number >= 1"),
        ("--mask-ratio", "1", r"a finite number >= 0 and < 1"),
        ("--mask-ratio", "nan", r"a finite number >= 0 and < 1"),
        ("--eps", "0", "a finite number > 0"),
        ("--eps", "inf", "a finite number > 0"),
        ("--seed", "1e23", "a whole number >= 0"),
        ("--seed", "-3", "a whole number >= 0"),
        ("--device", "bogus", "auto, cpu, cuda, cuda:N"),
        ("--pixel-stats", "hidden", r"choose from 'patch', 'visible'"),
    ],
)
def test_flags_are_checked_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, allowed: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*BASE, "--out", str(tmp_path / "r"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err
    assert re.search(allowed, err), err
    assert not (tmp_path / "r").exists()


def test_device_this_machine_lacks_is_named(tmp_path: Path) -> None:
    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ValueError, match=r"--device cuda:7: this machine has no such device"):
        main([*BASE, "--out", str(tmp_path / "r"), "--device", "cuda:7"])


def test_bad_input_ends_with_error_line_not_traceback(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "whitebox.analysis", *BASE, "--out", "rep", "--images", str(notes)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: --images") and "Traceback" not in done.stderr
