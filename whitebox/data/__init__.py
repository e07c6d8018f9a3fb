"""whitebox's data layer: sources, per-sample seeded transforms, the resumable sampler and the loader.

**The source contract.** A source is what ``build_dataset`` returns for a ``--data`` string:

- an *indexed* source is a ``torch.utils.data.Dataset`` of ``(image, label)`` items: ``image`` a PIL
  image in RGB (``open_image``: 16-bit and float images rescaled, EXIF orientation applied; a plain
  JPEG may come not yet decoded, so that a transform can decode it reduced), ``label`` an ``int``
  class index 0..K-1, or -1 for an unlabelled source. It has ``labels`` (an int64 array (N,),
  readable without decoding an image; validated by ``validate_labels``), ``classes`` (the names of
  the class indices) where the source names its classes, ``describe(i)`` (which file / entry item i
  is, for error messages) and ``skipped_files`` (``(path, reason)`` for every file it did not use).
  A bad item raises one of Pillow's / the OS's errors (``OSError``, ``ValueError``, ...) from
  ``__getitem__``; ``SeededDataset`` turns that into a warning naming ``describe(i)`` and the next
  readable item (``on_bad_image='skip'``), or a ``BadImageError`` (``'error'``). A malformed source
  (labels, offsets, arrays, columns) is a ``ValueError`` naming what is wrong when it is opened.
- a *stream* (``WebDatasetSource``) has ``labels``, ``len`` and ``describe(key)`` too, but is read in
  order; ``SeededStream`` turns it into the same samples an indexed source gives (``whitebox.data.wds``).

**Samples.** ``SeededDataset`` / ``SeededStream`` give dicts: ``image`` (uint8 (3, H, W) from the
seeded transforms), ``label``, ``skipped`` and, for MAE, ``noise``. Every random draw of a sample
(crop, flip, RandAugment, random erasing, mask noise) comes from a seed derived from (run seed, epoch,
position in the epoch), so a sample does not depend on the worker, the rank, or where a run was
resumed. ``make_loader`` moves batches to the device and normalises images there.

Modules: ``base`` (decoding, labels, errors), ``arrays`` (``.npz``), ``folder``, ``samples``, ``hf``
(Hugging Face datasets), ``wds`` (WebDataset), ``build``, ``transforms``, ``seeded``, ``sampler``,
``loader``.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from .arrays import ArrayImageDataset, JpegPackDataset, load_npz
from .base import (
    BAD_IMAGE_POLICIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadImageError,
    LabelError,
    RelabelledDataset,
    SplitNotFoundError,
    align_labels,
    dataset_classes,
    dataset_labels,
    describe_item,
    mix_seed,
    open_image,
    to_rgb,
    validate_labels,
)
from .build import build_dataset, data_options, is_stream
from .folder import ClassFolder, FlatImageFolder
from .loader import DeviceLoader, fixed_batch, make_loader
from .sampler import ResumableBatchSampler
from .samples import SamplePhotoDataset
from .seeded import SeededDataset, seeded_call
from .transforms import EvalTransform, MAEAugment, SeededTransform, normalize, to_uint8_tensor


def seeded_dataset(base: Any, transform: Any, num_patches: int | None = None, on_bad_image: str = "skip") -> Dataset:
    """``SeededDataset`` for an indexed source, ``SeededStream`` for a stream: what ``make_loader`` takes."""
    if is_stream(base):
        from .wds import SeededStream

        return SeededStream(base, transform, num_patches, on_bad_image)
    return SeededDataset(base, transform, num_patches, on_bad_image)


__all__ = [
    "BAD_IMAGE_POLICIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayImageDataset",
    "BadImageError",
    "ClassFolder",
    "DeviceLoader",
    "EvalTransform",
    "FlatImageFolder",
    "JpegPackDataset",
    "LabelError",
    "MAEAugment",
    "RelabelledDataset",
    "ResumableBatchSampler",
    "SamplePhotoDataset",
    "SeededDataset",
    "SeededTransform",
    "SplitNotFoundError",
    "align_labels",
    "build_dataset",
    "data_options",
    "dataset_classes",
    "dataset_labels",
    "describe_item",
    "fixed_batch",
    "is_stream",
    "load_npz",
    "make_loader",
    "mix_seed",
    "normalize",
    "open_image",
    "seeded_call",
    "seeded_dataset",
    "to_rgb",
    "to_uint8_tensor",
    "validate_labels",
]
