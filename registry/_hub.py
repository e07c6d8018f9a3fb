"""Loading weights into a built model: local checkpoints and pretrained records."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

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
    """Load the weights a pretrained record points to."""
    if cfg.file:
        load_checkpoint(model, cfg.file, filter_fn=filter_fn, strict=strict)
        return
    raise NotImplementedError(f"{cfg.name}: only local files (pretrained_cfg_overlay=dict(file=...)) load so far")
