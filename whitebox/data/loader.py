"""The loader: uint8 batches from worker processes, moved to the device and normalised there.

``make_loader`` returns a ``DeviceLoader``: it iterates a ``DataLoader`` over the resumable sampler
(or over a ``SeededStream``), moves every tensor of a batch to the device and turns uint8 images
into float32 ``(x / 255 - mean) / std`` there, as timm's ``PrefetchLoader`` does. On CUDA the
batches come from pinned memory with non-blocking copies on a side stream, one batch ahead, so the
copy and the normalisation overlap the previous step. The ``DataLoader`` has its own generator, so
creating an iterator never draws from the global torch stream (which drop path uses and
checkpoints save).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .base import IMAGENET_MEAN, IMAGENET_STD, mix_seed
from .sampler import ResumableBatchSampler
from .samples import SamplePhotoDataset
from .seeded import SeededDataset
from .transforms import EvalTransform, normalize

__all__ = ["DeviceLoader", "fixed_batch", "make_loader"]

KEEP_ON_HOST = ("skipped",)  # counters the loop sums on the host


class DeviceLoader:
    """Batches on ``device`` with uint8 ``image`` normalised to float32 (other tensors moved as they are).

    ``len`` and the sampler are the wrapped loader's. Float images (a transform that normalises itself,
    such as timm's) pass through unchanged.
    """

    def __init__(
        self,
        loader: Any,
        device: torch.device | str = "cpu",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.loader, self.device = loader, torch.device(device)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.loader)

    def _move(self, batch: dict[str, Any]) -> dict[str, Any]:
        if not hasattr(self, "_shift"):  # made once: a tensor made from a list on CUDA would synchronise
            self._shift = torch.tensor(self.mean, device=self.device).mul_(255).view(3, 1, 1)
            self._scale = torch.tensor(self.std, device=self.device).mul_(255).view(3, 1, 1)
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and key not in KEEP_ON_HOST:
                value = value.to(self.device, non_blocking=True)
                if key == "image" and value.dtype == torch.uint8:
                    value = value.float().sub_(self._shift).div_(self._scale)  # = normalize(value, mean, std)
            out[key] = value
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self._move(batch)
            return
        stream = torch.cuda.Stream(self.device)
        pending = None
        for batch in self.loader:
            with torch.cuda.stream(stream):
                ready = self._move(batch)
            if pending is not None:
                yield pending
            torch.cuda.current_stream(self.device).wait_stream(stream)
            for value in ready.values():  # the tensors are used on the main stream from now on
                if isinstance(value, torch.Tensor) and value.is_cuda:
                    value.record_stream(torch.cuda.current_stream(self.device))
            pending = ready
        if pending is not None:
            yield pending


def make_loader(
    dataset: Dataset,
    batch_sampler: ResumableBatchSampler,
    workers: int = 0,
    pin_memory: bool = False,
    device: torch.device | str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> DeviceLoader:
    """A ``DeviceLoader`` over ``batch_sampler`` (workers persist across epochs for indexed sources).

    ``device`` defaults to the current CUDA device when ``pin_memory`` is set, else the CPU. A
    ``SeededStream`` (WebDataset shards) reads its sampler's epoch and start batch at each iteration.
    """
    from .wds import SeededStream, StreamLoader

    if device is None:
        device = torch.device("cuda") if pin_memory and torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    pin = pin_memory or device.type == "cuda"
    if isinstance(dataset, SeededStream):
        loader: Any = StreamLoader(dataset, batch_sampler, workers, pin)
    else:
        loader = DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator(),
        )
    return DeviceLoader(loader, device, mean, std)


def fixed_batch(
    dataset: Dataset, count: int, img_size: int, num_patches: int, seed: int = 0, on_bad_image: str = "skip"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` evenly spaced samples, centre-cropped and normalised (float32), with fixed mask noise:
    a stable probe batch."""
    from .wds import WebDatasetSource

    if isinstance(dataset, WebDatasetSource):  # a stream: its first images
        items = dataset.first(count)
        imgs = normalize(torch.stack([EvalTransform(img_size)(img) for img, _ in items]))
        noise = torch.rand(len(items), num_patches, generator=torch.Generator().manual_seed(mix_seed(seed, 7)))
        return imgs, noise
    count = min(count, len(dataset))
    idx = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    if isinstance(dataset, SamplePhotoDataset):  # it repeats its photos: take each once
        idx = np.arange(count)
    eval_set = SeededDataset(dataset, EvalTransform(img_size), on_bad_image=on_bad_image)
    imgs = normalize(torch.stack([eval_set[(int(i), 0)]["image"] for i in idx]))
    noise = torch.rand(count, num_patches, generator=torch.Generator().manual_seed(mix_seed(seed, 7)))
    return imgs, noise
