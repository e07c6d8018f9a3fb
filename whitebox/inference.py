"""``python -m whitebox.inference DATA --model NAME --topk K``: the top-k classes of every image, with names.

    python -m whitebox.inference photos/ --model crate_alpha_base_patch16.in1k --pretrained --topk 5
    python -m whitebox.inference cat.jpg --checkpoint output/finetune/checkpoint-best.pth --class-map classes.txt
    whitebox-inference photos/ --model crate_small.in1k --pretrained --results-file predictions.csv

DATA: a folder of images (or of class sub-folders), one image file, an ``.npz`` file or ``cifar10``.
Class names: ``--class-map FILE`` (one name per model output, in output order); else the record's
``label_names``; else, for a 1000- or 21841-class head, the ImageNet-1K / -21K names from timm's
``ImageNetInfo`` (``--label-type``: WordNet ``name``, ``description``, ``detailed``); else the index.
Preprocessing as ``whitebox.validate`` (the record's, through timm's evaluation transform).
Results: one line per image on stdout, and ``--results-file`` as CSV (columns ``filename``,
``label_1``, ``index_1``, ``prob_1``, ... ) or JSON (a list of ``{filename, topk: [{index, label, prob}]}``).
"""

from __future__ import annotations

import argparse
import sys
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
    read_class_map,
    read_lines,
    relative_name,
    results_format,
    run_program,
    setup_runtime,
    write_results,
)
from .cli import choice, integer, program_name
from .data_config import add_eval_transform_args, eval_overrides, resolve_eval_config

LABEL_TYPES = ("description", "name", "detailed", "none")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("whitebox.inference"),
        description="The top-k classes of every image, with class names, to stdout and to a CSV or JSON file.",
        formatter_class=HelpFormatter,
    )
    add_model_args(p)
    add_data_args(p, labelled=False)
    add_eval_transform_args(
        p, img_size_help="input size; the model is built at it (unset: the size it was built at, else its record's)"
    )
    g = p.add_argument_group("labels")
    g.add_argument("--topk", type=integer(gt=0), metavar="K", help="classes per image (default: 5, or all when fewer)")
    g.add_argument("--class-map", metavar="FILE", help="the name of each model output, one per line, in output order")
    g.add_argument(
        "--label-type",
        type=choice(LABEL_TYPES),
        metavar="TYPE",
        default="description",
        help="ImageNet names: description, name (WordNet id), detailed, none",
    )
    g.add_argument(
        "--output-type", type=choice(("prob", "logit")), metavar="TYPE", default="prob", help="prob or logit scores"
    )
    add_runtime_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--results-file", metavar="FILE", help="write the predictions here (.csv or .json)")
    o.add_argument(
        "--results-format", type=choice(("csv", "json")), metavar="FORMAT", help="csv or json (unset: from the suffix)"
    )
    o.add_argument("--no-console-results", action="store_true", help="do not print the predictions")
    return p


def class_names(model: Any, num_outputs: int, class_map: str | None, label_type: str) -> list[str] | None:
    """The name of each model output, or ``None`` when nothing names them (see the module docstring)."""
    if class_map:
        return read_class_map(class_map, num_outputs)
    if label_type == "none":
        return None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names")
    if names and len(names) == num_outputs:
        return list(names)
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_outputs})
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    if label_type == "name":
        return [info.index_to_label_name(i) for i in range(num_outputs)]
    return [info.index_to_description(i, detailed=label_type == "detailed") for i in range(num_outputs)]


def infer(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Predict the parsed flags' images; returns one record per image."""
    data = data_path(args)
    fmt = results_format(args.results_file, args.results_format, ("csv", "json"))
    if args.class_map:
        read_lines(args.class_map, "--class-map")  # a missing or empty file fails before the model is built
    import torch

    from .data import describe_item

    dev, autocast = setup_runtime(args)
    model, _ = build_model(args)
    num_outputs = model.num_classes
    if args.topk is None:
        args.topk = min(5, num_outputs)
    elif args.topk > num_outputs:
        raise ValueError(
            f"--topk {args.topk} is more than the {num_outputs} classes of the model; give 1 to {num_outputs}"
        )
    names = class_names(model, num_outputs, args.class_map, args.label_type)
    config = resolve_eval_config(model, **eval_overrides(args))
    base, root, _ = load_images(data, args.split, args.data_root, args.download, args.image_column, args.label_column)
    model = model.to(dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = image_loader(base, config, args.batch_size, default_workers(args, dev), dev.type == "cuda")
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        for images, _, index, errors in loader:
            bad = next((e for e in errors if e), None)
            if bad:
                raise ValueError(bad)
            with autocast:
                out = model(normalize_on_device(images, config, dev, args.channels_last)).float()
            scores = out.softmax(-1) if args.output_type == "prob" else out
            top = scores.topk(args.topk, dim=1)
            for i, vals, idxs in zip(index.tolist(), top.values.tolist(), top.indices.tolist(), strict=True):
                preds = [
                    {"index": c, "label": names[c] if names else str(c), args.output_type: round(v, 6)}
                    for c, v in zip(idxs, vals, strict=True)
                ]
                rows.append({"filename": relative_name(describe_item(base, i), root), "topk": preds})
    if not args.no_console_results:
        for row in rows:
            shown = ", ".join(f"{p['label']} ({p[args.output_type]:.3f})" for p in row["topk"])
            print(f"{row['filename']}: {shown}")
    if args.results_file:
        flat = [
            {"filename": r["filename"]}
            | {f"{k}_{n}": p[k] for n, p in enumerate(r["topk"], 1) for k in ("label", "index", args.output_type)}
            for r in rows
        ]
        write_results(rows if fmt == "json" else flat, args.results_file, fmt)
        print(f"wrote {len(rows)} predictions to {args.results_file}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    return infer(build_parser().parse_args(argv))


def cli() -> int:
    """The ``whitebox-inference`` console script."""
    return run_program(main, build_parser)


if __name__ == "__main__":
    sys.exit(cli())
