"""Datasets, MAE augmentation and a resumable, rank-aware sampler.

Sources (``build_dataset``): an image-folder tree, ``.npz`` arrays (``x``/``y``,
``x_train``/``x_test``, or a JPEG pack ``jpeg``/``offsets``/``y``), torchvision's CIFAR-10, and the
real photos bundled with scikit-image (``whitebox.sample_images``) as the default that needs
nothing downloaded. Every base dataset yields ``(PIL RGB image, int label)``.

Reproducibility: the sampler hands each sample a seed derived from (run seed, epoch, position in
the epoch), and augmentation and the MAE mask noise draw only from a generator seeded with it. So a
sample's crop, flip and mask do not depend on the worker, the rank or where a run was resumed:
a 2-rank run sees exactly the samples and masks of a 1-rank run of the same global batch.

Unreadable images (truncated, not an image, unreadable file): ``SeededDataset(on_bad_image='skip')``
warns once naming the file and takes the next readable image in its place, deterministically, so a
resumed run skips the same way; each sample reports how many it skipped, for the end-of-epoch
count. ``'error'`` stops with a ``BadImageError`` that names the file.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch.utils.data import DataLoader, Dataset

_MASK64 = (1 << 64) - 1
BAD_IMAGE_POLICIES = ("skip", "error")
# what Pillow and the file system raise for a file that is not a readable image
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class BadImageError(ValueError):
    """An image of the dataset cannot be read (and ``on_bad_image='error'``)."""


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 finaliser over the parts)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h >> 1


# ----------------------------------------------------------------------------- base datasets
class ArrayImageDataset(Dataset):
    """Images as a uint8 array (N, H, W, 3) with integer labels (or none)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, source: str = "an array") -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"{source}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{source}: {len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.source = images, labels, source

    def describe(self, i: int) -> str:
        return f"image {i} of {self.source}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        img = Image.fromarray(self.images[i].squeeze(-1) if self.images.shape[-1] == 1 else self.images[i])
        return img.convert("RGB"), int(self.labels[i]) if self.labels is not None else -1


class JpegPackDataset(Dataset):
    """Encoded images in one byte array: image i is ``jpeg[offsets[i]:offsets[i + 1]]``."""

    def __init__(
        self, jpeg: np.ndarray, offsets: np.ndarray, labels: np.ndarray | None = None, source: str = "a JPEG pack"
    ) -> None:
        if offsets.ndim != 1 or len(offsets) < 2 or offsets[-1] > len(jpeg) or np.any(np.diff(offsets) < 0):
            raise ValueError(
                f"{source}: offsets must be (N + 1,), increasing, and end within the {len(jpeg)}-byte pack"
            )
        if labels is not None and len(labels) != len(offsets) - 1:
            raise ValueError(f"{source}: {len(offsets) - 1} images but {len(labels)} labels")
        self.jpeg, self.offsets, self.labels, self.source = jpeg, offsets, labels, source

    def describe(self, i: int) -> str:
        return f"image {i} of the JPEG pack {self.source}"

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        raw = self.jpeg[self.offsets[i] : self.offsets[i + 1]].tobytes()
        img = Image.open(io.BytesIO(raw)).convert("RGB")
        return img, int(self.labels[i]) if self.labels is not None else -1


class SamplePhotoDataset(Dataset):
    """The real photos bundled with scikit-image, repeated to ``length`` samples (label = photo index).

    The photos are shrunk once so their short side is ``short_side``; random crops of them (the
    MAE augmentation) make the varied training set.
    """

    def __init__(self, length: int = 1024, short_side: int = 256) -> None:
        from whitebox.sample_images import load_sample_photos

        self.photos = []
        for arr in load_sample_photos():
            img = Image.fromarray(arr).convert("RGB")
            scale = short_side / min(img.size)
            if scale < 1:
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
            self.photos.append(img)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        k = i % len(self.photos)
        return self.photos[k], k


def load_npz(path: str | os.PathLike[str], split: str | None = "train") -> Dataset:
    """An ``.npz`` file: ``x_{split}``/``y_{split}``, or ``x``/``y``, or a JPEG pack.

    A file with one set of images (``x``/``y`` or a JPEG pack) serves ``split`` ``'train'`` or ``None``
    (the whole file); asking it for another split is an error rather than a silent reuse of the
    training images.
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
        if split is not None and f"x_{split}" in keys:
            y = z[f"y_{split}"] if f"y_{split}" in keys else None
            return ArrayImageDataset(z[f"x_{split}"], y, str(path))
        splits = sorted(k[2:] for k in keys if k.startswith("x_"))
        if split is None and splits:
            raise ValueError(
                f"{path} holds the splits {splits}, not one set of images; name a split (e.g. --test-split "
                f"{splits[-1]} with --data {path}) instead of passing the whole file"
            )
        single = ("jpeg" in keys and "offsets" in keys) or "x" in keys
        if single and split not in (None, "train"):
            raise ValueError(
                f"{path} holds one set of images, not a {split!r} split; give the {split} images as their own "
                "file (--test-data)"
            )
        if "jpeg" in keys and "offsets" in keys:
            return JpegPackDataset(z["jpeg"], z["offsets"], z["y"] if "y" in keys else None, str(path))
        if "x" in keys:
            return ArrayImageDataset(z["x"], z["y"] if "y" in keys else None, str(path))
    raise ValueError(
        f"{path}: no images found for split {split!r}; expected keys x_{split}/y_{split}, x/y, or "
        f"jpeg/offsets/y (a JPEG pack), found {sorted(keys)}"
    )


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")  # decodes now, so a truncated file fails here, inside the dataset


class FlatImageFolder(Dataset):
    """Unlabelled images directly inside one folder (label -1), for pretraining on your own photos."""

    def __init__(self, root: str | Path) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        self.files = sorted(p for p in Path(root).iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not self.files:
            raise FileNotFoundError(
                f"{root} holds no class sub-folders and no images with the extensions {', '.join(IMG_EXTENSIONS)}"
            )
        self.labels = np.full(len(self.files), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return _open_rgb(str(self.files[i])), -1

    def describe(self, i: int) -> str:
        return str(self.files[i])


def _image_folder(path: Path) -> Dataset:
    """``ImageFolder`` when ``path`` has class sub-folders, else the images directly inside it."""
    from torchvision.datasets import ImageFolder

    if any(p.is_dir() for p in path.iterdir()):
        return ImageFolder(str(path), loader=_open_rgb)
    return FlatImageFolder(path)


def build_dataset(
    data: str | None,
    split: str | None = "train",
    download: bool = False,
    data_root: str = "data",
    sample_length: int = 1024,
) -> Dataset:
    """The dataset named by ``data``.

    ``None`` or ``'samples'``: bundled photos; ``'cifar10'``: torchvision CIFAR-10 under ``data_root``
    (``download=True`` fetches it); a ``.npz`` file; or a folder (``ImageFolder`` with class
    sub-folders, or unlabelled images directly inside it; a ``train``/``val`` or ``test`` sub-folder is
    used for the split when present). ``split=None`` takes the whole file or
    folder (a separate test set).
    """
    if data in (None, "", "samples"):
        return SamplePhotoDataset(length=sample_length)
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
            return _image_folder(path)
        names = ("train",) if split == "train" else (split, "val", "test")
        sub = next((path / n for n in names if (path / n).is_dir()), None)
        if sub is None and split != "train":
            raise ValueError(f"{path} has no sub-folder for split {split!r} (looked for {names}); use --test-data")
        return _image_folder(sub or path)
    raise ValueError(
        f"--data {data!r}: expected nothing (bundled sample photos), 'samples', 'cifar10', an .npz file or an "
        "image folder"
    )


def dataset_labels(dataset: Dataset, what: str | None = None) -> np.ndarray:
    """All integer labels of a base dataset (without decoding images); a ValueError naming ``what`` when it has none."""
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset_labels(dataset.dataset, what)[np.asarray(dataset.indices)]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = getattr(dataset, "targets", None)  # torchvision CIFAR10 / ImageFolder
    if labels is None or len(labels) == 0 or np.min(labels) < 0:
        raise ValueError(
            f"{what or type(dataset).__name__} has no class labels (an unlabelled folder or file); classification "
            "needs labelled images (class sub-folders, or y / y_SPLIT arrays in an .npz)"
        )
    return np.asarray(labels, dtype=np.int64)


def describe_item(dataset: Dataset, i: int) -> str:
    """Where item ``i`` of a base dataset comes from (a file, a pack entry), for error messages."""
    if isinstance(dataset, torch.utils.data.Subset):
        return describe_item(dataset.dataset, dataset.indices[i])
    if hasattr(dataset, "describe"):
        return dataset.describe(i)
    samples = getattr(dataset, "samples", None)  # torchvision's ImageFolder
    return str(samples[i][0]) if samples is not None else f"item {i} of {type(dataset).__name__}"


# ----------------------------------------------------------------------------- transforms
class SeededTransform:
    """A transform that draws its randomness only from the generator it is given."""

    def __call__(self, img: Image.Image, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def to_normalized_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


class MAEAugment(SeededTransform):
    """MAE pretraining augmentation: RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip + normalise.

    The crop follows torchvision's ``RandomResizedCrop`` sampling (area fraction and log-uniform
    aspect ratio, ten tries, then a centre crop), drawing from ``g``.
    """

    def __init__(
        self,
        img_size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.img_size, self.scale, self.ratio, self.hflip = img_size, scale, ratio, hflip
        self.mean, self.std = mean, std

    def crop_box(self, width: int, height: int, g: torch.Generator) -> tuple[int, int, int, int]:
        """A RandomResizedCrop box (left, top, right, bottom) in pixels of a ``width`` x ``height`` image,
        drawn from ``g`` as torchvision samples it (ten tries, then a centre crop).
        """
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, *log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return left, top, left + w, top + h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, g: torch.Generator) -> torch.Tensor:
        box = self.crop_box(img.width, img.height, g)
        img = img.resize((self.img_size, self.img_size), Image.BICUBIC, box=box)
        if torch.rand((), generator=g).item() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_normalized_tensor(img, self.mean, self.std)


class EvalTransform(SeededTransform):
    """Resize the short side to ``img_size / crop_pct`` (bicubic), centre-crop ``img_size``, normalise."""

    def __init__(
        self,
        img_size: int,
        crop_pct: float = 1.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.img_size, self.crop_pct, self.mean, self.std = img_size, crop_pct, mean, std

    def __call__(self, img: Image.Image, g: torch.Generator | None = None) -> torch.Tensor:
        short = round(self.img_size / self.crop_pct)
        if img.size != (self.img_size, self.img_size):
            s = short / min(img.size)
            w, h = max(short, round(img.width * s)), max(short, round(img.height * s))
            img = img.resize((w, h), Image.BICUBIC)
            left, top = (w - self.img_size) // 2, (h - self.img_size) // 2
            img = img.crop((left, top, left + self.img_size, top + self.img_size))
        return to_normalized_tensor(img, self.mean, self.std)


class SeededDataset(Dataset):
    """Applies a transform to a base dataset, seeded per sample; indices are ``(index, seed)`` pairs.

    A sample is a dict: ``image``, ``label`` (-1 when unlabelled), ``skipped`` (unreadable images
    passed over to produce it) and, when ``num_patches`` is given, ``noise`` (MAE mask noise). Plain
    callables (e.g. timm transforms) are called without the generator and use the worker's RNG.
    ``on_bad_image``: ``'skip'`` (warn once per file, use the next readable image) or ``'error'``.
    """

    def __init__(
        self,
        base: Dataset,
        transform: Callable[..., torch.Tensor],
        num_patches: int | None = None,
        on_bad_image: str = "skip",
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        self.base, self.transform, self.num_patches, self.on_bad_image = base, transform, num_patches, on_bad_image

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: tuple[int, int]) -> dict[str, Any]:
        i, seed = index
        for skipped in range(len(self.base)):
            j = (i + skipped) % len(self.base)
            g = torch.Generator().manual_seed(seed)
            try:
                img, label = self.base[j]
                x = self.transform(img, g) if isinstance(self.transform, SeededTransform) else self.transform(img)
                break
            except _UNREADABLE as err:
                self._bad(j, err)
        else:
            raise BadImageError(f"none of the {len(self.base)} images of the dataset can be read")
        sample = {"image": x, "label": label, "skipped": skipped}
        if self.num_patches is not None:
            sample["noise"] = torch.rand(self.num_patches, generator=g)
        return sample

    def _bad(self, j: int, err: Exception) -> None:
        what = f"{describe_item(self.base, j)} cannot be read as an image ({type(err).__name__}: {err})"
        if self.on_bad_image == "error":
            raise BadImageError(f"{what}; fix or remove it, or pass --on-bad-image skip") from err
        warned = self.__dict__.setdefault("_warned", set())  # per worker process
        if j not in warned:
            warned.add(j)
            print(f"warning: skipped {what}", file=sys.stderr)


# ----------------------------------------------------------------------------- sampling
class ResumableBatchSampler:
    """Yields this rank's micro-batches of ``(index, sample_seed)``; resumable at any batch.

    Each epoch shuffles all indices with a generator seeded by (seed, epoch). Global micro-batch k is
    ``perm[k * B * W : (k + 1) * B * W]`` (B per rank, W ranks) and rank r takes the r-th slice of B, so the
    union over ranks does not depend on W. Incomplete global batches are dropped when ``drop_last``;
    otherwise the last one is split as evenly as possible (evaluation).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if drop_last and num_samples < batch_size * world_size:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch "
                f"({batch_size} x {world_size} ranks); lower --batch-size"
            )
        self.num_samples, self.batch_size, self.rank, self.world_size = num_samples, batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and skip its first ``start_batch`` micro-batches (for resuming)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        glob = self.batch_size * self.world_size
        full = self.num_samples // glob if self.drop_last else math.ceil(self.num_samples / glob)
        return full - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            perm = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            perm = list(range(self.num_samples))
        glob = self.batch_size * self.world_size
        for k in range(self.start_batch, self.start_batch + len(self)):
            lo = k * glob
            chunk = range(lo, min(lo + glob, self.num_samples))
            per = math.ceil(len(chunk) / self.world_size)
            mine = chunk[self.rank * per : (self.rank + 1) * per]
            if not mine:  # a short last batch (drop_last=False) need not reach every rank
                continue
            yield [(perm[p], mix_seed(self.seed, self.epoch, p)) for p in mine]


def make_loader(
    dataset: Dataset, batch_sampler: ResumableBatchSampler, workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over ``batch_sampler`` (workers persist across epochs)."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def fixed_batch(
    dataset: Dataset, count: int, img_size: int, num_patches: int, seed: int = 0, on_bad_image: str = "skip"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` evenly spaced samples, centre-cropped, with fixed mask noise: a stable probe batch."""
    count = min(count, len(dataset))
    idx = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    if isinstance(dataset, SamplePhotoDataset):  # it repeats its photos: take each once
        idx = np.arange(count)
    eval_set = SeededDataset(dataset, EvalTransform(img_size), on_bad_image=on_bad_image)
    imgs = torch.stack([eval_set[(int(i), 0)]["image"] for i in idx])
    noise = torch.rand(count, num_patches, generator=torch.Generator().manual_seed(mix_seed(seed, 7)))
    return imgs, noise
