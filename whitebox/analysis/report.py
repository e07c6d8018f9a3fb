"""A small report folder: layer-wise table and plot, attention maps, PCA, reconstructions, index.html."""

from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models._mae import MaskedAutoencoder
from ._model import block_stacks
from .attention import attention_figure, attention_maps
from .figures import reconstruction_grid
from .images import to_uint8, write_text
from .layerwise import COLUMNS, LayerwiseStats, layerwise_stats, write_layerwise
from .pca import feature_pca, pca_figure

__all__ = ["write_report"]


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"report folder {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"report folder {out_dir} is not empty; choose another or pass overwrite=True (--overwrite)")


def _has_maps(blocks: nn.Sequential) -> bool:
    """Every block names a layer with attention-like maps (``probes().maps``, see ``whitebox.layers.declare``)."""
    return all(callable(getattr(b, "probes", None)) and b.probes().maps is not None for b in blocks)


def _provenance_html(provenance: dict[str, Any]) -> str:
    items = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape('-' if v is None else str(v))}</li>" for k, v in provenance.items()
    )
    return f"<p>What was analysed:</p><ul>{items}</ul>"


def _table_html(stats: LayerwiseStats) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "<td>-</td>"
        if isinstance(v, float):
            return f"<td>{v:.4f}</td>" if math.isfinite(v) else f"<td>{v}</td>"
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(cell(r[c]) for c in COLUMNS) + "</tr>" for r in stats.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    images: torch.Tensor,
    name: str = "",
    mask_ratio: float = 0.75,
    max_images: int = 4,
    eps: float = 0.5,
    seed: int = 0,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    pixel_stats: str = "patch",
) -> Path:
    """Write the white-box report of ``model`` on ``images`` (normalised, (B, 3, H, W)) to ``out_dir``.

    Files: ``layerwise.{md,csv,png}`` (all images), ``attention_<i>.png`` (CRATE models: every
    encoder block and head, class-token query), ``pca.png`` (PCA of the patch tokens after the
    first, middle and last encoder block), ``reconstruction.png`` (masked autoencoders, at
    ``mask_ratio``), ``report.json`` (what was analysed and how, strict JSON), and ``index.html``
    showing them. Pictures use the first ``max_images`` images. Every file is written atomically; a
    non-empty ``out_dir`` needs ``overwrite=True``.

    ``provenance`` (model, weights, checkpoint, step, images ...) is shown at the top of the page and
    written to ``report.json``. ``pixel_stats`` is how ``norm_pix_loss`` reconstructions are
    un-normalised (``'patch'``: MAE's convention, which uses hidden pixels; ``'visible'``: leak-free;
    see ``MAEReconstruction``); the page says which.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"max_images must be a positive int, got {max_images!r}")
    start = time.perf_counter()
    label = name or type(model).__name__
    stats = layerwise_stats(model, images, eps=eps)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_layerwise(stats, out_dir, title=f"{label}: layer-wise measurements on {len(images)} images")

    shown = images[:max_images]
    pictures = to_uint8(shown)
    sections: list[str] = []
    stacks = block_stacks(model)
    scale = max(1, 128 // max(images.shape[-2:]))  # tiny test images stay legible
    encoder_blocks = stacks["encoder"]

    if _has_maps(encoder_blocks):
        maps, names = attention_maps(model, shown, stage="encoder", return_names=True)
        kinds = sorted(set(names))
        what = (
            "attention of the class token over the patches"
            if kinds == ["attention"]
            else f"{' / '.join(kinds)} of each patch (mean over the layer's rows)"
        )
        figs = []
        for b in range(len(shown)):
            attention_figure(
                pictures[b],
                maps[b],
                path=out_dir / f"attention_{b}.png",
                scale=scale,
                max_side=112,
                title=f"image {b}: encoder {what}",
            )
            figs.append(f'<img src="attention_{b}.png" alt="attention maps of image {b}">')
        sections.append(
            f"<h2>Attention maps (encoder: {html.escape(what)})</h2><p>A row per encoder block (first at the "
            "top): the image, then one map per head (each map scaled by its own range); blocks are numbered "
            "from 0 as in the table.</p>" + "".join(figs)
        )
    else:
        sections.append(
            "<h2>Attention maps</h2><p>Not available: this model's blocks do not use subspace attention "
            "(MSSA), whose explicit path provides the maps.</p>"
        )

    depth = len(encoder_blocks)
    pca_blocks = sorted({0, depth // 2, depth - 1})
    pcas = feature_pca(model, shown, stage="encoder", block=pca_blocks)
    pca_figure(
        pictures, list(pcas), path=out_dir / "pca.png", scale=scale, col_labels=[f"after block {i}" for i in pca_blocks]
    )
    sections.append(
        "<h2>PCA of patch features</h2><p>The image, then the top three principal components of the patch tokens "
        f"as RGB after encoder blocks {', '.join(str(i) for i in pca_blocks)} (PCA fitted on all shown images).</p>"
        '<img src="pca.png" alt="PCA of patch features">'
    )

    if isinstance(model, MaskedAutoencoder):
        reconstruction_grid(
            model,
            shown,
            mask_ratio=mask_ratio,
            seed=seed,
            path=out_dir / "reconstruction.png",
            scale=scale,
            pixel_stats=pixel_stats,
            labels=True,
        )
        if not model.norm_pix_loss:
            how = "The model predicts pixels directly (no norm_pix_loss)."
        elif pixel_stats == "patch":
            how = (
                "The model predicts each patch normalised by its own mean and std (norm_pix_loss); as in MAE's "
                "figures, every patch is shown un-normalised with its own TRUE mean and std, which for removed "
                "patches come from the hidden pixels: the reconstruction of hidden patches borrows their true "
                "brightness and contrast (pengzhiliang/MAE-pytorch#40). --pixel-stats visible shows the leak-free view."
            )
        else:
            how = (
                "The model predicts each patch normalised by its own mean and std (norm_pix_loss); removed patches "
                "are shown un-normalised with the average statistics of the visible patches (leak-free: nothing "
                "shown depends on hidden pixels), visible ones with their own."
            )
        sections.append(
            f"<h2>Masked reconstruction (mask ratio {mask_ratio})</h2><p>Masked input, reconstruction, visible "
            f"patches pasted over it, original. {html.escape(how)}</p>"
            '<img src="reconstruction.png" alt="reconstructions">'
        )

    params = sum(p.numel() for p in model.parameters())
    info = ", ".join(f"{k}={v}" for k, v in stats.info.items())
    size = f"{images.shape[-2]}x{images.shape[-1]}"
    body = "".join(sections)
    record = dict(provenance or {}, num_images=len(images), image_size=[images.shape[-2], images.shape[-1]])
    record.update(measured={k: (list(v) if isinstance(v, tuple) else v) for k, v in stats.info.items()})
    if isinstance(model, MaskedAutoencoder):
        record.update(
            mask_ratio=mask_ratio, seed=seed, norm_pix_loss=bool(model.norm_pix_loss), pixel_stats=pixel_stats
        )
    write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", out_dir / "report.json")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>whitebox report: {html.escape(label)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
img{{max-width:100%;display:block;margin:0.5em 0}}</style></head><body>
<h1>White-box report: {html.escape(label)}</h1>
{_provenance_html(provenance) if provenance else ""}
<p>{type(model).__name__}, {params / 1e6:.2f}M parameters, {len(images)} images of {size},
written in {time.perf_counter() - start:.1f} s.</p>
<h2>Layer-wise measurements</h2>
<p>compression = R<sup>c</sup> against the block's subspaces U after its MSSA step (compression_in: before it);
sparsity = fraction of exact zeros in the block output (CRATE-alpha: in its sparse code);
coding_rate = R of the block output; l1 = mean l1 norm (sum of absolute values) of one token of the block
output (CRATE-alpha: of its sparse code), the size of the code the sparsity is measured on;
means over images, *_std their standard deviations. Blocks are numbered from 0 within each stage
(encoder, then decoder), in the table and in the plot alike.
Measured with {html.escape(info)}.
Files: <a href="layerwise.md">layerwise.md</a>, <a href="layerwise.csv">layerwise.csv</a>.</p>
{_table_html(stats)}
<img src="layerwise.png" alt="layer-wise plot">
{body}
</body></html>
"""
    write_text(page, out_dir / "index.html")
    return out_dir
