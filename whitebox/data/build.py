"""``build_dataset``: the source named by a ``--data`` string."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .arrays import load_npz
from .folder import image_folder
from .samples import SamplePhotoDataset

__all__ = ["build_dataset", "is_stream"]


def is_stream(dataset: object) -> bool:
    """Whether ``dataset`` is read as a stream (WebDataset shards) rather than by index."""
    from .wds import WebDatasetSource

    return isinstance(dataset, WebDatasetSource)


def build_dataset(
    data: str | None,
    split: str | None = "train",
    download: bool = False,
    data_root: str = "data",
    sample_length: int = 1024,
    image_column: str | None = None,
    label_column: str | None = None,
) -> Dataset:
    """The dataset named by ``data``.

    - ``None`` or ``'samples'``: the bundled photos (``sample_length`` items);
    - ``'cifar10'``: torchvision CIFAR-10 under ``data_root`` (``download=True`` fetches it);
    - a ``.npz`` file (arrays or a JPEG pack);
    - a folder: class sub-folders, or unlabelled images directly inside it; a ``train``/``val`` or
      ``test`` sub-folder is used for the split when present;
    - ``hf:NAME[:SPLIT]`` or ``hf:PATH``: Hugging Face datasets (``whitebox.data.hf``);
    - ``wds:PATTERN``: WebDataset tar shards, a stream (``whitebox.data.wds``).

    ``split=None`` takes the whole file or folder (a separate test set). Errors: ``ValueError`` for a
    malformed source or unknown name, ``FileNotFoundError`` for a missing one.
    """
    if data in (None, "", "samples"):
        return SamplePhotoDataset(length=sample_length)
    if data.startswith("hf:"):
        from .hf import load_hf

        return load_hf(data[3:], split, image_column, label_column)
    if data.startswith("wds:"):
        from .wds import WebDatasetSource

        if split not in (None, "train"):
            raise ValueError(f"--data {data} is one stream of shards, not a {split!r} split; use --test-data")
        return WebDatasetSource(data[4:])
    if data.lower() == "cifar10":
        from torchvision.datasets import CIFAR10

        if split not in ("train", "test"):
            raise ValueError(f"CIFAR-10 has splits 'train' and 'test', got {split!r}")
        return CIFAR10(data_root, train=split == "train", download=download)
    path = Path(data)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"--data {data}: no such file")
        return load_npz(path, split)
    if path.is_dir():
        if split is None:
            return image_folder(path)
        names = ("train",) if split == "train" else (split, "val", "test")
        sub = next((path / n for n in names if (path / n).is_dir()), None)
        if sub is None and split != "train":
            raise ValueError(f"{path} has no sub-folder for split {split!r} (looked for {names}); use --test-data")
        return image_folder(sub or path)
    raise ValueError(
        f"--data {data!r}: expected nothing (bundled sample photos), 'samples', 'cifar10', an .npz file, an image "
        "folder, hf:NAME[:SPLIT] / hf:PATH (Hugging Face datasets) or wds:PATTERN (WebDataset shards)"
    )


def data_options(args: object) -> dict[str, str | None]:
    """The source options of a program's flags (``--image-column``, ``--label-column``) as ``build_dataset`` kwargs."""
    return {k: getattr(args, k, None) for k in ("image_column", "label_column")}
