"""The model registry: entrypoint functions by name, their pretrained records, and look-ups."""

from __future__ import annotations

import difflib
import fnmatch
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ._pretrained import PretrainedCfg, split_model_name_tag

_entrypoints: dict[str, Callable[..., Any]] = {}
_pretrained_cfgs: dict[str, dict[str, PretrainedCfg]] = {}  # arch -> tag -> cfg (first tag = default)


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered."""


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: register a model entrypoint under its function name.

    Pretrained records come from a ``pretrained_cfgs`` dict (see ``generate_default_cfgs``) in the
    entrypoint's module. When timm is installed the entrypoint is also registered with timm, so
    ``timm.create_model(name)`` builds the same model.
    """
    name = fn.__name__
    _entrypoints[name] = fn
    module_cfgs = getattr(sys.modules.get(fn.__module__), "pretrained_cfgs", {})
    tags = module_cfgs.get(name) or {"": PretrainedCfg(architecture=name)}
    _pretrained_cfgs[name] = dict(tags)
    _register_with_timm(fn)
    return fn


def _register_with_timm(fn: Callable[..., Any]) -> None:
    try:
        from timm.models import _registry as timm_registry
    except ImportError:  # timm is optional for the registry itself
        return
    if fn.__name__ not in timm_registry._model_entrypoints:
        timm_registry.register_model(fn)


def register_pretrained_cfg(name: str, cfg: PretrainedCfg, default: bool = False) -> None:
    """Add (or replace) the record ``arch.tag`` of a registered model."""
    arch, tag = split_model_name_tag(name)
    if arch not in _entrypoints:
        raise UnknownModelError(_unknown_message(arch))
    cfg = cfg.replace(architecture=arch, tag=tag or None)
    tags = _pretrained_cfgs.setdefault(arch, {})
    if tag and "" in tags and not tags[""].has_weights:
        del tags[""]  # the placeholder record of an architecture that had no weights
    if default:
        _pretrained_cfgs[arch] = {tag: cfg, **{k: v for k, v in tags.items() if k != tag}}
    else:
        tags[tag] = cfg


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(_entrypoints), n=5, cutoff=0.5)
    hint = f"; closest registered names: {', '.join(close)}" if close else ""
    return f"unknown model {name!r}{hint}. See registry.list_models() for all {len(_entrypoints)} names"


def is_model(name: str) -> bool:
    """True when ``name`` (with or without a tag) is a registered architecture."""
    return split_model_name_tag(name)[0] in _entrypoints


def model_entrypoint(name: str) -> Callable[..., Any]:
    """The entrypoint function of a registered architecture (a tag is ignored)."""
    arch = split_model_name_tag(name)[0]
    if arch not in _entrypoints:
        raise UnknownModelError(_unknown_message(arch))
    return _entrypoints[arch]


def _as_list(filters: str | Iterable[str]) -> list[str]:
    if isinstance(filters, str):
        return [filters] if filters else []
    return list(filters)


def list_models(
    filter: str | Iterable[str] = "",
    pretrained: bool = False,
    exclude_filters: str | Iterable[str] = "",
    include_tags: bool | None = None,
) -> list[str]:
    """Registered model names, sorted, matching any of ``filter`` (shell wildcards).

    ``pretrained=True`` keeps only names with weights and, like timm, lists them with their tags
    (``include_tags`` defaults to ``pretrained``).
    """
    include_tags = pretrained if include_tags is None else include_tags
    names: list[str] = []
    for arch, tags in _pretrained_cfgs.items():
        if include_tags:
            for tag, cfg in tags.items():
                if not pretrained or cfg.has_weights:
                    names.append(f"{arch}.{tag}" if tag else arch)
        elif not pretrained or any(cfg.has_weights for cfg in tags.values()):
            names.append(arch)
    includes, excludes = _as_list(filter), _as_list(exclude_filters)
    if includes:
        names = [n for n in names if any(fnmatch.fnmatch(n, f) for f in includes)]
    if excludes:
        names = [n for n in names if not any(fnmatch.fnmatch(n, f) for f in excludes)]
    return sorted(set(names))


def list_pretrained(filter: str | Iterable[str] = "", exclude_filters: str | Iterable[str] = "") -> list[str]:
    """``arch.tag`` names that have weights."""
    return list_models(filter, pretrained=True, exclude_filters=exclude_filters)


def get_pretrained_cfg(name: str, allow_unregistered: bool = False) -> PretrainedCfg:
    """The record for ``arch`` (its default tag) or ``arch.tag``."""
    arch, tag = split_model_name_tag(name)
    if arch not in _pretrained_cfgs:
        if allow_unregistered:
            return PretrainedCfg(architecture=arch, tag=tag or None)
        raise UnknownModelError(_unknown_message(arch))
    tags = _pretrained_cfgs[arch]
    if not tag:
        return next(iter(tags.values()))
    if tag not in tags:
        known = [f"{arch}.{t}" for t in tags if t]
        raise ValueError(f"no pretrained tag {tag!r} for {arch!r}; available: {', '.join(known) if known else 'none'}")
    return tags[tag]
