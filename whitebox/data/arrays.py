"""Sources held in one ``.npz`` file: image arrays (``x`` / ``y``, ``x_SPLIT`` / ``y_SPLIT``) or a JPEG pack
(``jpeg`` bytes, ``offsets``, ``y``). Every array is checked when the file is opened, so a malformed
file is named with what is wrong before any image is decoded or any classifier is built."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .base import SplitNotFoundError, open_image, validate_labels

__all__ = ["ArrayImageDataset", "JpegPackDataset", "load_npz"]


class ArrayImageDataset(Dataset):
    """Images as a uint8 array (N, H, W, 3) or (N, H, W, 1) with integer labels (or none: label -1)."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray | None = None, source: str = "an array", labels_from: str = ""
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"{source}: images must be a uint8 array (N, H, W, 3) or (N, H, W, 1), got {images.dtype} "
                f"{images.shape}"
            )
        if images.shape[1] == 0 or images.shape[2] == 0:
            raise ValueError(f"{source}: images of size {images.shape[2]} x {images.shape[1]} (zero-size) cannot train")
        self.labels = None if labels is None else validate_labels(labels, labels_from or source, len(images))
        self.images, self.source = images, source

    def describe(self, i: int) -> str:
        """Which image item ``i`` is, for error messages: ``"image I of SOURCE"``."""
        return f"image {i} of {self.source}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        img = Image.fromarray(self.images[i].squeeze(-1) if self.images.shape[-1] == 1 else self.images[i])
        return img.convert("RGB"), int(self.labels[i]) if self.labels is not None else -1


class JpegPackDataset(Dataset):
    """Encoded images (JPEG, PNG, ...) in one uint8 byte array: image i is ``jpeg[offsets[i]:offsets[i + 1]]``.

    Raises ``ValueError`` naming the array for a byte array that is not uint8 / 1-D, offsets that are not
    integers, not (N + 1,), not starting at 0..len, decreasing, past the end, or enclosing an empty image.
    """

    def __init__(
        self,
        jpeg: np.ndarray,
        offsets: np.ndarray,
        labels: np.ndarray | None = None,
        source: str = "a JPEG pack",
        labels_from: str = "",
    ) -> None:
        if jpeg.dtype != np.uint8 or jpeg.ndim != 1:
            raise ValueError(
                f"{source}: 'jpeg' must be a 1-D uint8 byte array (the encoded files back to back), got {jpeg.dtype} "
                f"{jpeg.shape}; build it with np.frombuffer(data, np.uint8)"
            )
        if offsets.dtype.kind not in "iu" or offsets.ndim != 1 or len(offsets) < 2:
            raise ValueError(
                f"{source}: 'offsets' must be a 1-D integer array (N + 1,) of byte positions, got {offsets.dtype} "
                f"{offsets.shape}"
            )
        offsets = offsets.astype(np.int64)
        sizes = np.diff(offsets)
        if offsets[0] < 0 or offsets[-1] > len(jpeg) or np.any(sizes < 0):
            raise ValueError(
                f"{source}: offsets must increase from 0 or more and end within the {len(jpeg)}-byte pack, got "
                f"{offsets[0]}..{offsets[-1]}" + (" (decreasing)" if np.any(sizes < 0) else "")
            )
        empty = np.flatnonzero(sizes == 0)
        if len(empty):
            raise ValueError(
                f"{source}: {len(empty)} images are empty (zero bytes: offsets[i] == offsets[i + 1]), first image "
                f"{empty[0]}; every image needs its encoded bytes"
            )
        self.labels = None if labels is None else validate_labels(labels, labels_from or source, len(offsets) - 1)
        self.jpeg, self.offsets, self.source = jpeg, offsets, source

    def describe(self, i: int) -> str:
        """Which encoded image item ``i`` is, for error messages: ``"image I of the JPEG pack SOURCE"``."""
        return f"image {i} of the JPEG pack {self.source}"

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        img = open_image(self.jpeg[self.offsets[i] : self.offsets[i + 1]].tobytes())
        return img, int(self.labels[i]) if self.labels is not None else -1


def _array(z: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return z[key]
    except ValueError as err:  # object arrays: np.load refuses to unpickle (it could run code)
        raise ValueError(
            f"{path}: array {key!r} holds Python objects (dtype=object), which are not loaded because unpickling "
            "can run code; store numbers (uint8 images, integer labels)"
        ) from err


def load_npz(path: str | os.PathLike[str], split: str | None = "train") -> Dataset:
    """An ``.npz`` file: ``x_{split}``/``y_{split}``, or ``x``/``y``, or a JPEG pack.

    A file with one set of images (``x``/``y`` or a JPEG pack) serves ``split`` ``'train'`` or ``None``
    (the whole file); asking it for another split is an error rather than a silent reuse of the
    training images. Labels are validated (``validate_labels``) before any image is touched.
    """
    path = Path(path)
    try:
        archive = np.load(path)
    except (OSError, ValueError, EOFError) as err:  # not a zip, truncated, or pickled objects
        raise ValueError(f"{path} is not a readable .npz of image arrays ({type(err).__name__}: {err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not an .npz of named arrays (x / y, x_train / y_train, ...)")
    with archive as z:
        keys = set(z.files)

        def get(key: str) -> np.ndarray | None:
            return _array(z, key, path) if key in keys else None

        if split is not None and f"x_{split}" in keys:
            y = get(f"y_{split}")
            return ArrayImageDataset(_array(z, f"x_{split}", path), y, f"{path} (x_{split})", f"{path} (y_{split})")
        splits = sorted(k[2:] for k in keys if k.startswith("x_"))
        if split is None and splits:
            raise ValueError(
                f"{path} holds the splits {splits}, not one set of images; name a split (e.g. --test-split "
                f"{splits[-1]} with --data {path}) instead of passing the whole file"
            )
        single = ("jpeg" in keys and "offsets" in keys) or "x" in keys
        if single and split not in (None, "train"):
            raise SplitNotFoundError(
                f"{path} holds one set of images (x / y or a JPEG pack), not a {split!r} split (x_{split} / y_{split})"
            )
        if "jpeg" in keys and "offsets" in keys:
            return JpegPackDataset(get("jpeg"), get("offsets"), get("y"), str(path), f"{path} (y)")
        if "x" in keys:
            return ArrayImageDataset(get("x"), get("y"), str(path), f"{path} (y)")
    raise ValueError(
        f"{path}: no images found for split {split!r}; expected keys x_{split}/y_{split}, x/y, or "
        f"jpeg/offsets/y (a JPEG pack), found {sorted(keys)}"
    )
