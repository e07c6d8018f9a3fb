"""One command-line style for every program (issue 19 item 7), and the small fixes around it.

``--help`` answers without torch or timm (checked in a subprocess with ``python -X importtime``), shows
each default once, gives every flag a help line, and every program has ``--threads``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import whitebox
from whitebox import cli
from whitebox.recipe_args import BAD_IMAGE_POLICIES, finetune_parser, linprobe_parser, pretrain_parser

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("validate", "inference", "benchmark", "analysis", "flops", "convert")
RECIPES = ("pretrain", "finetune", "linprobe")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    import importlib

    out = {"pretrain": pretrain_parser(), "finetune": finetune_parser(), "linprobe": linprobe_parser()}
    for name in MODULES:
        mod = importlib.import_module("whitebox.analysis.__main__" if name == "analysis" else f"whitebox.{name}")
        out[name] = mod.build_parser()
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _imported(stderr: str) -> set[str]:
    """Top-level package names in ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize(
    "command",
    [[f"recipes/{n}.py"] for n in RECIPES] + [["-m", f"whitebox.{n}"] for n in MODULES],
    ids=[*RECIPES, *MODULES],
)
def test_help_imports_neither_torch_nor_timm(command):
    res = subprocess.run(
        [sys.executable, "-X", "importtime", *command, "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("usage:") and "--threads" in res.stdout
    imported = _imported(res.stderr)
    assert "whitebox" in imported  # the check sees our imports at all
    assert not {"torch", "timm", "numpy"} & imported, sorted({"torch", "timm", "numpy"} & imported)


def test_console_script_help_is_fast_too(tmp_path):
    """A ``whitebox-*`` script (what pip writes: import the entry point, call it) answers --help without torch."""
    script = tmp_path / "whitebox-pretrain"
    script.write_text("import sys\nfrom whitebox._console import pretrain\nsys.exit(pretrain())\n")
    res = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "-h"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and "--knn-data" in res.stdout, res.stderr[-2000:]
    assert not {"torch", "timm"} & _imported(res.stderr)


def test_other_processes_import_everything():
    """Only our programs asked for help skip the imports: a user's script with -h still gets the models."""
    code = "import whitebox, timm, sys; timm.create_model('crate_tiny', pretrained=False); print('ok')"
    res = subprocess.run(
        [sys.executable, "-c", code, "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


@pytest.mark.parametrize(
    ("argv", "orig", "expected"),
    [
        (["/x/validate.py", "--help"], ["python", "-m", "whitebox.validate", "--help"], True),
        (["/x/validate.py", "-h"], ["python", "-X", "importtime", "-m", "whitebox.validate", "-h"], True),
        (["/x/__main__.py", "--hel"], ["python", "-mwhitebox.analysis", "--hel"], True),
        (["/x/validate.py", "--", "-h"], ["python", "-m", "whitebox.validate", "--", "-h"], False),
        (["/x/validate.py", "--model", "m"], ["python", "-m", "whitebox.validate", "--model", "m"], False),
        (["/x/hub.py", "-h"], ["python", "-m", "whitebox.hub", "-h"], False),  # not a program
        (["-c", "-h"], ["python", "-c", "import whitebox", "-h"], False),
        (["/venv/bin/whitebox-finetune", "-h"], ["python", "/venv/bin/whitebox-finetune", "-h"], True),
        (["/venv/bin/whitebox-other", "-h"], ["python", "/venv/bin/whitebox-other", "-h"], False),
        ([str(ROOT / "recipes" / "linprobe.py"), "-h"], ["python", "recipes/linprobe.py", "-h"], True),
        (["/elsewhere/recipes/linprobe.py", "-h"], ["python", "/elsewhere/recipes/linprobe.py", "-h"], False),
        (["/x/my_script.py", "-h"], ["python", "/x/my_script.py", "-h"], False),
    ],
)
def test_answering_help_is_precise(argv, orig, expected):
    assert cli.answering_help(argv, orig) is expected


@pytest.mark.parametrize("name", [*RECIPES, *MODULES])
def test_help_text_one_style(name):
    """Every flag has help; a default shows once, never 'None'; --threads everywhere; no raw dicts."""
    parser = _parsers()[name]
    assert parser.formatter_class is cli.HelpFormatter
    fmt = parser.formatter_class(prog=parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
        text = fmt._expand_help(action)
        assert text.count("default") <= 1, f"{name}: {action.dest}: {text!r}"
    text = parser.format_help()
    assert "(default: None)" not in text and "default: False" not in text
    assert "--threads" in text
    assert "{'" not in text and "dict(" not in text  # demo values in words, not a Python dict


def test_groups_in_the_same_order():
    """model, data, [preprocessing], ..., then run / runtime (and output) last."""
    for name, parser in _parsers().items():
        titles = [g.title for g in parser._action_groups if g._group_actions and g.title not in ("options",)]
        titles = [t for t in titles if t != "positional arguments"]
        assert titles[0] == "model", (name, titles)
        if "data" in titles:
            assert titles.index("data") < titles.index(next(t for t in titles if t in ("run", "runtime"))), titles
        if any(t.startswith("preprocessing") for t in titles):
            pre = next(i for i, t in enumerate(titles) if t.startswith("preprocessing"))
            assert titles.index("data") < pre, (name, titles)
        assert titles[-1] in ("run", "runtime", "output"), (name, titles)


def test_recipe_flag_constants_agree_with_the_library():
    from whitebox.data import BAD_IMAGE_POLICIES as library

    assert library == BAD_IMAGE_POLICIES


def test_demo_defaults_are_described():
    text = " ".join(pretrain_parser().description.split())
    assert "32 px" in text and "patch 4" in text and "8 epochs" in text


def test_ctrl_c_while_importing_prints_no_traceback(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "recipes/pretrain.py", "--output", str(tmp_path / "o")],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # importing torch takes seconds here
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err[-2000:]
    assert "interrupted" in err
    assert proc.returncode in (130, -signal.SIGINT)
    if "while starting" in err:  # interrupted during the imports (the usual case: they take seconds)
        assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- small fixes
def test_run_args_records_plain_python_values():
    from whitebox.train.run import run_args

    args = argparse.Namespace(
        a=np.float64(0.5), b=np.int64(3), c=np.bool_(True), d=torch.tensor(2.0), e=(0.1, np.float32(0.2)), f=object()
    )
    out = run_args(args)
    assert out == {"a": 0.5, "b": 3, "c": True, "d": 2.0, "e": [0.1, pytest.approx(0.2)]}
    assert [type(out[k]) for k in "abcd"] == [float, int, bool, float]
    assert type(out["e"][1]) is float and "f" not in out


def test_analysis_reports_an_unsafe_checkpoint_without_traceback(tmp_path, monkeypatch, capsys):
    from whitebox.analysis.__main__ import cli as analysis_cli

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"model": Evil()}))
    monkeypatch.setattr(sys, "argv", ["whitebox-analysis", "crate_mae_tiny", "--checkpoint", str(bad)])
    with pytest.raises(SystemExit) as exit_:
        analysis_cli()
    assert str(exit_.value.code).startswith("error: ") and "evil.pth" in str(exit_.value.code)


def test_import_whitebox_still_registers_models():
    import timm

    assert whitebox.create_model is not None and timm.is_model("crate_base")
