"""benchmarks/attention.py runs every layer at every size and reports ratios to MSSA (a tiny, fast setting)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def test_attention_benchmark_smoke(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import attention

    out = tmp_path / "rows.json"
    threads = torch.get_num_threads()
    try:
        rows = attention.main(
            [
                "--dim",
                "32",
                "--heads",
                "2",
                "--tokens",
                "16",
                "64",
                "--rounds",
                "2",
                "--warmup",
                "0",
                "--json",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    layers = ["MSSA (SDPA)", "TSSA", "CBSA", "timm Attention"]
    assert [(r["tokens"], r["layer"]) for r in rows] == [(n, name) for n in (16, 64) for name in layers]
    assert all(r["ms"] > 0 and len(r["seconds"]) == 2 and r["saved_mib"] > 0 for r in rows)
    assert all(r["time_vs_mssa"] == 1.0 and r["saved_vs_mssa"] == 1.0 for r in rows if r["layer"] == "MSSA (SDPA)")
    assert json.loads(out.read_text())["rows"][0]["layer"] == "MSSA (SDPA)"
    printed = capsys.readouterr().out
    assert "| N | layer | fwd+bwd ms | time / MSSA |" in printed and "| 64 | CBSA |" in printed
