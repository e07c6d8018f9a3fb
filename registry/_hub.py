"""Loading weights into a built model (local checkpoints, pretrained records) and saved-model configs."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._download import download_hf_hub, resolve_pretrained_file
from ._io import load_state_dict_file
from ._pretrained import PretrainedCfg

FilterFn = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


def apply_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True, source: str = ""
) -> None:
    """``load_state_dict`` with an error that names missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if shape_errors or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
        if shape_errors:
            parts.append(f"shape mismatches {shape_errors[:20]}")
        raise ValueError(f"cannot load {source or 'state dict'} into {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=strict)


def load_checkpoint(
    model: nn.Module,
    checkpoint_path: str | os.PathLike[str],
    filter_fn: FilterFn | None = None,
    strict: bool = True,
) -> None:
    """Load a local checkpoint, converting it with the model's checkpoint filter when it has one."""
    state_dict = load_state_dict_file(checkpoint_path)
    filter_fn = filter_fn or getattr(model, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    apply_state_dict(model, state_dict, strict=strict, source=str(checkpoint_path))


def load_pretrained(
    model: nn.Module,
    cfg: PretrainedCfg,
    filter_fn: FilterFn | None = None,
    strict: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    **_: Any,
) -> None:
    """Load the weights a pretrained record points to (local file, Hub, URL or Google Drive).

    The file is fetched into its cache when needed (see ``registry._download``), read without
    executing code and converted by the family's checkpoint filter.
    """
    path = resolve_pretrained_file(cfg, cache_dir=cache_dir)
    load_checkpoint(model, path, filter_fn=filter_fn, strict=strict)


# ----------------------------------------------------------------------------- config.json of saved models
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_SOURCE_FIELDS = ("file", "hf_hub_id", "hf_hub_filename", "url", "gdrive_id", "filename", "sha256")


def model_config(model: nn.Module) -> dict[str, Any]:
    """The ``config.json`` content that rebuilds ``model``: architecture, model arguments, pretrained record."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, PretrainedCfg) or not cfg.architecture:
        raise ValueError(
            f"{type(model).__name__} was not built by create_model (it has no pretrained_cfg naming its "
            "architecture); build it with create_model(...) to save it"
        )
    record = cfg.replace(**{k: None for k in _SOURCE_FIELDS}).to_dict()
    model_args = dict(getattr(model, "_model_args", {}))
    record["model_args"] = model_args
    return {
        "architecture": cfg.architecture,
        "model_args": model_args,
        "num_classes": getattr(model, "num_classes", None),
        "num_features": getattr(model, "num_features", None),
        "pretrained_cfg": record,
        "format": "whitebox/1",
    }


def read_model_config(
    location: str, kind: str, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[str, dict[str, Any], PretrainedCfg]:
    """Read ``config.json`` of a ``local-dir:`` folder or an ``hf-hub:`` repository.

    Returns the architecture, its model arguments and a pretrained record whose source is the
    folder's / repository's ``model.safetensors``.
    """
    if kind == "local-dir":
        folder = Path(location).expanduser()
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"local-dir:{location} has no {CONFIG_NAME} (looked for {config_path})")
        source: dict[str, Any] = dict(file=str(folder / WEIGHTS_NAME))
    elif kind == "hf-hub":
        config_path = download_hf_hub(location, CONFIG_NAME, cache_dir=cache_dir)
        source = dict(hf_hub_id=location, hf_hub_filename=WEIGHTS_NAME)
    else:
        raise ValueError(f"unknown model source {kind!r}; allowed: 'hf-hub', 'local-dir'")
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    arch = config.get("architecture") if isinstance(config, dict) else None
    if not isinstance(arch, str):
        raise ValueError(f"{config_path} names no 'architecture'; it was not written by save_pretrained")
    model_args = dict(config.get("model_args") or {})
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    record = {k: v for k, v in (config.get("pretrained_cfg") or {}).items() if k in known}
    for k, v in record.items():  # JSON has no tuples
        if isinstance(v, list):
            record[k] = tuple(v)
    record.update(architecture=arch, model_args=model_args, **source)
    return arch, model_args, PretrainedCfg(**record)
