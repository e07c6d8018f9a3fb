"""A fresh user's findings on the evaluation programs (issue 19): every recipe source as DATA, one
``--model-kwargs``, the typed program name, the split and model recorded, head warnings, ``cpu:0``, the
probe's progress lines."""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import registry
import whitebox
from registry import HeadAdaptedWarning
from whitebox import benchmark, cli, inference, validate
from whitebox.analysis import __main__ as analysis
from whitebox.recipe_args import finetune_parser, linprobe_parser, pretrain_parser

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
KWARGS = ["--model-kwargs", "img_size=32", "patch_size=8", "embed_dim=32", "depth=1", "num_heads=2"]
CLASSES = ("cat", "dog", "emu")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Models run here."""


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.integers(0, 140, (36, 40, 3), dtype=np.uint8)
        x[..., i % 3] += 110  # a colour cue per class
        out.append(Image.fromarray(x))
    return out


def _folder(root: Path, images: list[Image.Image]) -> Path:
    """Class sub-folders holding ``images`` (label i % 3), in the order the sources hold them."""
    for i, img in enumerate(images):
        (root / CLASSES[i % 3]).mkdir(parents=True, exist_ok=True)
        img.save(root / CLASSES[i % 3] / f"{i:03d}.png")
    return root


def _weights(tmp: Path, name: str = "crate_tiny", seed: int = 0, **kw) -> Path:
    torch.manual_seed(seed)
    model = whitebox.create_model(name, **{**SHAPE, "num_classes": 3, **kw})
    path = tmp / f"{name}-{seed}.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def _validate(data: str, weights: Path, *extra: str) -> dict:
    args = [data, "--model", "crate_tiny", "--checkpoint", str(weights), "--num-classes", "3", "-b", "4"]
    return validate.main([*args, "--device", "cpu", *extra, *KWARGS])


# ----------------------------------------------------------------------------- 1: every source the recipes read
def test_validate_and_inference_read_a_save_to_disk_folder(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    imgs = _images(9)
    feats = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=list(CLASSES))})
    make = lambda ims: datasets.Dataset.from_dict(  # noqa: E731
        {"img": ims, "fine": [i % 3 for i in range(len(ims))]}, features=feats
    )
    dd = tmp_path / "hfds"
    datasets.DatasetDict({"train": make(_images(6, seed=5)), "validation": make(imgs)}).save_to_disk(str(dd))
    weights = _weights(tmp_path)
    got = _validate(f"hf:{dd}", weights)
    want = _validate(str(_folder(tmp_path / "folder", imgs)), weights)
    assert got["split"] == "validation" and got["num_images"] == 9  # the validation split, found by itself
    for key in ("top1", "top5", "loss"):
        assert got[key] == want[key]
    train = _validate(f"hf:{dd}", weights, "--split", "train", "--image-column", "img", "--label-column", "fine")
    assert train["split"] == "train" and train["num_images"] == 6
    with pytest.raises(ValueError, match="--image-column 'photo' is not a column"):
        _validate(f"hf:{dd}", weights, "--image-column", "photo")
    capsys.readouterr()
    args = [f"hf:{dd}", "--checkpoint", str(weights), "--model", "crate_tiny", "--num-classes", "3", "--topk", "1"]
    rows = inference.main([*args, "--device", "cpu", *KWARGS])
    assert [r["filename"] for r in rows] == [f"row {i} of hf:{dd} split validation" for i in range(9)]


def _tar_shards(root: Path, images: list[Image.Image], cut: int) -> str:
    """Two plain tar shards of PNG + .cls samples (label i % 3), cut after ``cut`` samples."""
    wds = pytest.importorskip("webdataset")
    root.mkdir(parents=True)
    for s, part in enumerate((images[:cut], images[cut:])):
        with wds.TarWriter(str(root / f"part-{s:06d}.tar")) as sink:
            for img in part:
                i = images.index(img)
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                sink.write({"__key__": f"k{i:03d}", "png": buf.getvalue(), "cls": i % 3})
    return str(root / "part-{000000..000001}.tar")


def test_validate_and_inference_read_wds_shards_in_order(tmp_path, capsys):
    imgs = _images(10, seed=3)
    pattern = _tar_shards(tmp_path / "shards", imgs, cut=6)
    weights = _weights(tmp_path)
    got = _validate(f"wds:{pattern}", weights)
    want = _validate(str(_folder(tmp_path / "folder", imgs)), weights)
    assert got["num_images"] == 10 and got["split"] is None
    for key in ("top1", "top5", "loss"):
        assert got[key] == want[key]
    capsys.readouterr()
    args = [f"wds:{pattern}", "--checkpoint", str(weights), "--model", "crate_tiny", "--num-classes", "3", "-b", "3"]
    rows = inference.main([*args, "--device", "cpu", *KWARGS])
    assert [r["filename"] for r in rows] == [f"sample k{i:03d} of wds:{pattern}" for i in range(10)]
    with pytest.raises(ValueError, match="one stream of shards, not a set of splits"):
        _validate(f"wds:{pattern}", weights, "--split", "val")
    with pytest.raises(FileNotFoundError, match="shards are not files"):
        _validate(f"wds:{tmp_path}/none-{{0..1}}.tar", weights)


# ----------------------------------------------------------------------------- 2: one --model-kwargs
def test_model_kwargs_reads_json_objects_and_key_value_words():
    assert cli.model_kwargs('{"depth": 2, "lambd": 0.5}') == {"depth": 2, "lambd": 0.5}
    assert cli.model_kwargs("norm_pix_loss=true") == {"norm_pix_loss": True}  # JSON
    assert cli.model_kwargs("norm_pix_loss=True") == {"norm_pix_loss": True}  # a Python literal
    assert cli.model_kwargs("img_size=(32,48)") == {"img_size": (32, 48)}
    assert cli.model_kwargs("global_pool=avg") == {"global_pool": "avg"}  # a bare word stays a string
    for bad, message in [
        ("depth", "or KEY=VALUE words"),
        ("2=depth", "or KEY=VALUE words"),
        ("[1]", "expected a JSON object"),
        ("{depth: 2}", "not valid JSON"),
        ('{"lambd": NaN}', "NaN is not a JSON number"),
        ("lambd=1e999", "lambd: not a finite number"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            cli.model_kwargs(bad)


@pytest.mark.parametrize(
    "parser",
    [
        validate.build_parser,
        inference.build_parser,
        benchmark.build_parser,
        analysis.build_parser,
        pretrain_parser,
        finetune_parser,
        linprobe_parser,
    ],
)
def test_every_program_takes_model_kwargs_in_both_forms(parser):
    lead = ["x"] if parser in (validate.build_parser, inference.build_parser) else []
    lead += ["--data", "d.npz"] if parser in (finetune_parser, linprobe_parser) else []
    words = parser().parse_args([*lead, "--model-kwargs", "depth=2", "global_pool=avg"]).model_kwargs
    as_json = parser().parse_args([*lead, "--model-kwargs", '{"depth": 2, "global_pool": "avg"}']).model_kwargs
    assert words == as_json == {"depth": 2, "global_pool": "avg"}
    assert not parser().parse_args(lead).model_kwargs  # unset: no arguments


def test_analysis_keeps_model_args_as_an_alias():
    p = analysis.build_parser()
    assert p.parse_args(["m", "--model-args", "depth=2"]).model_kwargs == {"depth": 2}
    assert "--model-kwargs" in p.format_help()


def test_validate_json_and_word_kwargs_give_the_same_numbers(tmp_path, capsys):
    folder = _folder(tmp_path / "f", _images(6))
    weights = _weights(tmp_path)
    base = [str(folder), "--model", "crate_tiny", "--checkpoint", str(weights), "--num-classes", "3"]
    words = validate.main([*base, *KWARGS])
    as_json = validate.main([*base, "--model-kwargs", json.dumps(SHAPE)])
    assert words["top1"] == as_json["top1"] and words["loss"] == as_json["loss"]


# ----------------------------------------------------------------------------- 3: the name the user typed
@pytest.mark.parametrize("module", [validate, inference, benchmark, analysis])
def test_usage_names_the_console_script_or_the_module(module, monkeypatch):
    short = module.__name__.removesuffix(".__main__").rsplit(".", 1)[1]
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/whitebox-{short}"])
    assert module.build_parser().format_usage().startswith(f"usage: whitebox-{short} ")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "whitebox" / f"{short}.py")])
    assert module.build_parser().format_usage().startswith(f"usage: python -m whitebox.{short} ")
    assert cli.program_name("whitebox.flops", "C:/py/Scripts/whitebox-flops.exe") == "whitebox-flops"


# ----------------------------------------------------------------------------- 5: what was evaluated, on which split
def test_validate_records_the_split_it_picked_and_the_model_it_evaluated(tmp_path):
    imgs = _images(6)
    _folder(tmp_path / "d" / "val", imgs)
    _folder(tmp_path / "d" / "train", _images(3, seed=1))
    weights = _weights(tmp_path)
    assert _validate(str(tmp_path / "d"), weights)["split"] == "val"
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=np.zeros((2, 8, 8, 3), np.uint8), y_train=[0, 1], x_test=np.zeros((3, 8, 8, 3), np.uint8))
    np.savez(npz, **dict(np.load(npz)), y_test=np.array([0, 1, 2]))
    assert _validate(str(npz), weights)["split"] == "test"
    mae = _weights(tmp_path, "crate_mae_tiny")  # an MAE with a classifier: its encoder is evaluated
    args = [str(tmp_path / "d"), "--model", "crate_mae_tiny", "--checkpoint", str(mae), "--num-classes", "3"]
    result = validate.main([*args, *KWARGS])
    assert result["model"] == "crate_mae_tiny encoder (CRATE classifier)" and result["architecture"] == "CRATE"
    assert _validate(str(tmp_path / "d"), weights)["model"] == "crate_tiny"


def test_analysis_names_the_fine_tuned_encoder_it_analysed(tmp_path, capsys):
    torch.manual_seed(0)
    mae = whitebox.create_model("crate_mae_tiny", **SHAPE, num_classes=3)
    save_file(mae.encoder.state_dict(), str(tmp_path / "enc.safetensors"))  # what finetune.py's encoder holds
    shape = [f"{k}={v}" for k, v in SHAPE.items()]
    common = ["--num-images", "2", "--show", "1", "--model-kwargs", *shape]
    ckpt = ["--checkpoint", str(tmp_path / "enc.safetensors"), "--out", str(tmp_path / "a")]
    analysis.main(["crate_mae_tiny", *ckpt, *common, "num_classes=3"])
    assert "analysed crate_mae_tiny encoder (CRATE classifier) (" in capsys.readouterr().out
    analysis.main(["crate_mae_tiny", "--out", str(tmp_path / "b"), *common])  # the whole MAE: its own name
    assert "analysed crate_mae_tiny (random" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 6: head warnings
def test_a_failed_load_says_only_why_and_head_warnings_point_at_the_caller(tmp_path, capsys):
    wide = _weights(tmp_path, embed_dim=96, num_classes=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="shape mismatches"):
            _validate(str(_folder(tmp_path / "f", _images(3))), wide)
    assert not [w for w in caught if issubclass(w.category, HeadAdaptedWarning)]
    assert "newly initialised" not in capsys.readouterr().err
    ten = _weights(tmp_path, num_classes=10)
    with pytest.warns(HeadAdaptedWarning, match="newly initialised") as record:
        whitebox.create_model("crate_tiny", **SHAPE, num_classes=3, checkpoint_path=str(ten))
    assert {Path(w.filename).name for w in record if issubclass(w.category, HeadAdaptedWarning)} == {
        "test_polish_eval.py"
    }
    with pytest.warns(HeadAdaptedWarning) as record:
        registry.load_checkpoint(whitebox.create_model("crate_tiny", **SHAPE, num_classes=3), str(ten))
    assert Path(record[0].filename).name == "test_polish_eval.py"
    _validate(str(tmp_path / "f"), ten)  # the program: one warning line once the load worked
    assert "warning: the checkpoint has a head of other shapes" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 7: small things
def test_device_cpu_index_is_accepted(tmp_path):
    result = _validate(str(_folder(tmp_path / "f", _images(3))), _weights(tmp_path), "--device", "cpu:0")
    assert result["device"] == "cpu:0"
    with pytest.raises(SystemExit):
        validate.build_parser().parse_args(["x", "--device", "gpu"])


def test_probe_progress_labels_and_one_line_per_extraction(tmp_path, capsys):
    from recipes.linprobe import main as linprobe

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x[:8], y_train=np.arange(8) % 2, x_test=x[8:], y_test=np.arange(4) % 2)
    shape = ["--img-size", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "1", "--num-heads", "2"]
    argv = ["--model", "crate_mae_tiny", *shape, "--data", str(tmp_path / "d.npz"), "--baseline", "--epochs", "2"]
    linprobe([*argv, "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "baseline_" not in err
    for label in ("encoder train", "encoder test", "baseline train", "baseline test"):
        assert err.count(f"{label} features: ") == 1, err  # one line each, not a bar drawn twice
    assert "100%" not in err


def test_package_description_names_every_family():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    description = next(line for line in text.splitlines() if line.startswith("description = "))
    for family in ("CRATE", "CRATE-MAE", "CRATE-alpha", "ToST", "CBT"):
        assert family in description
