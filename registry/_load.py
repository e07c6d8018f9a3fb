"""Reading weight files without running code, and loading them into a model with errors that name the problem.

Files are recognised by their content, not their name: safetensors, or a PyTorch file read with
``torch.load(weights_only=True)`` (plain tensors and containers; ``argparse.Namespace``, which
MAE-style training checkpoints carry, only fills an attribute dict). Everything else is refused
with an error that names the file, says what it is and what was expected.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import struct
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from timm.models import clean_state_dict
from torch import nn

StateDict = dict[str, torch.Tensor]
FilterFn = Callable[[StateDict, nn.Module], StateDict]
_WRAPPER_KEYS = ("model", "state_dict", "model_state", "model_state_dict", "module")
_EXPECTED = "expected a .safetensors file or a PyTorch checkpoint of tensors"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A PyTorch file holds objects other than tensors and plain containers; loading it would run code."""


class CheckpointFormatError(ValueError):
    """A file is empty, damaged, or not a weights file at all."""


class CheckpointIsAFolderError(IsADirectoryError, FileNotFoundError):
    """A folder where a weights file was expected (a ``FileNotFoundError`` too: no file is there)."""


class HeadAdaptedWarning(UserWarning):
    """A checkpoint's classifier was dropped, or the model's freshly initialised head replaced it.

    ``keys`` are the head's keys, ``checkpoint_shapes`` their shapes in the checkpoint (empty when it
    has no head) and ``num_classes`` the width of the checkpoint's head (``None`` when it has none).
    """

    def __init__(
        self,
        message: str,
        keys: tuple[str, ...] = (),
        checkpoint_shapes: tuple[tuple[int, ...], ...] = (),
        num_classes: int | None = None,
    ) -> None:
        super().__init__(message)
        self.keys, self.checkpoint_shapes, self.num_classes = keys, checkpoint_shapes, num_classes


# pickled classes that only rebuild plain values (a path, a numpy number or array): no code of the file runs
_DATA_GLOBALS = re.compile(
    r"pathlib\.(Pure)?(Posix|Windows)?Path|numpy\.(dtype|ndarray|dtypes\.\w+)|numpy\.(_core|core)\.multiarray\.(scalar|_reconstruct)"
)


def _kind(path: Path) -> str:
    """``'safetensors'``, ``'torch'`` or a description of what the file is instead."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if not head:
        return "empty (0 bytes)"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # zip archive (torch.save) or a legacy pickle
        return "torch"
    return f"not a weights file ({size} bytes starting with {head!r})"


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The object stored in a weights or training-checkpoint file, read without executing code."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin"))
        found = f"weight files in it: {', '.join(inside[:5])}" if inside else "it holds no weight files"
        saved = " or create_model('local-dir:FOLDER') for a saved model" if (path / "config.json").is_file() else ""
        raise CheckpointIsAFolderError(
            f"{path} is a folder, not a weights file ({found}); pass the file (FOLDER/NAME){saved}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    kind = _kind(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors' own error type
            raise CheckpointFormatError(f"{path} is a damaged safetensors file ({err}); {_EXPECTED}") from err
    if kind != "torch":
        raise CheckpointFormatError(f"{path} is {kind}; {_EXPECTED}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if unsafe and all(_DATA_GLOBALS.fullmatch(g) for g in unsafe):
            raise CheckpointFormatError(
                f"{path} holds plain values that a weights-only load does not read ({', '.join(unsafe)}: "
                "paths, numpy numbers or arrays, typically in its training arguments) beside its tensors; they "
                "run no code, but were not read. To read the file on purpose: `with torch.serialization."
                f"safe_globals([...those classes...]): obj = torch.load({str(path)!r}, weights_only=True)`, then "
                "save the tensors as safetensors (or those values as str / int / float) and load that file"
            ) from err
        unsafe = [g for g in unsafe if not _DATA_GLOBALS.fullmatch(g)] or unsafe
        if unsafe:
            raise UnsafeCheckpointError(
                f"refused to load {path}: loading it would run code from the file (it needs {', '.join(unsafe)}). "
                "Re-save its tensors as safetensors from a trusted environment."
            ) from err
        raise CheckpointFormatError(f"{path} is a damaged or foreign pickle ({str(err)[-200:]}); {_EXPECTED}") from err
    except (RuntimeError, EOFError, ValueError, struct.error) as err:
        raise CheckpointFormatError(f"{path} is a damaged PyTorch file ({str(err)[:200]}); {_EXPECTED}") from err


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # a legacy (non-zip) pickle: its globals cannot be listed without reading it
        return []


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> StateDict:
    """The tensor dict inside a training checkpoint (``{'model': ...}``, ``{'state_dict': ...}``, ...).

    Raises:
        CheckpointFormatError: no dict of tensors is found, or the state dict has entries that are
            not tensors (each is named with its type).
    """
    recorded = obj.get("model_kwargs") if isinstance(obj, dict) else None
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            sd = RecordedStateDict(clean_state_dict(obj))  # without DataParallel / torch.compile prefixes
            sd.model_args = dict(recorded) if isinstance(recorded, dict) else None
            return sd
        inner = (
            next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if isinstance(obj, dict)
            else None
        )
        if inner is None and isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values()):
            odd = [
                f"{k!r} ({type(v).__module__}.{type(v).__qualname__})"
                for k, v in obj.items()
                if not isinstance(v, torch.Tensor)
            ]
            raise CheckpointFormatError(
                f"{source} holds a state dict with entries that are not tensors: {', '.join(odd[:10])}; "
                "a state dict maps names to tensors only"
            )
        if inner is None:
            break
        obj = inner
    top = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointFormatError(
        f"{source} holds no state dict of tensors (top level: {top}; a state dict is looked for at the top "
        f"or under {', '.join(map(repr, _WRAPPER_KEYS))})"
    )


class RecordedStateDict(dict):
    """A state dict with the model arguments its checkpoint records (``model_args``; ``None``: none recorded)."""

    model_args: dict[str, Any] | None = None


def read_state_dict(path: str | os.PathLike[str]) -> StateDict:
    """The state dict in a weights file or a training checkpoint."""
    return unwrap_state_dict(read_checkpoint(path), str(path))


def apply_state_dict(model: nn.Module, state_dict: StateDict, strict: bool = True, source: str = "") -> None:
    """``load_state_dict`` with an error that names missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    problems = [f"shape mismatches {shapes[:20]}"] if shapes else []
    if strict:
        problems += [f"missing keys {missing[:20]}"] * bool(missing) + [f"unexpected keys {unexpected[:20]}"] * bool(
            unexpected
        )
    if problems:
        raise ValueError(f"cannot load {source or 'state dict'} into {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=strict)


def family_filter(model: nn.Module) -> FilterFn | None:
    """The ``checkpoint_filter_fn`` of the module that defines the model's class (timm's convention)."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def load_state_dict(
    model: nn.Module,
    state_dict: StateDict,
    source: str = "",
    filter_fn: FilterFn | None = None,
    strict: bool = True,
    _stacklevel: int = 2,
) -> None:
    """Convert ``state_dict`` with ``filter_fn`` (default: the family's ``checkpoint_filter_fn``) and load it.

    The model arguments a checkpoint records (``RecordedStateDict.model_args``) become the model's
    ``pretrained_model_args`` (timm's description of the source checkpoint) before the filter runs, so
    that it adapts weights from what the file was, not from a guess. The filter's warnings (a
    ``HeadAdaptedWarning``) are issued once the load has succeeded, pointing at the caller's line.
    """
    if getattr(state_dict, "model_args", None) is not None:
        model.pretrained_model_args = dict(state_dict.model_args)
    caught: list[warnings.WarningMessage] = []
    if (filter_fn := filter_fn or family_filter(model)) is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state_dict = filter_fn(state_dict, model)
    apply_state_dict(model, state_dict, strict=strict, source=source)
    for w in caught:  # after a load that succeeded (a failed one says only why), at the caller's line
        warnings.warn(w.message, w.category, stacklevel=_stacklevel)


def load_checkpoint(
    model: nn.Module, checkpoint_path: str | os.PathLike[str], filter_fn: FilterFn | None = None, strict: bool = True
) -> None:
    """Load a local file into ``model``, converting it with the model family's checkpoint filter."""
    load_state_dict(model, read_state_dict(checkpoint_path), str(checkpoint_path), filter_fn, strict, _stacklevel=3)
