"""Linear probe of a frozen encoder: class token or mean-pooled features, BatchNorm + linear classifier.

    python recipes/linprobe.py --checkpoint output/pretrain/checkpoint-last.pth --data ../shared/data/cifar10_small.npz
    python recipes/linprobe.py --model crate_mae_base --pretrained --data cifar10 --download --img-size 32

Features are extracted once (``whitebox.train.probe``), then the MAE probe head (a BatchNorm without
affine parameters and a linear layer) is fitted by full-batch L-BFGS or SGD. Writes ``results.json``
and ``probe.pth`` into ``--output``, which is locked while the probe runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

try:
    import whitebox  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the library next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whitebox.cli import start_program
from whitebox.recipe_args import linprobe_parser

if __name__ == "__main__":
    start_program(linprobe_parser)  # --help answers here, before torch is imported

import torch

from whitebox.cli import require
from whitebox.data import SplitNotFoundError, align_labels, data_options, dataset_labels
from whitebox.data_config import eval_overrides, eval_transform, resolve_eval_config
from whitebox.io import write_json
from whitebox.train import RunFolder, atomic_save, build_dataset
from whitebox.train.checkpoint import seed_everything
from whitebox.train.common import load_encoder, model_kwargs_from_args, resolve_precision
from whitebox.train.distributed import resolve_device
from whitebox.train.probe import (
    FEATURE_KEYS,
    extract_features,
    file_digest,
    fit_probe,
    load_features,
    save_features,
)
from whitebox.train.run import run_args, run_main

build_parser = linprobe_parser


def weights_id(args: argparse.Namespace, model_name: str) -> str:
    """What the encoder's weights are, independent of where a file lies (saved features name them)."""
    if args.checkpoint:
        return f"checkpoint sha256:{file_digest(args.checkpoint)}"
    if args.pretrained:
        return f"pretrained {model_name}"
    return f"random initialisation, seed {args.seed}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with RunFolder(args.output) as out:
        seed_everything(args.seed)
        device = resolve_device(args.device)
        precision = resolve_precision(args.precision, device)
        encoder, model_name, model_kwargs = load_encoder(
            args.model, args.checkpoint, args.pretrained, **model_kwargs_from_args(args)
        )
        depth = len(getattr(encoder, "blocks", ()))
        if args.layer is not None and depth:
            require(
                -depth <= args.layer < depth,
                f"--layer {args.layer} is outside this {depth}-block encoder: give 0 to {depth - 1} "
                f"(or -{depth} to -1, counted from the last)",
            )
        # the model's record (crop_pct, interpolation, mean / std) unless overridden, as validate does
        config = resolve_eval_config(encoder, **eval_overrides(args))
        transform = eval_transform(encoder, uint8=True, **eval_overrides(args))  # normalised by the loader
        record = {
            "model": model_name,
            "model_kwargs": model_kwargs,
            "weights": weights_id(args, model_name),
            "pool": args.pool,
            "layer": args.layer,
            "transform": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
            "data": [args.data, args.train_split, args.test_data, None if args.test_data else args.test_split],
            "columns": [args.image_column, args.label_column],
            "max_train": [args.max_train, args.seed] if args.max_train else None,
        }
        features = load_features(args.load_features, record) if args.load_features else {}
        loaded = bool(features)
        built = not loaded or (args.baseline and "baseline_train" not in features)
        if built:
            opts = data_options(args)
            train_set = build_dataset(args.data, args.train_split, args.download, args.data_root, **opts)
            if args.max_train:
                # a seeded random subset: folders list their images class by class, so a prefix would drop classes
                g = torch.Generator().manual_seed(args.seed)
                keep = torch.randperm(len(train_set), generator=g)[: args.max_train].sort().values.tolist()
                train_set = torch.utils.data.Subset(train_set, keep)
            test_split = None if args.test_data else args.test_split  # a file or folder of test images only
            try:
                test_set = build_dataset(args.test_data or args.data, test_split, args.download, args.data_root, **opts)
            except SplitNotFoundError as err:  # advice that fits this program's flags
                raise SplitNotFoundError(
                    f"{err}; give the test images with --test-data FILE_OR_FOLDER, or name a split of --data that "
                    "exists with --test-split"
                ) from err
            y_all = dataset_labels(train_set, "the training images")
            test_set = align_labels(train_set, test_set)  # test classes matched to training's by name
            features["num_classes"] = torch.tensor(int(y_all.max()) + 1)
        kw = dict(
            pool=args.pool,
            layer=args.layer,
            batch_size=args.batch_size,
            device=device,
            precision=precision,
            workers=args.workers,
            on_bad_image=args.on_bad_image,
            transform=transform,
            mean=config["mean"],
            std=config["std"],
        )
        img_size = encoder.patch_embed.img_size[0]

        def extract(net: torch.nn.Module, prefix: str) -> None:
            for part, dataset in (("train", train_set), ("test", test_set)):
                label = None if args.no_progress else f"{prefix.rstrip('_') or 'encoder'} {part} features"
                features[prefix + part], features[prefix + part + "_labels"] = extract_features(
                    net, dataset, img_size, progress=label, **kw
                )

        t0 = time.perf_counter()
        if not loaded:
            extract(encoder, "")
        if args.baseline and "baseline_train" not in features:
            torch.manual_seed(args.seed)  # the random encoder: seeded, the same architecture and kwargs
            random_encoder, _, _ = load_encoder(model_name, None, False, **model_kwargs)
            extract(random_encoder, "baseline_")
        extract_s = time.perf_counter() - t0
        if args.save_features:
            save_features(args.save_features, features, record)
        fit = dict(
            solver=args.solver,
            device=device,
            weight_decay=args.weight_decay,
            max_iter=args.max_iter,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        if "num_classes" in features:  # from the training labels (saved with the features)
            fit["num_classes"] = int(features["num_classes"])
        named = dict(train_set=train_set, test_set=test_set) if built else {}  # to name a non-finite feature's image
        result = fit_probe(*(features[k] for k in FEATURE_KEYS), **fit, **named)
        result["extract_s"] = extract_s
        result["features_from"] = args.load_features
        if args.baseline:
            base = fit_probe(*(features["baseline_" + k] for k in FEATURE_KEYS), **fit, **named)
            result["baseline_top1"], result["baseline_train_top1"] = base["top1"], base["train_top1"]
        result["eval_transform"] = record["transform"]
        probe = result.pop("probe")
        atomic_save({"probe": probe.state_dict(), "args": run_args(args)}, out / "probe.pth")
        write_json(
            {**result, "args": vars(args), "model": model_name, "model_kwargs": model_kwargs}, out / "results.json"
        )
    baseline = f", random-init baseline {100 * result['baseline_top1']:.2f}%" if args.baseline else ""
    print(
        f"linear probe top-1 {100 * result['top1']:.2f}% (train {100 * result['train_top1']:.2f}%{baseline}) on "
        f"{result['num_test']} test images | {result['feature_dim']}-d features, {args.pool} pool, "
        f"layer {args.layer if args.layer is not None else 'last'} | "
        + (f"features from {args.load_features}" if loaded else f"extract {extract_s:.1f} s")
        + f", fit {result['fit_s']:.1f} s",
        file=sys.stderr,
    )
    return result


if __name__ == "__main__":
    run_main(main)
