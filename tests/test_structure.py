"""Imports point one way: no family model file imports another that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "whitebox" / "models"


def _imports(path: Path) -> set[str]:
    """The sibling modules of whitebox.models that ``path`` imports (at any depth of the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
    return out


def test_model_modules_import_without_cycles() -> None:
    graph = {p.stem: _imports(p) & {q.stem for q in MODELS.glob("*.py")} for p in MODELS.glob("*.py")}
    graph.pop("__init__")
    assert "crate_mae" not in graph["crate"]  # the former cycle: crate's filter reads CRATE-MAE files
    assert graph["_official"] <= {"_adapt"}  # the converters are a leaf

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        for nxt in graph.get(node, ()):
            visit(nxt, (*path, node))

    for start in graph:
        visit(start, ())


def test_forwarding_constructors_list_every_argument_once() -> None:
    """Families state only what differs from what they forward to; the signature still lists everything."""
    import inspect

    from whitebox.models import CRATE, CrateAlpha, CrateMAE, TokenEncoder, ViTMAE

    encoder = inspect.signature(TokenEncoder).parameters
    for cls, fixed in (
        (CRATE, {"block_fn", "block_kwargs"}),
        (CrateAlpha, {"block_fn", "block_kwargs", "embed_layer", "pos_embed", "final_norm", "fc_norm"}),
        (ViTMAE, {"block_fn", "block_kwargs", "embed_layer", "pos_embed", "final_norm"}),
    ):
        params = inspect.signature(cls).parameters
        assert set(encoder) - fixed <= set(params), cls
        assert not fixed & set(params), cls
        assert all(p.kind is p.KEYWORD_ONLY for p in params.values()), cls
    crate_mae = inspect.signature(CrateMAE).parameters
    assert crate_mae["lambd"].default == 0.5 and crate_mae["num_classes"].default == 0  # its own defaults
    assert crate_mae["eta"].default == inspect.signature(CRATE).parameters["eta"].default  # CRATE's
    assert "embed_layer" not in crate_mae


def test_forwarded_arguments_reach_the_encoder() -> None:
    import pytest

    import whitebox
    from whitebox.models import CRATE, CrateMAE

    kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
    mae = whitebox.create_model("crate_mae_tiny", **kw, drop_path_rate=0.2, eta=0.3, decoder_depth=1)
    assert mae.encoder.blocks[1].drop_path.drop_prob == pytest.approx(0.2)
    assert mae.encoder.blocks[0].ista.eta == 0.3 and mae.encoder.blocks[0].ista.lambd == 0.5
    assert len(mae.decoder_blocks) == 1 and mae.decoder_pred.out_features == 8 * 8 * 3
    assert whitebox.create_model("vit_mae_base", **kw, decoder_num_heads=4).decoder_pred.out_features == 192
    with pytest.raises(TypeError, match="positional"):
        CRATE(224)  # keyword arguments only: a positional value cannot land on the wrong argument
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['depht'\]; allowed: .*depth"):
        whitebox.create_model("crate_mae_tiny", depht=2)
    assert isinstance(CrateMAE(**kw).encoder, CRATE)
