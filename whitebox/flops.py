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

``count_flops(model, img_size, mode)`` returns a ``FlopCount`` whose ``breakdown`` maps components
(``encoder.attn.qkv``, ``encoder.ista``, ``decoder.mlp`` ...) to FLOPs and sums to ``total``.
``python -m whitebox.flops crate_mae_base --img-size 224`` prints the table.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from .layers import (
    ISTA,
    ConvPatchEmbed,
    CrateAlphaBlock,
    CrateBlock,
    CrateDecoderBlock,
    LinearPatchEmbed,
    OvercompleteISTA,
    SubspaceAttention,
)
from .models import MaskedAutoencoder, TokenEncoder

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
def _linear(m: nn.Linear, rows: int) -> int:
    return 2 * rows * m.in_features * m.out_features


def _linears(modules: Iterable[nn.Module], rows: int) -> int:
    return sum(_linear(m, rows) for m in modules if isinstance(m, nn.Linear))


def _add(out: dict[str, int], key: str, flops: int) -> None:
    if flops:
        out[key] = out.get(key, 0) + flops


def _attention(attn: nn.Module, n: int, prefix: str, out: dict[str, int]) -> None:
    """qkv / scores / values / proj of one attention layer on n tokens."""
    if isinstance(attn, SubspaceAttention):
        attn_dim = attn.qkv.out_features  # q = k = v = w, all heads together
        _add(out, f"{prefix}.qkv", _linear(attn.qkv, n))
        _add(out, f"{prefix}.proj", _linear(attn.proj, n))
    elif hasattr(attn, "qkv") and hasattr(attn, "num_heads") and hasattr(attn, "head_dim"):  # timm Attention
        attn_dim = attn.num_heads * attn.head_dim
        _add(out, f"{prefix}.qkv", _linear(attn.qkv, n))
        others = [m for name, m in attn.named_modules() if isinstance(m, nn.Linear) and name != "qkv"]
        _add(out, f"{prefix}.proj", _linears(others, n))  # proj (and a gate, if any)
    else:
        raise TypeError(f"cannot count FLOPs of attention module {type(attn).__name__}")
    _add(out, f"{prefix}.scores", 2 * n * n * attn_dim)  # w_k w_k^T  (q k^T)
    _add(out, f"{prefix}.values", 2 * n * n * attn_dim)  # softmax(.) w_k  (. v)


def _block(block: nn.Module, n: int, prefix: str, out: dict[str, int]) -> None:
    if isinstance(block, CrateBlock):
        _attention(block.attn, n, f"{prefix}.attn", out)
        ista: ISTA = block.ista
        d_out, d_in = ista.weight.shape
        _add(out, f"{prefix}.ista", 2 * (2 * n * d_in * d_out))  # z D^T, then (z - z D^T) D
    elif isinstance(block, CrateAlphaBlock):
        _attention(block.attn, n, f"{prefix}.attn", out)
        odl: OvercompleteISTA = block.ista
        d, code = odl.D.shape
        _add(out, f"{prefix}.ista", (1 + 2 * (odl.iterations - 1)) * 2 * n * d * code)  # x D; (z D^T - x) D
        _add(out, f"{prefix}.decode", 2 * n * code * d)  # z D1^T
    elif isinstance(block, CrateDecoderBlock):
        _add(out, f"{prefix}.linear", _linear(block.linear, n))
        _attention(block.attn, n, f"{prefix}.attn", out)
    elif hasattr(block, "attn") and hasattr(block, "mlp"):  # timm ViT Block
        _attention(block.attn, n, f"{prefix}.attn", out)
        _add(out, f"{prefix}.mlp", _linears(block.mlp.modules(), n))
    else:
        raise TypeError(f"cannot count FLOPs of block {type(block).__name__}")


def _patch_embed(embed: nn.Module, patches: int) -> int:
    if isinstance(embed, ConvPatchEmbed):
        w = embed.proj.weight  # (d, C, p, p): one (C p p)-long dot product per output channel and patch
        return 2 * patches * w.numel()
    if isinstance(embed, LinearPatchEmbed):
        return _linear(embed.proj, patches)
    raise TypeError(f"cannot count FLOPs of patch embedding {type(embed).__name__}")


def _encoder(encoder: TokenEncoder, grid: tuple[int, int], head: bool, out: dict[str, int]) -> int:
    patches = grid[0] * grid[1]
    n = encoder.num_prefix_tokens + patches
    _add(out, "patch_embed", _patch_embed(encoder.patch_embed, patches))
    for blk in encoder.blocks:
        _block(blk, n, "encoder", out)
    if head and isinstance(encoder.head, nn.Linear):
        rows = n if encoder.global_pool == "" else 1  # '' keeps every token
        _add(out, "head", _linear(encoder.head, rows))
    return n


def _img_size(model: nn.Module, img_size: int | tuple[int, int] | None) -> tuple[tuple[int, int], tuple[int, int]]:
    encoder = model.encoder if isinstance(model, MaskedAutoencoder) else model
    embed = encoder.patch_embed
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
    if not isinstance(model, (MaskedAutoencoder, TokenEncoder)):
        raise TypeError(f"expected a MaskedAutoencoder or TokenEncoder, got {type(model).__name__}")
    size, grid = _img_size(model, img_size)
    out: dict[str, int] = {}
    if isinstance(model, MaskedAutoencoder):
        n = _encoder(model.encoder, grid, head=False, out=out)
        if mode != "features":
            if isinstance(model.decoder_embed, nn.Linear):
                _add(out, "decoder_embed", _linear(model.decoder_embed, n))
            for blk in model.decoder_blocks:
                _block(blk, n, "decoder", out)
            _add(out, "decoder_pred", _linear(model.decoder_pred, n))  # on all tokens; the class row is dropped after
    else:
        n = _encoder(model, grid, head=mode != "features", out=out)
    if mode == "train":
        out = {k: TRAIN_MULTIPLIER * v for k, v in out.items()}
    return FlopCount(breakdown=out, mode=mode, img_size=size, tokens=n)


def main(argv: list[str] | None = None) -> None:
    import whitebox

    parser = argparse.ArgumentParser(description="Print the analytic FLOP count of a registered model, per image.")
    parser.add_argument("model", help="a registered model name, e.g. crate_mae_base")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--mode", choices=MODES, default="train")
    args = parser.parse_args(argv)
    import torch

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = whitebox.create_model(args.model, **({"img_size": args.img_size} if args.img_size else {}))
    count = count_flops(model, mode=args.mode)
    print(f"{args.model} {args.mode} at {count.img_size[0]}x{count.img_size[1]} ({count.tokens} tokens), per image")
    print(count.table())


if __name__ == "__main__":
    main()
