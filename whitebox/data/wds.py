"""WebDataset shards (``wds:PATTERN``): tar files of samples ``KEY.jpg|jpeg|png|webp`` + ``KEY.cls`` (the
WebDataset layout; write them with ``webdataset.TarWriter`` / ``ShardWriter``), read as a stream.

Index: when the source is opened, each shard's tar headers are read once (``tarfile``; no image data):
the byte range of every sample's image and its ``.cls`` label. That gives the sample count and labels
up front, and lets every reader fetch exactly the bytes of its own samples.

Order: each epoch takes the shards in an order seeded by (seed, epoch) and the samples through a
shuffle buffer seeded the same way (over the index: nothing is read to shuffle); position p of that
order is sample p of the epoch and gets the seed ``mix_seed(seed, epoch, p)``, as in an indexed
source. Global micro-batch k is positions ``k * B * W .. (k + 1) * B * W``; rank r takes the r-th slice
of B, and worker w of a rank the batches k with ``(k - start) % workers == w``. So every sample of the
epoch is used once, by one worker of one rank, whatever the workers and ranks (no overlap, no loss);
each worker reads only its own samples' bytes, in shard order within the buffer's window; and a
resumed run recomputes the order and starts at its batch: the resume is bit-exact and reads nothing
it skips.

Shards must be local, uncompressed tar files (images are compressed already; a ``.tar.gz`` cannot be
read by byte ranges and is refused by name).
"""

from __future__ import annotations

import random
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils.collate import default_collate

from .base import BAD_IMAGE_POLICIES, UNREADABLE, BadImageError, mix_seed, open_image, validate_labels
from .sampler import ResumableBatchSampler
from .seeded import SeededDataset

__all__ = ["IMAGE_KEYS", "SeededStream", "StreamLoader", "WebDatasetSource"]

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZ": "bzip2", b"\xfd7": "xz", b"(\xb5": "zstd"}


class Entry(NamedTuple):
    """One sample of a shard: where its image bytes are, and its label (-1 without ``.cls``)."""

    shard: int
    key: str
    offset: int
    size: int
    label: int


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand  # a dependency of webdataset

    return list(braceexpand(pattern))


def _split(name: str) -> tuple[str, str]:
    """WebDataset's key / extension split: the extension starts at the first dot of the base name."""
    parent, base = Path(name).parent, Path(name).name
    stem, ext = base.split(".", 1)
    return (str(parent / stem) if parent != Path(".") else stem), ext


class WebDatasetSource:
    """The shards of ``pattern`` (brace expansion: ``/data/in1k-{000000..000146}.tar``) as an index of samples;
    ``labels`` holds every label (-1 without ``.cls``), in shard order."""

    def __init__(self, pattern: str, shuffle_buffer: int = 1000) -> None:
        self.pattern, self.shuffle_buffer = pattern, shuffle_buffer
        self.shards = _expand(pattern)
        missing = [s for s in self.shards if not Path(s).is_file()]
        if missing:
            raise FileNotFoundError(
                f"wds:{pattern}: {len(missing)} of {len(self.shards)} shards are not files, first {missing[0]} "
                "(shards must be local tar files; the pattern takes brace ranges such as {000000..000146})"
            )
        self.index = [self._scan(i, shard) for i, shard in enumerate(self.shards)]
        if not len(self):
            raise FileNotFoundError(f"wds:{pattern}: the shards hold no samples with {'/'.join(IMAGE_KEYS)} images")
        raw = np.asarray([e.label for entries in self.index for e in entries])
        self.labels = np.full(len(raw), -1, np.int64) if np.all(raw == -1) else validate_labels(raw, f"wds:{pattern}")
        self._files: dict[int, BinaryIO] = {}

    @staticmethod
    def _scan(i: int, shard: str) -> list[Entry]:
        """The samples of one shard, from its headers and ``.cls`` members."""
        with open(shard, "rb") as f:
            kind = _COMPRESSED.get(f.read(2))
        if kind:
            raise ValueError(f"{shard} is {kind}-compressed; shards must be plain tar files (images are compressed)")
        images: dict[str, tuple[int, int]] = {}
        cls: dict[str, int] = {}
        try:
            with tarfile.open(shard, "r:") as tf:
                for m in tf:
                    if not m.isfile() or "." not in Path(m.name).name:
                        continue
                    key, ext = _split(m.name)
                    if ext.lower() in IMAGE_KEYS and key not in images:
                        images[key] = (m.offset_data, m.size)
                    elif ext == "cls":
                        text = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                        try:
                            cls[key] = int(text)
                        except ValueError as err:
                            raise ValueError(f"{shard}: {m.name} holds {text!r}, not an integer class index") from err
        except tarfile.TarError as err:
            raise ValueError(f"{shard} is not a readable tar file ({err})") from err
        return [Entry(i, key, off, size, cls.get(key, -1)) for key, (off, size) in images.items()]

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.index)

    def __getstate__(self) -> dict[str, Any]:  # open files stay in their process
        return {**self.__dict__, "_files": {}}

    def describe(self, key: str) -> str:
        """Which sample ``key`` (its ``__key__`` in the shards) is, for error messages."""
        return f"sample {key} of wds:{self.pattern}"

    def read(self, e: Entry) -> bytes:
        """The encoded image of ``e`` (one seek and one read in its shard)."""
        f = self._files.get(e.shard)
        if f is None:
            f = self._files[e.shard] = open(self.shards[e.shard], "rb")  # noqa: SIM115 (kept open for the epoch)
        f.seek(e.offset)
        return f.read(e.size)

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> Iterator[Entry]:
        """The samples of an epoch in order: shards in a seeded order through a seeded shuffle buffer."""
        if not shuffle:
            for entries in self.index:
                yield from entries
            return
        rng = random.Random(mix_seed(seed, epoch, 1))
        order = list(range(len(self.shards)))
        rng.shuffle(order)
        buffer: list[Entry] = []
        for i in order:
            for e in self.index[i]:
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(e)
                    continue
                j = rng.randrange(len(buffer))
                yield buffer[j]
                buffer[j] = e
        rng.shuffle(buffer)
        yield from buffer

    def first(self, count: int) -> list[tuple[Any, int]]:
        """The first ``count`` decodable samples in shard order, as ``(image, label)`` (a fixed probe batch)."""
        out = []
        for e in self.epoch_order(0, 0, shuffle=False):
            try:
                out.append((open_image(self.read(e)), e.label))
            except UNREADABLE:
                continue
            if len(out) == count:
                break
        return out


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

    def _sample(self, rows: list[Entry], i: int, seed: int) -> dict[str, Any]:
        for skipped in range(len(rows)):
            e = rows[(i + skipped) % len(rows)]
            label = e.label
            g = torch.Generator().manual_seed(seed)
            try:
                x = self.helper.apply(open_image(self.source.read(e)), seed, g)
                break
            except UNREADABLE as err:
                self.helper._bad(self.source.describe(e.key), err)
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

        rows: list[Entry] = []
        for p, item in enumerate(self.source.epoch_order(s.seed, s.epoch, s.shuffle)):
            k = p // glob
            if k >= end:
                break
            if owned(k):
                rows.append(item)
                if (p + 1) % glob == 0 or p + 1 == total:
                    yield self._batch(rows, k)
                    rows = []

    def _batch(self, rows: list[Entry], k: int) -> dict[str, Any]:
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
                f"skipping {s.start_batch * s.batch_size * s.world_size} samples (nothing read: the order comes from "
                "the shard index and is the same as without the stop, so the resume is exact)",
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
