"""Safe reading of weight files: safetensors, or ``torch.load(weights_only=True)``; never arbitrary code."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Any

import torch

_WRAPPER_KEYS = ("model", "state_dict", "model_state", "model_state_dict", "module")
# facebookresearch/mae-style training checkpoints store the run's argparse.Namespace next to the weights;
# it is a plain attribute container (unpickling only fills its __dict__), so allowing it runs no code.
_SAFE_GLOBALS = [argparse.Namespace]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects other than tensors and plain containers; it was not loaded."""


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a PyTorch file, without executing code.

    Wrapped checkpoints (``{'model': ...}``, ``{'state_dict': ...}``, as MAE and timm write them)
    are unwrapped. A pickle that needs anything beyond tensors and plain containers is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it is not a plain tensor checkpoint and loading it would run code "
            f"from the file ({str(err).splitlines()[0]}). Re-save it as safetensors from a trusted environment."
        ) from err
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a training checkpoint."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{source} holds no state dict of tensors (top level: {keys})")
