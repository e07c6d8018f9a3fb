"""Hugging Face ``datasets`` sources: ``hf:NAME[:SPLIT]`` (a Hub dataset through the ``datasets`` cache) and
``hf:PATH`` (a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a folder of
parquet files, split by file name as ``datasets`` does: ``train-*.parquet``, ``test-*.parquet``, ...).

Columns: the image column is the first with the ``Image`` feature (else one named image / img / jpg /
png / webp), the label column the first ``ClassLabel`` (else label / labels / cls / target /
fine_label); ``image_column`` / ``label_column`` name them. Images are read as encoded bytes and
decoded by ``open_image`` (the same conversions as every other source); a ``ClassLabel``'s names are
the class names (so training and test labels are matched by name).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .base import open_image, validate_labels

__all__ = ["HFImageDataset", "load_hf"]

IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "pixel_values")
LABEL_NAMES = ("label", "labels", "cls", "target", "fine_label", "class")
TEST_SPLITS = ("val", "validation", "test")


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as err:  # an optional extra
        raise ValueError("--data hf:... needs the datasets library: pip install 'whitebox-transformers[data]'") from err
    return datasets


class HFImageDataset(Dataset):
    """One split of a ``datasets.Dataset`` as ``(image, label)`` items (label -1 without a label column)."""

    def __init__(self, ds: Any, source: str, image_column: str | None = None, label_column: str | None = None) -> None:
        datasets = _import_datasets()
        features = ds.features
        cols = list(features)
        if image_column is None:
            image_column = next((c for c in cols if isinstance(features[c], datasets.Image)), None)
            image_column = image_column or next((c for c in cols if c.lower() in IMAGE_NAMES), None)
            if image_column is None:
                raise ValueError(f"{source}: no image column among {cols}; name it with --image-column")
        elif image_column not in cols:
            raise ValueError(f"{source}: --image-column {image_column!r} is not a column; the columns are {cols}")
        if label_column is None:
            label_column = next((c for c in cols if isinstance(features[c], datasets.ClassLabel)), None)
            label_column = label_column or next((c for c in cols if c.lower() in LABEL_NAMES), None)
        elif label_column not in cols:
            raise ValueError(f"{source}: --label-column {label_column!r} is not a column; the columns are {cols}")
        if isinstance(features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.source, self.image_column, self.label_column = source, image_column, label_column
        self.classes = None
        if label_column is None:
            self.labels = np.full(len(ds), -1, np.int64)
        else:
            labels = ds.with_format("numpy")[label_column] if len(ds) else np.zeros(0, np.int64)
            self.labels = validate_labels(np.asarray(labels), f"{source} (column {label_column!r})", len(ds))
            if isinstance(features[label_column], datasets.ClassLabel):
                self.classes = list(features[label_column].names)
        self.ds = ds.select_columns([image_column])

    def __len__(self) -> int:
        return len(self.ds)

    def describe(self, i: int) -> str:
        """Which row item ``i`` is, for error messages: ``"row I of SOURCE"``."""
        return f"row {i} of {self.source}"

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        value = self.ds[int(i)][self.image_column]
        if isinstance(value, dict):  # Image(decode=False): {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, Image.Image):
            img = value
        elif isinstance(value, (bytes, str, os.PathLike)):
            img = open_image(value)
        else:
            raise ValueError(f"column {self.image_column!r} holds {type(value).__name__}, not an encoded image")
        return img, int(self.labels[i])


def _open(spec: str) -> tuple[Any, str]:
    """The dataset (or dict of splits) named by ``spec`` and a description of it."""
    datasets = _import_datasets()
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path)), f"the save_to_disk folder {path}"
        if any(path.rglob("*.parquet")):
            return datasets.load_dataset(str(path)), f"the parquet folder {path}"
        raise ValueError(
            f"hf:{spec} is a folder but neither a save_to_disk folder (dataset_dict.json / state.json) nor a folder "
            "of parquet files"
        )
    if spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"hf:{spec}: no such folder")
    try:
        return datasets.load_dataset(spec), f"the Hub dataset {spec}"
    except Exception as err:  # the library raises many kinds for a missing / unreachable dataset
        raise ValueError(
            f"hf:{spec} could not be loaded ({type(err).__name__}: {err}); a Hub dataset must be in the datasets "
            "cache (HF_DATASETS_OFFLINE=1 uses only the cache) or reachable"
        ) from err


def load_hf(
    spec: str, split: str | None = "train", image_column: str | None = None, label_column: str | None = None
) -> HFImageDataset:
    """The split ``split`` of ``hf:NAME[:SPLIT]`` / ``hf:PATH`` (``spec`` without ``hf:``).

    A SPLIT in the name is the training split (and the whole set where ``split`` is None); the test
    split of the same dataset is chosen by ``split`` (falling back to val / validation / test).
    """
    name, named_split = spec, None
    if ":" in spec and not Path(spec).expanduser().is_dir():
        name, named_split = spec.rsplit(":", 1)
    ds, _ = _open(name)
    want = named_split if named_split and split in (None, "train") else split
    if hasattr(ds, "keys"):  # a DatasetDict
        splits = list(ds.keys())
        if want is None:
            if len(splits) != 1:
                raise ValueError(f"hf:{spec} holds the splits {splits}; name one as hf:{name}:SPLIT")
            want = splits[0]
        if want not in splits:
            fallback = [s for s in TEST_SPLITS if s in splits] if want not in ("train", named_split) else []
            if not fallback:
                raise ValueError(f"hf:{spec} has no split {want!r}; its splits are {splits}")
            want = fallback[0]
        ds = ds[want]
    elif want not in (None, "train", named_split):
        raise ValueError(f"hf:{spec} holds one split, not {want!r}; give the test images as their own --test-data")
    return HFImageDataset(ds, f"hf:{name}" + (f" split {want}" if want else ""), image_column, label_column)
