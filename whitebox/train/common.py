"""Pieces the recipes share: their common flags, model building from names and checkpoints, autocast."""

from __future__ import annotations

import argparse
import contextlib
import re
from typing import Any

import torch
from torch import nn

from registry import (
    checkpoint_model,
    create_model,
    load_state_dict,
    model_entrypoint,
    read_checkpoint,
    unwrap_state_dict,
)

# the recipes' flags live in a torch-free module (--help answers without torch); re-exported here
from ..recipe_args import (  # noqa: F401
    MODEL_SHAPE_FLAGS,
    PRECISIONS,
    add_batch_args,
    add_column_args,
    add_encoder_args,
    add_labelled_data_args,
    add_lr_args,
    add_model_shape_args,
    add_run_args,
    json_object,
)


def check_aa(policy: str) -> None:
    """``--aa``: a timm auto-augment policy string, or empty for none; checked by building it (fast)."""
    if not policy:
        return
    from timm.data import create_transform

    allowed = "give e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, v0 or original, or '' for none"
    sections = policy.split("-")
    # timm skips a RandAugment section without digits ('rand-m9-bogus') without a word
    if sections[0] == "rand" and (odd := [c for c in sections[1:] if not re.fullmatch(r"t\w+|[a-z]+[\d.]+", c)]):
        raise ValueError(f"--aa {policy!r}: RandAugment has no section {', '.join(odd)}; {allowed}")
    try:
        create_transform(input_size=32, is_training=True, auto_augment=policy)
    except Exception as err:  # timm reports a bad policy as an assertion, a KeyError or a ValueError
        raise ValueError(
            f"--aa {policy!r} is not a timm auto-augment policy ({type(err).__name__}: {err}); {allowed}"
        ) from None


def model_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = {k: getattr(args, k) for k in MODEL_SHAPE_FLAGS if getattr(args, k, None) is not None}
    extra = getattr(args, "model_kwargs", None) or {}
    if not isinstance(extra, dict):
        raise TypeError(f"--model-kwargs must be a JSON object, got {type(extra).__name__}")
    return {**kwargs, **extra}


def check_model_name(name: str) -> None:
    """An unknown name fails here, before data is loaded, with the registry's message (closest names)."""
    model_entrypoint(name)


def amp_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 / float16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return precision


def count_params(model: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def load_encoder(
    model: str | None,
    checkpoint: str | None = None,
    pretrained: bool = False,
    num_classes: int = 0,
    global_pool: str | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, str, dict[str, Any]]:
    """The backbone to probe or fine-tune, the model name, and the kwargs it was built with.

    ``checkpoint`` may be a ``pretrain.py`` / ``finetune.py`` checkpoint (it records its model name and
    arguments, so ``model`` may be ``None``) or any weights file for ``model``: the whole model or, for
    a masked autoencoder, its encoder alone (as ``finetune.py`` saves it). For a masked autoencoder the
    encoder (``model.encoder``) is returned; other models are returned whole. The classifier is reset
    to ``num_classes`` outputs (0: none) with ``global_pool`` after loading.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    ckpt = read_checkpoint(checkpoint) if checkpoint else None
    if ckpt is not None:
        model, kwargs = checkpoint_model(ckpt, str(checkpoint), model, kwargs)
    if not model:
        raise ValueError("give --model, or a --checkpoint written by the recipes (it names its model)")
    check_model_name(model)
    net = create_model(model, pretrained=pretrained, **kwargs)
    encoder = getattr(net, "encoder", net)
    if ckpt is not None:
        state = unwrap_state_dict(ckpt, str(checkpoint))
        encoder_only = encoder is not net and not any(k.startswith("encoder.") for k in state)
        load_state_dict(encoder if encoder_only else net, state, str(checkpoint))
    encoder.reset_classifier(num_classes, global_pool)
    return encoder, model, kwargs
