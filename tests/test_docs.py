"""The documentation: generated model tables equal the registry, the public API has docstrings, and the
README / CI / Makefile agree on the commands. (``mkdocs build --strict`` itself runs in ``.ci/run``.)"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

import whitebox
from whitebox.flops import count_flops

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_PACKAGES = ["whitebox", "whitebox.layers", "whitebox.models", "whitebox.analysis", "whitebox.train", "registry"]
if importlib.util.find_spec("whitebox.data") is not None:
    PUBLIC_PACKAGES.append("whitebox.data")


def _tables_module():
    spec = importlib.util.spec_from_file_location("_docs_model_tables", ROOT / "docs" / "hooks" / "model_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tables():
    return _tables_module()


@pytest.fixture(scope="module")
def models_md(tables):
    return tables.models_markdown()


def _rows(markdown: str) -> list[list[str]]:
    """Body rows of every markdown table in ``markdown``, cells stripped (header and rule rows dropped)."""
    out = []
    for block in re.split(r"\n\s*\n", markdown):
        lines = [ln for ln in block.strip().splitlines() if ln.startswith("|")]
        for ln in lines[2:]:
            out.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return out


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return whitebox.create_model(name)


def test_model_tables_equal_the_registry(models_md):
    markdown = models_md
    rows = _rows(markdown)
    names = [r[0].strip("`") for r in rows]
    assert sorted(names) == whitebox.list_models(), "every registered model, once"
    for cells in rows:
        name = cells[0].strip("`")
        model = _meta(name)
        try:
            count = count_flops(model, mode="forward")
        except TypeError:  # a family whitebox.flops cannot count yet: the table says "-", and only then
            count = None
        encoder = getattr(model, "encoder", model)
        assert cells[1] == str(model.num_features)
        heads = getattr(getattr(encoder.blocks[0], "attn", None), "num_heads", None)  # a block may have no .attn
        assert cells[2] == (str(heads) if heads else "-")
        depth = str(len(encoder.blocks))
        if hasattr(model, "decoder_blocks"):
            depth += f" / {len(model.decoder_blocks)}"
        assert cells[3] == depth, name
        cfg = whitebox.get_pretrained_cfg(name)
        assert cells[5] == f"{cfg.input_size[1]}x{cfg.input_size[2]}"
        assert cells[6] == (str(count.tokens) if count else "-")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert cells[7] == f"{trainable / 1e6:.2f}M", name
        assert cells[8] == (f"{count.total / 1e9:.2f}" if count else "-"), name
        tags = sorted(name + t.strip("`") for t in cells[9].split(", ") if t != "-")  # ".in1k" after the name
        assert tags == sorted(t for t in whitebox.list_pretrained() if t.split(".")[0] == name), name
    families: dict[str, set[str]] = {}  # family module -> its papers
    module_of = {n: whitebox.model_entrypoint(n).__module__ for n in names}
    for n in names:
        families.setdefault(module_of[n], set()).add(whitebox.get_pretrained_cfg(n).paper_ids)
    for module, papers in families.items():
        section = markdown.split(f"### `{module.rsplit('.', 1)[1]}`", 1)[1].split("###", 1)[0]
        assert all(p in section for p in papers), module
        family_rows = {r[0].strip("`") for r in _rows(section)}
        assert family_rows == {n for n in names if module_of[n] == module}


def test_model_tables_known_values(models_md):
    """Anchors from the papers / the design notes, so that a generator that agrees with a wrong registry fails."""
    rows = {r[0].strip("`"): r for r in _rows(models_md)}
    assert rows["crate_mae_base"][7] == "43.75M" and rows["crate_mae_base"][3] == "12 / 12"
    assert rows["crate_base"][7] == "22.80M" and rows["crate_base"][8] == "12.82"
    assert rows["crate_alpha_base_patch16"][8] == "51.86" and rows["crate_alpha_base_patch16"][6] == "197"
    assert rows["vit_mae_base"][3] == "12 / 8"


def test_weights_table_equals_the_records(tables):
    rows = _rows(tables.weights_markdown())
    assert [r[0].strip("`") for r in rows] == whitebox.list_pretrained()
    for tag, source, licence, top1, params, paper in rows:
        cfg = whitebox.get_pretrained_cfg(tag.strip("`"))
        assert licence == cfg.license
        assert (cfg.hf_hub_id or cfg.gdrive_id or cfg.url or cfg.file) in source
        if cfg.hf_hub_filename:
            assert cfg.hf_hub_filename in source
        published = re.findall(r"top-1 (\d+\.\d+)", " ".join(cfg.notes or ()))  # every number the notes give
        assert top1.split()[0] == (published[0] if published else "-"), tag
        model = _meta(tag.strip("`").split(".")[0])
        assert params == f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M"
        assert cfg.paper_ids in paper
    published = {r[0].strip("`"): r[3] for r in rows}
    assert published["crate_alpha_base_patch16.in1k"] == "81.2 (ImageNet-1K)"
    assert published["crate_alpha_large_patch14.in1k"] == "83.9 (ImageNet-1K)"


def test_pages_hold_the_generated_tables(tables):
    """The markers sit on the pages, and the hook replaces them (a page without one would show no table)."""
    models = (ROOT / "docs" / "models.md").read_text()
    weights = (ROOT / "docs" / "pretrained.md").read_text()
    assert tables.MODELS_MARKER in models and tables.WEIGHTS_MARKER in weights
    tables._cache.update(models="MODELS", weights="WEIGHTS")  # what a build computed once
    try:
        rendered = tables.on_page_markdown(models)
        assert "MODELS" in rendered and tables.MODELS_MARKER not in rendered
        assert "Reading this file outside the site" in models and "outside the site" not in rendered
        assert "WEIGHTS" in tables.on_page_markdown(weights)
    finally:
        tables._cache.clear()


def test_published_top1_parsing(tables):
    class Cfg:
        notes = ("Official X: published ImageNet-1K top-1 81.2. eta = 0.1",)

    assert tables.published_top1(Cfg) == "81.2 (ImageNet-1K)"
    Cfg.notes = ("Official CBT-B ImageNet-1K release. Published: top-1 73.4, 15.1 GFLOPs, 25.7M parameters.",)
    assert tables.published_top1(Cfg) == "73.4 (ImageNet-1K)"
    Cfg.notes = ("Some release. Published: top-1 70.0.",)
    assert tables.published_top1(Cfg) == "70.0"
    Cfg.notes = ("no accuracy here",)
    assert tables.published_top1(Cfg) == "-"


def _public_objects():
    """(qualified name, object) for each public class / function of the packages, and each public method or
    property a public class defines itself (inherited torch / timm members are theirs to document)."""
    seen = set()
    for pkg_name in PUBLIC_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        yield pkg_name, pkg
        names = getattr(pkg, "__all__", None) or [n for n in vars(pkg) if not n.startswith("_")]
        for name in names:
            obj = getattr(pkg, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{pkg_name}.{name}", obj
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                    if inspect.isfunction(func):
                        yield f"{pkg_name}.{name}.{attr}", func


def test_public_api_has_docstrings():
    missing = [name for name, obj in _public_objects() if not (obj.__doc__ or "").strip()]
    assert not missing, "public API without a docstring:\n" + "\n".join(missing)


def test_public_api_walk_finds_members():
    """The walk above reaches methods and properties, not only top-level names (else it could never fail)."""
    names = {name for name, _ in _public_objects()}
    assert {"whitebox.layers.ISTA.forward", "whitebox.models.TokenEncoder.forward_features"} <= names
    assert "registry.PretrainedCfg.has_weights" in names
    assert "whitebox.layers.ISTA.__init__" not in names


def test_every_api_package_has_a_page():
    pages = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    for pkg in PUBLIC_PACKAGES:
        assert re.search(rf"^::: {re.escape(pkg)}$", pages, re.M), f"no API page renders {pkg}"


def test_readme_front_page_and_ci_use_the_same_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    # the CPU-only line: torch (and torchvision, which the programs use) from PyTorch's CPU index
    cpu_line = r"^pip install torch (torchvision )?--index-url https://download\.pytorch\.org/whl/cpu"
    assert re.search(cpu_line, readme, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for command in ("make demo", "make test"):
        assert f"\n{command}" in readme, f"README lacks `{command}`"
        assert re.search(rf"^{command.split()[1]}:", makefile, re.M)
    assert re.search(r"^make test$", ci, re.M), ".ci/run must call the README's test command verbatim"
    assert "recipes/pretrain.py" in makefile


def test_nav_lists_every_page():
    """mkdocs only reports pages left out of the nav at INFO level; a page nobody can reach is an error here."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        rel = page.relative_to(ROOT / "docs").as_posix()
        assert rel in nav, f"{rel} is not in mkdocs.yml's nav"


@pytest.mark.parametrize("pkg_name", ["whitebox.layers", "whitebox.models"])
def test_layers_and_models_document_their_arguments(pkg_name):
    """The building blocks and model classes say what each constructor argument is (an ``Args:`` section)."""
    pkg = importlib.import_module(pkg_name)
    missing = []
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        if inspect.isclass(obj) and obj.__init__ is not object.__init__:
            params = [p for p in inspect.signature(obj.__init__).parameters if p not in ("self", "args", "kwargs")]
            doc = (obj.__doc__ or "") + (obj.__init__.__doc__ or "")
            if params and "Args:" not in doc and "Attributes:" not in doc:
                missing.append(name)
    assert not missing, f"{pkg_name}: no Args section for {missing}"
