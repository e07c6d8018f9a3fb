"""Pretrained-weight records: one ``PretrainedCfg`` per ``architecture.tag``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PretrainedCfg:
    """Where a set of weights comes from, what it needs and what it expects as input.

    ``model_args`` holds the architecture arguments the weights were trained with (for example a
    threshold that differs from the variant's default); they are applied when the weights load.
    """

    architecture: str | None = None
    tag: str | None = None

    # weight sources, tried in the order: file, hf_hub_id, url, gdrive_id
    file: str | None = None
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    url: str | None = None
    gdrive_id: str | None = None
    filename: str | None = None  # name of the file in the cache (url / gdrive sources)
    sha256: str | None = None

    model_args: dict[str, Any] = field(default_factory=dict)

    # input and head
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    num_classes: int = 1000
    first_conv: str | None = None
    classifier: str | None = None

    # provenance
    license: str | None = None
    paper: str | None = None
    origin_url: str | None = None
    notes: str | None = None

    @property
    def has_weights(self) -> bool:
        return bool(self.file or self.hf_hub_id or self.url or self.gdrive_id)

    @property
    def name(self) -> str:
        return f"{self.architecture}.{self.tag}" if self.tag else str(self.architecture)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Read-only mapping access: timm's data utilities treat ``model.pretrained_cfg`` as a dict.
    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.__dataclass_fields__ else default

    def __contains__(self, key: object) -> bool:
        return key in self.__dataclass_fields__

    def keys(self) -> list[str]:
        return list(self.__dataclass_fields__)

    def replace(self, **overlay: Any) -> PretrainedCfg:
        """A copy with ``overlay`` applied; unknown fields raise a ``TypeError`` naming them."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overlay) - known)
        if unknown:
            raise TypeError(f"unknown pretrained_cfg field(s) {unknown}; allowed: {sorted(known)}")
        return dataclasses.replace(self, **overlay)


def split_model_name_tag(name: str) -> tuple[str, str]:
    """``'crate_mae_base.in1k'`` -> ``('crate_mae_base', 'in1k')``; no tag gives ``''``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def generate_default_cfgs(cfgs: dict[str, PretrainedCfg | dict[str, Any]]) -> dict[str, dict[str, PretrainedCfg]]:
    """Group ``{'arch.tag': cfg}`` into ``{arch: {tag: cfg}}``, filling in architecture and tag.

    The first tag listed for an architecture is its default.
    """
    out: dict[str, dict[str, PretrainedCfg]] = {}
    for name, cfg in cfgs.items():
        arch, tag = split_model_name_tag(name)
        if isinstance(cfg, dict):
            cfg = PretrainedCfg(**cfg)
        out.setdefault(arch, {})[tag] = cfg.replace(architecture=arch, tag=tag or None)
    return out
