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
from pathlib import Path
from typing import Any

import torch

try:
    import whitebox  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the library next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whitebox.cli import choice, device, integer, number, require, seed
from whitebox.data import BAD_IMAGE_POLICIES, data_options
from whitebox.io import write_json
from whitebox.train import RunFolder, atomic_save, build_dataset
from whitebox.train.checkpoint import seed_everything
from whitebox.train.common import (
    PRECISIONS,
    add_encoder_args,
    add_labelled_data_args,
    load_encoder,
    model_kwargs_from_args,
    resolve_precision,
)
from whitebox.train.distributed import resolve_device
from whitebox.train.probe import linear_probe
from whitebox.train.run import run_args, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Linear probe of a frozen encoder: a registered model (--pretrained) or a pretrain.py checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_encoder_args(p)
    add_labelled_data_args(p)
    p.add_argument(
        "--max-train", type=integer(gt=0), default=None, help="use a seeded random subset of N training images"
    )
    p.add_argument("--pool", default="token", choices=("token", "avg"), help="class token or mean of patch tokens")
    p.add_argument(
        "--layer", type=integer(), default=None, help="block index for intermediate features (default: last; -1: last)"
    )
    p.add_argument("--crop-pct", type=number(gt=0, le=1), default=1.0, help="evaluation centre-crop fraction, (0, 1]")
    p.add_argument("--solver", default="lbfgs", choices=("lbfgs", "sgd"))
    p.add_argument("--weight-decay", type=number(ge=0), default=1e-4)
    p.add_argument("--max-iter", type=integer(gt=0), default=300, help="L-BFGS iterations")
    p.add_argument("--epochs", type=integer(gt=0), default=90, help="sgd epochs")
    p.add_argument("--lr", type=number(gt=0), default=0.1, help="sgd lr")
    p.add_argument("--batch-size", type=integer(gt=0), default=256)
    p.add_argument("--workers", type=integer(ge=0), default=0)
    p.add_argument("--on-bad-image", default="skip", choices=BAD_IMAGE_POLICIES)
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N, mps, xpu, xpu:N")
    p.add_argument("--precision", type=choice(PRECISIONS), default="auto", help="auto, fp32, bf16, fp16")
    p.add_argument("--seed", type=seed, default=0, help="0 to 2**63 - 1")
    p.add_argument("--output", default="output/linprobe")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
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
        opts = data_options(args)
        train_set = build_dataset(args.data, args.train_split, args.download, args.data_root, **opts)
        if args.max_train:
            # a seeded random subset: folders list their images class by class, so a prefix would drop classes
            g = torch.Generator().manual_seed(args.seed)
            keep = torch.randperm(len(train_set), generator=g)[: args.max_train].sort().values.tolist()
            train_set = torch.utils.data.Subset(train_set, keep)
        test_split = None if args.test_data else args.test_split  # a file or folder of test images only
        test_set = build_dataset(args.test_data or args.data, test_split, args.download, args.data_root, **opts)
        result = linear_probe(
            encoder,
            train_set,
            test_set,
            encoder.patch_embed.img_size[0],
            pool=args.pool,
            layer=args.layer,
            solver=args.solver,
            device=device,
            precision=precision,
            batch_size=args.batch_size,
            workers=args.workers,
            weight_decay=args.weight_decay,
            max_iter=args.max_iter,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            crop_pct=args.crop_pct,
            on_bad_image=args.on_bad_image,
        )
        probe = result.pop("probe")
        atomic_save({"probe": probe.state_dict(), "args": run_args(args)}, out / "probe.pth")
        write_json(
            {**result, "args": vars(args), "model": model_name, "model_kwargs": model_kwargs}, out / "results.json"
        )
    print(
        f"linear probe top-1 {100 * result['top1']:.2f}% (train {100 * result['train_top1']:.2f}%) on "
        f"{result['num_test']} test images | {result['feature_dim']}-d features, {args.pool} pool, "
        f"layer {args.layer if args.layer is not None else 'last'} | extract {result['extract_s']:.1f} s, "
        f"fit {result['fit_s']:.1f} s",
        file=sys.stderr,
    )
    return result


if __name__ == "__main__":
    run_main(main)
