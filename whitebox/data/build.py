"""``build_dataset``: the source named by a ``--data`` string."""

from __future__ import annotations

import shlex
from pathlib import Path

from torch.utils.data import Dataset

from .arrays import load_npz
from .base import SplitNotFoundError
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
            raise SplitNotFoundError(f"{data} is one stream of shards, not a {split!r} split (a stream has no splits)")
        return WebDatasetSource(data[4:])
    if data.lower() == "cifar10":
        if split not in ("train", "test"):
            raise ValueError(f"CIFAR-10 has splits 'train' and 'test', got {split!r}")
        return cifar10(data_root, split == "train", download)
    path = Path(data)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"--data {data}: no such file")
        return load_npz(path, split)
    if path.is_dir():
        try:
            return _folder_split(path, split)
        except FileNotFoundError as err:  # no images: perhaps a Hugging Face folder without hf:
            hint = _prefix_hint(data, path)
            if hint:
                raise ValueError(hint) from err
            raise
    hint = _prefix_hint(data, path)
    if hint:
        raise ValueError(hint)
    if not path.exists():
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    raise ValueError(
        f"--data {data!r}: expected nothing (bundled sample photos), 'samples', 'cifar10', an .npz file, an image "
        "folder, hf:NAME[:SPLIT] / hf:PATH (Hugging Face datasets) or wds:PATTERN (WebDataset shards)"
    )


def _folder_split(path: Path, split: str | None) -> Dataset:
    """The images of ``split`` in a folder: its ``train`` / ``SPLIT`` / ``val`` / ``test`` sub-folder, or the folder."""
    if split is None:
        return image_folder(path)
    names = ("train",) if split == "train" else tuple(dict.fromkeys((split, "val", "test")))
    sub = next((path / n for n in names if (path / n).is_dir()), None)
    if sub is None and split != "train":
        raise SplitNotFoundError(
            f"{path} has no sub-folder for split {split!r} (looked for {' / '.join(names)}; it has "
            f"{_folder_names(path)})"
        )
    return image_folder(sub or path)


def _folder_names(path: Path) -> str:
    subs = sorted(p.name for p in path.iterdir() if p.is_dir())
    return f"the sub-folders {', '.join(subs)}" if subs else "no sub-folders"


def _prefix_hint(data: str, path: Path) -> str | None:
    """Advice for WebDataset shards or Hugging Face files given without their ``wds:`` / ``hf:`` prefix."""
    if path.suffix in (".tar", ".tgz") or path.name.endswith(".tar.gz") or ("{" in data and ".." in data):
        return f"--data {data} looks like WebDataset tar shards; write it as --data {shlex.quote('wds:' + data)}"
    hf = (".parquet", ".arrow")
    if path.suffix in hf or (path.is_dir() and any(p.suffix in hf for p in path.rglob("*"))):
        hf_data = shlex.quote("hf:" + data)
        return f"--data {data} holds parquet / arrow files (a Hugging Face dataset); write it as --data {hf_data}"
    return None


def cifar10(data_root: str, train: bool, download: bool = False) -> Dataset:
    """torchvision's CIFAR-10 under ``data_root`` (``download=True`` fetches it first).

    Raises ``FileNotFoundError`` naming the folder looked in and the flags to fix it when the files are not
    there (torchvision's bare ``RuntimeError``), and ``OSError`` naming the address when a download fails.
    """
    from torchvision.datasets import CIFAR10

    where = Path(data_root) / CIFAR10.base_folder
    try:
        return CIFAR10(data_root, train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"CIFAR-10 not found (or incomplete) under --data-root {data_root}: looked for {where}; pass --download "
            f"to fetch it there, or point --data-root at the folder that holds {CIFAR10.base_folder}"
        ) from err
    except OSError as err:  # urllib's URLError, a full disk, ...
        if not download:
            raise
        raise OSError(
            f"could not download CIFAR-10 from {CIFAR10.url} into --data-root {data_root} ({err}); on a machine "
            f"without internet, copy {CIFAR10.filename} or its unpacked {CIFAR10.base_folder} there and drop --download"
        ) from err


def data_options(args: object) -> dict[str, str | None]:
    """The source options of a program's flags (``--image-column``, ``--label-column``) as ``build_dataset`` kwargs."""
    return {k: getattr(args, k, None) for k in ("image_column", "label_column")}
