"""``python -m whitebox.analysis MODEL [--checkpoint FILE] [--images FILE ...] --out DIR``: a white-box report.

Example (a tiny random model, seconds on a CPU)::

    python -m whitebox.analysis crate_mae_tiny --out report/ \\
        --model-args img_size=32 patch_size=8 embed_dim=64 depth=2 num_heads=4

Name the model first: ``--model-args`` and ``--images`` take every word that follows them.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path
from typing import Any

import torch

import whitebox

from .report import images_for, write_report


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """``['depth=2', 'eta=0.1', 'norm_pix_loss=True']`` -> kwargs (values parsed as Python literals)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"model arguments are key=value pairs, got {pair!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare word, e.g. global_pool=avg
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m whitebox.analysis",
        description="Measure every layer's compression and sparsity and draw attention, PCA and reconstructions.",
    )
    p.add_argument(
        "model", nargs="?", help="registered model name, optionally with a tag; optional with a recipe --checkpoint"
    )
    p.add_argument(
        "--checkpoint",
        help="local weights for MODEL (safetensors or a weights-only torch file); a recipe checkpoint also "
        "gives the model and its arguments",
    )
    p.add_argument("--pretrained", action="store_true", help="load the registered pretrained weights")
    p.add_argument("--model-args", nargs="*", default=[], metavar="KEY=VALUE", help="arguments for create_model")
    p.add_argument("--images", nargs="*", metavar="FILE", help="image files (default: the embedded sample photos)")
    p.add_argument("--num-images", type=int, default=None, help="use only the first N images for the measurements")
    p.add_argument("--show", type=int, default=4, help="images drawn in the pictures (default 4)")
    p.add_argument("--out", default="whitebox_report", help="report folder (default ./whitebox_report)")
    p.add_argument("--mask-ratio", type=float, default=0.75, help="mask ratio of the reconstructions")
    p.add_argument("--eps", type=float, default=0.5, help="coding precision of the rates")
    p.add_argument("--seed", type=int, default=0, help="seed of the reconstruction masks")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty report folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model and Path(args.model).is_file():
        raise SystemExit(f"{args.model} is a file: name the architecture and pass the file as --checkpoint")
    start = time.perf_counter()
    model = whitebox.create_model(
        args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint, **parse_model_args(args.model_args)
    ).to(torch.device(args.device))
    images = images_for(model, args.images, args.num_images)
    out = write_report(
        model,
        args.out,
        images,
        name=args.model or model.pretrained_cfg["architecture"],
        mask_ratio=args.mask_ratio,
        max_images=args.show,
        eps=args.eps,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print((out / "layerwise.md").read_text(encoding="utf-8"))
    print(f"report: {out / 'index.html'} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, TypeError, FileNotFoundError) as err:  # bad arguments: a message, not a traceback
        sys.exit(f"error: {err}")
