"""What ``python -m whitebox.validate`` / ``inference`` / ``benchmark`` share: flags, the model, images, output.

Flag names follow timm's ``validate.py`` / ``inference.py`` / ``benchmark.py`` where the two overlap.
Importing this module imports neither torch nor timm (the parsers answer ``--help`` at once); the
functions that need them import them when called.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# HelpFormatter: every program's formatter lives in whitebox.cli; re-exported for validate / inference / benchmark
from .cli import HelpFormatter, add_model_kwargs_arg, add_threads_arg, choice, device, integer, start_program  # noqa: F401

AMP_DTYPES = ("float16", "bfloat16")


def add_model_args(parser: argparse.ArgumentParser, classifier: bool = True, img_size: bool = False) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", "-m", metavar="NAME", help="registered model, e.g. crate_tiny or crate_small.in1k")
    g.add_argument("--pretrained", action="store_true", help="load the registered pretrained weights of --model")
    g.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="weights for --model, or a checkpoint of the recipes (it names its model: --model may be left out)",
    )
    g.add_argument("--num-classes", type=integer(gt=0), metavar="N", help="classifier outputs (unset: the model's)")
    if classifier:
        g.add_argument(
            "--gp",
            type=choice(("token", "avg")),
            metavar="POOL",
            help="global pool: token or avg (unset: the model's or the checkpoint's)",
        )
    if img_size:
        g.add_argument(
            "--img-size", type=integer(gt=0), metavar="N", help="input resolution (the model is built at it)"
        )
    add_model_kwargs_arg(g, default={}, help="more create_model arguments, after DATA")


def add_runtime_args(parser: argparse.ArgumentParser, batch_size: int | None = 256) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("runtime")
    g.add_argument(
        "--batch-size",
        "-b",
        type=integer(gt=0),
        default=batch_size,
        metavar="N",
        help="images per batch" + ("" if batch_size else " (default: 256 on a GPU, 16 on the CPU)"),
    )
    g.add_argument("--device", type=device, default="auto", help="auto (a GPU when present), cpu, cuda, cuda:N")
    g.add_argument("--amp", action="store_true", help="mixed precision (autocast) with --amp-dtype")
    g.add_argument(
        "--amp-dtype", type=choice(AMP_DTYPES), default="float16", metavar="DTYPE", help=", ".join(AMP_DTYPES)
    )
    g.add_argument("--channels-last", action="store_true", help="channels-last memory layout for the images")
    add_threads_arg(g)
    return g


def add_data_args(parser: argparse.ArgumentParser, labelled: bool) -> argparse._ArgumentGroup:
    what = "labelled images" if labelled else "images"
    parser.add_argument(
        "data",
        nargs="?",
        metavar="DATA",
        help=f"{what}: a folder (class sub-folders{'' if labelled else ' or images'}), an .npz file, 'cifar10', "
        "hf:NAME[:SPLIT] / hf:PATH (Hugging Face datasets), wds:PATTERN (WebDataset shards, read in order)"
        + ("" if labelled else ", or one image file"),
    )
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", metavar="DIR", help="DATA as a flag (timm's name)")
    g.add_argument(
        "--split",
        metavar="NAME",
        help="a sub-folder, .npz or hf: split (unset: a val, validation or test sub-folder / split if present, "
        "else all)",
    )
    g.add_argument("--image-column", metavar="NAME", help="hf: the image column (unset: the one of Image type)")
    g.add_argument("--label-column", metavar="NAME", help="hf: the label column (unset: the ClassLabel one)")
    g.add_argument(
        "--workers", "-j", type=integer(ge=0), metavar="N", help="loader processes (default: 0 on CPU, 4 on GPU)"
    )
    g.add_argument("--data-root", default="data", metavar="DIR", help="where DATA cifar10 lives")
    g.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data-root")
    return g


# ----------------------------------------------------------------------------- the model
# preprocessing overrides a recipe checkpoint may record (finetune.py's flags); the command line wins
PREPROCESSING_FLAGS = ("crop_pct", "crop_mode", "interpolation", "mean", "std")


def build_model(args: argparse.Namespace, classifier: bool = True) -> tuple[Any, str]:
    """The model the flags name (a masked autoencoder's encoder when a classifier is wanted) and its name.

    The name says what was built: the registered (or checkpoint-recorded) name, and for a masked
    autoencoder's encoder ``"NAME encoder (CLASS classifier)"`` (``crate_mae_tiny encoder (CRATE classifier)``).

    A recipe checkpoint's recorded preprocessing overrides (``--crop-pct`` etc. of ``finetune.py``) fill the
    same flags of ``args`` that the command line left unset, so a fine-tuned model is evaluated as it was.

    Raises ValueError (no model named, unknown name, no classifier head), OSError (weights unreadable).
    """
    from registry import (
        HeadAdaptedWarning,
        checkpoint_model,
        create_model,
        load_state_dict,
        model_entrypoint,
        read_checkpoint,
        unwrap_state_dict,
    )

    from .models import MaskedAutoencoder

    kwargs: dict[str, Any] = dict(args.model_kwargs or {})
    for key in ("num_classes", "img_size", "gp"):
        if getattr(args, key, None) is not None:
            kwargs["global_pool" if key == "gp" else key] = getattr(args, key)
    name, ckpt = args.model, None
    if args.checkpoint:
        ckpt = read_checkpoint(args.checkpoint)
        name, kwargs = checkpoint_model(ckpt, args.checkpoint, name, kwargs)
        recorded = ckpt.get("args") if isinstance(ckpt, dict) else None
        if isinstance(recorded, dict) and recorded.get("global_pool") and "global_pool" not in kwargs:
            kwargs["global_pool"] = recorded["global_pool"]  # finetune.py's --global-pool is not in model_kwargs
        if isinstance(recorded, dict):
            for key in PREPROCESSING_FLAGS:  # finetune.py evaluated with these overrides: evaluate the same way
                if getattr(args, key, None) is None and recorded.get(key) is not None:
                    setattr(args, key, recorded[key])
    if not name:
        raise ValueError("name the model (--model NAME), or give a --checkpoint written by the recipes (it names it)")
    if ":" not in name:
        model_entrypoint(name)  # an unknown name: the registry's message, with the closest names
    try:
        net = create_model(name, pretrained=args.pretrained, **kwargs)
    except TypeError as err:  # an argument the model does not take (--model-kwargs, --gp, ...)
        raise ValueError(str(err)) from err
    model = net.encoder if classifier and isinstance(net, MaskedAutoencoder) else net
    if ckpt is not None:
        state = unwrap_state_dict(ckpt, args.checkpoint)
        encoder_only = model is not net and not any(k.startswith("encoder.") for k in state)
        with warnings.catch_warnings(record=True) as caught:  # dropped when the load fails: the error says it all
            warnings.simplefilter("always", HeadAdaptedWarning)
            load_state_dict(model if encoder_only else net, state, args.checkpoint)
        for w in caught:
            if isinstance(w.message, HeadAdaptedWarning):
                print(f"warning: {w.message}", file=sys.stderr)  # a program's warning: one line, no source path
            else:
                warnings.warn(w.message, w.category, stacklevel=2)
    if classifier and not getattr(model, "num_classes", 0):
        raise ValueError(
            f"{name} has no classifier head (a masked autoencoder or num_classes=0); give --num-classes N with a "
            "--checkpoint that holds a head, e.g. one written by finetune.py"
        )
    if classifier and not args.pretrained and ckpt is None:  # timm would load the pretrained weights here
        print(
            f"warning: neither --pretrained nor --checkpoint: {name} has randomly initialised weights",
            file=sys.stderr,
        )
    if model is not net:
        name = part_name(name, model)
    return model.eval(), name


def part_name(name: str, model: Any) -> str:
    """What was built under the registered ``name``: a masked autoencoder's encoder is named as one.

    ``"crate_mae_tiny encoder (CRATE classifier)"``, ``"... (CRATE features)"`` without a head."""
    return f"{name} encoder ({type(model).__name__} {'classifier' if getattr(model, 'num_classes', 0) else 'features'})"


def evaluated_name(name: str, model: Any) -> str:
    """``name``, or :func:`part_name` when ``model`` is not of the class ``name``'s entrypoint returns (the
    encoder of a fine-tuned masked autoencoder, which ``create_model(checkpoint_path=...)`` gives)."""
    import typing

    import timm

    try:
        entry = timm.models.model_entrypoint(timm.models.get_arch_name(name))
        cls = typing.get_type_hints(entry).get("return")
    except (KeyError, RuntimeError, NameError, TypeError, ValueError):  # unknown, hub names, unresolved hints
        return name
    return part_name(name, model) if isinstance(cls, type) and not isinstance(model, cls) else name


def setup_runtime(args: argparse.Namespace) -> tuple[Any, contextlib.AbstractContextManager]:
    """The torch device and the autocast context the flags ask for."""
    import torch

    from .train.distributed import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if not args.amp:
        return dev, contextlib.nullcontext()
    return dev, torch.autocast(dev.type, dtype=getattr(torch, args.amp_dtype))


def param_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- images
def data_path(args: argparse.Namespace) -> str:
    data = args.data or args.data_dir
    if args.data and args.data_dir and args.data != args.data_dir:
        raise ValueError(f"give the images once: DATA {args.data!r} or --data-dir {args.data_dir!r}")
    if not data:
        raise ValueError("give the images: DATA (a folder, an .npz file, 'cifar10', hf:..., wds:... or an image file)")
    if data.lower() != "cifar10" and not data.startswith(STREAM_PREFIXES) and not Path(data).exists():
        raise ValueError(f"DATA {data}: no such file or folder")
    return data


STREAM_PREFIXES = ("hf:", "wds:")  # sources build_dataset reads by name, not as a local path


def _default_split(path: Path) -> str | None:
    if path.is_dir():
        return next((n for n in ("val", "validation", "test") if (path / n).is_dir()), None)
    if path.suffix == ".npz":
        import numpy as np

        try:
            with np.load(path) as z:
                return next((n for n in ("val", "validation", "test") if f"x_{n}" in z.files), None)
        except (OSError, ValueError, EOFError, AttributeError):
            return None  # build_dataset names what is wrong with the file
    return None


def load_images(
    data: str,
    split: str | None,
    data_root: str = "data",
    download: bool = False,
    image_column: str | None = None,
    label_column: str | None = None,
) -> tuple[Any, Path | None, str | None]:
    """The base dataset (PIL image, label) of DATA, the folder its file names are relative to, and the split used.

    DATA is any source the recipes read (``whitebox.data.build_dataset``); unset, ``split`` is a val,
    validation or test sub-folder / split when there is one, else the whole source. A ``wds:`` stream is
    read in shard order.
    """
    from .data import build_dataset

    if data.startswith("hf:"):
        return _load_hf(data, split, image_column, label_column), None, None
    if data.startswith("wds:"):
        if split is not None:
            raise ValueError(f"--split {split}: DATA {data} is one stream of shards, not a set of splits")
        return WdsItems(build_dataset(data, None)), None, None
    if data.lower() == "cifar10":
        # a missing copy is the data layer's named error (where it looked, --download, --data-root)
        return build_dataset("cifar10", split or "test", download, data_root), None, split or "test"
    path = Path(data)
    if path.is_file() and path.suffix != ".npz":
        return SingleImage(path), path.parent, None
    used = split
    if split is None:
        split = used = _default_split(path)
        if path.is_dir() and split is not None:
            path = path / split
        if path.is_dir():
            split = None
    elif path.is_dir():
        if not (path / split).is_dir():
            subs = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise ValueError(f"--split {split}: {path} has no sub-folder {split!r} (it has {subs or 'none'})")
        path, split = path / split, None
    return build_dataset(str(path), split), path if path.is_dir() else None, used


def _load_hf(data: str, split: str | None, image_column: str | None, label_column: str | None) -> Any:
    """``hf:`` DATA: ``split``, else a val / validation / test split when there is one, else its only split."""
    from .data import build_dataset

    options = dict(image_column=image_column, label_column=label_column)
    if split is not None:
        return build_dataset(data, split, **options)
    try:
        return build_dataset(data, "val", **options)  # load_hf falls back to validation, then test
    except ValueError as err:
        if "holds one split" not in str(err) and "has no split" not in str(err):
            raise
    return build_dataset(data, None, **options)  # one split (or hf:NAME:SPLIT): the whole of it


def source_split(base: Any, used: str | None) -> str | None:
    """The split a dataset of :func:`load_images` holds (an hf: dataset names it in its description)."""
    source = getattr(base, "source", None)
    if used is None and isinstance(source, str) and " split " in source:
        return source.rsplit(" split ", 1)[1]
    return used


class WdsItems:
    """A ``wds:`` source as indexed ``(PIL image, label)`` items, in shard order (the evaluation order)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.entries = [e for entries in source.index for e in entries]
        self.labels = source.labels

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from .data.base import open_image

        e = self.entries[i]
        return open_image(self.source.read(e)), int(self.labels[i])

    def describe(self, i: int) -> str:
        return self.source.describe(self.entries[i].key)


class SingleImage:
    """One image file as a dataset (label -1)."""

    def __init__(self, path: Path) -> None:
        self.files = [path]
        self.labels = [-1]

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from .data.base import open_image

        img = open_image(str(self.files[i]))
        img.load()  # decoded here, so a broken file fails here
        return img, -1

    def describe(self, i: int) -> str:
        return str(self.files[i])


class UInt8Images:
    """``(uint8 (C, H, W), label, index, error)`` per item, timm's prefetcher layout.

    An unreadable image gives an all-zero tensor and an ``error`` that names the file: the program
    stops with it (a DataLoader worker's own exception would carry a traceback), and never puts
    another image's result under its name.
    """

    def __init__(self, base: Any, transform: Callable[[Any], Any], input_size: Sequence[int]) -> None:
        self.base, self.transform, self.input_size = base, transform, tuple(input_size)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, int, int, str]:
        import numpy as np
        import torch

        from .data import describe_item
        from .data.base import UNREADABLE

        try:
            img, label = self.base[i]
            x = torch.from_numpy(np.ascontiguousarray(self.transform(img)))
            return x, int(label), i, ""
        except UNREADABLE as err:
            what = f"{describe_item(self.base, i)} cannot be read as an image ({type(err).__name__}: {err})"
            return torch.zeros(self.input_size, dtype=torch.uint8), -1, i, what + "; fix or remove it"


def image_loader(base: Any, config: dict[str, Any], batch_size: int, workers: int, pin: bool) -> Any:
    """Batches of uint8 images, resized and cropped by timm's evaluation transform for ``config``."""
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    transform = create_transform(**config, is_training=False, use_prefetcher=True)  # no ToTensor / Normalize
    dataset = UInt8Images(base, transform, config["input_size"])
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin)


def normalize_on_device(images: Any, config: dict[str, Any], dev: Any, channels_last: bool = False) -> Any:
    """uint8 (B, C, H, W) -> float (B, C, H, W) on ``dev``: ``(x - 255 mean) / (255 std)``, as timm's prefetcher."""
    import torch

    mean = torch.tensor([255 * m for m in config["mean"]], device=dev).view(1, -1, 1, 1)
    std = torch.tensor([255 * s for s in config["std"]], device=dev).view(1, -1, 1, 1)
    x = images.to(dev, non_blocking=True).to(torch.float32).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def default_workers(args: argparse.Namespace, dev: Any) -> int:
    return args.workers if args.workers is not None else (0 if dev.type == "cpu" else 4)


def read_lines(path: str, flag: str) -> list[str]:
    """Non-empty lines of a text file; an empty line inside is an error naming the flag and the line."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{flag} {path} is not a UTF-8 text file ({err})") from err
    while lines and not lines[-1].strip():
        lines.pop()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"{flag} {path}: line {n} is empty (one entry per line)")
    if not lines:
        raise ValueError(f"{flag} {path} is empty")
    return [line.strip() for line in lines]


def read_class_map(path: str, num_outputs: int) -> list[str]:
    """``--class-map FILE``: the name of model output i on line i + 1 (timm's .txt class map)."""
    names = read_lines(path, "--class-map")
    if len(names) != num_outputs:
        raise ValueError(
            f"--class-map {path} has {len(names)} lines but the model has {num_outputs} outputs (one name per output)"
        )
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"--class-map {path} names {dups[:5]} more than once")
    return names


# ----------------------------------------------------------------------------- results
def results_format(path: str | None, fmt: str | None, allowed: Sequence[str] = ("json", "csv")) -> str | None:
    """The format of ``--results-file`` (``--results-format``, else its suffix)."""
    if path is None:
        return None
    if fmt is None:
        fmt = Path(path).suffix.lower().lstrip(".")
        if fmt not in allowed:
            raise ValueError(
                f"--results-file {path}: cannot tell the format from the suffix; end it with "
                f"{' or '.join('.' + a for a in allowed)}, or give --results-format"
            )
    if Path(path).is_dir():
        raise ValueError(f"--results-file {path} is a folder; give a file name")
    return fmt


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_results(rows: list[dict[str, Any]] | dict[str, Any], path: str, fmt: str) -> None:
    """Rows (or one record) as JSON or CSV, written atomically (a failed write leaves no partial file)."""
    import json

    from .io import atomic_write_text, jsonable

    if fmt == "json":
        atomic_write_text(path, json.dumps(jsonable(rows), indent=2) + "\n")
    else:
        atomic_write_text(path, csv_text(rows if isinstance(rows, list) else [rows]))


def run_program(main: Callable[[], Any], build_parser: Callable[[], argparse.ArgumentParser] | None = None) -> int:
    """A program's entry point: a user error ends with ``error: MESSAGE`` and exit status 1, no traceback.

    ``build_parser`` (torch-free) answers ``--help`` before anything heavy is imported."""
    if build_parser is not None:
        start_program(build_parser)
    from .train.run import run_main

    try:
        run_main(main)
    except KeyboardInterrupt:
        sys.exit(130)
    return 0


def relative_name(described: str, root: Path | None) -> str:
    if root is None:
        return described
    try:
        return os.path.relpath(described, root)
    except ValueError:
        return described
