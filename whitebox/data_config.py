"""The evaluation transform a model's record asks for: input size, crop_pct, interpolation, mean / std.

Pretrained records carry timm's preprocessing fields (``crop_pct`` 0.875 and bicubic for CRATE,
bilinear for CRATE-alpha); a number is comparable with a paper's only when images reach the model
the same way. ``resolve_eval_config`` reads them with ``timm.data.resolve_model_data_config`` and
applies overrides; ``eval_transform`` builds timm's own evaluation transform from them (resize the
short side to ``floor(img_size / crop_pct)``, centre-crop ``img_size``, normalise), so an evaluation
here matches ``timm``'s ``validate.py`` on the same record::

    cfg = resolve_eval_config(model)                     # the record, at the size the model was built for
    tf = eval_transform(model, crop_pct=1.0)             # PIL image -> (3, H, W) float tensor
    add_eval_transform_args(parser)                      # --img-size --crop-pct --crop-mode --interpolation ...

The input size: ``img_size`` when given, else the size the model was built for when it differs
from its record's (a 32 px ``crate_tiny``: timm would still resolve 224, which the model refuses),
else the record's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from .cli import choice, integer, number

__all__ = [
    "CROP_MODES",
    "INTERPOLATIONS",
    "add_eval_transform_args",
    "eval_overrides",
    "eval_transform",
    "resolve_eval_config",
]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash", "border")


def add_eval_transform_args(
    parser: argparse.ArgumentParser, img_size: bool = True, img_size_help: str = "input size (unset: the record's)"
) -> argparse._ArgumentGroup:
    """Flags that override the record's preprocessing (timm's names); unset, the record's values are used.

    ``img_size=False`` leaves ``--img-size`` out, for programs where it already sets the model's shape;
    ``img_size_help`` says what else it does in a program.
    """
    g = parser.add_argument_group("preprocessing (unset: the model's record, as timm resolves it)")
    if img_size:
        g.add_argument("--img-size", type=integer(gt=0), default=None, metavar="N", help=img_size_help)
    g.add_argument("--crop-pct", type=number(gt=0, le=1), default=None, metavar="F", help="centre-crop fraction (0, 1]")
    g.add_argument("--crop-mode", type=choice(CROP_MODES), default=None, metavar="MODE", help=", ".join(CROP_MODES))
    g.add_argument(
        "--interpolation",
        type=choice(INTERPOLATIONS),
        default=None,
        metavar="NAME",
        help=", ".join(INTERPOLATIONS),
    )
    g.add_argument("--mean", type=number(), nargs=3, default=None, metavar=("R", "G", "B"), help="pixel mean")
    g.add_argument("--std", type=number(gt=0), nargs=3, default=None, metavar=("R", "G", "B"), help="pixel std")
    return g


def eval_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The preprocessing overrides set on a command line parsed with :func:`add_eval_transform_args`."""
    keys = ("img_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _model_size(model: Any) -> tuple[int, int] | None:
    encoder = getattr(model, "encoder", model)  # a masked autoencoder's encoder
    embed = getattr(encoder, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    return (int(size[0]), int(size[1])) if size is not None else None


def resolve_eval_config(
    model: Any,
    img_size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    interpolation: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """timm's data config of ``model`` (its ``pretrained_cfg``) with overrides.

    Returns:
        ``{'input_size': (3, H, W), 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode'}``, the
        keyword arguments of ``timm.data.create_transform`` / ``create_loader``.

    Raises:
        ValueError: an override outside its allowed values (named, with what is allowed).
    """
    from timm.data import resolve_model_data_config

    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if crop_mode is not None and crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {crop_mode!r}")
    for name, value in (("mean", mean), ("std", std)):
        if value is not None and len(value) != 3:
            raise ValueError(f"{name} must have 3 values (R, G, B), got {len(value)}")
    if std is not None and min(std) <= 0:
        raise ValueError(f"std must be positive, got {tuple(std)}")
    config = resolve_model_data_config(model)
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    if size is None and (built := _model_size(model)) is not None and tuple(config["input_size"][1:]) != built:
        size = built  # built at another size than its record's: evaluate at the size it takes
    if size is not None:
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"img_size must be positive (an int or (H, W)), got {img_size!r}")
        config["input_size"] = (config["input_size"][0], int(size[0]), int(size[1]))
    overrides = dict(crop_pct=crop_pct, crop_mode=crop_mode, interpolation=interpolation, mean=mean, std=std)
    config.update({k: tuple(v) if k in ("mean", "std") else v for k, v in overrides.items() if v is not None})
    return config


def eval_transform(model: Any, uint8: bool = False, **overrides: Any) -> Callable[[Any], Any]:
    """timm's evaluation transform (PIL image -> normalised (3, H, W) float tensor) for ``model``'s record.

    ``uint8=True``: resize and crop only, to a uint8 (3, H, W) tensor (timm's prefetcher path), for a loader
    that normalises on the device with the config's ``mean`` / ``std`` (``(x - 255 mean) / (255 std)``).
    ``overrides``: the keyword arguments of :func:`resolve_eval_config`.
    """
    from timm.data import create_transform

    config = resolve_eval_config(model, **overrides)
    if not uint8:
        return create_transform(**config, is_training=False)
    tf = create_transform(**config, is_training=False, use_prefetcher=True)  # ends in ToNumpy: uint8 CHW

    def to_uint8(img: Any) -> Any:
        import numpy as np
        import torch

        return torch.from_numpy(np.ascontiguousarray(tf(img)))

    return to_uint8
