"""Training support shared by the recipes: schedules, checkpoints, distributed set-up, data, logging.

The recipes in ``recipes/`` are thin wrappers around ``whitebox.train.pretrain``,
``whitebox.train.linprobe`` and ``whitebox.train.finetune``.
"""

from .checkpoint import atomic_save, atomic_write_bytes, get_rng_state, load_checkpoint_file, set_rng_state
from .data import (
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
from .schedule import scaled_lr, set_lr, warmup_cosine
from .visualize import reconstruction_grid

__all__ = [
    "DistInfo",
    "EvalTransform",
    "MAEAugment",
    "MetricsLogger",
    "ResumableBatchSampler",
    "SeededDataset",
    "all_reduce_mean",
    "atomic_save",
    "atomic_write_bytes",
    "build_dataset",
    "cleanup_distributed",
    "get_rng_state",
    "init_distributed",
    "load_checkpoint_file",
    "load_npz",
    "make_loader",
    "param_groups_weight_decay",
    "read_jsonl",
    "reconstruction_grid",
    "scaled_lr",
    "set_lr",
    "set_rng_state",
    "warmup_cosine",
]
