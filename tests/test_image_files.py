"""What a folder or pack holds is used or reported (issue 18 item 5): 16-bit and float images keep their
values, EXIF orientation is applied, unused files are counted and named (in the run's args.json too),
link loops count each file once, malformed JPEG packs and .npz arrays are named errors."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes.pretrain import main as pretrain
from whitebox.data import BadImageError, EvalTransform, SeededDataset, build_dataset, load_npz, open_image

RAMP = np.linspace(0, 1, 16 * 24).reshape(16, 24)


def test_16_bit_png_keeps_its_values(tmp_path):
    """main: mode I;16 loaded all white (255)."""
    Image.fromarray((RAMP * 65535).astype(np.uint16)).save(tmp_path / "a.png")
    img = open_image(tmp_path / "a.png")
    assert img.mode == "RGB" and img.size == (24, 16)
    assert np.abs(np.asarray(img)[..., 0].astype(float) - RAMP * 255).max() <= 1
    Image.fromarray((RAMP * 65535).astype(np.int32), "I").save(tmp_path / "b.tiff")  # 32-bit integer mode I
    assert np.abs(np.asarray(open_image(tmp_path / "b.tiff"))[..., 1].astype(float) - RAMP * 255).max() <= 1


def test_float_tiff_keeps_its_values_and_out_of_range_is_named(tmp_path):
    """main: mode F loaded all black."""
    Image.fromarray(RAMP.astype(np.float32), "F").save(tmp_path / "f.tiff")
    assert np.abs(np.asarray(open_image(tmp_path / "f.tiff"))[..., 2].astype(float) - RAMP * 255).max() <= 0.5
    Image.fromarray((RAMP * 300).astype(np.float32), "F").save(tmp_path / "g.tiff")
    with pytest.raises(ValueError, match=r"values 0\.\.300; float images must hold 0\.\.1"):
        open_image(tmp_path / "g.tiff")
    nan = RAMP.astype(np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan, "F").save(tmp_path / "h.tiff")
    (tmp_path / "cls").mkdir()
    os.replace(tmp_path / "h.tiff", tmp_path / "cls" / "h.tiff")
    ds = SeededDataset(build_dataset(str(tmp_path), None), EvalTransform(8), on_bad_image="error")
    with pytest.raises(BadImageError, match=r"h.tiff cannot be read as an image .*NaN or infinite pixels"):
        ds[(0, 0)]


@pytest.mark.parametrize("orientation,size", [(1, (30, 20)), (3, (30, 20)), (6, (20, 30)), (8, (20, 30))])
def test_exif_orientation_is_applied(tmp_path, orientation, size):
    px = np.zeros((20, 30, 3), np.uint8)
    px[:5, :5] = 255  # a white top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(px).save(tmp_path / "p.jpg", exif=exif, quality=95)
    img = open_image(tmp_path / "p.jpg")
    assert img.size == size
    arr = np.asarray(img.convert("L"))
    corner = {1: arr[:5, :5], 3: arr[-5:, -5:], 6: arr[:5, -5:], 8: arr[-5:, :5]}[orientation]
    assert corner.mean() > 200


def test_unused_files_are_counted_and_named_and_link_loops_count_each_file_once(tmp_path, capsys):
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((12, 12, 3), 60 * i, np.uint8)).save(root / cls / f"{i}.png")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "loop").symlink_to(root)  # main: 4 images became 164
    (root / "b" / "again.png").symlink_to(root / "b" / "0.png")
    (root / "README.md").write_text("beside the classes")
    ds = build_dataset(str(root), None)
    assert len(ds) == 4 and sorted(ds.labels.tolist()) == [0, 0, 1, 1]
    reasons = dict(ds.skipped_files)
    assert "not an image file" in reasons[str(root / "a" / "notes.txt")]
    assert "link loop" in reasons[str(root / "a" / "loop")]
    assert reasons[str(root / "b" / "again.png")] == f"the same file as {root / 'b' / '0.png'}"
    assert "beside the class folders" in reasons[str(root / "README.md")]
    assert f"{root}: 4 files not used" in capsys.readouterr().err
    out = tmp_path / "run"
    tiny = ["--img-size", "8", "--patch-size", "4", "--embed-dim", "32", "--depth", "1", "--num-heads", "2"]
    pretrain([*tiny, "--data", str(root), "--batch-size", "4", "--epochs", "1", "--output", str(out), "--no-progress"])
    summary = json.loads((out / "args.json").read_text())["skipped_files"]
    assert len(summary) == 4 and any("notes.txt: not an image file" in s for s in summary)


def _pack(tmp_path: Path, jpeg: np.ndarray, offsets: np.ndarray, name: str = "p.npz") -> Path:
    np.savez(tmp_path / name, jpeg=jpeg, offsets=offsets, y=np.zeros(len(offsets) - 1, np.int64))
    return tmp_path / name


def _blobs(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(buf, format="JPEG")
        out.append(np.frombuffer(buf.getvalue(), np.uint8))
    return np.concatenate(out), np.concatenate([[0], np.cumsum([len(b) for b in out])])


@pytest.mark.parametrize(
    "case,message",
    [
        ("zero-size", r"1 images are empty \(zero bytes.*first image 1"),  # main: ZeroDivisionError
        ("float offsets", r"'offsets' must be a 1-D integer array.*float64"),  # main: TypeError
        ("negative first offset", r"offsets must increase from 0 or more .* got -5"),  # main: unreadable images
        ("int64 bytes", r"'jpeg' must be a 1-D uint8 byte array .* got int64"),  # main: unreadable images
        ("decreasing", r"\(decreasing\)"),
        ("past the end", r"end within the \d+-byte pack"),
        ("2-d offsets", r"'offsets' must be a 1-D integer array"),
    ],
)
def test_malformed_jpeg_packs_are_named(tmp_path, case, message):
    jpeg, offsets = _blobs()
    if case == "zero-size":
        offsets = np.array([0, offsets[1], offsets[1], offsets[2]])
    elif case == "float offsets":
        offsets = offsets.astype(np.float64)
    elif case == "negative first offset":
        offsets = np.concatenate([[-5], offsets[1:]])
    elif case == "int64 bytes":
        jpeg = jpeg.astype(np.int64)
    elif case == "decreasing":
        offsets = offsets[[0, 2, 1, 3]]
    elif case == "past the end":
        offsets = offsets + 10
    elif case == "2-d offsets":
        offsets = offsets[None]
    path = tmp_path / "p.npz"
    np.savez(path, jpeg=jpeg, offsets=offsets)
    with pytest.raises(ValueError, match=message):
        load_npz(path)


@pytest.mark.parametrize("key", ["x", "y", "jpeg"])
def test_object_arrays_are_named(tmp_path, key):
    """main: a bare 'Object arrays cannot be loaded' without the file or the array."""
    arrays = {"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(2, np.int64)}
    if key == "jpeg":
        arrays = {"jpeg": np.array([b"a", None], dtype=object), "offsets": np.array([0, 1])}
    else:
        arrays[key] = np.array([1, "two"], dtype=object)
    np.savez(tmp_path / "o.npz", **arrays)
    with pytest.raises(ValueError, match=rf"o.npz: array '{key}' holds Python objects \(dtype=object\)"):
        load_npz(tmp_path / "o.npz")


def test_zero_size_array_images_are_named(tmp_path):
    np.savez(tmp_path / "z.npz", x=np.zeros((3, 0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match=r"images of size 0 x 0 \(zero-size\)"):
        load_npz(tmp_path / "z.npz")


@pytest.mark.parametrize("size", [8, 40])  # a reduced DCT decode by Pillow, a full one by torchvision.io
def test_a_truncated_jpeg_is_named_by_either_decoder(tmp_path, size):
    """A broken JPEG is an unreadable image by name, whichever decoder the crop chose."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "c" / "whole.jpg").write_bytes(buf.getvalue())
    base = build_dataset(str(tmp_path), None)
    strict = SeededDataset(base, EvalTransform(size), on_bad_image="error")
    why = "image file is truncated" if size == 8 else "broken JPEG data"
    with pytest.raises(BadImageError, match=rf"cut.jpg cannot be read as an image \(OSError: {why}"):
        strict[(0, 0)]
    sample = SeededDataset(base, EvalTransform(size))[(0, 0)]
    assert sample["skipped"] == 1 and sample["image"].shape == (3, size, size)
