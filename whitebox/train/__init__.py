"""The tested pieces the training recipes in ``recipes/`` are built from.

``TrainLoop`` and ``RunFolder`` (the shared loop, checkpoints, resume and the output folder's lock),
datasets and seeded transforms, a resumable rank-aware sampler, schedules, parameter groups,
atomic checkpoints with RNG state, distributed set-up, metric logs, and the linear probe.
"""

from .checkpoint import atomic_save, find_resume, get_rng_state, load_checkpoint_file, set_rng_state
from .data import (
    BadImageError,
    EvalTransform,
    MAEAugment,
    ResumableBatchSampler,
    SeededDataset,
    build_dataset,
    load_npz,
    make_loader,
)
from .distributed import DistInfo, all_reduce_mean, cleanup_distributed, init_distributed
from .logger import MetricsLogger, read_jsonl
from .optim import param_groups_weight_decay
from .run import FolderInUseError, NonFiniteError, OutputFolderError, RunFolder, StoppedBySignal, TrainLoop
from .schedule import scaled_lr, set_lr, warmup_cosine

__all__ = [
    "BadImageError",
    "DistInfo",
    "EvalTransform",
    "FolderInUseError",
    "MAEAugment",
    "MetricsLogger",
    "NonFiniteError",
    "OutputFolderError",
    "ResumableBatchSampler",
    "RunFolder",
    "SeededDataset",
    "StoppedBySignal",
    "TrainLoop",
    "all_reduce_mean",
    "atomic_save",
    "build_dataset",
    "cleanup_distributed",
    "find_resume",
    "get_rng_state",
    "init_distributed",
    "load_checkpoint_file",
    "load_npz",
    "make_loader",
    "param_groups_weight_decay",
    "read_jsonl",
    "scaled_lr",
    "set_lr",
    "set_rng_state",
    "warmup_cosine",
]
