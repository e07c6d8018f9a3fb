"""``python -m whitebox.flops`` and ``python -m whitebox.convert``: bad input is refused by name before any work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY

import whitebox
from whitebox.convert import main as convert
from whitebox.flops import main as flops

REPO = Path(__file__).resolve().parents[1]


def _program(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


# ------------------------------------------------------------------------------------------- flops
def test_flops_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert flops(["crate_mae_base", "--img-size", "224", "--mode", "forward"]) == 0
    assert "22.85 GFLOP" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, allowed",
    [
        (["--img-size", "0"], "argument --img-size: must be a whole number > 0, got '0'"),
        (["--img-size", "2.5e2"], "argument --img-size: must be a whole number > 0, got '2.5e2'"),
        (["--img-size", "-224"], "argument --img-size: must be a whole number > 0, got '-224'"),
        (["--mode", "backward"], "argument --mode: must be one of forward, features, train, got 'backward'"),
    ],
)
def test_flops_flags_are_checked(capsys: pytest.CaptureFixture[str], args: list[str], allowed: str) -> None:
    with pytest.raises(SystemExit) as exc:
        flops(["crate_tiny", *args])
    assert exc.value.code == 2 and allowed in capsys.readouterr().err


def test_flops_size_and_model_are_named() -> None:
    with pytest.raises(
        ValueError, match=r"--img-size 230 is not a multiple of crate_tiny's patch size 16; use e.g. 224"
    ):
        flops(["crate_tiny", "--img-size", "230"])
    with pytest.raises(ValueError, match="unknown model 'crate_tinny'"):
        flops(["crate_tinny"])


def test_flops_program_ends_with_an_error_line(tmp_path: Path) -> None:
    done = _program("whitebox.flops", "crate_tiny", "--img-size", "100", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith("error: --img-size 100") and "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------- convert
def test_convert_refuses_missing_folder_and_file_outdir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing.pth: no such file"):
        convert([str(tmp_path / "missing.pth"), str(tmp_path / "out"), "--model", "crate_tiny"])
    with pytest.raises(ValueError, match=r"checkpoint .* is a folder; give the checkpoint file itself"):
        convert([str(tmp_path), str(tmp_path / "out"), "--model", "crate_tiny"])
    weights = tmp_path / "w.pth"
    torch.save(whitebox.create_model("crate_tiny", **TINY).state_dict(), weights)
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(ValueError, match=r"outdir .*taken exists and is not a folder"):
        convert([str(weights), str(taken), "--model", "crate_tiny"])
    assert taken.read_text() == "a file"  # untouched


@pytest.mark.parametrize(
    "model_args, message",
    [("{depth: 2}", "--model-args is not valid JSON"), ("[1, 2]", "--model-args must be a JSON object .* got a list")],
)
def test_convert_model_args_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_args: str, message: str
) -> None:
    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    with pytest.raises(SystemExit) as exc:
        convert([str(weights), str(tmp_path / "out"), "--model", "crate_tiny", "--model-args", model_args])
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_convert_program_ends_with_an_error_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    done = _program("whitebox.convert", "notes.txt", "out", "--model", "crate_tiny", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
