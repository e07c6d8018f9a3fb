"""``python -m whitebox.analysis MODEL [--checkpoint FILE] [--images FILE ...] --out DIR``: a white-box report.

Example (a tiny random model, seconds on a CPU)::

    python -m whitebox.analysis crate_mae_tiny --out report/ \\
        --model-kwargs img_size=32 patch_size=8 embed_dim=64 depth=2 num_heads=4

Name the model first: ``--model-kwargs`` (old name ``--model-args``) and ``--images`` take every word that follows them.

``--images`` takes image files, folders (recursively), ``.npz`` packs in the recipes' formats
(``FILE.npz:SPLIT`` for a file with splits) or ``samples``; without it the bundled sample photos are
used, except for a recipe checkpoint trained on other data (``--data cifar10``, a folder, a pack),
which must be given its images or ``--images samples`` on purpose. The report (``index.html`` and
``report.json``) names the model, checkpoint, training step and images it analysed. Every flag is
checked before any work starts; a bad one ends with ``error: ...`` naming the flag and what is allowed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import (
    HelpFormatter,
    add_model_kwargs_arg,
    add_threads_arg,
    integer,
    model_kwargs,
    number,
    program_name,
    start_program,
    started,
)
from ..cli import device as device_type

if TYPE_CHECKING:
    import torch

SAMPLE_DATA = (None, "", "samples")


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """``['depth=2', 'eta=0.1', 'global_pool=avg']`` -> kwargs, as ``--model-kwargs`` reads them (``whitebox.cli``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        try:
            out.update(model_kwargs(pair))
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"--model-args takes KEY=VALUE pairs (KEY a Python name) or JSON: {err}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("whitebox.analysis"),
        description="Measure every layer's compression and sparsity and draw attention, PCA and reconstructions.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "model", nargs="?", help="registered model name, optionally with a tag; optional with a recipe --checkpoint"
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="local weights for MODEL (safetensors or a weights-only torch file); a recipe checkpoint also "
        "gives the model and its arguments",
    )
    m.add_argument("--pretrained", action="store_true", help="load the registered pretrained weights")
    add_model_kwargs_arg(m, "--model-args", default={}, help="arguments for create_model (--model-args: the old name)")
    d = p.add_argument_group("data")
    d.add_argument(
        "--images",
        nargs="*",
        metavar="PATH",
        help="image files, image folders, .npz packs (FILE.npz:SPLIT for a file with splits) or 'samples' "
        "(unset: the bundled sample photos)",
    )
    d.add_argument(
        "--num-images",
        type=integer(ge=1),
        default=None,
        metavar="N",
        help="use only the first N images (unset: all files; at most 256 from folders and packs)",
    )
    a = p.add_argument_group("analysis")
    a.add_argument("--show", type=integer(ge=1), default=4, metavar="N", help="images drawn in the pictures")
    a.add_argument("--mask-ratio", type=number(ge=0, lt=1), default=0.75, help="mask ratio of the reconstructions")
    a.add_argument(
        "--pixel-stats",
        choices=("patch", "visible"),
        default="patch",
        help="norm_pix_loss reconstructions: 'patch' un-normalises each patch with its own true mean/std (MAE's "
        "display convention; hidden patches use hidden pixels), 'visible' with the visible patches' (leak-free)",
    )
    a.add_argument("--eps", type=number(gt=0), default=0.5, help="coding precision of the rates (> 0)")
    a.add_argument("--seed", type=integer(ge=0, le=2**63 - 1), default=0, help="seed of the reconstruction masks")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", type=device_type, default="cpu", help="cpu, cuda, cuda:N, mps, xpu or auto")
    add_threads_arg(r)
    o = p.add_argument_group("output")
    o.add_argument("--out", default="whitebox_report", metavar="DIR", help="report folder")
    o.add_argument("--overwrite", action="store_true", help="write into a non-empty report folder")
    return p


def _device(name: str) -> torch.device:
    """The ``--device`` flag as a device, refusing one this machine does not have (before any work)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    available = {"cpu": lambda: 1, "cuda": torch.cuda.device_count}
    available["mps"] = lambda: int(torch.backends.mps.is_available())
    available["xpu"] = lambda: torch.xpu.device_count() if hasattr(torch, "xpu") else 0
    count = available[kind]()
    if count == 0 or (index and int(index) >= count):
        have = "none" if count == 0 else f"{count} ({kind}:0 .. {kind}:{count - 1})"
        raise ValueError(f"--device {name}: this machine has no such device ({kind} devices: {have}); use cpu")
    return torch.device(name)


def _recipe_record(path: str | None) -> dict[str, Any]:
    """What a recipe checkpoint says about itself (model, step, training data); {} for plain weights."""
    if path is None:
        return {}
    if not Path(path).exists():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    from registry import read_checkpoint  # a folder: CheckpointIsAFolderError, listing the weight files in it

    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or "model" not in obj or not isinstance(obj.get("args"), dict):
        return {}
    return dict(model=obj.get("model_name"), step=obj.get("step"), data=obj["args"].get("data"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    import whitebox

    from .images import normalize_images
    from .report import write_report
    from .sources import check_specs, read_images

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model and Path(args.model).is_file():
        raise ValueError(f"{args.model} is a file: name the architecture and pass the file as --checkpoint")
    device = _device(args.device)
    model_args = dict(args.model_kwargs or {})
    check_specs(args.images)  # unreadable --images are refused before a model is built
    record = _recipe_record(args.checkpoint)
    trained_on = record.get("data")
    if args.images is None and trained_on not in SAMPLE_DATA:
        raise ValueError(
            f"--checkpoint {args.checkpoint} was trained on --data {trained_on}, and the bundled sample photos are "
            f"not its images: pass them with --images (a folder, .npz pack or image files), or --images samples to "
            "analyse on the bundled photos on purpose"
        )
    start = time.perf_counter()
    model = whitebox.create_model(
        args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint, **model_args
    ).to(device)
    size = model_image_size(model)[0]
    source = read_images(args.images, size, args.num_images)
    images = normalize_images(source.images)
    from .._programs import evaluated_name

    name = evaluated_name(args.model or model.pretrained_cfg["architecture"], model)
    provenance = {
        "model": name,
        "weights": "pretrained " + str(model.pretrained_cfg.get("tag") or name)
        if args.pretrained
        else (args.checkpoint or "random initialisation (no --checkpoint, no --pretrained)"),
        "checkpoint": args.checkpoint,
        "step": record.get("step"),
        "trained_on": trained_on,
        "images": source.description,
    }
    out = write_report(
        model,
        args.out,
        images,
        name=name,
        mask_ratio=args.mask_ratio,
        max_images=args.show,
        eps=args.eps,
        seed=args.seed,
        overwrite=args.overwrite,
        provenance=provenance,
        pixel_stats=args.pixel_stats,
    )
    print((out / "layerwise.md").read_text(encoding="utf-8"))
    step = f", step {record['step']}" if record.get("step") is not None else ""
    print(f"analysed {name} ({provenance['weights']}{step}) on {source.description}")
    print(f"report: {out / 'index.html'} ({time.perf_counter() - start:.1f} s)")
    return 0


def model_image_size(model: torch.nn.Module) -> tuple[int, int]:
    """The square image size the model expects (the report crops images square)."""
    from ._model import encoder_of

    h, w = encoder_of(model).patch_embed.img_size
    if h != w:
        raise ValueError(f"the report loads square images; this model expects {h}x{w}")
    return h, w


def cli() -> int:
    """``python -m whitebox.analysis`` and ``whitebox-analysis``: bad input ends with ``error: MESSAGE``
    and exit status 1 (an unsafe or unreadable checkpoint and a failed download included), a Ctrl-C with
    one line and status 130, never a traceback."""
    import pickle

    start_program(build_parser)
    started()  # main() handles a Ctrl-C itself (one line, status 130)
    try:
        return main()
    except (ValueError, TypeError, OSError, pickle.UnpicklingError) as err:
        sys.exit(f"error: {err}")  # UnpicklingError: registry's UnsafeCheckpointError
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    sys.exit(cli())
