"""Metrics output: JSONL rows, TensorBoard when installed, and a progress bar (rank 0 only)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, json_line


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete rows of a JSONL file (a torn last line from a crash is ignored)."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class MetricsLogger:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    Every line is strict JSON (RFC 8259): a non-finite value is written as ``null`` (``whitebox.io.jsonable``).

    A new run starts an empty file. On resume from step ``s``, rows with ``step > s`` (written after
    the checkpoint by a run that then died) are dropped, so the file is the curve of one
    uninterrupted run; ``rows`` instead replaces the file by exactly those rows (the evaluation
    log, which the checkpoint itself carries).
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        resume_step: int | None = None,
        tensorboard: bool = True,
        name: str = "metrics.jsonl",
        rows: list[dict[str, Any]] | None = None,
    ) -> None:
        self.path = Path(output) / name
        if rows is None:
            rows = [] if resume_step is None else [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json_line(r) + "\n" for r in rows))
        self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the run
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(output) / "tb"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        """Append ``row`` as one JSON line (flushed at once); with TensorBoard, also its numbers as scalars
        at ``row['step']``."""
        self._file.write(json_line(row) + "\n")
        self._file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        """Close the JSON-lines file and the TensorBoard writer."""
        self._file.close()
        if self.tb is not None:
            self.tb.close()


class Progress:
    """A tqdm bar (when installed, enabled and ``bar``), else a plain line per metrics row (``--no-progress``)."""

    def __init__(
        self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train", bar: bool = True
    ) -> None:
        self.bar = None
        self.enabled = enabled
        if enabled and bar:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                self.bar = None

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set(self, step: int, total: int, **fields: Any) -> None:
        text = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items() if v is not None}
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
        elif self.enabled:
            print(f"step {step}/{total} " + " ".join(f"{k}={v}" for k, v in text.items()), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
