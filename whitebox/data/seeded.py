"""The per-sample seeded wrapper: a base dataset + a transform -> training samples that do not depend on
the worker, the rank or where a run was resumed."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import BAD_IMAGE_POLICIES, UNREADABLE, BadImageError, describe_item
from .transforms import SeededTransform

__all__ = ["SeededDataset", "seeded_call"]


def seeded_call(fn: Callable[..., Any], seed: int, *args: Any) -> Any:
    """``fn(*args)`` with Python's, NumPy's and torch's global generators seeded by ``seed``, then restored.

    For transforms that draw from the global streams (timm's RandAugment, RandomResizedCrop, random
    erasing): their draws become a function of ``seed`` alone, and the caller's streams (drop path,
    mixup) are left exactly as they were.
    """
    py, nps, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)  # the CPU stream only: CUDA's (drop path on GPU) is left alone
        return fn(*args)
    finally:
        random.setstate(py)
        np.random.set_state(nps)
        torch.set_rng_state(th)


class SeededDataset(Dataset):
    """Applies a transform to a base dataset, seeded per sample; indices are ``(index, seed)`` pairs.

    A sample is a dict: ``image`` (uint8 (3, H, W) from a ``SeededTransform``; whatever a plain callable
    returns), ``label`` (-1 when unlabelled), ``skipped`` (unreadable images passed over to produce it)
    and, when ``num_patches`` is given, ``noise`` (MAE mask noise). ``SeededTransform``s draw from a
    generator seeded with the sample's seed; plain callables (timm transforms) run under ``seeded_call``,
    so their draws depend on the seed alone too.
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

    def apply(self, img: Any, seed: int, g: torch.Generator) -> torch.Tensor:
        """The transform applied to one image under the sample's seed.

        Args:
            img: the base dataset's image (a PIL image in RGB).
            seed: the sample's seed (from run seed, epoch and position).
            g: a CPU generator seeded with ``seed``, which a ``SeededTransform`` draws from; the caller
                draws the MAE mask noise from it afterwards.

        Returns:
            What the transform returns: uint8 (3, H, W) from a ``SeededTransform``; a plain callable's
            output (timm's transforms: normalised float (3, H, W)), run under ``seeded_call(fn, seed)``.

        Raises:
            OSError: the image cannot be decoded (``__getitem__`` skips it or raises ``BadImageError``,
                as ``on_bad_image`` says).
            ValueError: the same, for a decoder that reports a bad image this way.
        """
        if isinstance(self.transform, SeededTransform):
            return self.transform(img, g)
        return seeded_call(self.transform, seed, img)

    def __getitem__(self, index: tuple[int, int]) -> dict[str, Any]:
        i, seed = index
        for skipped in range(len(self.base)):
            j = (i + skipped) % len(self.base)
            g = torch.Generator().manual_seed(seed)
            try:
                img, label = self.base[j]
                x = self.apply(img, seed, g)
                break
            except UNREADABLE as err:
                self._bad(describe_item(self.base, j), err)
        else:
            raise BadImageError(f"none of the {len(self.base)} images of the dataset can be read")
        sample = {"image": x, "label": label, "skipped": skipped}
        if self.num_patches is not None:
            sample["noise"] = torch.rand(self.num_patches, generator=g)
        return sample

    def _bad(self, what: str, err: Exception) -> None:
        what = f"{what} cannot be read as an image ({type(err).__name__}: {err})"
        if self.on_bad_image == "error":
            raise BadImageError(f"{what}; fix or remove it, or pass --on-bad-image skip") from err
        warned = self.__dict__.setdefault("_warned", set())  # per worker process
        if what not in warned:
            warned.add(what)
            print(f"warning: skipped {what}", file=sys.stderr)
