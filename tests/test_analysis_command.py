"""``python -m whitebox.analysis``: a report folder from a model name (and checkpoint) end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image
from safetensors.torch import save_file

import whitebox
from whitebox.analysis.__main__ import main, parse_model_args
from whitebox.sample_images import load_sample_photos

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = [f"{k}={v}" for k, v in TINY.items()]


def test_report_of_a_tiny_crate_mae(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert (
        main(["crate_mae_tiny", "--model-args", *TINY_ARGS, "--out", str(out), "--num-images", "4", "--show", "2"]) == 0
    )
    names = sorted(p.name for p in out.iterdir())
    pictures = ["attention_0.png", "attention_1.png", "pca.png", "reconstruction.png"]
    assert names == sorted(["index.html", "report.json", "layerwise.md", "layerwise.csv", "layerwise.png", *pictures])
    page = (out / "index.html").read_text()
    for src in re.findall(r'src="([^"]+)"', page):
        assert (out / src).is_file(), src
    assert page.count("<tr>") == 1 + 4  # header + 2 encoder + 2 decoder blocks
    recon = np.asarray(Image.open(out / "reconstruction.png"))
    # 32-px tiles enlarged 4x, 8 px between the two images, headers above and labels beside them
    assert recon.shape[0] > 2 * 128 + 8 and recon.shape[1] > 4 * 128 + 3 * 2
    printed = capsys.readouterr().out
    assert "| encoder | 0 |" in printed and "index.html" in printed


def test_checkpoint_images_and_overwrite(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = whitebox.create_model("crate_tiny", **TINY)
    ckpt = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(ckpt))
    files = []
    for i, img in enumerate(load_sample_photos(("coffee", "chelsea"))):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(files[-1])
    out = tmp_path / "r"
    args = ["crate_tiny", "--checkpoint", str(ckpt), "--model-args", *TINY_ARGS, "--out", str(out)]
    main([*args, "--images", *map(str, files)])
    assert "attention_1.png" in os.listdir(out) and "reconstruction.png" not in os.listdir(out)  # no decoder
    assert "2 images of 32x32" in (out / "index.html").read_text()
    with pytest.raises(ValueError, match="not empty"):
        main(args)
    main([*args, "--overwrite"])
    with pytest.raises(ValueError, match="is a file: name the architecture and pass the file as --checkpoint"):
        main([str(ckpt)])


def test_crate_alpha_report(tmp_path: Path) -> None:
    main(["crate_alpha_base_patch16", "--model-args", *TINY_ARGS, "--out", str(tmp_path), "--num-images", "3"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {"attention_0.png", "attention_1.png", "pca.png", "layerwise.csv"} <= set(names)
    assert "reconstruction.png" not in names  # a classifier: nothing to reconstruct
    page = (tmp_path / "index.html").read_text()
    assert "CrateAlpha" in page and "in its sparse code" in page and page.count("<tr>") == 1 + 2


def test_vit_mae_report_says_what_is_missing(tmp_path: Path) -> None:
    args = [*TINY_ARGS, "decoder_depth=1", "decoder_num_heads=4"]
    main(["vit_mae_base", "--model-args", *args, "--out", str(tmp_path), "--num-images", "3", "--show", "1"])
    page = (tmp_path / "index.html").read_text()
    assert "Not available" in page and not list(tmp_path.glob("attention_*.png"))
    assert (tmp_path / "pca.png").is_file() and (tmp_path / "reconstruction.png").is_file()


def test_parse_model_args() -> None:
    assert parse_model_args(["depth=2", "eta=0.1", "norm_pix_loss=True", "global_pool=avg"]) == dict(
        depth=2, eta=0.1, norm_pix_loss=True, global_pool="avg"
    )
    with pytest.raises(ValueError, match="--model-args takes KEY=VALUE"):
        parse_model_args(["depth"])


@pytest.mark.slow
def test_command_runs_under_a_minute(tmp_path: Path) -> None:
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "whitebox.analysis", "crate_mae_tiny", "--model-args", *TINY_ARGS, "--out", "rep"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - start < 60
    assert (tmp_path / "rep" / "index.html").is_file()  # the default photos, all 10
