"""Training checkpoints: written atomically, read without running code, and chosen for ``--resume auto``.

Checkpoints hold only tensors, numbers, strings, lists and dicts, so they load with
``torch.load(weights_only=True)``; a damaged or foreign file is an error that names it. RNG state
is stored as plain tensors and lists.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from registry import read_checkpoint

from ..io import atomic_path

__all__ = [
    "CHECKPOINT_NAMES",
    "atomic_save",
    "find_resume",
    "get_rng_state",
    "load_checkpoint_file",
    "remove_stale_temps",
    "seed_everything",
    "set_rng_state",
]

CHECKPOINT_NAMES = ("checkpoint-last.pth", "checkpoint-best.pth")


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)``, atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files a killed writer of ``path`` left behind; returns what was removed.

    Only call this where one process writes ``path`` (the run folder's lock makes sure of it).
    """
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training checkpoint (a dict), read with ``weights_only=True``; errors name the file and the problem."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a training checkpoint (a dict), it holds a {type(obj).__name__}")
    return obj


def _resumable(path: str | os.PathLike[str]) -> dict[str, Any]:
    ckpt = load_checkpoint_file(path)
    if missing := [k for k in ("model", "optimizer", "step", "rng") if k not in ckpt]:
        raise ValueError(f"{path} is not a checkpoint of a training run (it lacks {missing}); it cannot be resumed")
    return ckpt


def find_resume(output: str | os.PathLike[str], resume: str | None) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from, loaded: a given path, or for ``'auto'`` the newest loadable one in ``output``.

    ``'auto'`` reads ``checkpoint-last.pth`` and ``checkpoint-best.pth`` and takes the one with the
    higher step (best is newer than last when a run died between writing the two); a file that does
    not load is skipped with a message naming it. No checkpoint at all starts a new run.
    """
    if not resume:
        return None, None
    if resume != "auto":
        return Path(resume), _resumable(resume)
    found, problems = [], []
    for name in CHECKPOINT_NAMES:
        path = Path(output) / name
        if not path.exists():
            continue
        try:
            found.append((path, _resumable(path)))
        except (OSError, ValueError) as err:
            problems.append(f"{path}: {err}")
    for problem in problems:
        print(f"resume: skipped {problem}", file=sys.stderr)
    if not found:
        if problems:
            raise ValueError("--resume auto: no checkpoint in the output folder loads:\n" + "\n".join(problems))
        return None, None
    path, ckpt = max(found, key=lambda pc: int(pc[1].get("step", -1)))
    print(f"resume: from {path} (step {ckpt.get('step')})", file=sys.stderr)
    return path, ckpt


# ----------------------------------------------------------------------------- RNG state
def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors / lists (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
