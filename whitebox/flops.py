"""Exact analytic FLOP counts for CRATE, CRATE-alpha, CRATE-MAE and ViT-MAE, per image.

Conventions (the ones model-FLOPs utilisation is usually stated in):

* A matrix product of an (m x k) by a (k x n) matrix costs ``2 m n k`` FLOPs (a multiply and an
  add per term). A linear layer on N tokens is such a product; so is the patch convolution
  (``2 * patches * d_out * C * p * p``).
* Attention costs its two products: ``w_k w_k^T`` (scores) and ``softmax(.) w_k`` (values), each
  ``2 N^2 p`` per head, so ``2 N^2 d_attn`` each per layer. MSSA's q = k = v changes nothing here.
* ISTA is counted in the two-product form that is computed:
  ``relu(z + eta * (z - z D^T) D - eta * lambda)`` costs ``2 * 2 N d^2``. CRATE-alpha's overcomplete
  step (D, D1: d x r d, k iterations from zero) costs ``2 N d r d`` for ``x D``, twice that for each
  further iteration (``z D^T``, then ``(.) D``), and ``2 N r d d`` for the decoding ``z D1^T``: with the
  official r = 4, k = 2, ``32 N d^2`` (``encoder.ista`` 24, ``encoder.decode`` 8), against 16 N d^2 for a
  ViT MLP of ratio 4.
* Element-wise work (norms, softmax, activations, bias adds, residuals, the loss, masking) is
  not counted: it is O(N d) and limited by memory bandwidth, not by matrix units.
* The MAE encoder runs on the FULL sequence (masked patches become mask tokens), so counts do not
  depend on the mask ratio. N = 1 + (H / p) (W / p) tokens (the class token included).
* A training step is counted as **3 x forward**: the backward of each product is two products of
  the same size (gradient of the input and of the weight). The exact autograd work is slightly less,
  ``3 F - patch_embed``, because images need no gradient; fused attention kernels also recompute
  the scores in the backward (hardware FLOPs that model FLOPs do not count).

Every part states its own count (``flops(num_tokens)`` on blocks and layers, ``flops(grid_size)`` on
patch embeddings, ``flops(grid_size, features_only)`` on models: see ``whitebox.layers.declare``); this
module only sums them, so a new family needs no edit here, and a block that states nothing is a
``TypeError`` that names it.

``count_flops(model, img_size, mode)`` returns a ``FlopCount`` whose ``breakdown`` maps components
(``encoder.attn.qkv``, ``encoder.ista``, ``decoder.mlp`` ...) to FLOPs and sums to ``total``.
``python -m whitebox.flops crate_mae_base --img-size 224`` prints the table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import nn

Mode = Literal["forward", "features", "train"]
MODES = ("forward", "features", "train")
TRAIN_MULTIPLIER = 3  # backward = 2 x forward (input and weight gradients)

__all__ = ["MODES", "TRAIN_MULTIPLIER", "FlopCount", "count_flops", "format_flops"]


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one image through a model.

    Attributes:
        total: sum of ``breakdown``.
        breakdown: component name -> FLOPs (already multiplied by 3 in ``'train'`` mode).
        mode: ``'forward'``, ``'features'`` or ``'train'``.
        img_size: (H, W) counted.
        tokens: sequence length N seen by the blocks (class token included).
    """

    breakdown: dict[str, int]
    mode: str
    img_size: tuple[int, int]
    tokens: int
    total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum(self.breakdown.values()))

    def table(self) -> str:
        """A plain-text table: one line per component, then the total."""
        width = max(len(k) for k in [*self.breakdown, "total"])
        lines = [
            f"{k:<{width}}  {format_flops(v):>14}  {100 * v / self.total:5.1f}%" for k, v in self.breakdown.items()
        ]
        lines.append(f"{'total':<{width}}  {format_flops(self.total):>14}  100.0%")
        return "\n".join(lines)


def format_flops(flops: float) -> str:
    """``22.85 GFLOP`` style formatting (decimal prefixes)."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.2f} {unit}"
    return f"{flops:.0f} FLOP"


# --------------------------------------------------------------------------------------------- pieces
def _patch_embed(model: nn.Module) -> nn.Module:
    embed = getattr(model, "patch_embed", None)
    if embed is None:
        embed = getattr(getattr(model, "encoder", None), "patch_embed", None)
    if embed is None or not hasattr(embed, "img_size") or not hasattr(embed, "patch_size"):
        raise TypeError(
            f"cannot count FLOPs of {type(model).__name__}: expected a whitebox model with a patch_embed "
            "(img_size, patch_size), directly or on its .encoder"
        )
    return embed


def _img_size(model: nn.Module, img_size: int | tuple[int, int] | None) -> tuple[tuple[int, int], tuple[int, int]]:
    embed = _patch_embed(model)
    if img_size is None:
        size = tuple(embed.img_size)
    elif isinstance(img_size, int) and not isinstance(img_size, bool):
        size = (img_size, img_size)
    elif isinstance(img_size, (tuple, list)) and len(img_size) == 2 and all(isinstance(s, int) for s in img_size):
        size = tuple(img_size)
    else:
        raise TypeError(f"img_size must be an int, a (H, W) pair of ints or None, got {img_size!r}")
    p = embed.patch_size
    if size[0] <= 0 or size[1] <= 0 or size[0] % p or size[1] % p:
        raise ValueError(f"img_size {size} must be positive multiples of the patch size {p}")
    return size, (size[0] // p, size[1] // p)


# --------------------------------------------------------------------------------------------- public
def count_flops(model: nn.Module, img_size: int | tuple[int, int] | None = None, mode: Mode = "forward") -> FlopCount:
    """Exact matrix-product FLOPs of one image (see the module docstring for what is counted).

    Args:
        model: a ``MaskedAutoencoder`` (CRATE-MAE, ViT-MAE) or a ``TokenEncoder`` (CRATE, CRATE-alpha).
        img_size: image size to count at (int or (H, W)); default: the size the model was built for.
        mode: ``'forward'`` — an MAE's masked-reconstruction forward (encoder, decoder, pixel head),
            or a classifier's forward (features and head); ``'features'`` — ``forward_features``
            only (the encoder, no decoder or head); ``'train'`` — 3 x ``'forward'``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    from torch import nn

    if not isinstance(model, nn.Module) or not callable(getattr(model, "flops", None)):
        raise TypeError(
            "expected a MaskedAutoencoder or TokenEncoder (or a model that declares "
            f"flops(grid_size, features_only)), got {type(model).__name__}"
        )
    size, grid = _img_size(model, img_size)
    out = model.flops(grid, features_only=mode == "features")
    n = getattr(getattr(model, "encoder", model), "num_prefix_tokens", 0) + grid[0] * grid[1]
    if mode == "train":
        out = {k: TRAIN_MULTIPLIER * v for k, v in out.items()}
    return FlopCount(breakdown=out, mode=mode, img_size=size, tokens=n)


def build_parser() -> argparse.ArgumentParser:
    from .cli import HelpFormatter, add_threads_arg, choice, integer, program_name

    p = argparse.ArgumentParser(
        prog=program_name("whitebox.flops"),
        description="Print the analytic FLOP count of a registered model, per image.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", help="a registered model name, e.g. crate_mae_base")
    m = p.add_argument_group("model")
    m.add_argument(
        "--img-size",
        type=integer(gt=0),
        default=None,
        metavar="N",
        help="square image size in pixels (a multiple of the patch; unset: the model's)",
    )
    c = p.add_argument_group("count")
    c.add_argument(
        "--mode",
        type=choice(MODES),
        default="train",
        metavar="MODE",
        help="what one image costs: " + ", ".join(MODES),
    )
    add_threads_arg(p.add_argument_group("runtime"))
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m whitebox.flops MODEL [--img-size N] [--mode forward|features|train]``: print the table."""
    args = build_parser().parse_args(argv)
    import torch

    import whitebox

    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = whitebox.create_model(args.model)
        patch = _patch_embed(model).patch_size
        if args.img_size is not None and args.img_size % patch:
            raise ValueError(
                f"--img-size {args.img_size} is not a multiple of {args.model}'s patch size {patch}; "
                f"use e.g. {max(patch, args.img_size // patch * patch)} or {(args.img_size // patch + 1) * patch}"
            )
        if args.img_size is not None:
            model = whitebox.create_model(args.model, img_size=args.img_size)
    count = count_flops(model, mode=args.mode)
    print(f"{args.model} {args.mode} at {count.img_size[0]}x{count.img_size[1]} ({count.tokens} tokens), per image")
    print(count.table())
    return 0


if __name__ == "__main__":
    import sys

    from .cli import start_program, started

    start_program(build_parser)
    started()
    try:
        sys.exit(main())
    except (ValueError, TypeError, OSError) as err:  # a bad name or size: a message, not a traceback
        sys.exit(f"error: {err}")
