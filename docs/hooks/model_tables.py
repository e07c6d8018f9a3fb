"""Model and weight tables for the documentation, generated from the registry (nothing typed by hand).

``docs/hooks/model_tables.py`` is an MkDocs hook (``hooks:`` in ``mkdocs.yml``): a page that holds
``<!-- whitebox:models -->`` gets one table per model family, and ``<!-- whitebox:weights -->`` the
table of pretrained tags. A new family or tag appears on the next build without editing a page.
``tests/test_docs.py`` checks every cell against the registry.

Run ``python docs/hooks/model_tables.py`` to print both tables.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Any

MODELS_MARKER = "<!-- whitebox:models -->"
WEIGHTS_MARKER = "<!-- whitebox:weights -->"

# a page's note for readers of the raw Markdown (GitHub), dropped from the site where the tables are shown
_RAW_ONLY = re.compile(r"^\*Reading this file outside the site.*\*\n?", re.M)

# "published ImageNet-1K top-1 81.2" in a record's notes: the records have no field for a metric (timm's neither)
# "published ImageNet-1K top-1 81.2" or "Published: top-1 73.4" (the data set then named elsewhere in the note)
_TOP1 = re.compile(r"[Pp]ublished(?: (?P<data>ImageNet-\w+))?:? top-1 (?P<value>\d+(?:\.\d+)?)")
_DATA = re.compile(r"ImageNet-\w+")


@dataclasses.dataclass(frozen=True)
class ModelRow:
    """One architecture as the registry builds it (at its default size, forward mode FLOPs)."""

    name: str
    family: str
    width: int  # model.num_features (timm's contract)
    heads: int | None  # the first encoder block's attn.num_heads
    depth: str  # encoder blocks, "/ decoder blocks" for a masked autoencoder
    patch: int | None
    params: int  # trainable parameters
    flops: int | None  # whitebox.flops.count_flops(model, mode="forward").total, per image; None: not countable
    tokens: int | None  # sequence length the blocks see (from the FLOP count)
    input_size: tuple[int, ...]
    tags: tuple[str, ...]
    paper: str


@dataclasses.dataclass(frozen=True)
class WeightsRow:
    """One pretrained tag and where its weights come from."""

    tag: str
    source: str
    license: str
    top1: str
    params: int
    paper: str


def _build(name: str) -> Any:
    import torch

    import whitebox

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return whitebox.create_model(name)


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _paper(cfg: Any) -> str:
    if cfg is None or not cfg.paper_ids:
        return "-"
    ids = cfg.paper_ids if isinstance(cfg.paper_ids, (list, tuple)) else [cfg.paper_ids]
    links = []
    for pid in ids:
        m = re.fullmatch(r"arXiv:(\d{4}\.\d{4,5})", pid)
        links.append(f"[{pid}](https://arxiv.org/abs/{m.group(1)})" if m else pid)
    return ", ".join(links)


def published_top1(cfg: Any) -> str:
    """``'81.2 (ImageNet-1K)'`` from a record's notes, or ``'-'`` when the record publishes none."""
    notes = cfg.notes if isinstance(cfg.notes, (list, tuple)) else [cfg.notes or ""]
    for note in notes:
        if m := _TOP1.search(note):
            data = m.group("data") or next(iter(_DATA.findall(note)), None)  # "Official CBT-B ImageNet-1K release"
            return f"{m.group('value')} ({data})" if data else m.group("value")
    return "-"


def source(cfg: Any) -> str:
    """Where a tag's file comes from, as the record says (Hub repo and file, Drive id, URL or local file)."""
    if cfg.hf_hub_id:
        return f"Hugging Face Hub `{cfg.hf_hub_id}`" + (f", `{cfg.hf_hub_filename}`" if cfg.hf_hub_filename else "")
    if getattr(cfg, "gdrive_id", None):
        return f"Google Drive `{cfg.gdrive_id}`"
    if cfg.url:
        return f"<{cfg.url}>"
    if cfg.file:
        return f"file `{cfg.file}`"
    return "-"


def _shape(model: Any) -> tuple[int, int | None, str, int | None]:
    """Width, heads, depth and patch size, read from the timm interface every family keeps."""
    encoder = getattr(model, "encoder", model)  # a masked autoencoder answers through its encoder
    heads = getattr(getattr(encoder.blocks[0], "attn", None), "num_heads", None)
    depth = str(len(encoder.blocks))
    if (decoder := getattr(model, "decoder_blocks", None)) is not None:
        depth += f" / {len(decoder)}"
    patch = getattr(getattr(encoder, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    return int(model.num_features), heads, depth, patch


def model_rows() -> list[ModelRow]:
    """Every registered architecture, in ``list_models()`` order."""
    import whitebox
    from whitebox.flops import count_flops

    rows = []
    for name in whitebox.list_models():
        model = _build(name)
        try:
            count = count_flops(model, mode="forward")
        except TypeError:  # a block or stem whitebox.flops does not know yet: say so on the page, not fail
            count = None
        cfg = whitebox.get_pretrained_cfg(name)
        family = whitebox.model_entrypoint(name).__module__.rsplit(".", 1)[-1]
        width, heads, depth, patch = _shape(model)
        rows.append(
            ModelRow(
                name=name,
                family=family,
                width=width,
                heads=heads,
                depth=depth,
                patch=patch,
                params=_params(model),
                flops=count.total if count else None,
                tokens=count.tokens if count else None,
                input_size=tuple(cfg.input_size) if cfg else (),
                tags=tuple(t for t in whitebox.list_pretrained(f"{name}.*") if t.split(".", 1)[0] == name),
                paper=_paper(cfg),
            )
        )
    return rows


def weights_rows() -> list[WeightsRow]:
    """Every pretrained tag, in ``list_pretrained()`` order."""
    import whitebox

    rows = []
    for tag in whitebox.list_pretrained():
        cfg = whitebox.get_pretrained_cfg(tag)
        rows.append(
            WeightsRow(
                tag=tag,
                source=source(cfg),
                license=cfg.license or "-",
                top1=published_top1(cfg),
                params=_params(_build(tag.split(".", 1)[0])),
                paper=_paper(cfg),
            )
        )
    return rows


def _family_summary(family: str) -> str:
    import importlib

    doc = (importlib.import_module(f"whitebox.models.{family}").__doc__ or "").strip().splitlines()
    return doc[0].rstrip(".") + "." if doc else ""


def models_markdown(rows: list[ModelRow] | None = None) -> str:
    """One table per family (the entrypoint's module), families in the order they first appear."""
    rows = model_rows() if rows is None else rows
    out = []
    for family in dict.fromkeys(r.family for r in rows):
        members = [r for r in rows if r.family == family]
        papers = ", ".join(dict.fromkeys(r.paper for r in members if r.paper != "-")) or "-"
        out += [
            f"### `{family}`",
            "",
            f"{_family_summary(family)} Paper: {papers}; module `whitebox.models.{family}`.",
            "",
            "| model | width | heads | depth | patch | input | tokens | parameters | GFLOP / image | pretrained tags |",
            "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | --- |",
        ]
        for r in members:
            size = "x".join(str(s) for s in r.input_size[1:]) or "-"
            tags = ", ".join(f"`.{t.split('.', 1)[1]}`" for t in r.tags) or "-"  # the row names the architecture
            flops = f"{r.flops / 1e9:.2f}" if r.flops is not None else "-"
            out.append(
                f"| `{r.name}` | {r.width} | {r.heads or '-'} | {r.depth} | {r.patch or '-'} | {size} "
                f"| {r.tokens or '-'} | {r.params / 1e6:.2f}M | {flops} | {tags} |"
            )
        if any(r.flops is None for r in members):
            out += ["", "GFLOP `-`: `whitebox.flops.count_flops` does not count this family's layers yet."]
        out.append("")
    return "\n".join(out)


def weights_markdown(rows: list[WeightsRow] | None = None) -> str:
    """The table of pretrained tags: source, licence, published accuracy, parameters, paper."""
    rows = weights_rows() if rows is None else rows
    out = [
        "| tag | source | licence | published top-1 | parameters | paper |",
        "| --- | --- | --- | --- | ---: | --- |",
    ]
    for r in rows:
        out.append(f"| `{r.tag}` | {r.source} | {r.license} | {r.top1} | {r.params / 1e6:.2f}M | {r.paper} |")
    return "\n".join(out) + "\n"


_cache: dict[str, str] = {}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs hook: replace the markers with the generated tables (computed once per build)."""
    if MODELS_MARKER in markdown:
        if "models" not in _cache:
            _cache["models"] = models_markdown()
        markdown = markdown.replace(MODELS_MARKER, _cache["models"])
    if WEIGHTS_MARKER in markdown:
        if "weights" not in _cache:
            _cache["weights"] = weights_markdown()
        markdown = markdown.replace(WEIGHTS_MARKER, _cache["weights"])
    return _RAW_ONLY.sub("", markdown)


def on_startup(**kwargs: Any) -> None:
    """MkDocs hook: ``mkdocs serve`` rebuilds in one process; start each build from the registry again."""
    _cache.clear()


if __name__ == "__main__":
    sys.stdout.write(models_markdown() + "\n" + weights_markdown())
