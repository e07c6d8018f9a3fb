r"""Layer-wise white-box measurements: does each layer do the step it claims to do?

For every block of every stage, forward hooks capture the block's input, the tokens between its
two steps, and its output, on one forward pass over a batch of images. The columns:

=================  =========================================================================
``stage``          ``'encoder'`` or ``'decoder'``
``block``          block index within the stage (0-based)
``compression_in`` ``R^c`` of the tokens *before* the block's MSSA step, with that block's U
``compression``    ``R^c`` of the tokens *after* the block's MSSA step, with that block's U
``coding_rate``    ``R`` of the block output
``sparsity``       fraction of exact zeros in the block output (CRATE-alpha: in the sparse code)
``l1``             mean l1 norm (sum of absolute values) of a block-output token (CRATE-alpha: of a
                   sparse-code token): how large the code is whose zeros ``sparsity`` counts
``*_std``          standard deviation over the images of the column before it
=================  =========================================================================

Which tokens each is measured on (``CrateBlock``: ``z = x + MSSA(LN_1(x)); out = ISTA(LN_2(z))``;
``CrateDecoderBlock``: ``y = LN_1(x) E^T; out = y - MSSA(LN_2(y))``):

- encoder: ``compression_in`` on ``x`` (the block input ``Z^l``), ``compression`` on ``z``
  (``Z^{l+1/2}``, the paper's ``R^c(Z^{l+1/2})``); sparsity and coding rate on ``out``, the ISTA
  output ``Z^{l+1}``. MSSA is a descent step on ``R^c``, so expect ``compression <
  compression_in`` in a trained model; ISTA is a step towards sparse codes, so expect sparsity > 0.
- CRATE-alpha (``CrateAlphaBlock``: ``z = x + MSSA(LN_1(x)); out = z + D1 c`` with the sparse code
  ``c = ODL(LN_2(z))``, (N, 4d)): compression as in the encoder, on ``x`` and ``z``; sparsity and l1 on
  the code ``c`` (the block output adds the residual ``z``, so it is not sparse); coding rate on ``out``.
- decoder: ``compression_in`` on ``y`` (after the linear step that undoes ISTA), ``compression`` on
  ``out`` (after the MSSA step, whose minus sign undoes compression: expect it to go *up*).
- blocks without subspace attention (ViT-MAE's timm blocks): only ``coding_rate``, ``sparsity`` and
  ``l1``; the compression columns are ``None`` (there is no U to measure against).

Rates depend on the scale of the tokens, and the scale of the residual stream drifts from layer to
layer, so by default (``normalize='unit'``) every token is scaled to unit l2 norm before ``R`` and
``R^c`` are measured (as MCR^2 and the official CRATE measurement code do; all-zero tokens stay
zero). ``normalize='none'`` measures the raw tokens. Sparsity and l1 always use the raw tokens.

Batch averaging: each rate is computed per image (its N tokens, class token included unless
``include_class_token=False``) and then averaged over the images; ``*_std`` is the population
standard deviation over the images. Sparsity per image is its fraction of zero entries.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..layers.declare import BlockProbes, Probe, require
from ._model import block_stacks, encoder_of, evaluating, image_geometry, run
from .images import default_images, normalize_images, render, require_matplotlib, save_png, write_text
from .measures import _check_tokens, _coding_rate, _compression, _unit_tokens

__all__ = ["COLUMNS", "LayerwiseStats", "layerwise_stats"]

COLUMNS: tuple[str, ...] = (
    "stage",
    "block",
    "compression_in",
    "compression",
    "compression_std",
    "coding_rate",
    "coding_rate_std",
    "sparsity",
    "sparsity_std",
    "l1",
)

Row = dict[str, Any]

LEGEND = """\
Columns: `block` counts from 0 within its stage (encoder, then decoder), as in the plot;
`compression_in` / `compression` = R^c against the block's subspaces U before / after its compression
(MSSA) step; `coding_rate` = R of the block output; `sparsity` = fraction of exact zeros in the block
output (CRATE-alpha: in its sparse code); `l1` = mean l1 norm (sum of absolute values) of one token of
that output or code; `*_std` = standard deviation over the images; `-` = does not apply (no subspaces).
"""


@dataclass
class LayerwiseStats:
    """One row per block and stage (see the module docstring for what every column means).

    Attributes:
        rows: dicts keyed by ``COLUMNS``; ``None`` where a quantity does not apply.
        info: how the numbers were measured (eps, normalisation, images, mask ratio, ...).
    """

    rows: list[Row]
    info: dict[str, Any] = field(default_factory=dict)

    columns = COLUMNS

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def column(self, name: str, stage: str | None = None) -> list[Any]:
        """Values of one column, optionally for one stage only."""
        if name not in COLUMNS:
            raise ValueError(f"unknown column {name!r}; columns are {COLUMNS}")
        return [r[name] for r in self.rows if stage is None or r["stage"] == stage]

    @staticmethod
    def _fmt(value: Any, digits: int) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    def to_markdown(self, digits: int = 4) -> str:
        """A GitHub-flavoured markdown table (``-`` where a quantity does not apply)."""
        lines = [
            "| " + " | ".join(COLUMNS) + " |",
            "| " + " | ".join(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)) + " |",
        ]
        for r in self.rows:
            lines.append("| " + " | ".join(self._fmt(r[c], digits) for c in COLUMNS) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """CSV text (empty fields where a quantity does not apply); written atomically to ``path`` if given."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in self.rows:
            writer.writerow(
                ["" if r[c] is None else (repr(r[c]) if isinstance(r[c], float) else r[c]) for c in COLUMNS]
            )
        text = buf.getvalue()
        if path is not None:
            write_text(text, path)
        return text

    def plot(self, path: str | os.PathLike[str] | None = None, title: str | None = None) -> np.ndarray:
        """Compression, sparsity and coding rate against depth, as in the CRATE papers' figures.

        The x axis is the block index within each stage, from 0 as in the table; the encoder and the
        decoder are separate lines on it (the decoder is not appended to the encoder's axis). Error bars
        are the standard deviation over the images. Returns the figure as uint8 (H, W, 3) and writes it
        as a PNG to ``path`` if given (needs matplotlib).
        """
        image = render(self.figure(title))
        if path is not None:
            save_png(image, path)
        return image

    def figure(self, title: str | None = None) -> Any:
        """The matplotlib ``Figure`` that ``plot`` renders (three panels; see ``plot``)."""
        require_matplotlib()
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        fig = Figure(figsize=(15, 4.2), dpi=100, layout="constrained")
        axes = fig.subplots(1, 3)
        panels = (
            ("compression", r"$R^c(Z^{\ell+1/2};\,U^{\ell})$ after MSSA", "o"),
            ("sparsity", "fraction of zeros in the block output / sparse code", "s"),
            ("coding_rate", r"$R(Z^{\ell+1})$ of the block output", "^"),
        )
        stages = list(dict.fromkeys(r["stage"] for r in self.rows))
        for k, stage in enumerate(stages):
            color = f"C{k}"
            rows = [r for r in self.rows if r["stage"] == stage]
            x = np.array([r["block"] for r in rows])
            for ax, (name, _, marker) in zip(axes, panels, strict=True):
                y = np.array([math.nan if r[name] is None else r[name] for r in rows], dtype=float)
                if np.isnan(y).all():
                    continue
                err = np.array([0.0 if r.get(f"{name}_std") is None else r[f"{name}_std"] for r in rows], dtype=float)
                ax.plot(x, y, marker=marker, color=color, markeredgecolor="black", linewidth=2, label=stage)
                ax.errorbar(x, y, yerr=err, fmt="none", ecolor=color, alpha=0.6, capsize=4)
                if name == "compression":
                    before = np.array([math.nan if r["compression_in"] is None else r["compression_in"] for r in rows])
                    ax.plot(x, before, linestyle="--", color=color, alpha=0.5, label=f"{stage}, before MSSA")
        for ax, (_, ylabel, _) in zip(axes, panels, strict=True):
            if ax.has_data():
                ax.legend(fontsize=8)
            else:  # e.g. compression of blocks without subspaces
                ax.text(0.5, 0.5, "not applicable", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel("block index within its stage (0-based, as in the table)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(ylabel)
            ax.grid(linestyle="--", color="lightgray")
        if title:
            fig.suptitle(title)
        return fig


def _check_normalize(normalize: str) -> str:
    if normalize not in ("unit", "none"):
        raise ValueError(f"normalize must be 'unit' (each token scaled to unit l2 norm) or 'none', got {normalize!r}")
    return normalize


def default_model_images(model: nn.Module, count: int | None = None) -> torch.Tensor:
    """The embedded sample photos at the model's image size, ImageNet-normalised (B, 3, H, W).

    Args:
        model: the model whose image size (and channels) the photos are made for.
        count: how many photos (``None``: all).

    Raises:
        ValueError: the model expects non-square images (the photos are square: pass your own images).
    """
    h, w = encoder_of(model).patch_embed.img_size
    if h != w:
        raise ValueError(f"the sample photos are square; this model expects {h}x{w} images, pass images=")
    return normalize_images(default_images(h, count))


class _Recorder:
    """Forward hooks that measure each block as soon as it has run (nothing is kept but numbers)."""

    def __init__(self, eps: float, normalize: str, include_class_token: bool, prefix: int) -> None:
        self.eps, self.normalize, self.include, self.prefix = eps, normalize, include_class_token, prefix
        self.skip = 0  # leading tokens left out of the block being measured
        self.rows: list[Row] = []
        self.handles: list[Any] = []

    def tokens(self, t: torch.Tensor) -> torch.Tensor:
        return _check_tokens(t[:, self.skip :].detach(), "block tokens")  # once per tensor, not per measure

    def rate_tokens(self, t: torch.Tensor, checked: bool = False) -> torch.Tensor:
        t = t if checked else self.tokens(t)
        return _unit_tokens(t) if self.normalize == "unit" else t.to(torch.float64)

    def attach(self, stage: str, index: int, blk: nn.Module) -> None:
        probes: BlockProbes = require(blk, "probes", f"{stage} block {index}", "analyse")()
        record: dict[str, torch.Tensor] = {}  # this block's probe points until its output arrives

        def tap(name: str, probe: Probe) -> None:
            if probe.module is blk and probe.side == "output":
                return  # the block output is passed to ``done`` directly
            if probe.side == "input":
                hook = probe.module.register_forward_pre_hook(lambda _m, args: record.__setitem__(name, args[0]))
            else:
                hook = probe.module.register_forward_hook(lambda _m, _a, out: record.__setitem__(name, out))
            self.handles.append(hook)

        def done(_m: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> None:
            self.rows.append(self.measure(stage, index, probes, record, out))
            record.clear()

        if probes.compression is not None:
            tap("before", probes.compression[0])
            tap("after", probes.compression[1])
        if probes.sparse_code is not None:
            tap("code", probes.sparse_code)
        self.handles.append(blk.register_forward_hook(done))

    def measure(
        self, stage: str, index: int, probes: BlockProbes, record: dict[str, torch.Tensor], out: torch.Tensor
    ) -> Row:
        row: Row = dict.fromkeys(COLUMNS)
        row.update(stage=stage, block=index)
        prefix = self.prefix if probes.num_prefix_tokens is None else probes.num_prefix_tokens
        self.skip = 0 if self.include else prefix
        if probes.compression is not None:
            # before / after the block's compression step (encoder: x -> z; decoder: y -> out), with its U
            before, after = (record.get(k, out) for k in ("before", "after"))
            u = probes.subspaces().detach()
            row["compression_in"] = _compression(self.rate_tokens(before), u, self.eps).mean().item()
            c = _compression(self.rate_tokens(after), u, self.eps)
            row["compression"], row["compression_std"] = c.mean().item(), c.std(correction=0).item()
        raw = self.tokens(out)
        r = _coding_rate(self.rate_tokens(raw, checked=True), self.eps)
        sparse = self.tokens(record["code"]) if "code" in record else raw  # e.g. CRATE-alpha: the code, not out
        s = (sparse == 0).to(torch.float64).mean(dim=(-2, -1))  # = sparsity(sparse), per image
        row["coding_rate"], row["coding_rate_std"] = r.mean().item(), r.std(correction=0).item()
        row["sparsity"], row["sparsity_std"] = s.mean().item(), s.std(correction=0).item()
        row["l1"] = sparse.to(torch.float64).abs().sum(-1).mean().item()  # = l1_norm(sparse).mean()
        return row

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def layerwise_stats(
    model: nn.Module,
    images: torch.Tensor | None = None,
    eps: float = 0.5,
    normalize: str = "unit",
    include_class_token: bool = True,
    mask_ratio: float = 0.0,
    noise: torch.Tensor | None = None,
) -> LayerwiseStats:
    r"""Measure compression, sparsity and coding rate at every block of ``model`` on ``images``.

    Args:
        model: a CRATE, CRATE-MAE or ViT-MAE model (any ``TokenEncoder`` / ``MaskedAutoencoder``).
        images: normalised (B, C, H, W) images; ``None``: the embedded sample photos at the model's
            size, ImageNet-normalised.
        eps: coding precision of ``R`` and ``R^c``.
        normalize: ``'unit'`` (tokens scaled to unit l2 norm before rates) or ``'none'``.
        include_class_token: measure the class token with the patch tokens (MSSA acts on both).
        mask_ratio, noise: masking of a masked autoencoder's input (default 0: whole images, the
            representation used downstream).

    Returns:
        ``LayerwiseStats`` with one row per block, encoder first (``to_markdown()``, ``to_csv()``, ``plot()``).
    """
    normalize = _check_normalize(normalize)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    if images is None:
        images = default_model_images(model)
    image_geometry(model, images)
    encoder = encoder_of(model)
    recorder = _Recorder(float(eps), normalize, include_class_token, encoder.num_prefix_tokens)
    stacks = block_stacks(model)
    try:
        for stage, blocks in stacks.items():
            for i, blk in enumerate(blocks):
                recorder.attach(stage, i, blk)
        with evaluating(model):
            run(
                model,
                images.to(next(model.parameters()).device),
                decoder="decoder" in stacks,
                mask_ratio=mask_ratio,
                noise=noise,
            )
    finally:
        recorder.remove()
    order = {s: k for k, s in enumerate(stacks)}
    rows = sorted(recorder.rows, key=lambda r: (order[r["stage"]], r["block"]))
    info = dict(
        model=type(model).__name__,
        num_images=int(images.shape[0]),
        image_size=tuple(images.shape[-2:]),
        eps=float(eps),
        normalize=normalize,
        include_class_token=include_class_token,
        mask_ratio=mask_ratio,
    )
    return LayerwiseStats(rows=rows, info=info)


def write_layerwise(stats: LayerwiseStats, folder: str | os.PathLike[str], title: str | None = None) -> dict[str, Path]:
    """``layerwise.md``, ``layerwise.csv`` and ``layerwise.png`` in ``folder`` (each written atomically)."""
    folder = Path(folder)
    return dict(
        markdown=write_text(stats.to_markdown() + "\n" + LEGEND, folder / "layerwise.md"),
        csv=write_text(stats.to_csv(), folder / "layerwise.csv"),
        plot=save_png(stats.plot(title=title), folder / "layerwise.png"),
    )
