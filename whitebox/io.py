"""Files written whole or not at all: a crash, ``kill -9`` or a full disk leaves the old file or the new one.

The new content goes to a temporary file in the target's folder (``.NAME.*.tmp``), is fsync'ed,
then ``os.replace``'d over the target (atomic on POSIX), and the folder is fsync'ed. A write that
fails (a full disk, a quota) removes its temporary file and says which file, why, and how much
space is left; the previous file is untouched.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "json_line", "jsonable", "write_json"]


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, not safe to toggle per write


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # the mode a plain open() would give (mkstemp makes it owner-only)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise OSError(
            f"could not write {path}: {err} ({free / 2**20:.1f} MiB free on that file system; a full disk or a "
            "quota?). The previous file, if any, is unchanged."
        ) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def jsonable(obj: Any) -> Any:
    """Plain, strict JSON values (RFC 8259): a non-finite float (NaN, +-Infinity, which RFC 8259 has no
    words for and jq or a browser reject) becomes ``null``, as JavaScript's ``JSON.stringify`` writes it;
    NumPy and torch scalars become numbers; paths and other objects become strings."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    item = getattr(obj, "item", None)  # a NumPy or torch scalar
    if callable(item) and getattr(obj, "ndim", None) == 0:
        return jsonable(item())
    return str(obj)


def json_line(obj: Any) -> str:
    """``obj`` as one line of strict JSON (see :func:`jsonable`), without the newline."""
    return json.dumps(jsonable(obj), allow_nan=False)


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``obj`` as indented strict JSON (see :func:`jsonable`), atomically."""
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
