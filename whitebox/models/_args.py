"""Model arguments checked up front: a clear error with the allowed range, before anything is allocated.

The bounds are far beyond any published model; they catch typos (``embed_dim=1e7``, a string from a
config file, ``depth=-1``) before they become a minute of allocation and an out-of-memory error.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

MAX_WIDTH, MAX_DEPTH, MAX_IMAGE = 16384, 512, 16384


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; bools, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer in [{low}, {high}], got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value}")
    return value


def check_float(name: str, value: Any, low: float, high: float = math.inf, open_low: bool = False) -> float:
    """``value`` as a finite float in [low, high] (or (low, high])."""
    bracket = "(" if open_low else "["
    allowed = f"{bracket}{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in {allowed}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value < low or (open_low and value == low) or value > high:
        raise ValueError(f"{name} must be a finite number in {allowed}, got {value}")
    return float(value)


def check_image_size(img_size: Any, patch_size: Any) -> tuple[int, int]:
    """``img_size`` (int or (H, W)) divisible by ``patch_size``, as a pair."""
    size = (img_size, img_size) if isinstance(img_size, int) and not isinstance(img_size, bool) else img_size
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"img_size must be an integer or a pair (H, W), got {img_size!r}")
    h, w = (check_int("img_size", s, 1, MAX_IMAGE) for s in size)
    p = check_int("patch_size", patch_size, 1, min(h, w))
    if h % p or w % p:
        raise ValueError(f"img_size {(h, w)} is not divisible by patch_size {p}; use a size that is a multiple of it")
    return h, w


def check_width(embed_dim: Any, num_heads: Any, multiple: int = 1) -> None:
    """A width divisible by the heads (and by ``multiple``, e.g. 4 for 2-D sin-cos positions)."""
    d = check_int("embed_dim", embed_dim, 1, MAX_WIDTH)
    h = check_int("num_heads", num_heads, 1, d)
    if d % h:
        raise ValueError(f"embed_dim ({d}) must be divisible by num_heads ({h}); each head takes embed_dim / num_heads")
    if d % multiple:
        raise ValueError(f"embed_dim ({d}) must be divisible by {multiple} for fixed 2-D sin-cos positions")


def check_rates(**rates: Any) -> None:
    """Dropout-like rates in [0, 1)."""
    for name, value in rates.items():
        if check_float(name, value, 0.0, 1.0) >= 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def forwards_to(parent: Callable[..., Any], fixed: tuple[str, ...] = ()) -> Callable[[T], T]:
    """Class decorator for a constructor ``__init__(self, *, own=..., **kwargs)`` that forwards ``kwargs``.

    The class's ``__signature__`` becomes its own keyword arguments followed by ``parent``'s (except
    ``fixed``, the ones the class sets itself, and those it restates with its own default), so that
    ``inspect.signature``, the registry's unknown-argument check and docs still list every argument
    and default, while the code states only what differs from ``parent``.
    """

    def decorate(cls: T) -> T:
        skip = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        own = [p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self" and p.kind not in skip]
        names = {p.name for p in own} | set(fixed)
        inherited = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for n, p in inspect.signature(parent).parameters.items()
            if n != "self" and n not in names and p.kind not in skip
        ]
        cls.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + inherited)
        return cls

    return decorate


def forwarded(kwargs: dict[str, Any], parent: Callable[..., Any], name: str) -> Any:
    """The value ``parent`` will get for ``name``: the caller's, else ``parent``'s default."""
    return kwargs[name] if name in kwargs else inspect.signature(parent).parameters[name].default
