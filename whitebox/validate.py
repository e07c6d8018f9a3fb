"""``python -m whitebox.validate DATA --model NAME``: top-1, top-5 and loss of a classifier on labelled images.

    python -m whitebox.validate /data/imagenet/val --model crate_alpha_base_patch16.in1k --pretrained
    python -m whitebox.validate ../shared/data/cifar10_small.npz --checkpoint output/finetune/checkpoint-best.pth
    whitebox-validate DATA --model crate_tiny --checkpoint weights.safetensors --results-file results.json

timm's ``validate.py``, for whitebox models: the same flag names where the two overlap, the same
numbers. Preprocessing comes from the model's record (``timm.data.resolve_model_data_config``: input
size, crop_pct, interpolation, mean / std) through timm's evaluation transform, and the uint8 images
are normalised on the device exactly as timm's prefetcher does, so on the same images, model and
weights the two programs agree on every prediction. Differences, on purpose: DATA may also be an
``.npz`` file or ``cifar10`` (what the recipes read); a folder's classes are in sorted order, as the
recipes (torchvision's ``ImageFolder``) number them; an unreadable image stops the run with its name
(it is never counted twice or left out silently); ``--class-map`` lists the model's outputs one
name per line, and each class folder is scored as the output of its name.

Accuracies are percentages, ``param_count`` is in millions (timm's results fields).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._programs import (
    HelpFormatter,
    add_data_args,
    add_model_args,
    add_runtime_args,
    build_model,
    data_path,
    default_workers,
    image_loader,
    load_images,
    normalize_on_device,
    param_count,
    read_class_map,
    read_lines,
    results_format,
    run_program,
    setup_runtime,
    source_split,
    write_results,
)
from .cli import choice, integer, program_name
from .data_config import add_eval_transform_args, eval_overrides, resolve_eval_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("whitebox.validate"),
        description="Top-1, top-5 and loss of a classifier on labelled images, preprocessed as its record says.",
        formatter_class=HelpFormatter,
    )
    add_model_args(p)
    add_data_args(p, labelled=True)
    add_eval_transform_args(
        p, img_size_help="input size; the model is built at it (unset: the size it was built at, else its record's)"
    )
    g = p.add_argument_group("labels")
    g.add_argument(
        "--class-map",
        metavar="FILE",
        help="the model's outputs (with --valid-labels: the scored ones, in its order), one class name per line; "
        "each class folder is scored as the output of its name",
    )
    g.add_argument(
        "--valid-labels",
        metavar="FILE",
        help="score only these model outputs (one index per line); the data's labels number them in this order",
    )
    add_runtime_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--results-file", metavar="FILE", help="write the results here (.json or .csv)")
    o.add_argument(
        "--results-format", type=choice(("json", "csv")), metavar="FORMAT", help="json or csv (unset: from the suffix)"
    )
    o.add_argument("--log-freq", type=integer(gt=0), default=10, metavar="N", help="batches between progress lines")
    return p


def _valid_labels(path: str, num_outputs: int) -> list[int]:
    out = []
    for n, line in enumerate(read_lines(path, "--valid-labels"), 1):
        if not line.isdigit() or int(line) >= num_outputs:
            raise ValueError(
                f"--valid-labels {path} line {n}: {line!r} is not an output index of the model (0 to {num_outputs - 1})"
            )
        out.append(int(line))
    if len(set(out)) != len(out):
        raise ValueError(f"--valid-labels {path} lists an output index more than once")
    return out


def _label_lookup(base: Any, labels: Any, names: list[str] | None, num_outputs: int, data: str) -> Any:
    """data label -> model output index (identity without a class map)."""
    import numpy as np

    if names is None:
        if int(labels.max()) >= num_outputs:
            raise ValueError(
                f"DATA {data} has labels up to {int(labels.max())} but the model scores {num_outputs} classes; give "
                "--num-classes, a --class-map naming the outputs, or --valid-labels"
            )
        return np.arange(int(labels.max()) + 1)
    classes = getattr(base, "classes", None)
    if classes is None:
        raise ValueError(f"--class-map needs named classes (class sub-folders or cifar10); DATA {data} has none")
    missing = [c for c in classes if c not in names]
    if missing:
        raise ValueError(f"--class-map names no output for the class(es) {missing[:10]} of DATA {data}")
    return np.array([names.index(c) for c in classes])


def validate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation the parsed flags describe; returns the results record."""
    data = data_path(args)
    fmt = results_format(args.results_file, args.results_format)
    for flag, path in (("--class-map", args.class_map), ("--valid-labels", args.valid_labels)):
        if path is not None:
            read_lines(path, flag)  # a missing or empty file fails before the model is built
    import torch
    from torch.nn import functional as F

    from .data import dataset_labels

    dev, autocast = setup_runtime(args)
    model, name = build_model(args)
    num_outputs = model.num_classes
    valid = _valid_labels(args.valid_labels, num_outputs) if args.valid_labels else None
    scored = len(valid) if valid else num_outputs
    names = read_class_map(args.class_map, scored) if args.class_map else None
    config = resolve_eval_config(model, **eval_overrides(args))
    base, _, split = load_images(data, args.split, args.data_root, args.download, args.image_column, args.label_column)
    labels = dataset_labels(base, f"DATA {data}")
    lookup = torch.as_tensor(_label_lookup(base, labels, names, scored, data))
    model = model.to(dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = image_loader(base, config, args.batch_size, default_workers(args, dev), dev.type == "cuda")
    valid_idx = torch.tensor(valid, device=dev) if valid else None
    maxk = min(5, scored)
    stats = torch.zeros(3, dtype=torch.float64)  # correct@1, correct@5, summed loss
    seen, start = 0, time.perf_counter()
    with torch.inference_mode():
        for step, (images, target, _, errors) in enumerate(loader):
            bad = next((e for e in errors if e), None)
            if bad:
                raise ValueError(bad)
            x = normalize_on_device(images, config, dev, args.channels_last)
            y = lookup[target].to(dev)
            with autocast:
                logits = model(x)
            logits = logits[:, valid_idx] if valid_idx is not None else logits
            top = logits.topk(maxk, 1, True, True).indices  # timm.utils.accuracy's call
            hit = top == y[:, None]
            stats += (
                torch.stack([hit[:, 0].sum(), hit.any(1).sum(), F.cross_entropy(logits.float(), y, reduction="sum")])
                .double()
                .cpu()
            )
            seen += len(y)
            if step % args.log_freq == 0 or seen == len(base):
                rate = seen / max(time.perf_counter() - start, 1e-9)
                print(
                    f"Test: [{step + 1:>4d}/{len(loader)}]  {rate:7.1f} img/s  Loss {stats[2] / seen:.4f}  "
                    f"Acc@1 {100 * stats[0] / seen:7.3f}  Acc@5 {100 * stats[1] / seen:7.3f}",
                    file=sys.stderr,
                )
    top1, top5 = (100 * stats[:2] / seen).tolist()
    results = {
        "model": name,
        "architecture": type(model).__name__,
        "top1": round(top1, 4),
        "top1_err": round(100 - top1, 4),
        "top5": round(top5, 4),
        "top5_err": round(100 - top5, 4),
        "loss": round(float(stats[2] / seen), 6),
        "param_count": round(param_count(model) / 1e6, 2),
        "img_size": config["input_size"][-1],
        "input_size": list(config["input_size"]),
        "crop_pct": config["crop_pct"],
        "crop_mode": config["crop_mode"],
        "interpolation": config["interpolation"],
        "mean": list(config["mean"]),
        "std": list(config["std"]),
        "num_images": seen,
        "num_classes": scored,
        "data": data,
        "split": source_split(base, split),
        "checkpoint": args.checkpoint,
        "pretrained": args.pretrained,
        "device": str(dev),
        "amp": args.amp_dtype if args.amp else None,
    }
    print(f" * Acc@1 {top1:.3f} ({100 - top1:.3f}) Acc@5 {top5:.3f} ({100 - top5:.3f})", file=sys.stderr)
    if args.results_file:
        write_results(results, args.results_file, fmt)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import json

    results = validate(build_parser().parse_args(argv))
    print(json.dumps(results, indent=2))
    return results


def cli() -> int:
    """The ``whitebox-validate`` console script."""
    return run_program(main, build_parser)


if __name__ == "__main__":
    sys.exit(cli())
