"""What every source shares: errors, seeds, image decoding, labels and class names.

Decoding (``open_image``) turns any file Pillow reads into 8-bit RGB without silently changing it:
16-bit images (modes ``I;16*``, and ``I`` holding 0..65535) are scaled by 255 / 65535, 32-bit float
images (mode ``F``) must hold values in [0, 1] and are scaled by 255 (anything else is refused by
name), EXIF orientation is applied (as photo viewers and ``ImageOps.exif_transpose`` do), and
transparency is dropped by Pillow's ``convert('RGB')``. A plain RGB JPEG is returned *not yet
decoded*, so that the transforms can decode it with ``torchvision.io`` (``transforms.decode``), which
was measured faster; any pixel access through Pillow decodes it too.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch.utils.data import Dataset

__all__ = [
    "BAD_IMAGE_POLICIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BadImageError",
    "LabelError",
    "RelabelledDataset",
    "SplitNotFoundError",
    "align_labels",
    "dataset_labels",
    "describe_item",
    "mix_seed",
    "open_image",
    "to_rgb",
    "validate_labels",
]

_MASK64 = (1 << 64) - 1
BAD_IMAGE_POLICIES = ("skip", "error")
# what Pillow and the file system raise for a file that is not a readable image
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_ORIENTATION = 0x0112


class BadImageError(ValueError):
    """An image of the dataset cannot be read (and ``on_bad_image='error'``)."""


class LabelError(ValueError):
    """Labels that are not integer class indices 0..K-1 (or differ between training and test data)."""


class SplitNotFoundError(ValueError):
    """A source has no images for the split asked for (a folder without that sub-folder, a one-set file)."""


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 finaliser over the parts)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h >> 1


# ----------------------------------------------------------------------------- decoding
def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode; 16-bit and float images are rescaled, never clipped silently.

    Raises ``ValueError`` for a float image outside [0, 1] or with NaN / inf, and for a 32-bit integer
    image outside 0..65535 (no defined display range).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"a 32-bit integer image with values {arr.min()}..{arr.max()}; only 0..65535 is defined")
        img = Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and not np.isfinite(arr).all():
            raise ValueError("a float image with NaN or infinite pixels")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(
                f"a float image with values {arr.min():g}..{arr.max():g}; float images must hold 0..1 (scaled by 255)"
            )
        img = Image.fromarray(np.rint(arr * 255).astype(np.uint8), "L")
    return img.convert("RGB")


def open_image(source: str | os.PathLike[str] | bytes) -> Image.Image:
    """An RGB image from a file path or encoded bytes (see the module docstring for the conversions).

    A plain RGB JPEG without a rotation in its EXIF comes back not yet decoded (``img.load()`` or any
    pixel access decodes it); everything else is decoded here, so a broken file fails here.
    """
    img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
    orientation = img.getexif().get(_ORIENTATION, 1) if img.format in ("JPEG", "TIFF", "PNG", "WEBP") else 1
    if img.format == "JPEG" and img.mode == "RGB" and orientation == 1:
        return img
    with img:
        img.load()
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        return to_rgb(img).copy() if img.mode == "RGB" else to_rgb(img)


# ----------------------------------------------------------------------------- labels
def max_classes(num_labels: int) -> int:
    """The largest class count a set of ``num_labels`` labels may imply: max(1000, 10 x labels).

    A bound, so that one stray label (2**40, 10**6) is refused before a classifier of that many rows is
    allocated; ImageNet's 1000 classes are allowed for any subset.
    """
    return max(1000, 10 * num_labels)


def validate_labels(labels: Any, source: str, num_images: int | None = None) -> np.ndarray:
    """``labels`` as an int64 array (N,) of class indices 0..K-1, or a ``LabelError`` that says what is wrong.

    Refused: floats (even whole numbers: a float label is a sign of a wrong array), strings and objects,
    NaN, shapes other than (N,) (an (N, 1) column or one-hot (N, K) rows are named as such), a count
    other than ``num_images``, negative labels, and labels whose class count exceeds ``max_classes``.
    """
    arr = np.asarray(labels)
    allowed = "labels must be a 1-D integer array of class indices 0..K-1"
    if arr.dtype.kind in "USO":
        raise LabelError(
            f"{source}: labels are {arr.dtype} (strings or objects: {arr.ravel()[:3].tolist()}); {allowed}. "
            "Map names to indices first, e.g. names, y = np.unique(y, return_inverse=True)"
        )
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise LabelError(f"{source}: labels have dtype {arr.dtype}; {allowed}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        raise LabelError(f"{source}: labels have shape {arr.shape} (a column); {allowed}: pass y.reshape(-1)")
    if arr.ndim == 2:
        raise LabelError(
            f"{source}: labels have shape {arr.shape} (one-hot or multi-label rows?); {allowed}: for one-hot rows "
            "pass y.argmax(1)"
        )
    if arr.ndim != 1:
        raise LabelError(f"{source}: labels have shape {arr.shape}; {allowed}")
    if arr.dtype.kind == "f":
        nan = np.flatnonzero(~np.isfinite(arr))
        if len(nan):
            raise LabelError(f"{source}: {len(nan)} labels are NaN or infinite (first at index {nan[0]}); {allowed}")
        raise LabelError(
            f"{source}: labels are {arr.dtype}, not integers ({arr[:3].tolist()}...); {allowed}: convert with "
            "y.astype(np.int64) if they are whole numbers"
        )
    if num_images is not None and len(arr) != num_images:
        raise LabelError(f"{source}: {num_images} images but {len(arr)} labels")
    if len(arr) == 0:
        return arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise LabelError(f"{source}: label {lo} at index {int(arr.argmin())} is negative; {allowed}")
    limit = max_classes(len(arr))
    if hi >= limit:
        raise LabelError(
            f"{source}: label {hi} at index {int(arr.argmax())} implies {hi + 1} classes for {len(arr)} labels; "
            f"at most {limit} classes are allowed (max(1000, 10 x labels)): renumber the classes 0..K-1, e.g. "
            "np.unique(y, return_inverse=True)"
        )
    return arr.astype(np.int64, copy=False)


def dataset_labels(dataset: Dataset, what: str | None = None) -> np.ndarray:
    """All integer labels of a base dataset (without decoding images); a ValueError naming ``what`` when it has none."""
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset_labels(dataset.dataset, what)[np.asarray(dataset.indices, dtype=np.int64)]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = getattr(dataset, "targets", None)  # torchvision CIFAR10 / ImageFolder
    if labels is None or len(labels) == 0 or np.min(labels) < 0:
        raise ValueError(
            f"{what or type(dataset).__name__} has no class labels (an unlabelled folder or file); classification "
            "needs labelled images (class sub-folders, or y / y_SPLIT arrays in an .npz, or a label column)"
        )
    return np.asarray(labels, dtype=np.int64)


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """The class names of a base dataset (index = label), or None where its labels are bare numbers."""
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset_classes(dataset.dataset)
    classes = getattr(dataset, "classes", None)
    return list(classes) if classes else None


def describe_item(dataset: Dataset, i: int) -> str:
    """Where item ``i`` of a base dataset comes from (a file, a pack entry), for error messages."""
    if isinstance(dataset, torch.utils.data.Subset):
        return describe_item(dataset.dataset, dataset.indices[i])
    if hasattr(dataset, "describe"):
        return dataset.describe(i)
    samples = getattr(dataset, "samples", None)  # torchvision's ImageFolder
    return str(samples[i][0]) if samples is not None else f"item {i} of {type(dataset).__name__}"


class RelabelledDataset(Dataset):
    """A base dataset whose labels are renumbered by ``mapping`` (old label -> new), with new class names."""

    def __init__(self, base: Dataset, mapping: np.ndarray, classes: Sequence[str]) -> None:
        self.base, self.mapping, self.classes = base, np.asarray(mapping, dtype=np.int64), list(classes)
        self.skipped_files = getattr(base, "skipped_files", [])
        self.labels = self.mapping[dataset_labels(base)]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        img, label = self.base[i]
        return img, int(self.mapping[label])

    def describe(self, i: int) -> str:
        """Where item ``i`` comes from, as the base dataset describes it (``describe_item``)."""
        return describe_item(self.base, i)


def align_labels(train: Dataset, test: Dataset, train_what: str = "training", test_what: str = "test") -> Dataset:
    """``test`` with the labels of ``train``: classes matched by name where both sets name them.

    Class folders are numbered per folder (sorted names), so train {cat, dog} and test {dog} would give
    dog the labels 1 and 0; here the test set's dog becomes 1. A test class that training never saw is
    a ``LabelError`` naming it (a classifier cannot predict it). Where classes are bare numbers, a test
    label at or above the training set's class count is refused the same way.
    """
    train_names, test_names = dataset_classes(train), dataset_classes(test)
    train_labels = dataset_labels(train, f"the {train_what} images")
    test_labels = dataset_labels(test, f"the {test_what} images")
    if train_names is not None and test_names is not None:
        used = sorted({test_names[k] for k in np.unique(test_labels)})
        seen = [train_names[k] for k in np.unique(train_labels)]  # an empty class folder is not seen
        unseen = [n for n in used if n not in seen]
        if unseen:
            raise LabelError(
                f"the {test_what} images have classes the {train_what} images do not: {unseen}; the {train_what} "
                f"images have the classes {seen}"
            )
        if test_names == train_names:
            return test
        index = {n: k for k, n in enumerate(train_names)}
        mapping = np.array([index.get(n, -1) for n in test_names], dtype=np.int64)
        return RelabelledDataset(test, mapping, train_names)
    num_classes = int(train_labels.max()) + 1
    beyond = np.unique(test_labels[test_labels >= num_classes])
    if len(beyond):
        raise LabelError(
            f"the {test_what} images have labels the {train_what} images do not reach: {beyond[:10].tolist()} "
            f"(the {train_what} labels are 0..{num_classes - 1})"
        )
    return test
