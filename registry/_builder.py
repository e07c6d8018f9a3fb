"""Building a model from its class, its pretrained record and user arguments."""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._pretrained import PretrainedCfg
from ._registry import get_pretrained_cfg, list_pretrained

FilterFn = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


def resolve_pretrained_cfg(
    variant: str,
    pretrained_cfg: str | dict[str, Any] | PretrainedCfg | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
) -> PretrainedCfg:
    """The record for ``variant``: its default tag, a named tag, a given record, plus an overlay."""
    if isinstance(pretrained_cfg, PretrainedCfg):
        cfg = pretrained_cfg
    elif isinstance(pretrained_cfg, str):
        cfg = get_pretrained_cfg(f"{variant}.{pretrained_cfg}" if pretrained_cfg else variant)
    elif pretrained_cfg is None:
        cfg = get_pretrained_cfg(variant, allow_unregistered=True)
    else:
        # a dict, or another library's record (timm's PretrainedCfg is a dataclass)
        fields = dataclasses.asdict(pretrained_cfg) if dataclasses.is_dataclass(pretrained_cfg) else pretrained_cfg
        known = {f.name for f in dataclasses.fields(PretrainedCfg)}
        base = get_pretrained_cfg(variant, allow_unregistered=True)
        cfg = base.replace(**{k: v for k, v in dict(fields).items() if k in known and v is not None})
    if pretrained_cfg_overlay:
        cfg = cfg.replace(**pretrained_cfg_overlay)
    return cfg


def check_kwargs(model_cls: type, kwargs: dict[str, Any], variant: str) -> None:
    """Raise a ``TypeError`` naming unknown keyword arguments and listing the allowed ones."""
    params = inspect.signature(model_cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = sorted(n for n, p in params.items() if n != "self" and p.kind is not p.VAR_POSITIONAL)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{variant} got unknown keyword argument(s) {unknown}; allowed: {', '.join(allowed)}")


def build_model_with_cfg(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool = False,
    pretrained_cfg: str | dict[str, Any] | PretrainedCfg | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    pretrained_filter_fn: FilterFn | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    pretrained_strict: bool = True,
    features_only: bool = False,
    out_indices: int | list[int] = 3,
    feature_cfg: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Construct ``model_cls(**kwargs)`` for ``variant`` and, with ``pretrained``, load its weights.

    The record's ``model_args`` (the architecture the weights need) apply when loading weights or
    when a tag is named (``'crate_mae_base.in1k'`` builds the architecture of those weights);
    arguments given here take precedence.

    ``features_only=True`` wraps the model (which must offer ``forward_intermediates`` and
    ``feature_info``) in timm's ``FeatureGetterNet``: it returns the outputs of ``out_indices``.
    """
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay)
    if pretrained and not cfg.has_weights:
        available = list_pretrained()
        raise ValueError(
            f"no pretrained weights are registered for {cfg.name!r}; variants with weights: "
            f"{', '.join(available) if available else 'none yet'}. Pass checkpoint_path=... to load "
            "your own file."
        )
    if pretrained or (isinstance(pretrained_cfg, str) and pretrained_cfg):
        kwargs = {**cfg.model_args, **kwargs}
    check_kwargs(model_cls, kwargs, variant)
    model = model_cls(**kwargs)
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's older name
    model._model_args = dict(kwargs)
    model.checkpoint_filter_fn = pretrained_filter_fn
    if pretrained:
        from ._hub import load_pretrained

        load_pretrained(model, cfg, filter_fn=pretrained_filter_fn, strict=pretrained_strict, cache_dir=cache_dir)
    if features_only:
        if not hasattr(model, "forward_intermediates"):
            raise TypeError(f"{variant} has no forward_intermediates, so features_only=True is not supported")
        from timm.models._features import FeatureGetterNet

        model = FeatureGetterNet(model, out_indices=out_indices, **(feature_cfg or {}))
    return model
