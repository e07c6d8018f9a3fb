"""The recipes' command lines (``recipes/pretrain.py``, ``finetune.py``, ``linprobe.py``), torch-free.

Every whitebox program lays its flags out the same way: ``model`` (and ``model shape``), ``data``,
``preprocessing``, the program's own group, ``optimisation``, then ``run`` (or ``runtime`` and
``output``); every flag has help, and a default is shown once (``whitebox.cli.HelpFormatter``).
Importing this module imports neither torch nor timm, so ``--help`` answers at once; the recipes
import torch only after their parser has read the command line.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from .cli import HelpFormatter, add_model_kwargs_arg, add_threads_arg, choice, device, free, integer, number, seed
from .data_config import add_eval_transform_args

__all__ = [
    "BAD_IMAGE_POLICIES",
    "MODEL_SHAPE_FLAGS",
    "PRECISIONS",
    "PRETRAIN_DEFAULTS",
    "PRETRAIN_DEMO",
    "add_batch_args",
    "add_column_args",
    "add_encoder_args",
    "add_labelled_data_args",
    "add_lr_args",
    "add_model_shape_args",
    "add_run_args",
    "finetune_parser",
    "json_object",
    "linprobe_parser",
    "pretrain_parser",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BAD_IMAGE_POLICIES = ("skip", "error")  # whitebox.data's (a copy: that package imports torch; a test checks they agree)
MODEL_SHAPE_FLAGS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_depth", "decoder_num_heads")

# What ``python recipes/pretrain.py`` with no --data trains: a small CRATE-MAE on the bundled photos, about a
# minute on two CPU cores; flags given on the command line win. PRETRAIN_DEFAULTS: every other run.
PRETRAIN_DEMO = dict(
    img_size=32,
    patch_size=4,
    embed_dim=96,
    depth=4,
    num_heads=4,
    epochs=8,
    batch_size=32,
    warmup_epochs=1,
    samples_per_epoch=768,
    blr=4.0e-3,
)
PRETRAIN_DEFAULTS = dict(epochs=400, batch_size=64, warmup_epochs=40.0, samples_per_epoch=1024, blr=1.5e-4)


def _parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


# ----------------------------------------------------------------------------- shared flag groups
def add_model_shape_args(parser: argparse.ArgumentParser) -> None:
    """Model-shape flags, passed to the model builder as kwargs when set."""
    g = parser.add_argument_group("model shape (unset: the registered variant's own)")
    positive = integer(gt=0)
    g.add_argument("--img-size", type=positive, default=None, metavar="N", help="input resolution (pixels)")
    g.add_argument("--patch-size", type=positive, default=None, metavar="N", help="patch side (pixels)")
    g.add_argument("--embed-dim", type=positive, default=None, metavar="D", help="width d")
    g.add_argument("--depth", type=positive, default=None, metavar="L", help="encoder layers")
    g.add_argument("--num-heads", type=positive, default=None, metavar="H", help="attention heads")
    g.add_argument("--decoder-depth", type=positive, default=None, metavar="L", help="MAE decoder layers")
    g.add_argument("--decoder-num-heads", type=positive, default=None, metavar="H", help="MAE decoder heads")
    add_model_kwargs_arg(g, help="extra model kwargs, e.g. lambd=5.0 or '{\"lambd\": 5.0}'")


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


def add_encoder_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The encoder to probe or fine-tune: a registered name (``--pretrained``) or a checkpoint, and its shape."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="registered model (read from --checkpoint when the recipes wrote it)",
    )
    g.add_argument(
        "--checkpoint", default=None, metavar="PATH", help="a checkpoint of the recipes, or a weights file for --model"
    )
    g.add_argument("--pretrained", action="store_true", help="load the registered pretrained weights of --model")
    add_model_shape_args(parser)
    return g


def add_labelled_data_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Labelled training and test images: the flags of fine-tuning and the linear probe."""
    d = parser.add_argument_group("data")
    d.add_argument(
        "--data",
        required=True,
        metavar="SOURCE",
        help="labelled data: .npz, image folder, 'cifar10', hf:NAME[:SPLIT] / hf:PATH, wds:PATTERN",
    )
    d.add_argument(
        "--test-data",
        default=None,
        metavar="SOURCE",
        help="a file or folder of labelled test images (unset: test split)",
    )
    d.add_argument("--train-split", default="train", metavar="NAME", help="split of --data to train on")
    d.add_argument("--test-split", default="test", metavar="NAME", help="split of --data to evaluate on")
    free(d.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data-root"))
    free(d.add_argument("--data-root", default="data", metavar="DIR", help="where --data cifar10 lives"))
    add_column_args(d)
    return d


def add_column_args(group: argparse._ArgumentGroup) -> None:
    """``--image-column`` / ``--label-column``: the columns of a Hugging Face dataset (``--data hf:...``)."""
    group.add_argument("--image-column", default=None, metavar="NAME", help="hf: data: the image column (unset: found)")
    group.add_argument("--label-column", default=None, metavar="NAME", help="hf: data: the label column (unset: found)")


def add_batch_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, batch_size: int | None) -> None:
    """``--batch-size`` (per rank) and ``--accum-iter``. Neither defines a run alone: a resume compares the
    global batch (batch x accumulation x ranks), so ``--batch-size 8`` on 1 rank continues 4 x 2 ranks."""
    extra = "" if batch_size is not None else " (default 64; the demo: 32)"
    free(
        parser.add_argument(
            "--batch-size", type=integer(gt=0), default=batch_size, metavar="N", help="images per rank" + extra
        )
    )
    free(
        parser.add_argument(
            "--accum-iter", type=integer(gt=0), default=1, metavar="N", help="gradient accumulation steps"
        )
    )


def add_lr_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, blr: float | None, min_lr: float) -> None:
    """``--blr`` / ``--lr`` / ``--min-lr`` / ``--weight-decay`` / ``--clip-grad``: finite, ``--lr`` > 0."""
    extra = "" if blr is not None else " (default 1.5e-4; the demo: 4e-3)"
    parser.add_argument(
        "--blr", type=number(gt=0), default=blr, metavar="LR", help="base lr; lr = blr * effective batch / 256" + extra
    )
    parser.add_argument(
        "--lr", type=number(gt=0), default=None, metavar="LR", help="absolute peak lr (overrides --blr)"
    )
    parser.add_argument(
        "--min-lr", type=number(ge=0), default=min_lr, metavar="LR", help="lr at the end of the cosine (<= the lr)"
    )
    parser.add_argument("--weight-decay", type=number(ge=0), default=0.05, metavar="WD", help="AdamW weight decay")
    parser.add_argument(
        "--clip-grad", type=number(gt=0), default=None, metavar="NORM", help="max global gradient norm (unset: none)"
    )


def add_run_args(parser: argparse.ArgumentParser, output: str, log_every: int = 10) -> argparse._ArgumentGroup:
    """The flags of a training run: output folder, resume, seed, device, precision, logging, data loading."""
    r = parser.add_argument_group("run")
    free(
        r.add_argument(
            "--output",
            default=output,
            metavar="DIR",
            help="output folder (one run at a time: it is locked while in use)",
        )
    )
    free(
        r.add_argument(
            "--resume",
            default=None,
            metavar="PATH",
            help="a checkpoint, or 'auto': the newest loadable one in --output",
        )
    )
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
    add_threads_arg(r)
    free(
        r.add_argument(
            "--workers",
            type=integer(ge=0),
            default=None,
            metavar="N",
            help="loader processes per rank (unset: 0 on CPU, 8 on GPU)",
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
    free(
        r.add_argument("--log-every", type=integer(gt=0), default=log_every, metavar="N", help="steps per metrics row")
    )
    free(
        r.add_argument(
            "--save-every",
            type=integer(ge=0),
            default=0,
            metavar="N",
            help="also checkpoint every N steps (0: at epoch ends; a run shorter than an epoch: 10 times)",
        )
    )
    free(
        r.add_argument(
            "--stop-after",
            type=integer(gt=0),
            default=None,
            metavar="N",
            help="checkpoint and stop after this many steps in all",
        )
    )
    free(
        r.add_argument(
            "--max-nonfinite-steps",
            type=integer(ge=0),
            default=0,
            metavar="N",
            help="non-finite steps (loss or gradient norm) skipped in a row before the run stops; 0: stop at the first",
        )
    )
    free(r.add_argument("--no-progress", action="store_true", help="no progress bar: a plain line per --log-every"))
    free(r.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard events"))
    return r


def add_preprocessing_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The evaluation transform's overrides (the model's record otherwise; ``--img-size`` builds the model)."""
    return add_eval_transform_args(parser, img_size=False)


# ----------------------------------------------------------------------------- the three programs
def _demo_words() -> str:
    d = PRETRAIN_DEMO
    return (
        f"With no --data it trains a small demo CRATE-MAE on photos bundled with scikit-image ({d['img_size']} px, "
        f"patch {d['patch_size']}, width {d['embed_dim']}, depth {d['depth']}, {d['num_heads']} heads; "
        f"{d['epochs']} epochs of {d['samples_per_epoch']} crops, batch {d['batch_size']}, blr {d['blr']:g}, "
        f"{d['warmup_epochs']} warmup epoch): about a minute on two CPU cores. Flags given on the command line "
        "win; a named --model keeps its own architecture."
    )


def pretrain_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """``recipes/pretrain.py``'s flags."""
    p = _parser("MAE pretraining for any registered masked autoencoder (CRATE-MAE, ViT-MAE). " + _demo_words(), prog)
    m = p.add_argument_group("model")
    m.add_argument("--model", default="crate_mae_tiny", metavar="NAME", help="registered MAE model name")
    m.add_argument(
        "--mask-ratio", type=number(ge=0, lt=1), default=0.75, metavar="F", help="fraction of patches removed, [0, 1)"
    )
    m.add_argument("--norm-pix-loss", action="store_true", help="regress per-patch normalised pixels")
    add_model_shape_args(p)
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        default=None,
        metavar="SOURCE",
        help="image folder, .npz (arrays or JPEG pack), 'cifar10', hf:NAME[:SPLIT] or hf:PATH (Hugging Face datasets), "
        "wds:PATTERN (WebDataset shards, brace ranges); unset: bundled photos (the demo)",
    )
    d.add_argument("--split", default="train", metavar="NAME", help="split of --data to train on")
    free(d.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data-root"))
    free(d.add_argument("--data-root", default="data", metavar="DIR", help="where --data cifar10 lives"))
    add_column_args(d)
    d.add_argument(
        "--samples-per-epoch",
        type=integer(gt=0),
        default=None,
        metavar="N",
        help="epoch length for the bundled photos (default 1024; the demo: 768)",
    )
    k = p.add_argument_group("kNN monitor (a quality signal while pretraining)")
    free(
        k.add_argument(
            "--knn-data",
            default=None,
            metavar="SOURCE",
            help="labelled images (the same sources as --data): at each checkpoint, a weighted kNN classifier on "
            "encoder features (train split: memory bank, test split: queries) writes knn_top1 (unset: off)",
        )
    )
    free(k.add_argument("--knn-k", type=integer(gt=0), default=20, metavar="K", help="neighbours (DINO: 20)"))
    free(k.add_argument("--knn-t", type=number(gt=0), default=0.07, metavar="T", help="temperature (DINO: 0.07)"))
    free(
        k.add_argument(
            "--knn-max", type=integer(gt=0), default=None, metavar="N", help="use at most N images of each split"
        )
    )
    k.add_argument(
        "--best-by",
        type=choice(("probe_loss", "knn")),
        default="probe_loss",
        metavar="METRIC",
        help="what picks checkpoint-best.pth: probe_loss (lower is better) or knn (knn_top1, higher; needs --knn-data)",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--epochs", type=integer(gt=0), default=None, metavar="N", help="training epochs (default 400; the demo: 8)"
    )
    o.add_argument(
        "--steps", type=integer(gt=0), default=None, metavar="N", help="optimizer steps in all (overrides --epochs)"
    )
    add_batch_args(o, None)
    add_lr_args(o, None, 0.0)
    o.add_argument(
        "--warmup-epochs",
        type=number(ge=0),
        default=None,
        metavar="N",
        help="(default 40, the demo 1; with --steps or a run shorter than that: the same share of the run)",
    )
    o.add_argument("--warmup-steps", type=integer(ge=0), default=None, metavar="N", help="overrides --warmup-epochs")
    r = add_run_args(p, output="output/pretrain")
    free(r.add_argument("--compile", action="store_true", help="torch.compile the model"))
    free(r.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in the backward"))
    r.add_argument("--fsdp", action="store_true", help="shard parameters, gradients and optimizer state (FSDP2)")
    free(
        r.add_argument(
            "--grid-every",
            type=integer(ge=0),
            default=0,
            metavar="N",
            help="also write a reconstruction grid every N steps (0: at checkpoints only)",
        )
    )
    return p


def finetune_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """``recipes/finetune.py``'s flags."""
    p = _parser("Fine-tune an encoder: a registered model (--pretrained) or a pretrain.py checkpoint", prog)
    g = add_encoder_args(p)
    g.add_argument("--global-pool", default="avg", choices=("token", "avg"), help="classifier input: token or avg")
    g.add_argument(
        "--drop-path", type=number(ge=0, lt=1), default=0.1, metavar="F", help="stochastic depth rate, [0, 1)"
    )
    add_labelled_data_args(p)
    add_preprocessing_args(p)
    a = p.add_argument_group("augmentation")
    a.add_argument("--smoothing", type=number(ge=0, lt=1), default=0.1, metavar="F", help="label smoothing, [0, 1)")
    a.add_argument("--mixup", type=number(ge=0), default=0.8, metavar="ALPHA", help="mixup alpha (0: off)")
    a.add_argument("--cutmix", type=number(ge=0), default=1.0, metavar="ALPHA", help="cutmix alpha (0: off)")
    a.add_argument(
        "--aa",
        default="rand-m9-mstd0.5-inc1-mmax9",
        metavar="POLICY",
        help="timm auto-augment policy ('' for none); MAE's rand-m9-mstd0.5-inc1 capped at magnitude 9, because "
        "magnitude 10 asks Pillow >= 12 to posterize to 0 bits, which it refuses",
    )
    a.add_argument(
        "--reprob", type=number(ge=0, le=1), default=0.25, metavar="P", help="random erasing probability, [0, 1]"
    )
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=integer(gt=0), default=100, metavar="N", help="training epochs")
    add_batch_args(o, 64)
    add_lr_args(o, 1e-3, 1e-6)
    o.add_argument(
        "--layer-decay",
        type=number(gt=0, le=1),
        default=0.75,
        metavar="F",
        help="lr factor per block from the top, (0, 1]",
    )
    o.add_argument(
        "--warmup-epochs",
        type=number(ge=0),
        default=None,
        metavar="N",
        help="(default 5, or a twentieth of a run not longer than that)",
    )
    add_run_args(p, output="output/finetune", log_every=20)
    return p


def linprobe_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """``recipes/linprobe.py``'s flags."""
    p = _parser("Linear probe of a frozen encoder: a registered model (--pretrained) or a pretrain.py checkpoint", prog)
    g = add_encoder_args(p)
    g.add_argument("--pool", default="token", choices=("token", "avg"), help="class token or mean of patch tokens")
    g.add_argument(
        "--layer",
        type=integer(),
        default=None,
        metavar="I",
        help="block index for intermediate features (unset or -1: the last, after the final norm)",
    )
    d = add_labelled_data_args(p)
    d.add_argument(
        "--max-train",
        type=integer(gt=0),
        default=None,
        metavar="N",
        help="use a seeded random subset of N training images",
    )
    add_preprocessing_args(p)
    f = p.add_argument_group("features")
    f.add_argument(
        "--save-features", default=None, metavar="PATH", help="save the extracted features (and what made them) here"
    )
    f.add_argument(
        "--load-features",
        default=None,
        metavar="PATH",
        help="reuse features saved by --save-features instead of extracting them; refused when they came from "
        "another model, checkpoint, layer, pool, transform or data",
    )
    f.add_argument(
        "--baseline",
        action="store_true",
        help="also probe the same architecture with random initial weights (seeded), and report both top-1s",
    )
    s = p.add_argument_group("probe")
    s.add_argument("--solver", default="lbfgs", choices=("lbfgs", "sgd"), help="full-batch L-BFGS or mini-batch SGD")
    s.add_argument("--weight-decay", type=number(ge=0), default=1e-4, metavar="WD", help="L2 penalty of the classifier")
    s.add_argument("--max-iter", type=integer(gt=0), default=300, metavar="N", help="L-BFGS iterations")
    s.add_argument("--epochs", type=integer(gt=0), default=90, metavar="N", help="SGD epochs")
    s.add_argument("--lr", type=number(gt=0), default=0.1, metavar="LR", help="SGD lr")
    r = p.add_argument_group("run")
    r.add_argument("--output", default="output/linprobe", metavar="DIR", help="output folder (locked while in use)")
    r.add_argument("--seed", type=seed, default=0, help="0 to 2**63 - 1")
    r.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N, mps, xpu, xpu:N")
    r.add_argument(
        "--precision", type=choice(PRECISIONS), default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16"
    )
    add_threads_arg(r)
    r.add_argument("--batch-size", type=integer(gt=0), default=256, metavar="N", help="images per extraction batch")
    r.add_argument("--workers", type=integer(ge=0), default=0, metavar="N", help="loader processes")
    r.add_argument(
        "--on-bad-image",
        default="skip",
        choices=BAD_IMAGE_POLICIES,
        help="an unreadable image: skip it with a warning naming it, or stop",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar while extracting features")
    return p
