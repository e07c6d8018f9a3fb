"""``create_model``: the one way in."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ._pretrained import PretrainedCfg, split_model_name_tag
from ._registry import model_entrypoint


def create_model(
    model_name: str,
    pretrained: bool | None = None,
    pretrained_cfg: str | dict[str, Any] | PretrainedCfg | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model, optionally with weights.

    Args:
        model_name: ``arch``, ``arch.tag`` (``'crate_mae_base.in1k'``), or a saved model:
            ``'hf-hub:org/name'`` (a Hub repository) or ``'local-dir:/path'`` (a folder), each holding
            ``config.json`` + ``model.safetensors`` as ``whitebox.save_pretrained`` writes them.
        pretrained: load the weights the tag (or the architecture's default tag) points to. Default:
            ``False`` for registered names, ``True`` for ``hf-hub:`` / ``local-dir:`` names.
        pretrained_cfg: a tag, a dict or a ``PretrainedCfg`` that replaces the registered record.
        pretrained_cfg_overlay: fields to change in the record (``dict(file='/path/weights.pth')``).
        checkpoint_path: a local checkpoint to load after the model is built.
        **kwargs: model arguments (``num_classes``, ``in_chans``, ``img_size``, ...).
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    scheme, sep, location = model_name.partition(":")
    if sep and scheme in ("hf-hub", "local-dir"):
        from ._hub import read_model_config

        arch, model_args, saved_cfg = read_model_config(location, scheme, cache_dir=kwargs.get("cache_dir"))
        # the saved arguments override the variant's defaults; the caller's override both
        kwargs = {**model_args, **kwargs}
        pretrained = True if pretrained is None else pretrained
        pretrained_cfg = saved_cfg if pretrained_cfg is None else pretrained_cfg
        tag = ""
    elif sep:
        raise ValueError(
            f"unknown model name prefix {scheme + ':'!r} in {model_name!r}; allowed: 'hf-hub:', 'local-dir:'"
        )
    else:
        arch, tag = split_model_name_tag(model_name)
    pretrained = bool(pretrained)
    if tag and pretrained_cfg is None:
        pretrained_cfg = tag
    entrypoint = model_entrypoint(arch)
    model = entrypoint(
        pretrained=pretrained, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs
    )
    if checkpoint_path:
        from ._hub import load_checkpoint

        load_checkpoint(model, checkpoint_path)
    return model
