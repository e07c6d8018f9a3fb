"""Records and names, kept in timm's registry.

A record is a timm ``PretrainedCfg`` plus what timm lacks: a Google Drive source, a pinned sha256
and the architecture arguments its weights need. Families list records in a module-level
``default_cfgs`` and register entrypoints with ``register_model``, timm's mechanism, so timm lists,
resolves and builds them like its own. The look-ups here answer for this package's models only.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import timm.models

_OURS: set[str] = set()  # architectures registered through this package
_EXTRA = ("gdrive_id", "sha256", "model_args")


class UnknownModelError(ValueError):
    """A model name that no family registered."""


@dataclasses.dataclass
class PretrainedCfg(timm.models.PretrainedCfg):
    """timm's record, plus ``gdrive_id`` (a Google Drive file id), ``sha256`` (checked on every load)
    and ``model_args`` (architecture arguments of the weights, applied when the tag is named or loads)."""

    gdrive_id: str | None = None
    sha256: str | None = None
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def has_weights(self) -> bool:
        """True when the record names weights: timm's sources (url, file, Hub) or a Google Drive id."""
        return bool(super().has_weights or self.gdrive_id)

    @property
    def name(self) -> str:
        """``architecture.tag``, or the architecture alone for a record without a tag."""
        return f"{self.architecture}.{self.tag}" if self.tag else str(self.architecture)

    def to_dict(self, remove_source: bool = False, remove_null: bool = True) -> dict[str, Any]:
        """timm's fields only: what a built model carries as ``pretrained_cfg`` and what saved configs hold."""
        return {k: v for k, v in super().to_dict(remove_source, remove_null).items() if k not in _EXTRA}

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> PretrainedCfg:
        """A record from a dict (JSON lists become tuples); an unknown field is a ``TypeError`` naming it."""
        allowed = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(fields) - allowed):
            raise TypeError(f"unknown pretrained_cfg field(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def generate_default_cfgs(cfgs: dict[str, PretrainedCfg | dict[str, Any]]) -> dict[str, Any]:
    """timm's ``generate_default_cfgs``, taking records as dicts with our fields."""
    return timm.models.generate_default_cfgs(
        {k: PretrainedCfg.from_fields(v) if isinstance(v, dict) else v for k, v in cfgs.items()}
    )


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register an entrypoint and its module's ``default_cfgs`` in timm; a name timm has from elsewhere is an error."""
    name = fn.__name__
    if timm.models.is_model(name):
        other = timm.models.model_entrypoint(name)
        if (other.__module__, other.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(
                f"model name {name!r} of {fn.__module__} is already registered in timm by {other.__module__}"
            )
    with warnings.catch_warnings():  # the same entrypoint again (a module reload) replaces itself quietly
        warnings.simplefilter("ignore")
        timm.models.register_model(fn)
    _OURS.add(name)
    return fn


def is_model(name: str) -> bool:
    """True when ``name`` (with or without a tag) is an architecture registered here."""
    return timm.models.get_arch_name(name) in _OURS


def _unknown(name: str) -> UnknownModelError:
    arch = timm.models.get_arch_name(name)
    close = difflib.get_close_matches(arch, sorted(_OURS), n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    if timm.models.is_model(arch):
        hint = f"; it is a timm model: use timm.create_model({arch!r})"
    return UnknownModelError(f"unknown model {arch!r}{hint}. registry.list_models() lists all {len(_OURS)}")


def model_entrypoint(name: str) -> Callable[..., Any]:
    """The registered function that builds ``name`` (an architecture, without tag).

    Raises:
        UnknownModelError: no whitebox family registered ``name`` (the message lists the closest names).
    """
    if not is_model(name):
        raise _unknown(name)
    return timm.models.model_entrypoint(name)


def list_models(
    filter: str | Iterable[str] = "",
    pretrained: bool = False,
    exclude_filters: str | Iterable[str] = "",
    include_tags: bool | None = None,
) -> list[str]:
    """timm's ``list_models`` over the architectures registered here."""
    names = timm.models.list_models(
        filter, pretrained=pretrained, exclude_filters=exclude_filters, include_tags=include_tags
    )
    return sorted(n for n in names if is_model(n))


def list_pretrained(filter: str | Iterable[str] = "", exclude_filters: str | Iterable[str] = "") -> list[str]:
    """``arch.tag`` names that have weights."""
    return list_models(filter, pretrained=True, exclude_filters=exclude_filters, include_tags=True)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The record of ``arch`` (its default tag) or ``arch.tag``."""
    if not is_model(name):
        raise _unknown(name)
    arch, tag = timm.models.split_model_name_tag(name)
    try:
        return timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:
        if not tag:  # a family without records
            return PretrainedCfg(architecture=arch)
        known = ", ".join(n for n in list_models(arch, include_tags=True) if "." in n) or "none"
        raise ValueError(f"no pretrained tag {tag!r} for {arch!r}; available: {known}") from None


def resolve_pretrained_cfg(
    variant: str,
    pretrained_cfg: str | dict[str, Any] | timm.models.PretrainedCfg | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
) -> PretrainedCfg:
    """The record for ``variant``: its default tag, a named tag, a given record or dict, then the overlay."""
    if isinstance(pretrained_cfg, str) and pretrained_cfg:
        cfg = get_pretrained_cfg(f"{variant}.{pretrained_cfg}")
    elif isinstance(pretrained_cfg, timm.models.PretrainedCfg):  # timm's own, or ours
        cfg = PretrainedCfg.from_fields(
            {f.name: getattr(pretrained_cfg, f.name) for f in dataclasses.fields(pretrained_cfg)}
        )
    elif pretrained_cfg:  # a dict: a saved model's config, or the caller's
        cfg = PretrainedCfg.from_fields({"architecture": variant, **pretrained_cfg})
    else:
        cfg = get_pretrained_cfg(variant)
    overlay = PretrainedCfg.from_fields(pretrained_cfg_overlay or {})  # checks the field names
    return dataclasses.replace(cfg, **{k: getattr(overlay, k) for k in pretrained_cfg_overlay or {}})
