"""``python -m whitebox.convert OFFICIAL.pth OUTDIR --model crate_mae_base.in1k``: an official file as a saved model.

The file goes through the family's ``checkpoint_filter_fn`` (official CRATE, CRATE-MAE and MAE
layouts are recognised; see ``whitebox.models``) and is written as ``config.json`` +
``model.safetensors`` (+ ``README.md``), which ``create_model('local-dir:OUTDIR')`` rebuilds and
timm reads too. The source file's sha256 is printed so that it can be pinned in a record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    from .cli import HelpFormatter, add_threads_arg, program_name

    p = argparse.ArgumentParser(
        prog=program_name("whitebox.convert"), description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    p.add_argument("checkpoint", help="the official .pth file (or any checkpoint the family filter reads)")
    p.add_argument("outdir", help="output folder (created; existing files are replaced atomically)")
    m = p.add_argument_group("model")
    m.add_argument(
        "--model", required=True, metavar="NAME", help="architecture or architecture.tag, e.g. crate_mae_base.in1k"
    )
    m.add_argument(
        "--model-args",
        default="{}",
        metavar="JSON",
        help="JSON object of model arguments, e.g. '{\"lambd\": 5.0}' (over the tag's)",
    )
    add_threads_arg(p.add_argument_group("runtime"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    source, outdir = Path(args.checkpoint), Path(args.outdir)
    if source.is_dir():
        raise ValueError(f"checkpoint {source} is a folder; give the checkpoint file itself (e.g. {source}/model.pth)")
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {source}: no such file")
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"outdir {outdir} exists and is not a folder; name a folder to write the saved model into")

    import torch

    import whitebox
    from registry import sha256_file

    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        model_args: dict[str, Any] = json.loads(args.model_args)
    except json.JSONDecodeError as err:
        parser.error(f"--model-args is not valid JSON: {err}")
    if not isinstance(model_args, dict):
        parser.error(f"--model-args must be a JSON object of model arguments, got a {type(model_args).__name__}")
    model = whitebox.create_model(
        args.model, pretrained=True, pretrained_cfg_overlay=dict(file=str(args.checkpoint)), **model_args
    )
    out = whitebox.save_pretrained(model, args.outdir)
    n = sum(t.numel() for t in model.state_dict().values())
    print(f"wrote {out} ({args.model}, {n / 1e6:.2f}M values); source sha256 {sha256_file(args.checkpoint)}")
    return 0


if __name__ == "__main__":
    from .cli import start_program, started

    start_program(build_parser)
    started()
    from registry import UnsafeCheckpointError

    try:
        sys.exit(main())
    except (ValueError, TypeError, OSError, UnsafeCheckpointError) as err:  # bad input: a message, no traceback
        sys.exit(f"error: {err}")
