"""Argument types shared by every whitebox program (recipes, ``python -m whitebox.*``).

Each factory returns an ``argparse`` ``type=`` callable that checks a flag's value when the command
line is parsed, before any work starts, and fails with the allowed values in the message::

    parser.add_argument("--lr", type=number(gt=0))  # --lr inf: must be a finite number > 0, got 'inf'
    parser.add_argument("--seed", type=integer(ge=0, le=2**63 - 1))

This module itself imports neither torch nor timm, so ``--help`` and argument errors answer at once.
Relations between flags (``--min-lr`` at most ``--lr``) are checked by the program with
:func:`require`, which raises ``ValueError`` naming both flags.

A flag that does not define a run (where and how it runs, not what it computes: ``--output``,
``--workers``, ``--log-every``) says so where it is defined, with :func:`free`; a run may resume
with another value of it, while any other changed flag is refused unless ``--force-resume``.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence

__all__ = ["DEVICE_PATTERN", "choice", "device", "integer", "number", "require"]

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")


def _bounds(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    pairs = [(">", gt), (">=", ge), ("<", lt), ("<=", le)]
    return " and ".join(f"{op} {v if isinstance(v, int) else f'{v:g}'}" for op, v in pairs if v is not None)


def _check(value: float, gt: float | None, ge: float | None, lt: float | None, le: float | None) -> bool:
    return not (
        (gt is not None and not value > gt)
        or (ge is not None and not value >= ge)
        or (lt is not None and not value < lt)
        or (le is not None and not value <= le)
    )


def number(
    gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None
) -> Callable[[str], float]:
    """A finite float within the given bounds (``nan`` and ``inf`` are always refused)."""
    rng = _bounds(gt, ge, lt, le)
    want = "a finite number" + (f" {rng}" if rng else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if not math.isfinite(value) or not _check(value, gt, ge, lt, le):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def integer(
    gt: int | None = None, ge: int | None = None, lt: int | None = None, le: int | None = None
) -> Callable[[str], int]:
    """A whole number within the given bounds, written as digits (``1e23`` and ``2.5`` are refused)."""
    rng = _bounds(gt, ge, lt, le)
    want = "a whole number" + (f" {rng}" if rng else "")

    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        value = int(text)
        if not _check(value, gt, ge, lt, le):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def device(text: str) -> str:
    """``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:N``, ``xpu`` or ``xpu:N`` (availability is checked later)."""
    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N, mps, xpu or xpu:N, got {text!r}")
    return text


def choice(allowed: Sequence[str]) -> Callable[[str], str]:
    """One of ``allowed``, listed in the message (``choices=`` would print Python reprs and no metavar)."""

    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}, got {text!r}")
        return text

    parse.__name__ = "choice"
    return parse


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: for relations between flags."""
    if not condition:
        raise ValueError(message)


# a seed goes into torch.manual_seed (seed + rank, up to 2**64 - 1), NumPy (seed mod 2**32) and splitmix64
seed = integer(ge=0, le=2**63 - 1)

# dest names of the flags declared with ``free``; ``whitebox.train.run`` compares every other recorded flag
FREE_FLAGS: set[str] = set()


def free(action: argparse.Action) -> argparse.Action:
    """Declare the flag ``action`` (what ``add_argument`` returns) as one that does not define a run.

    ``free(group.add_argument("--workers", ...))``: resuming with another ``--workers`` is the same run.
    """
    action.defines_run = False  # type: ignore[attr-defined]
    FREE_FLAGS.add(action.dest)
    return action


__all__ += ["FREE_FLAGS", "free", "seed"]  # what the recipes declare about their flags
