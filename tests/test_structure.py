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
