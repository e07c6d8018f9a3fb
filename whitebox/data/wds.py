"""WebDataset shards (``wds:PATTERN``): tar files of samples ``KEY.jpg|jpeg|png|webp`` + ``KEY.cls``, read
as a stream with the ``webdataset`` library.

Order: each epoch reads the shards in an order seeded by (seed, epoch), then passes the samples
through a shuffle buffer seeded the same way; position p of that stream is the sample p of the epoch
and gets the seed ``mix_seed(seed, epoch, p)``, as in an indexed source. Global micro-batch k is
positions ``k * B * W .. (k + 1) * B * W``; rank r decodes the r-th slice of B, and worker w of a rank
takes the batches k with ``(k - start) % workers == w``. So every sample of the epoch is used once, by
one worker of one rank (no overlap, no loss, whatever the workers and ranks), and a resumed run
re-reads the stream up to its stop without decoding it: the resume is bit-exact, and it costs reading
the skipped part of the epoch once per worker. Every worker reads the whole stream and decodes only
its share, so reading (not decoding) grows with workers x ranks: shards on local or cached disks are
assumed.

The sample count and the labels come from the tar headers and the small ``.cls`` members when the
source is opened (no image is read). Shards must be local files.
"""

from __future__ import annotations

import random
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils.collate import default_collate

from .base import BAD_IMAGE_POLICIES, UNREADABLE, BadImageError, mix_seed, open_image, validate_labels
from .sampler import ResumableBatchSampler
from .seeded import SeededDataset

__all__ = ["IMAGE_KEYS", "SeededStream", "StreamLoader", "WebDatasetSource"]

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


class WebDatasetSource:
    """The shards of ``pattern`` (brace expansion: ``/data/in1k-{000000..000146}.tar``) as a stream of
    ``(key, encoded image bytes, label)``; ``labels`` holds every label (-1 without ``.cls``)."""

    def __init__(self, pattern: str, shuffle_buffer: int = 1000) -> None:
        self.pattern, self.shuffle_buffer = pattern, shuffle_buffer
        self.shards = _expand(pattern)
        missing = [s for s in self.shards if not Path(s).is_file()]
        if missing:
            raise FileNotFoundError(
                f"wds:{pattern}: {len(missing)} of {len(self.shards)} shards are not files, first {missing[0]} "
                "(shards must be local tar files; the pattern takes brace ranges such as {000000..000146})"
            )
        self.counts, labels = [], []
        for shard in self.shards:
            n, shard_labels = self._scan(shard)
            self.counts.append(n)
            labels += shard_labels
        if not sum(self.counts):
            raise FileNotFoundError(f"wds:{pattern}: the shards hold no samples with {'/'.join(IMAGE_KEYS)} images")
        raw = np.asarray(labels)
        self.labels = np.full(len(raw), -1, np.int64) if np.all(raw == -1) else validate_labels(raw, f"wds:{pattern}")

    @staticmethod
    def _scan(shard: str) -> tuple[int, list[int]]:
        """Samples and labels of one shard from its headers and ``.cls`` members."""
        images, cls = [], {}
        try:
            with tarfile.open(shard) as tf:
                for m in tf:
                    if not m.isfile() or "." not in Path(m.name).name:
                        continue
                    key, ext = _split(m.name)
                    if ext.lower() in IMAGE_KEYS:
                        images.append(key)
                    elif ext == "cls":
                        text = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                        try:
                            cls[key] = int(text)
                        except ValueError as err:
                            raise ValueError(f"{shard}: {m.name} holds {text!r}, not an integer class index") from err
        except tarfile.TarError as err:
            raise ValueError(f"{shard} is not a readable tar file ({err})") from err
        return len(images), [cls.get(k, -1) for k in images]

    def __len__(self) -> int:
        return int(sum(self.counts))

    def describe(self, key: str) -> str:
        return f"sample {key} of wds:{self.pattern}"

    def stream(self, order: list[int] | None = None) -> Iterator[tuple[str, bytes, int]]:
        """Samples in shard ``order`` (default: as listed), members in tar order."""
        import webdataset as wds

        urls = [{"url": self.shards[i]} for i in (order if order is not None else range(len(self.shards)))]
        for sample in wds.tarfile_samples(urls):
            image = next((sample[k] for k in sample if k.lower() in IMAGE_KEYS), None)
            if image is None:
                continue
            label = int(sample["cls"].decode().strip()) if "cls" in sample else -1
            yield sample["__key__"], image, label

    def epoch_stream(self, seed: int, epoch: int, shuffle: bool) -> Iterator[tuple[str, bytes, int]]:
        if not shuffle:
            yield from self.stream()
            return
        rng = random.Random(mix_seed(seed, epoch, 1))
        order = list(range(len(self.shards)))
        rng.shuffle(order)
        buffer: list[tuple[str, bytes, int]] = []
        for item in self.stream(order):
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = rng.randrange(len(buffer))
            yield buffer[j]
            buffer[j] = item
        rng.shuffle(buffer)
        yield from buffer

    def first(self, count: int) -> list[tuple[Any, int]]:
        """The first ``count`` decodable samples in shard order, as ``(image, label)`` (a fixed probe batch)."""
        out = []
        for _key, data, label in self.stream():
            try:
                out.append((open_image(data), label))
            except UNREADABLE:
                continue
            if len(out) == count:
                break
        return out


def _split(name: str) -> tuple[str, str]:
    """WebDataset's key / extension split: the extension starts at the first dot of the base name."""
    base = Path(name).name
    stem, ext = base.split(".", 1)
    return str(Path(name).parent / stem) if Path(name).parent != Path(".") else stem, ext


class SeededStream(IterableDataset):
    """A ``WebDatasetSource`` + a transform: collated micro-batches of this rank and worker (see the module).

    Reads ``sampler``'s epoch and start batch when iterated; an unreadable image is replaced by the next
    readable one of the same global batch (``on_bad_image='skip'``, counted in ``skipped``).
    """

    def __init__(
        self,
        source: WebDatasetSource,
        transform: Any,
        num_patches: int | None = None,
        on_bad_image: str = "skip",
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        self.source, self.num_patches, self.on_bad_image = source, num_patches, on_bad_image
        self.helper = SeededDataset([], transform, num_patches, on_bad_image)  # the per-sample seeding
        self.sampler: ResumableBatchSampler | None = None

    def __len__(self) -> int:
        return len(self.source)

    def _sample(self, rows: list[tuple[str, bytes, int]], i: int, seed: int) -> dict[str, Any]:
        for skipped in range(len(rows)):
            key, data, label = rows[(i + skipped) % len(rows)]
            g = torch.Generator().manual_seed(seed)
            try:
                x = self.helper.apply(open_image(data), seed, g)
                break
            except UNREADABLE as err:
                self.helper._bad(self.source.describe(key), err)
        else:
            raise BadImageError(f"none of the {len(rows)} images of a batch of {self.source.pattern} can be read")
        sample = {"image": x, "label": label, "skipped": skipped}
        if self.num_patches is not None:
            sample["noise"] = torch.rand(self.num_patches, generator=g)
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        s = self.sampler
        if s is None:
            raise RuntimeError("a SeededStream is iterated through make_loader, which gives it the sampler")
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        glob, end, total = s.batch_size * s.world_size, s.num_batches, len(self.source)

        def owned(k: int) -> bool:
            return k >= s.start_batch and (k - s.start_batch) % workers == worker and bool(s.positions(k))

        rows: list[tuple[str, bytes, int]] = []
        for p, item in enumerate(self.source.epoch_stream(s.seed, s.epoch, s.shuffle)):
            k = p // glob
            if k >= end:
                break
            if owned(k):
                rows.append(item)
                if (p + 1) % glob == 0 or p + 1 == total:
                    yield self._batch(rows, k)
                    rows = []

    def _batch(self, rows: list[tuple[str, bytes, int]], k: int) -> dict[str, Any]:
        s = self.sampler
        positions = s.positions(k)
        samples = []
        base = k * s.batch_size * s.world_size
        for p in positions:
            samples.append(self._sample(rows, p - base, mix_seed(s.seed, s.epoch, p)))
        return default_collate(samples)


class StreamLoader:
    """Iterates a ``SeededStream`` with ``workers`` processes at the sampler's current epoch and start."""

    def __init__(self, dataset: SeededStream, sampler: ResumableBatchSampler, workers: int, pin_memory: bool) -> None:
        self.dataset, self.sampler, self.workers, self.pin_memory = dataset, sampler, workers, pin_memory
        dataset.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        s = self.sampler
        if s.start_batch and s.rank == 0:
            print(
                f"resuming the stream wds:{self.dataset.source.pattern} at batch {s.start_batch} of epoch {s.epoch}: "
                f"reading past {s.start_batch * s.batch_size * s.world_size} samples without decoding them (the "
                "order is the same as without the stop, so the resume is exact)",
                file=sys.stderr,
            )
        workers = min(self.workers, max(1, len(s)))
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator(),
        )
        yield from loader
