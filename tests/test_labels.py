"""Labels mean the same thing in training and test data (issue 17 item 4) and a probe of non-finite
features is refused (item 1): class folders matched by name, malformed .npz labels named before anything
is built, NaN / inf features and diverged probes named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.linprobe import main as linprobe
from whitebox.data import LabelError, align_labels, build_dataset, load_npz, validate_labels
from whitebox.train.probe import NonFiniteFeaturesError, fit_lbfgs, fit_sgd, linear_probe

TINY = ["--model", "crate_tiny", "--img-size", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "1"]
TINY += ["--num-heads", "2"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The probe runs an encoder."""


def _folder(root: Path, classes: dict[str, int], n: int = 4) -> Path:
    """Class folders; class ``c`` holds stripes of period ``classes[c] % 7 + 2``, horizontal or vertical by its
    parity (easy to tell apart through the patch embedding's LayerNorm)."""
    rng = np.random.default_rng(0)
    for name, level in classes.items():
        (root / name).mkdir(parents=True)
        period = level % 7 + 2
        stripes = (np.arange(16) % period < period / 2) * 200.0
        pattern = np.tile(stripes[:, None] if level % 2 else stripes[None, :], (16, 16)[:: 1 if level % 2 else -1])
        pattern = np.broadcast_to(pattern[:16, :16, None], (16, 16, 3))
        for i in range(n):
            px = np.clip(pattern + rng.integers(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / name / f"{i}.png")
    return root


def test_linprobe_matches_class_folders_by_name(tmp_path):
    """train {cat, dog}, test {dog}: the dog folder is class 1 in both (main: 0 in the test set, 0% top-1)."""
    train = _folder(tmp_path / "train", {"cat": 30, "dog": 220})
    test = _folder(tmp_path / "test", {"dog": 220})
    res = linprobe([*TINY, "--data", str(train), "--test-data", str(test), "--output", str(tmp_path / "out")])
    assert res["num_classes"] == 2 and res["top1"] == 1.0


def test_folder_test_class_never_seen_in_training_is_named(tmp_path):
    train = _folder(tmp_path / "train", {"cat": 30, "dog": 220}, n=2)
    test = _folder(tmp_path / "test", {"bird": 120, "dog": 220}, n=2)
    with pytest.raises(LabelError, match=r"classes the training images do not: \['bird'\]"):
        linprobe([*TINY, "--data", str(train), "--test-data", str(test), "--output", str(tmp_path / "out")])


def test_align_labels_other_members(tmp_path):
    """Permuted class sets (test {dog, emu} against train {cat, dog, emu}), and numeric labels out of range."""
    train = build_dataset(str(_folder(tmp_path / "a", {"cat": 30, "dog": 120, "emu": 220}, n=1)), None)
    test = build_dataset(str(_folder(tmp_path / "b", {"dog": 120, "emu": 220}, n=1)), None)
    aligned = align_labels(train, test)
    assert list(aligned.labels) == [1, 2] and [aligned[i][1] for i in range(2)] == [1, 2]
    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "n.npz", x_train=x, y_train=np.array([0, 1, 0, 1]), x_test=x, y_test=np.array([0, 1, 2, 5]))
    (tmp_path / "a" / "fox").mkdir()  # an empty class folder in training: its test images are unseen
    _folder(tmp_path / "c", {"fox": 60}, n=1)
    train = build_dataset(str(tmp_path / "a"), None)
    with pytest.raises(LabelError, match=r"classes the training images do not: \['fox'\]"):
        align_labels(train, build_dataset(str(tmp_path / "c"), None))
    with pytest.raises(LabelError, match=r"labels the training images do not reach: \[2, 5\]"):
        align_labels(load_npz(tmp_path / "n.npz", "train"), load_npz(tmp_path / "n.npz", "test"))


LABEL_CASES = {
    "float": (np.array([0.0, 1.7, 2.2, 1.0]), r"float64, not integers.*astype"),
    "whole floats": (np.array([0.0, 1.0, 2.0, 1.0]), r"float64, not integers"),
    "nan": (np.array([0.0, np.nan, 1.0, 1.0]), r"1 labels are NaN or infinite \(first at index 1\)"),
    "inf": (np.array([0.0, 1.0, np.inf, 1.0]), r"NaN or infinite \(first at index 2\)"),
    "one-hot": (np.eye(4, dtype=np.int64), r"shape \(4, 4\) \(one-hot.*argmax"),
    "column": (np.arange(4).reshape(4, 1), r"shape \(4, 1\) \(a column\).*reshape"),
    "3-d": (np.zeros((4, 1, 1), np.int64), r"shape \(4, 1, 1\)"),
    "strings": (np.array(["cat", "dog", "cat", "dog"]), r"strings or objects.*np.unique"),
    "bool": (np.array([True, False, True, False]), r"dtype bool"),
    "negative": (np.array([0, -3, 1, 1]), r"label -3 at index 1 is negative"),
    "2**40": (np.array([0, 1, 2**40, 1]), r"label 1099511627776 at index 2 implies .* at most 1000 classes"),
    "10**6": (np.array([0, 10**6, 1, 1]), r"label 1000000 .* at most 1000 classes"),
    "count": (np.array([0, 1, 1]), r"4 images but 3 labels"),
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
@pytest.mark.parametrize("layout", ["arrays", "pack"])
def test_malformed_npz_labels_are_named_when_the_file_is_opened(tmp_path, case, layout):
    labels, message = LABEL_CASES[case]
    path = tmp_path / "d.npz"
    if layout == "arrays":
        np.savez(path, x=np.zeros((4, 8, 8, 3), np.uint8), y=labels)
    else:
        np.savez(path, jpeg=np.ones(40, np.uint8), offsets=np.arange(0, 50, 10), y=labels)
    with pytest.raises(LabelError, match=message):
        build_dataset(str(path))


def test_a_million_class_label_is_refused_before_the_probe_is_built(tmp_path, monkeypatch):
    """The probe program stops at the label check: no image is decoded, no feature computed."""
    x = np.zeros((8, 16, 16, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 1] * 3 + [1, 10**6]), x_test=x, y_test=np.zeros(8))
    import whitebox.train.probe as probe

    monkeypatch.setattr(probe, "extract_features", lambda *a, **k: pytest.fail("features extracted"))
    with pytest.raises(LabelError, match="label 1000000 at index 7"):
        linprobe([*TINY, "--data", str(tmp_path / "d.npz"), "--output", str(tmp_path / "out")])


def test_label_bound_allows_imagenet_subsets_and_large_sets():
    assert validate_labels(np.array([3, 999]), "x").tolist() == [3, 999]  # 1000 classes, 2 images: allowed
    assert validate_labels(np.arange(5000, dtype=np.uint16), "x").dtype == np.int64
    with pytest.raises(LabelError, match="at most 1000 classes"):
        validate_labels(np.array([0, 1000]), "x")


# ----------------------------------------------------------------------------- non-finite features
def _npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(12) % 2, x_test=x[:4], y_test=np.arange(4) % 2)
    return tmp_path / "d.npz"


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_probe_of_non_finite_features_is_a_named_error(tmp_path, solver, value):
    """main: L-BFGS raised a traceback, SGD printed "top-1 10.00%" and exited 0."""
    import whitebox

    model = whitebox.create_model("crate_tiny", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    with torch.no_grad():  # one weight of the patch embedding: every token, so every feature, becomes non-finite
        next(p for n, p in model.named_parameters() if "patch_embed" in n and p.dim() == 2)[0, 0] = value
    train, test = build_dataset(str(_npz(tmp_path)), "train"), build_dataset(str(_npz(tmp_path)), "test")
    with pytest.raises(NonFiniteFeaturesError, match=r"non-finite features \(NaN or inf\) for 12 of 12 training"):
        linear_probe(model, train, test, 16, solver=solver, epochs=2, batch_size=4)


def test_probe_fitters_refuse_non_finite_inputs_and_divergence():
    feats, labels = torch.randn(16, 4), torch.arange(16) % 2
    bad = feats.clone()
    bad[3, 1] = float("nan")
    for fit in (fit_lbfgs, fit_sgd):
        with pytest.raises(NonFiniteFeaturesError, match="for 1 of 16 training images, first image 3"):
            fit(bad, labels, 2)
    with pytest.raises(NonFiniteFeaturesError, match="SGD probe diverged"):
        fit_sgd(feats, labels, 2, epochs=3, lr=3e38, batch_size=4)


def test_linprobe_program_exits_with_a_message_on_a_nan_checkpoint(tmp_path):
    import subprocess
    import sys

    import whitebox

    model = whitebox.create_model("crate_tiny", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    state = model.state_dict()
    for k in state:
        if state[k].is_floating_point():
            state[k] = torch.full_like(state[k], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "recipes" / "linprobe.py"), *TINY, "--checkpoint", str(tmp_path / "nan.pth")]
    cmd += ["--data", str(_npz(tmp_path)), "--solver", "sgd", "--epochs", "1", "--output", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: the encoder gave non-finite features" in proc.stderr
