"""``python -m whitebox.validate`` / ``inference`` / ``benchmark`` on small folders built here.

The reference for ``validate`` is timm's ``validate.py`` evaluation rebuilt from timm's own public
pieces (``create_dataset``, ``resolve_data_config``, ``create_loader`` with its prefetcher,
``timm.utils.accuracy`` and ``AverageMeter``), run on the model timm builds after ``import whitebox``:
``validate.py`` is not in timm's wheel and nothing can be downloaded at test time.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import whitebox
from whitebox import benchmark, inference, validate
from whitebox.flops import count_flops

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
SHAPE_ARGS = ["--model-kwargs", *(f"{k}={v}" for k, v in SHAPE.items() if k != "img_size")]
CLASSES = ("cat", "dog", "eel")


def make_folder(root: Path, sizes=((40, 36), (33, 50), (64, 48), (32, 32)), classes=CLASSES, seed=0) -> Path:
    """Class sub-folders of images of different sizes (so the resize and crop matter)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, (h, w) in enumerate(sizes):
            base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            base[..., c % 3] = np.clip(base[..., c % 3].astype(int) + 80, 0, 255)  # a colour cue per class
            Image.fromarray(base).save(root / name / f"{name}{i}.png")
    return root


def make_weights(tmp: Path, name: str = "crate_tiny", num_classes: int = 3, seed: int = 0) -> tuple[Path, dict]:
    torch.manual_seed(seed)
    model = whitebox.create_model(name, num_classes=num_classes, **SHAPE)
    path = tmp / f"{name}.safetensors"
    save_file(model.state_dict(), str(path))
    return path, model.state_dict()


def timm_validate(folder: Path, name: str, weights: Path, num_classes: int, batch_size: int, **overrides) -> dict:
    """timm validate.py's evaluation (prefetcher on, its default) with timm's public pieces."""
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.utils import AverageMeter, accuracy

    model = timm.create_model(name, num_classes=num_classes, **SHAPE)
    timm.models.load_checkpoint(model, str(weights))
    model.eval()
    args = dict(img_size=32, crop_pct=None, interpolation="", mean=None, std=None, input_size=None) | overrides
    config = resolve_data_config(args, model=model, use_test_size=True)
    dataset = create_dataset(root=str(folder), name="", split="validation")
    loader = create_loader(
        dataset,
        input_size=config["input_size"],
        batch_size=batch_size,
        use_prefetcher=True,
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        num_workers=0,
        crop_pct=config["crop_pct"],
        crop_mode=config["crop_mode"],
        device=torch.device("cpu"),
    )
    losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter()
    criterion = torch.nn.CrossEntropyLoss()
    with torch.inference_mode():
        for x, y in loader:
            out = model(x)
            acc1, acc5 = accuracy(out, y, topk=(1, 5))
            losses.update(criterion(out, y).item(), x.shape[0])
            top1.update(acc1.item(), x.shape[0])
            top5.update(acc5.item(), x.shape[0])
    return dict(top1=top1.avg, top5=top5.avg, loss=losses.avg, config=config)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images") / "val_images")


# ----------------------------------------------------------------------------- validate
@pytest.mark.parametrize(
    ("name", "flags", "overrides"),
    [
        ("crate_tiny", [], {}),  # the record: bicubic, crop 0.875
        ("crate_alpha_base_patch16", [], {}),  # the record: bilinear
        (
            "crate_tiny",
            ["--crop-pct", "1.0", "--interpolation", "bilinear"],
            dict(crop_pct=1.0, interpolation="bilinear"),
        ),
    ],
)
def test_validate_matches_timm(folder, tmp_path, name, flags, overrides):
    weights, _ = make_weights(tmp_path, name, num_classes=5)
    ref = timm_validate(folder, name, weights, 5, batch_size=5, **overrides)
    argv = [str(folder), "--model", name, "--checkpoint", str(weights), "--num-classes", "5", "-b", "5", *SHAPE_ARGS]
    got = validate.main([*argv, "--img-size", "32", *flags])
    assert got["top1"] == round(ref["top1"], 4) and got["top5"] == round(ref["top5"], 4)
    assert got["loss"] == pytest.approx(ref["loss"], abs=1e-5)
    assert got["crop_pct"] == ref["config"]["crop_pct"] and got["interpolation"] == ref["config"]["interpolation"]
    assert got["num_images"] == 12 and got["img_size"] == 32
    assert got["param_count"] == round(
        sum(p.numel() for p in whitebox.create_model(name, num_classes=5, **SHAPE).parameters()) / 1e6, 2
    )


def test_validate_preprocessing_changes_the_numbers(folder, tmp_path):
    """The equality above can fail: another crop gives another loss."""
    weights, _ = make_weights(tmp_path, num_classes=5)
    argv = [str(folder), "--model", "crate_tiny", "--checkpoint", str(weights), "--num-classes", "5", *SHAPE_ARGS]
    record = validate.main([*argv, "--img-size", "32"])
    other = validate.main([*argv, "--img-size", "32", "--crop-pct", "0.5"])
    assert record["interpolation"] == "bicubic" and record["crop_pct"] == 0.875
    assert other["loss"] != pytest.approx(record["loss"], abs=1e-6)


def test_validate_amp_and_channels_last_on_the_cpu(folder, tmp_path):
    weights, _ = make_weights(tmp_path)
    argv = [
        str(folder),
        "--model",
        "crate_tiny",
        "--checkpoint",
        str(weights),
        "--num-classes",
        "3",
        "--img-size",
        "32",
    ]
    plain = validate.main([*argv, *SHAPE_ARGS])
    mixed = validate.main([*argv, "--amp", "--amp-dtype", "bfloat16", "--channels-last", *SHAPE_ARGS])
    assert plain["amp"] is None and mixed["amp"] == "bfloat16"
    assert mixed["loss"] == pytest.approx(plain["loss"], abs=0.05) and mixed["loss"] != plain["loss"]


def test_validate_results_file_json_and_csv(folder, tmp_path):
    weights, _ = make_weights(tmp_path)
    argv = [str(folder), "--model", "crate_tiny", "--checkpoint", str(weights), "--num-classes", "3", *SHAPE_ARGS]
    res = validate.main([*argv, "--img-size", "32", "--results-file", str(tmp_path / "r.json")])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == res
    for key in ("model", "top1", "top5", "loss", "img_size", "crop_pct", "interpolation", "param_count"):
        assert key in saved
    validate.main([*argv, "--img-size", "32", "--results-file", str(tmp_path / "r.csv")])
    (row,) = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert float(row["top1"]) == res["top1"] and row["model"] == "crate_tiny"


def test_validate_class_map_scores_each_folder_as_its_named_output(folder, tmp_path):
    """Outputs named in another order than the folders sort: the same as permuting the head."""
    weights, state = make_weights(tmp_path)
    order = ["eel", "cat", "dog"]  # output i is class order[i]
    (tmp_path / "classes.txt").write_text("\n".join(order) + "\n")
    perm = [order.index(c) for c in CLASSES]  # folder class k -> output perm[k]
    permuted = dict(state)
    permuted["head.weight"], permuted["head.bias"] = state["head.weight"][perm], state["head.bias"][perm]
    save_file(permuted, str(tmp_path / "permuted.safetensors"))
    common = [str(folder), "--model", "crate_tiny", "--num-classes", "3", "--img-size", "32", *SHAPE_ARGS]
    plain = validate.main([*common, "--checkpoint", str(tmp_path / "permuted.safetensors")])
    mapped = validate.main([*common, "--checkpoint", str(weights), "--class-map", str(tmp_path / "classes.txt")])
    assert mapped["loss"] == pytest.approx(plain["loss"], abs=1e-6) and mapped["top1"] == plain["top1"]


def test_validate_valid_labels_scores_a_subset_of_outputs(folder, tmp_path):
    weights, state = make_weights(tmp_path, num_classes=6)
    keep = [5, 0, 3]
    (tmp_path / "valid.txt").write_text("\n".join(map(str, keep)))
    sliced = dict(state, **{"head.weight": state["head.weight"][keep], "head.bias": state["head.bias"][keep]})
    save_file(sliced, str(tmp_path / "sliced.safetensors"))
    common = [str(folder), "--model", "crate_tiny", "--img-size", "32", *SHAPE_ARGS]
    subset = validate.main(
        [*common, "--num-classes", "6", "--checkpoint", str(weights), "--valid-labels", str(tmp_path / "valid.txt")]
    )
    small = validate.main([*common, "--num-classes", "3", "--checkpoint", str(tmp_path / "sliced.safetensors")])
    assert subset["loss"] == pytest.approx(small["loss"], abs=1e-6) and subset["num_classes"] == 3


def test_validate_uses_the_val_sub_folder(tmp_path):
    make_folder(tmp_path / "data" / "train", sizes=((32, 32),))
    make_folder(tmp_path / "data" / "val", sizes=((32, 32), (40, 40)))
    weights, _ = make_weights(tmp_path)
    argv = ["--model", "crate_tiny", "--checkpoint", str(weights), "--num-classes", "3", "--img-size", "32"]
    assert validate.main([str(tmp_path / "data"), *argv, *SHAPE_ARGS])["num_images"] == 6
    assert validate.main([str(tmp_path / "data"), "--split", "train", *argv, *SHAPE_ARGS])["num_images"] == 3


def test_validate_npz_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x[:2], y_train=np.array([0, 1]), x_test=x, y_test=np.arange(7) % 3)
    weights, _ = make_weights(tmp_path)
    res = validate.main(
        [
            str(tmp_path / "d.npz"),
            "--model",
            "crate_tiny",
            "--checkpoint",
            str(weights),
            "--num-classes",
            "3",
            "--img-size",
            "32",
            *SHAPE_ARGS,
        ]
    )
    assert res["num_images"] == 7


@pytest.mark.slow
@pytest.mark.parametrize("name", ["crate_tiny", "crate_mae_tiny"])  # a masked autoencoder: its encoder is fine-tuned
def test_validate_equals_finetune_for_its_checkpoint(tmp_path, name):
    """The same checkpoint, split and transform (the record's: crop 0.875, bicubic): the same top-1 as finetune.py."""
    from recipes.finetune import main as finetune

    rng = np.random.default_rng(0)
    y = np.arange(24) % 3
    x = rng.integers(0, 120, (24, 32, 32, 3), dtype=np.uint8)
    x[np.arange(24), :, :, y] += 120  # learnable colour cue
    np.savez(tmp_path / "d.npz", x_train=x[:16], y_train=y[:16], x_test=x[16:], y_test=y[16:])
    out = tmp_path / "ft"
    result = finetune(
        ["--model", name, "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--batch-size", "8"]
        + ["--output", str(out), "--device", "cpu", "--no-progress", "--no-tensorboard", "--mixup", "0"]
        + ["--cutmix", "0", "--aa", "", "--reprob", "0", "--warmup-epochs", "0"]
        + [f"--{k.replace('_', '-')}={v}" for k, v in SHAPE.items()]
    )
    res = validate.main(
        [
            str(tmp_path / "d.npz"),
            "--checkpoint",
            str(out / "checkpoint-last.pth"),
            "--split",
            "test",
        ]
    )
    # a fine-tuned autoencoder is evaluated as its encoder's classifier, and validate says so
    expected = {"crate_tiny": "crate_tiny", "crate_mae_tiny": "crate_mae_tiny encoder (CRATE classifier)"}[name]
    assert res["model"] == expected and res["architecture"] == "CRATE" and res["num_images"] == 8
    assert res["top1"] == pytest.approx(100 * result["top1"], abs=1e-4)
    assert res["top5"] == pytest.approx(100 * result["top5"], abs=1e-4)


# ----------------------------------------------------------------------------- inference
def test_inference_topk_names_and_files(folder, tmp_path, capsys):
    weights, _ = make_weights(tmp_path)
    (tmp_path / "names.txt").write_text("kitty\npuppy\neel fish\n")
    argv = [
        str(folder),
        "--model",
        "crate_tiny",
        "--checkpoint",
        str(weights),
        "--num-classes",
        "3",
        "--img-size",
        "32",
    ]
    argv += ["--class-map", str(tmp_path / "names.txt"), "--topk", "2", *SHAPE_ARGS]
    rows = inference.main([*argv, "--results-file", str(tmp_path / "p.csv")])
    assert len(rows) == 12 and rows[0]["filename"] == "cat/cat0.png"
    # the probabilities are the model's softmax on timm's evaluation transform of the record
    model = whitebox.create_model("crate_tiny", num_classes=3, checkpoint_path=str(weights), **SHAPE).eval()
    tf = whitebox.data_config.eval_transform(model)
    with torch.no_grad():
        probs = model(tf(Image.open(folder / "dog" / "dog1.png").convert("RGB"))[None]).softmax(-1)[0]
    row = next(r for r in rows if r["filename"] == "dog/dog1.png")
    top = probs.topk(2)
    assert [p["index"] for p in row["topk"]] == top.indices.tolist()
    assert [p["prob"] for p in row["topk"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert [p["label"] for p in row["topk"]] == [["kitty", "puppy", "eel fish"][i] for i in top.indices.tolist()]
    out = capsys.readouterr().out
    assert f"dog/dog1.png: {row['topk'][0]['label']} ({row['topk'][0]['prob']:.3f})" in out
    table = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(table) == 12 and set(table[0]) == {"filename"} | {
        f"{k}_{n}" for k in ("label", "index", "prob") for n in (1, 2)
    }
    inference.main([*argv, "--results-file", str(tmp_path / "p.json"), "--no-console-results"])
    assert json.loads((tmp_path / "p.json").read_text()) == rows


def test_inference_imagenet_names_for_a_1000_class_head(folder, tmp_path):
    from timm.data import ImageNetInfo

    image = folder / "eel" / "eel2.png"
    rows = inference.main([str(image), "--model", "crate_tiny", "--img-size", "32", "--topk", "3", *SHAPE_ARGS])
    info = ImageNetInfo("imagenet-1k")
    assert rows[0]["filename"] == "eel2.png"
    assert [p["label"] for p in rows[0]["topk"]] == [info.index_to_description(p["index"]) for p in rows[0]["topk"]]
    rows = inference.main(
        [str(image), "--model", "crate_tiny", "--img-size", "32", "--label-type", "name", *SHAPE_ARGS]
    )
    assert rows[0]["topk"][0]["label"].startswith("n") and rows[0]["topk"][0]["label"][1:].isdigit()


def test_inference_unlabelled_flat_folder(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    for i in range(3):
        Image.fromarray(np.full((20 + i, 30, 3), 40 * i, np.uint8)).save(tmp_path / "photos" / f"p{i}.jpg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image, ignored by its extension")
    rows = inference.main([str(tmp_path / "photos"), "--model", "crate_tiny", "--img-size", "32", *SHAPE_ARGS])
    assert [r["filename"] for r in rows] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert "warning: neither --pretrained nor --checkpoint: crate_tiny has randomly initialised weights" in (
        capsys.readouterr().err
    )


# ----------------------------------------------------------------------------- benchmark
@pytest.mark.parametrize("name", ["crate_tiny", "crate_mae_tiny"])
def test_benchmark_reports_speed_memory_and_flops(tmp_path, name):
    extra = ["decoder_depth=1", "decoder_num_heads=2"] if "mae" in name else []
    res = benchmark.main(
        [
            "--model",
            name,
            "--img-size",
            "32",
            "--device",
            "cpu",
            "-b",
            "2",
            "--num-warm-iter",
            "1",
            "--num-bench-iter",
            "2",
            "--results-file",
            str(tmp_path / "b.json"),
            *SHAPE_ARGS,
            *extra,
        ]
    )
    model = whitebox.create_model(name, **SHAPE, **({"decoder_depth": 1, "decoder_num_heads": 2} if extra else {}))
    assert res["infer_flops"] == count_flops(model, 32, "forward").total
    assert res["train_flops"] == count_flops(model, 32, "train").total
    for prefix in ("infer", "train"):
        assert res[f"{prefix}_samples_per_sec"] > 0 and res[f"{prefix}_step_time"] > 0
        assert res[f"{prefix}_peak_mem_mb"] > 0 and res[f"{prefix}_batch_size"] == 2
    assert json.loads((tmp_path / "b.json").read_text()) == res
    only = benchmark.main(
        ["--model", name, "--img-size", "32", "--bench", "inference", "--num-bench-iter", "1", *SHAPE_ARGS, *extra]
    )
    assert "infer_step_time" in only and "train_step_time" not in only


# ----------------------------------------------------------------------------- bad input
def _argv(folder: Path, weights: Path) -> list[str]:
    return [
        str(folder),
        "--model",
        "crate_tiny",
        "--checkpoint",
        str(weights),
        "--num-classes",
        "3",
        "--img-size",
        "32",
    ]


@pytest.mark.parametrize(
    ("program", "args", "message"),
    [
        (validate, ["{missing}", "--model", "crate_tiny"], "no such file or folder"),
        (inference, ["{missing}", "--model", "crate_tiny"], "no such file or folder"),
        (validate, ["{folder}", "--model", "crate_tinyy"], "crate_tiny"),
        (benchmark, ["--model", "no_such_model"], "no_such_model"),
        (benchmark, [], "name the model"),
        (validate, ["{folder}", "--model", "crate_mae_tiny"], "no classifier head"),
        (validate, ["{flat}", "--model", "crate_tiny", "--img-size", "32"], "no class labels"),
        (validate, ["{empty}", "--model", "crate_tiny"], "no class sub-folders and no images"),
        (inference, ["{weights_args}", "--topk", "4"], "--topk 4 is more than the 3 classes"),
        (inference, ["{weights_args}", "--class-map", "{map2}"], "has 2 lines but the model has 3 outputs"),
        (validate, ["{weights_args}", "--class-map", "{map_other}"], "names no output for the class(es) ['dog']"),
        (validate, ["{weights_args}", "--class-map", "{missing}"], "no such file"),
        (validate, ["{weights_args}", "--valid-labels", "{map2}"], "is not an output index"),
        (validate, ["{weights_args}", "--results-file", "{tmp}/r.txt"], "cannot tell the format"),
        (validate, ["{folder}", "--model", "crate_tiny", "--model-kwargs", "depthh=2"], "depthh"),
        (
            validate,
            ["{corrupt}", "--model", "crate_tiny", "--img-size", "32", "--num-classes", "2"],
            "bad.png cannot be read",
        ),
        (
            validate,
            ["{corrupt}", "--model", "crate_tiny", "--img-size", "32", "--num-classes", "2", "-j", "2"],
            "bad.png",
        ),
        (validate, ["{folder}", "--data-dir", "{empty}", "--model", "crate_tiny"], "give the images once"),
        (validate, ["{folder}", "--split", "nope", "--model", "crate_tiny"], "has no sub-folder 'nope'"),
        (
            validate,
            ["cifar10", "--data-root", "{empty}", "--model", "crate_tiny", "--img-size", "32"],
            "pass --download",
        ),
    ],
)
def test_bad_input_is_a_named_error(tmp_path, folder, program, args, message):
    weights, _ = make_weights(tmp_path)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "flat" / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    (tmp_path / "other.txt").write_text("cat\nfox\neel\n")
    for c in ("a", "b"):
        (tmp_path / "corrupt" / c).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "corrupt" / c / "ok.png")
    (tmp_path / "corrupt" / "b" / "bad.png").write_bytes(b"not a png at all")
    fill = dict(
        missing=str(tmp_path / "nowhere"),
        folder=str(folder),
        flat=str(tmp_path / "flat"),
        empty=str(tmp_path / "empty"),
        map2=str(tmp_path / "two.txt"),
        map_other=str(tmp_path / "other.txt"),
        tmp=str(tmp_path),
        corrupt=str(tmp_path / "corrupt"),
    )
    argv = []
    for a in args:
        argv += [*_argv(folder, weights), *SHAPE_ARGS] if a == "{weights_args}" else [a.format(**fill)]
    with pytest.raises((ValueError, OSError)) as err:
        program.main(argv if "--results-file" in argv else [*argv, "--results-file", str(tmp_path / "out.json")])
    assert message in str(err.value)
    assert not (tmp_path / "out.json").exists()  # nothing written, not even in part


@pytest.mark.parametrize(
    ("program", "args", "message"),
    [
        (validate, ["x", "--batch-size", "0"], "argument --batch-size/-b: must be a whole number > 0, got '0'"),
        (inference, ["x", "--topk", "two"], "argument --topk: must be a whole number > 0, got 'two'"),
        (validate, ["x", "--crop-pct", "1.5"], "argument --crop-pct: must be a finite number > 0 and <= 1, got '1.5'"),
        (validate, ["x", "--interpolation", "cubic"], "must be one of bilinear, bicubic"),
        (validate, ["x", "--device", "gpu"], "argument --device: must be auto, cpu, cuda"),
        (benchmark, ["--bench", "fast"], "argument --bench: must be one of inference, train, both, got 'fast'"),
        (validate, ["x", "--amp-dtype", "float8"], "must be one of float16, bfloat16"),
        (inference, ["x", "--gp", "max"], "argument --gp: must be one of token, avg, got 'max'"),
        (validate, ["x", "--model-kwargs", "depth"], "or KEY=VALUE words"),
        (inference, ["x", "--workers", "-1"], "argument --workers/-j: must be a whole number >= 0, got '-1'"),
    ],
)
def test_bad_flags_name_the_flag_and_the_allowed_values(capsys, program, args, message):
    with pytest.raises(SystemExit) as exit_:
        program.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_program_error_exits_1_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "whitebox.validate", str(tmp_path / "nowhere"), "--model", "crate_tiny"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: DATA {tmp_path / 'nowhere'}: no such file or folder"
