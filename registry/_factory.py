"""Building models with timm's ``build_model_with_cfg``, and ``create_model``: the one way in.

Weights take one path, whatever the route (``pretrained=True`` through timm or whitebox, an
``hf-hub:`` / ``local-dir:`` name, ``checkpoint_path=``): the file is fetched by ``_fetch``, read
without running code by ``_load``, converted by the family's ``checkpoint_filter_fn`` and loaded
with errors that name every missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

import inspect
import json
import os
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm.models
from torch import nn

from ._fetch import check_hub_repo, download_hf_hub, resolve_pretrained_file
from ._load import (
    CheckpointFormatError,
    FilterFn,
    HeadAdaptedWarning,
    load_state_dict,
    read_checkpoint,
    unwrap_state_dict,
)
from ._records import (
    PretrainedCfg,
    _unknown,
    get_pretrained_cfg,
    is_model,
    list_pretrained,
    resolve_pretrained_cfg,
)

# arguments any model's checkpoint may differ from: they adapt the weights or only change training behaviour;
# a family adds its own as ``adaptable_args`` on its model class (see ``adaptable_args``)
ADAPTABLE_ARGS = frozenset(
    {"num_classes", "global_pool", "img_size", "in_chans", "dynamic_img_size", "fused_attn"}
    | {"drop_rate", "pos_drop_rate", "attn_drop_rate", "proj_drop_rate", "drop_path_rate"}
)


def adaptable_args(model_name: str) -> frozenset[str]:
    """``ADAPTABLE_ARGS`` plus the ``adaptable_args`` the family's model class declares (the class its
    registered entrypoint says it returns), e.g. a masked autoencoder's ``mask_ratio``."""
    try:
        entry = timm.models.model_entrypoint(timm.models.get_arch_name(model_name))
        cls = typing.get_type_hints(entry).get("return")
    except (KeyError, RuntimeError, NameError, TypeError):  # unknown name, or a return type that does not resolve
        cls = None
    return ADAPTABLE_ARGS | frozenset(getattr(cls, "adaptable_args", ()))


def _check_kwargs(model_cls: Callable[..., nn.Module], kwargs: dict[str, Any], variant: str) -> None:
    params = inspect.signature(model_cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    if unknown := sorted(set(kwargs) - set(params)):
        raise TypeError(f"{variant} got unknown keyword argument(s) {unknown}; allowed: {', '.join(sorted(params))}")


def build_model_with_cfg(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool = False,
    pretrained_cfg: str | dict[str, Any] | timm.models.PretrainedCfg | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    pretrained_filter_fn: FilterFn | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    feature_cfg: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` with our records, sources and loading.

    A named tag (``'crate_mae_base.in1k'``) or ``pretrained=True`` applies the record's
    ``model_args`` under the caller's. The weights are loaded while the model is constructed, before
    timm wraps it (``features_only=True`` gives timm's ``FeatureGetterNet`` over ``forward_intermediates``).
    """
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay)
    if pretrained and not cfg.has_weights:
        raise ValueError(
            f"no pretrained weights are registered for {cfg.name!r}; variants with weights: "
            f"{', '.join(list_pretrained()) or 'none yet'}. Pass checkpoint_path=... to load your own file."
        )
    if pretrained or (isinstance(pretrained_cfg, str) and pretrained_cfg):
        kwargs = {**cfg.model_args, **kwargs}
    state_dict, source_args = None, dict(kwargs.get("pretrained_model_args") or {})
    if pretrained:
        # what the weights were trained as: the record's input size and arguments, under a saved model's own
        size = {"img_size": tuple(cfg.input_size[-2:])} if cfg.input_size and cfg.tag else {}  # a tag's weights
        source_args = {**size, **cfg.model_args, **source_args}
        path = resolve_pretrained_file(cfg, cache_dir)
        try:
            state_dict = unwrap_state_dict(read_checkpoint(path), str(path))
        except CheckpointFormatError as err:
            if cfg.file:
                raise
            raise CheckpointFormatError(f"{err}. It is a downloaded copy: delete it to fetch it again") from err

    def construct(**model_kwargs: Any) -> nn.Module:
        _check_kwargs(model_cls, model_kwargs, variant)
        model = model_cls(**model_kwargs)
        model._model_args = dict(model_kwargs)  # what rebuilds it (timm adds the caller's on top)
        if state_dict is not None:
            model.pretrained_model_args = source_args
            load_state_dict(model, state_dict, f"{cfg.name} ({path})", pretrained_filter_fn)
        return model

    return timm.models.build_model_with_cfg(
        construct,
        variant,
        pretrained=False,  # loaded above, by construct
        pretrained_cfg=cfg,
        feature_cfg=feature_cfg or dict(feature_cls="getter", out_indices=kwargs.pop("out_indices", 3)),
        **kwargs,
    )


# ----------------------------------------------------------------------------- saved models and checkpoints
def read_model_config(location: str, source: str, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``config.json`` of a ``local-dir:`` folder or ``hf-hub:`` repository (timm's layout) as create_model kwargs.

    Raises:
        ValueError: an empty or invalid location (``check_hub_repo``), or a malformed ``config.json``:
            not UTF-8, not JSON, not an object, no ``architecture`` string, ``model_args`` or
            ``pretrained_cfg`` that is not an object, a record field of the wrong type.
        FileNotFoundError: a ``local-dir:`` folder without ``config.json``.
    """
    if not location or "\0" in location:
        raise ValueError(f"{source}:{location!r} names no {'folder' if source == 'local-dir' else 'repository'}")
    if source == "local-dir":
        path, weights = Path(location).expanduser() / "config.json", dict(file=str(Path(location).expanduser()))
        if not path.is_file():
            raise FileNotFoundError(f"local-dir:{location} has no config.json (looked for {path})")
    else:
        check_hub_repo(location)
        path, weights = download_hf_hub(location, "config.json", cache_dir=cache_dir), dict(hf_hub_id=location)
    try:
        config = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); a saved model's config.json is JSON in UTF-8") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not an object; expected {_CONFIG_SHAPE}")
    if not isinstance(config.get("architecture"), str):
        raise ValueError(f"{path} names no 'architecture'; it was not written by save_pretrained or timm's save_for_hf")
    for key in ("model_args", "pretrained_cfg"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise ValueError(
                f"{path}: {key!r} is a JSON {_json_type(config[key])}, expected an object; expected {_CONFIG_SHAPE}"
            )
    known = set(timm.models.PretrainedCfg.__dataclass_fields__)  # saved configs hold timm's fields only
    record = {k: v for k, v in (config.get("pretrained_cfg") or {}).items() if k in known}  # forward-compatible
    for key in ("file", "url", "hf_hub_id", "hf_hub_filename", "architecture", "tag"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ValueError(f"{path}: pretrained_cfg.{key} is a JSON {_json_type(record[key])}, expected a string")
    record.update(weights, source=source, architecture=config["architecture"])
    args = dict(config.get("model_args") or {})
    return dict(model_name=config["architecture"], pretrained_cfg=record, pretrained_model_args=args, **args)


_CONFIG_SHAPE = '{"architecture": "NAME", "model_args": {...}, "pretrained_cfg": {...}}'


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), "object" if isinstance(value, dict) else type(value).__name__)


def checkpoint_model(obj: Any, path: str, model_name: str | None, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The model a recipe checkpoint records (name and arguments) under the caller's, refusing conflicts."""
    recorded = obj.get("model_name") if isinstance(obj, dict) else None
    if not isinstance(recorded, str):
        if model_name is None:
            unwrap_state_dict(obj, path)  # names what the file holds when it holds no weights at all
            raise ValueError(f"{path} does not record its model (it was not written by the recipes); name the model")
        return model_name, kwargs
    if model_name is not None and timm.models.get_arch_name(model_name) != timm.models.get_arch_name(recorded):
        return model_name, kwargs  # another architecture takes what it can (a CRATE from a CRATE-MAE encoder)
    saved = dict(obj.get("model_kwargs") or {})
    free = adaptable_args(recorded)
    clash = {k: (v, saved[k]) for k, v in kwargs.items() if k in saved and k not in free and v != saved[k]}
    if clash:
        named = "; ".join(f"{k}={mine!r} here, {k}={theirs!r} in the checkpoint" for k, (mine, theirs) in clash.items())
        raise ValueError(f"{path} was trained as {recorded!r} with other arguments: {named}")
    return model_name or recorded, {**saved, **kwargs}


def create_model(
    model_name: str | None = None,
    pretrained: bool | None = None,
    pretrained_cfg: str | dict[str, Any] | PretrainedCfg | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model, optionally with weights (``timm.create_model`` builds the same).

    Args:
        model_name: ``arch`` or ``arch.tag`` (``'crate_mae_base.in1k'``), or a saved model:
            ``'hf-hub:org/name'`` or ``'local-dir:/path'`` (``config.json`` + weights, as
            ``whitebox.save_pretrained`` or timm's ``save_for_hf`` write them). May be omitted when
            ``checkpoint_path`` is a recipe checkpoint, which records its model.
        pretrained: load the weights of the tag (or of the saved model). Default: ``False`` for
            registered names, ``True`` for ``hf-hub:`` / ``local-dir:`` names.
        pretrained_cfg: a tag, a dict or a record that replaces the registered one.
        pretrained_cfg_overlay: record fields to change (``dict(file='/path/weights.pth')``); a weight
            source here needs ``pretrained=True``.
        checkpoint_path: a local file (not a folder) loaded after the model is built, through the family's
            filter. A recipe checkpoint's recorded model arguments are used; a conflicting argument is an
            error. Without ``num_classes`` the model takes the width of the file's head; with another
            ``num_classes`` (or a file without a head) the head is newly initialised with a
            ``HeadAdaptedWarning`` naming keys and shapes; a file with part of a head is refused. A file
            holding one part of the recorded model (``finetune.py``'s classifier: the autoencoder's
            encoder) gives that part. A learned position table is resampled from the grid the file
            records, or ``pretrained_model_args=dict(img_size=...)`` states; otherwise a table of another
            grid is refused. A tag's ``model_args`` apply only when the tag is named
            (``'crate_mae_base.in1k'``); a file in an official layout that meets other values is warned about.
        cache_dir: download cache (Hub, URL and Drive files).
        **kwargs: model arguments (``num_classes``, ``in_chans``, ``img_size``, ...), and timm's
            ``pretrained_model_args`` (the arguments the weights were trained with).

    Raises:
        UnknownModelError: an unregistered name.
        ValueError: a malformed or invalid name, record, ``config.json`` or checkpoint (each names what
            was wrong).
        IsADirectoryError: a folder as ``checkpoint_path``.
        WeightsUnavailableError: offline or unreachable, not cached (says how to supply the file).
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    checkpoint = read_checkpoint(checkpoint_path) if checkpoint_path else None
    if checkpoint is not None:
        model_name, kwargs = checkpoint_model(checkpoint, str(checkpoint_path), model_name, kwargs)
    if model_name is None:
        raise TypeError("create_model() needs a model name (or a checkpoint_path that records one)")
    source, sep, location = model_name.partition(":")
    if sep:
        if source not in ("hf-hub", "local-dir"):
            raise ValueError(
                f"unknown model source {source + ':'!r} in {model_name!r}; allowed: 'hf-hub:', 'local-dir:'"
            )
        if pretrained_cfg is not None:
            raise ValueError(f"{model_name!r} brings its own record; pass pretrained_cfg_overlay to change it")
        saved = read_model_config(location, source, cache_dir)
        model_name, pretrained_cfg = saved.pop("model_name"), saved.pop("pretrained_cfg")
        kwargs = {**saved, **kwargs}  # the saved arguments under the caller's
        pretrained = True if pretrained is None else pretrained
    if not is_model(model_name):
        raise _unknown(model_name)
    sources = {k for k in ("file", "url", "hf_hub_id", "gdrive_id") if (pretrained_cfg_overlay or {}).get(k)}
    if sources and not pretrained:
        raise ValueError(
            f"pretrained_cfg_overlay names weights ({', '.join(sorted(sources))}) but pretrained is False, so they "
            "would not load; pass pretrained=True (or checkpoint_path=PATH to load a file into the built model)"
        )

    def build(**extra: Any) -> nn.Module:
        return timm.models.create_model(
            model_name,
            pretrained=bool(pretrained),
            pretrained_cfg=pretrained_cfg,
            pretrained_cfg_overlay=pretrained_cfg_overlay,
            cache_dir=cache_dir,
            **{**kwargs, **extra},
        )

    model = build()
    if checkpoint is not None:
        state = unwrap_state_dict(checkpoint, str(checkpoint_path))
        _warn_tag_args(model, state, kwargs, str(checkpoint_path))
        model = _load_checkpoint(model, build, state, str(checkpoint_path), follow_head="num_classes" not in kwargs)
    return model


def _warn_tag_args(model: nn.Module, state: dict[str, Any], kwargs: dict[str, Any], source: str) -> None:
    """Warn when a file in a foreign (official) layout meets a model built without its tag's arguments.

    ``checkpoint_path=`` applies no tag's ``model_args`` (only ``pretrained=True`` or a named tag does),
    so ``crate_mae_base`` + the official CRATE-MAE-Base file would meet ``lambd=0.5``, not the 5.0 its
    record holds. The file does not say which it needs; the caller is told, and chooses.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg.get("tag") or not cfg.get("architecture") or set(state) <= set(model.state_dict()):
        return  # our own layout: its arguments are the caller's (or the file records them)
    record = get_pretrained_cfg(f"{cfg['architecture']}.{cfg['tag']}")
    params = inspect.signature(type(model)).parameters
    built = {k: getattr(model, "_model_args", {}).get(k, getattr(params.get(k), "default", None)) for k in params}
    differ = {k: v for k, v in record.model_args.items() if k not in kwargs and k in built and built[k] != v}
    if differ:
        mine = ", ".join(f"{k}={built[k]!r}" for k in differ)
        theirs = ", ".join(f"{k}={v!r}" for k, v in differ.items())
        warnings.warn(
            f"{source} is in a foreign (official) layout; the released {record.name} weights need {theirs}, and this "
            f"model was built with {mine} (checkpoint_path= applies no tag's arguments). If it is that file, use "
            f"create_model({record.name!r}, checkpoint_path=...); if not, pass {theirs.split('=')[0]}=... to choose.",
            UserWarning,
            stacklevel=3,
        )


def _part_holding(model: nn.Module, state: dict[str, Any]) -> str | None:
    """The child module (``'encoder'``) whose keys hold all of ``state`` when none fits ``model`` itself."""
    own = model.state_dict()
    if not state or set(state) & set(own):
        return None
    for name, _ in model.named_children():
        if set(state) <= {k[len(name) + 1 :] for k in own if k.startswith(f"{name}.")}:
            return name
    return None


def _load_checkpoint(
    model: nn.Module, build: Callable[..., nn.Module], state: dict[str, Any], source: str, follow_head: bool
) -> nn.Module:
    """Load ``state`` into ``model`` or the part of it the file holds; a head of another width is followed."""
    part = _part_holding(model, state)
    for attempt in range(2):
        target = model.get_submodule(part) if part else model
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_state_dict(target, state, source)
        head = next((w.message for w in caught if isinstance(w.message, HeadAdaptedWarning)), None)
        if attempt or not follow_head or head is None or head.num_classes is None:
            break
        model = build(num_classes=head.num_classes)  # the caller named no width: the checkpoint's head is the model's
    for w in caught:  # at the line that called create_model
        warnings.warn(w.message, w.category, stacklevel=3)
    if part:  # a recipe's fine-tuned encoder: the classifier it holds, described as its parent is
        for attr in ("pretrained_cfg", "default_cfg", "pretrained_model_args"):
            setattr(target, attr, getattr(model, attr, None))
    return target
