"""Pieces the recipes share: their common flags, model building from names and checkpoints, autocast."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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

from ..cli import choice, device, free, integer, number, seed
from .data import BAD_IMAGE_POLICIES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

MODEL_SHAPE_FLAGS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_depth", "decoder_num_heads")


def add_model_shape_args(parser: argparse.ArgumentParser) -> None:
    """Model-shape flags, passed to the model builder as kwargs when set."""
    g = parser.add_argument_group("model shape (unset: the registered variant's own)")
    positive = integer(gt=0)
    g.add_argument("--img-size", type=positive, default=None, help="input resolution")
    g.add_argument("--patch-size", type=positive, default=None)
    g.add_argument("--embed-dim", type=positive, default=None, help="width d")
    g.add_argument("--depth", type=positive, default=None, help="encoder layers")
    g.add_argument("--num-heads", type=positive, default=None)
    g.add_argument("--decoder-depth", type=positive, default=None, help="MAE decoder layers")
    g.add_argument("--decoder-num-heads", type=positive, default=None)
    g.add_argument(
        "--model-kwargs", type=json_object, default=None, help="extra model kwargs as JSON, e.g. '{\"lambd\": 5.0}'"
    )


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number (RFC 8259); model arguments must be finite")


def _finite(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, (list, dict)):
        return all(_finite(x) for x in (v.values() if isinstance(v, dict) else v))
    return True


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object of finite values (``NaN``, ``Infinity`` and ``1e999``, which Python's
    reader accepts, are refused)."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from err
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err}: {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"lambd\": 5.0}}', got {text!r}")
    if big := [k for k, v in value.items() if not _finite(v)]:  # 1e999 reads as inf
        raise argparse.ArgumentTypeError(f"{', '.join(big)}: not a finite number: {text!r}")
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
    free(d.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data-root"))
    free(d.add_argument("--data-root", default="data", help="where --data cifar10 lives"))
    add_column_args(d)


def add_column_args(group: argparse._ArgumentGroup) -> None:
    """``--image-column`` / ``--label-column``: the columns of a Hugging Face dataset (``--data hf:...``)."""
    group.add_argument("--image-column", default=None, help="hf: data: the image column (default: found)")
    group.add_argument("--label-column", default=None, help="hf: data: the label column (default: found)")


def add_batch_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, batch_size: int | None) -> None:
    """``--batch-size`` (per rank) and ``--accum-iter``. Neither defines a run alone: a resume compares the
    global batch (batch x accumulation x ranks), so ``--batch-size 8`` on 1 rank continues 4 x 2 ranks."""
    extra = "" if batch_size is not None else " (default 64)"
    free(parser.add_argument("--batch-size", type=integer(gt=0), default=batch_size, help="per rank" + extra))
    free(parser.add_argument("--accum-iter", type=integer(gt=0), default=1, help="gradient accumulation steps"))


def add_lr_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, blr: float | None, min_lr: float) -> None:
    """``--blr`` / ``--lr`` / ``--min-lr`` / ``--weight-decay`` / ``--clip-grad``: finite, ``--lr`` > 0."""
    extra = "" if blr is not None else " (default 1.5e-4)"
    parser.add_argument(
        "--blr", type=number(gt=0), default=blr, help="base lr; lr = blr * effective batch / 256" + extra
    )
    parser.add_argument("--lr", type=number(gt=0), default=None, help="absolute peak lr (overrides --blr)")
    parser.add_argument("--min-lr", type=number(ge=0), default=min_lr, help="lr at the end of the cosine (<= the lr)")
    parser.add_argument("--weight-decay", type=number(ge=0), default=0.05)
    parser.add_argument("--clip-grad", type=number(gt=0), default=None, help="max global gradient norm")


def add_run_args(parser: argparse.ArgumentParser, output: str, log_every: int = 10) -> argparse._ArgumentGroup:
    """The flags of a training run: output folder, resume, seed, device, precision, logging, data loading."""
    r = parser.add_argument_group("run")
    free(
        r.add_argument("--output", default=output, help="output folder (one run at a time: it is locked while in use)")
    )
    free(r.add_argument("--resume", default=None, help="a checkpoint, or 'auto': the newest loadable one in --output"))
    free(
        r.add_argument(
            "--force-resume", action="store_true", help="resume even where data, seed or schedule differ (warns)"
        )
    )
    free(
        r.add_argument(
            "--overwrite",
            action="store_true",
            help="start a new run in a folder that holds an earlier run's checkpoints",
        )
    )
    r.add_argument("--seed", type=seed, default=0, help="0 to 2**63 - 1")
    free(r.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N, mps, xpu, xpu:N"))
    r.add_argument(
        "--precision",
        type=choice(PRECISIONS),
        default="auto",
        help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16",
    )
    free(
        r.add_argument(
            "--workers",
            type=integer(ge=0),
            default=None,
            help="loader processes per rank (default: 0 on CPU, 8 on GPU)",
        )
    )
    free(
        r.add_argument(
            "--on-bad-image",
            default="skip",
            choices=BAD_IMAGE_POLICIES,
            help="an unreadable image: skip it with a warning naming it (counted at the next checkpoint), or stop",
        )
    )
    free(r.add_argument("--log-every", type=integer(gt=0), default=log_every, help="steps per metrics row"))
    free(
        r.add_argument(
            "--save-every",
            type=integer(ge=0),
            default=0,
            help="also checkpoint every N steps (0: at epoch ends; a run shorter than an epoch: 10 times)",
        )
    )
    free(
        r.add_argument(
            "--stop-after", type=integer(gt=0), default=None, help="checkpoint and stop after this many steps in all"
        )
    )
    free(
        r.add_argument(
            "--max-nonfinite-steps",
            type=integer(ge=0),
            default=0,
            help="non-finite steps (loss or gradient norm) skipped in a row before the run stops; 0: stop at the first",
        )
    )
    free(r.add_argument("--no-progress", action="store_true", help="no progress bar: a plain line per --log-every"))
    free(r.add_argument("--no-tensorboard", action="store_true"))
    return r


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
