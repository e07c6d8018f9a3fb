"""Pieces the recipes share: their common flags, model building from names and checkpoints, autocast."""

from __future__ import annotations

import argparse
import contextlib
import json
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

from .data import BAD_IMAGE_POLICIES

MODEL_SHAPE_FLAGS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_depth", "decoder_num_heads")


def add_model_shape_args(parser: argparse.ArgumentParser) -> None:
    """Model-shape flags, passed to the model builder as kwargs when set."""
    g = parser.add_argument_group("model shape (unset: the registered variant's own)")
    g.add_argument("--img-size", type=int, default=None, help="input resolution")
    g.add_argument("--patch-size", type=int, default=None)
    g.add_argument("--embed-dim", type=int, default=None, help="width d")
    g.add_argument("--depth", type=int, default=None, help="encoder layers")
    g.add_argument("--num-heads", type=int, default=None)
    g.add_argument("--decoder-depth", type=int, default=None, help="MAE decoder layers")
    g.add_argument("--decoder-num-heads", type=int, default=None)
    g.add_argument(
        "--model-kwargs", type=json_object, default=None, help="extra model kwargs as JSON, e.g. '{\"lambd\": 5.0}'"
    )


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"lambd\": 5.0}}', got {text!r}")
    return value


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    """The encoder to probe or fine-tune: a registered name (``--pretrained``) or a checkpoint, and its shape."""
    g = parser.add_argument_group("encoder")
    g.add_argument("--model", default=None, help="registered model (read from --checkpoint when the recipes wrote it)")
    g.add_argument("--checkpoint", default=None, help="a checkpoint of the recipes, or a weights file for --model")
    g.add_argument("--pretrained", action="store_true", help="load the registered pretrained weights of --model")
    add_model_shape_args(parser)


def add_labelled_data_args(parser: argparse.ArgumentParser) -> None:
    """Labelled training and test images: the flags of fine-tuning and the linear probe."""
    d = parser.add_argument_group("data")
    d.add_argument(
        "--data",
        required=True,
        help="labelled data: .npz, image folder, 'cifar10', hf:NAME[:SPLIT] / hf:PATH, wds:PATTERN",
    )
    d.add_argument("--test-data", default=None, help="a file or folder of labelled test images (default: test split)")
    d.add_argument("--train-split", default="train")
    d.add_argument("--test-split", default="test")
    d.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data-root")
    d.add_argument("--data-root", default="data", help="where --data cifar10 lives")
    add_column_args(d)


def add_column_args(group: argparse._ArgumentGroup) -> None:
    """``--image-column`` / ``--label-column``: the columns of a Hugging Face dataset (``--data hf:...``)."""
    group.add_argument("--image-column", default=None, help="hf: data: the image column (default: found)")
    group.add_argument("--label-column", default=None, help="hf: data: the label column (default: found)")


def add_run_args(parser: argparse.ArgumentParser, output: str, log_every: int = 10) -> argparse._ArgumentGroup:
    """The flags of a training run: output folder, resume, seed, device, precision, logging, data loading."""
    r = parser.add_argument_group("run")
    r.add_argument("--output", default=output, help="output folder (one run at a time: it is locked while in use)")
    r.add_argument("--resume", default=None, help="a checkpoint, or 'auto': the newest loadable one in --output")
    r.add_argument(
        "--force-resume", action="store_true", help="resume even where data, seed or schedule differ (warns)"
    )
    r.add_argument(
        "--overwrite", action="store_true", help="start a new run in a folder that holds an earlier run's checkpoints"
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    r.add_argument("--precision", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16")
    r.add_argument("--workers", type=int, default=None, help="loader processes per rank (default: 0 on CPU, 8 on GPU)")
    r.add_argument(
        "--on-bad-image",
        default="skip",
        choices=BAD_IMAGE_POLICIES,
        help="an unreadable image: skip it with a warning naming it (counted at the next checkpoint), or stop",
    )
    r.add_argument("--log-every", type=int, default=log_every, help="steps per metrics row")
    r.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (0: at epoch ends)")
    r.add_argument("--stop-after", type=int, default=None, help="checkpoint and stop after this many steps in all")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--no-tensorboard", action="store_true")
    return r


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Flags that must be positive when given; the run flags' own (``--stop-after``, ...) are checked too."""
    for name in (*names, "stop_after", "threads"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for name in ("save_every", "grid_every", "workers"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")


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
    if precision not in ("auto", "fp32", "bf16", "fp16"):
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
