"""``create_model``: the one way in."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ._pretrained import PretrainedCfg, split_model_name_tag
from ._registry import model_entrypoint


def create_model(
    model_name: str,
    pretrained: bool = False,
    pretrained_cfg: str | dict[str, Any] | PretrainedCfg | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create a registered model, optionally with weights.

    Args:
        model_name: ``arch`` or ``arch.tag`` (``'crate_mae_base.in1k'``).
        pretrained: load the weights the tag (or the architecture's default tag) points to.
        pretrained_cfg: a tag, a dict or a ``PretrainedCfg`` that replaces the registered record.
        pretrained_cfg_overlay: fields to change in the record (``dict(file='/path/weights.pth')``).
        checkpoint_path: a local checkpoint to load after the model is built.
        **kwargs: model arguments (``num_classes``, ``in_chans``, ``img_size``, ...).
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    arch, tag = split_model_name_tag(model_name)
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
