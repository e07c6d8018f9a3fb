"""Image folders: class sub-folders (label = index of the folder name) or images directly inside one folder.

The walk follows symbolic links but enters each real folder once and takes each real file once (by its
device and inode, so a symbolic or a hard link to a photo already taken is skipped), so a link loop or
a second path to the same photo does not multiply the data. Files that are not used
(no image extension, a second path to a file already taken) are kept in ``skipped_files`` as
``(path, reason)`` and counted in one warning when the folder is opened.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .base import LabelError, open_image

__all__ = ["IMG_EXTENSIONS", "ClassFolder", "FlatImageFolder", "image_folder"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _dir_id(path: str | Path) -> tuple[int, int]:
    """(st_dev, st_ino) of the file or folder ``path`` leads to: its identity across links."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk(
    root: Path, seen_files: dict[tuple[int, int], Path], seen_dirs: set[tuple[int, int]], skipped: list[tuple[str, str]]
) -> list[Path]:
    """Image files under ``root`` (links followed, each real folder and file once), sorted by path.

    ``seen_dirs`` holds the folders already read or reserved (the dataset root, every class folder), so
    a link into one of them is not followed."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if dirpath != str(root):
            if _dir_id(dirpath) in seen_dirs:
                skipped.append((dirpath, "a link to a folder already read (a link loop or a second path)"))
                dirnames[:] = []
                continue
            seen_dirs.add(_dir_id(dirpath))
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() not in IMG_EXTENSIONS:
                skipped.append((str(path), f"not an image file by its extension ({', '.join(IMG_EXTENSIONS)})"))
                continue
            if not os.path.isfile(path):
                skipped.append((str(path), "a link that points nowhere"))
                continue
            real = _dir_id(path)  # (device, inode): one file however many symbolic or hard links reach it
            if real in seen_files:
                skipped.append((str(path), f"the same file as {seen_files[real]}"))
                continue
            seen_files[real] = path
            found.append(path)
    return found


def _report(root: Path, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        shown = "; ".join(f"{p} ({why})" for p, why in skipped[:5])
        more = f"; and {len(skipped) - 5} more (dataset.skipped_files)" if len(skipped) > 5 else ""
        print(f"warning: {root}: {len(skipped)} files not used: {shown}{more}", file=sys.stderr)


class ClassFolder(Dataset):
    """``root/CLASS/**/IMAGE`` with label = index of CLASS in ``classes``.

    ``classes``: the names to number by (another split's ``classes``, so that a class has the same label
    in training and test data); default: this folder's sub-folders, sorted. A sub-folder whose name is
    not among ``classes`` is a ``LabelError`` naming it.
    """

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        own = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.classes = list(classes) if classes is not None else own
        unknown = [c for c in own if c not in self.classes]
        if unknown:
            raise LabelError(
                f"{self.root} has classes that the training data does not: {unknown}; known: {self.classes}"
            )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.skipped_files: list[tuple[str, str]] = []
        seen: dict[tuple[int, int], Path] = {}
        seen_dirs = {_dir_id(self.root), *(_dir_id(self.root / c) for c in own)}
        self.files: list[Path] = []
        labels: list[int] = []
        for c in own:
            files = _walk(self.root / c, seen, seen_dirs, self.skipped_files)
            self.files += files
            labels += [self.class_to_idx[c]] * len(files)
        for p in self.root.iterdir():
            if p.is_file():
                self.skipped_files.append((str(p), "a file beside the class folders (not in a class)"))
        if not self.files:
            raise FileNotFoundError(
                f"{self.root}: the class folders {own} hold no images ({', '.join(IMG_EXTENSIONS)})"
            )
        self.labels = np.asarray(labels, dtype=np.int64)
        self.samples = [(str(f), int(k)) for f, k in zip(self.files, self.labels, strict=True)]  # ImageFolder's
        self.targets = self.labels
        _report(self.root, self.skipped_files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return open_image(self.files[i]), int(self.labels[i])

    def describe(self, i: int) -> str:
        """The path of the file item ``i`` is read from, for error messages."""
        return str(self.files[i])


class FlatImageFolder(Dataset):
    """Unlabelled images directly inside one folder (label -1), for pretraining on your own photos."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.skipped_files: list[tuple[str, str]] = []
        seen: dict[tuple[int, int], Path] = {}
        self.files = []
        for p in sorted(self.root.iterdir()):
            if p.suffix.lower() not in IMG_EXTENSIONS:
                self.skipped_files.append((str(p), "not an image file by its extension"))
            elif not p.is_file():
                self.skipped_files.append((str(p), "a link that points nowhere"))
            elif (real := _dir_id(p)) in seen:
                self.skipped_files.append((str(p), f"the same file as {seen[real]}"))
            else:
                seen[real] = p
                self.files.append(p)
        if not self.files:
            raise FileNotFoundError(
                f"{root} holds no class sub-folders and no images with the extensions {', '.join(IMG_EXTENSIONS)}"
            )
        self.labels = np.full(len(self.files), -1, dtype=np.int64)
        _report(self.root, self.skipped_files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return open_image(self.files[i]), -1

    def describe(self, i: int) -> str:
        """The path of the file item ``i`` is read from, for error messages."""
        return str(self.files[i])


def image_folder(path: Path, classes: Sequence[str] | None = None) -> Dataset:
    """``ClassFolder`` when ``path`` has class sub-folders, else the images directly inside it."""
    if any(p.is_dir() for p in path.iterdir()):
        return ClassFolder(path, classes)
    return FlatImageFolder(path)
