"""What a pip user gets: the wheel's packages, recipes, LICENSE and console scripts.

The slow test builds the sdist and the wheel from a copy of the source tree (setuptools' own PEP 517
backend, no network), installs the wheel into a fresh venv without dependencies (a ``.pth`` line
lends it this interpreter's site-packages, so torch is not downloaded again, and the editable
install there is not activated), and runs console scripts from outside the clone.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "whitebox-pretrain",
    "whitebox-finetune",
    "whitebox-linprobe",
    "whitebox-validate",
    "whitebox-inference",
    "whitebox-benchmark",
    "whitebox-analysis",
}
tomllib = pytest.importorskip("tomllib")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_list_holds_every_package_of_the_source_tree():
    listed = set(_project()["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("whitebox", "registry")
        for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert listed == found | {"whitebox.recipes"}
    assert _project()["tool"]["setuptools"]["package-dir"] == {"whitebox.recipes": "recipes"}


def test_console_scripts_point_at_callables():
    scripts = _project()["project"]["scripts"]
    assert set(scripts) == SCRIPTS
    for target in scripts.values():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_recipes_are_found_from_a_clone():
    from whitebox._console import recipe

    assert recipe("pretrain").__name__ in ("whitebox.recipes.pretrain", "recipes.pretrain")
    assert callable(recipe("linprobe").main)


def test_license_is_mit_as_pyproject_says():
    assert _project()["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "OMP_NUM_THREADS": "1"}
    env |= {k: v for k, v in os.environ.items() if k in ("HF_HUB_OFFLINE", "TMPDIR")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_installs_and_its_console_scripts_run(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("whitebox", "registry", "recipes"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = "from setuptools import build_meta as b; b.build_wheel('../dist'); b.build_sdist('../dist')"
    done = subprocess.run([sys.executable, "-c", build], cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"whitebox/recipes/pretrain.py", "whitebox/recipes/finetune.py", "whitebox/recipes/linprobe.py"} <= set(
        names
    )
    assert not any(n.startswith(("recipes/", "tests/")) for n in names)  # no generic top-level package
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    assert any(m.endswith("/LICENSE") for m in members) and any(m.endswith("/recipes/pretrain.py") for m in members)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "_base_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, timm, ... from here
    pip = _run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    bin_ = venv / "bin"
    assert {p.name for p in bin_.iterdir()} >= SCRIPTS

    where = _run([str(bin_ / "python"), "-c", "import whitebox.recipes.pretrain as p; print(p.__file__)"], tmp_path)
    assert where.stdout.strip().startswith(str(site)), where.stderr[-2000:]  # the wheel, not the clone
    helped = _run([str(bin_ / "whitebox-pretrain"), "--help"], tmp_path)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: whitebox-pretrain"), helped.stderr[-2000:]

    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 36), (100 * i, 50, 200 if c == "a" else 0)).save(tmp_path / "imgs" / c / f"{i}.png")
    shape = ["--model-kwargs", "patch_size=8", "embed_dim=32", "depth=1", "num_heads=2"]
    flags = ["--model", "crate_tiny", "--num-classes", "2", "--img-size", "32", "--results-file", "r.json", *shape]
    validated = _run([str(bin_ / "whitebox-validate"), "imgs", *flags], tmp_path)
    assert validated.returncode == 0, validated.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == 4
    failed = _run([str(bin_ / "whitebox-validate"), "nowhere", "--model", "crate_tiny"], tmp_path)
    assert failed.returncode == 1 and failed.stderr.strip() == "error: DATA nowhere: no such file or folder"
    failed = _run([str(bin_ / "whitebox-finetune"), "--data", "nowhere.npz", "--model", "crate_tiny"], tmp_path)
    assert failed.returncode == 1 and failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr
