"""Fine-tune an encoder for classification (the MAE fine-tuning recipe).

    python recipes/finetune.py --checkpoint output/pretrain/checkpoint-last.pth --data ../shared/data/cifar10_small.npz
    torchrun --nproc_per_node 8 recipes/finetune.py --model crate_base --pretrained --data /path/to/imagenet

AdamW(0.9, 0.999), ``lr = blr * effective_batch / 256`` with layer-wise decay (block i of L gets
``lr * decay^(L + 1 - i)``, groups from the model's ``group_matcher``), per-step warmup then cosine,
label smoothing, mixup / cutmix and RandAugment from timm, drop path; DistributedDataParallel under
``torchrun``. The loop, checkpoints (best by test top-1), exact resume and the output folder's lock
are ``whitebox.train.TrainLoop``'s. timm's augmentations run under a seed of their sample
(run seed, epoch, position), and mixup and drop path draw from the global streams that checkpoints
keep per rank, so a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

try:
    import whitebox  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the library next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whitebox.cli import start_program
from whitebox.recipe_args import finetune_parser

if __name__ == "__main__":
    start_program(finetune_parser)  # --help answers here, before torch is imported

import torch
from torch import nn

from whitebox.cli import require
from whitebox.data import SplitNotFoundError, align_labels, data_options, dataset_labels, seeded_dataset
from whitebox.data_config import eval_overrides, eval_transform, resolve_eval_config
from whitebox.train import (
    ResumableBatchSampler,
    RunFolder,
    TrainLoop,
    all_reduce_mean,
    build_dataset,
    cleanup_distributed,
    init_distributed,
    make_loader,
    scaled_lr,
)
from whitebox.train.checkpoint import seed_everything
from whitebox.train.common import (
    amp_context,
    check_aa,
    count_params,
    load_encoder,
    model_kwargs_from_args,
    resolve_precision,
)
from whitebox.train.run import finish_line, run_main

build_parser = finetune_parser


class Finetuning(TrainLoop):
    """An encoder with a new head on labelled images; a step is the classification loss on mixed-up,
    augmented batches, the evaluation top-1 / top-5 on the whole test set (best by top-1)."""

    name, score, higher_is_better = "finetune", "top1", True

    def __init__(self, args: argparse.Namespace, dist: Any) -> None:
        from timm.data import Mixup, create_transform
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import param_groups_layer_decay

        super().__init__(args, dist)
        device = self.device
        self.precision = resolve_precision(args.precision, device)
        self.effective_batch = args.batch_size * args.accum_iter * dist.world_size
        self.base_lr = args.lr if args.lr is not None else scaled_lr(args.blr, self.effective_batch)
        check_lr(args, self.base_lr, self.effective_batch)
        seed_everything(args.seed + dist.rank)
        opts = data_options(args)
        train_base = build_dataset(args.data, args.train_split, args.download, args.data_root, **opts)
        test_split = None if args.test_data else args.test_split  # a file or folder of test images only
        try:
            test_base = build_dataset(args.test_data or args.data, test_split, args.download, args.data_root, **opts)
        except SplitNotFoundError as err:  # advice that fits this program's flags
            raise SplitNotFoundError(
                f"{err}; give the test images with --test-data FILE_OR_FOLDER, or name a split of --data that exists "
                "with --test-split"
            ) from err
        train_labels = dataset_labels(train_base, f"--data {args.data}")
        dataset_labels(test_base, f"the test images ({args.test_data or args.data})")
        # classes matched by name (a class folder missing from one split must not renumber the others)
        test_base = align_labels(train_base, test_base, "training", "test")
        self.skipped_files = [*getattr(train_base, "skipped_files", []), *getattr(test_base, "skipped_files", [])]
        self.num_classes = 1 + int(train_labels.max())
        torch.manual_seed(args.seed)  # identical head initialisation on every rank
        encoder, self.model_name, self.model_kwargs = load_encoder(
            args.model,
            args.checkpoint,
            args.pretrained,
            self.num_classes,
            args.global_pool,
            drop_path_rate=args.drop_path,
            **model_kwargs_from_args(args),
        )
        self.model = encoder.to(device)
        seed_everything(args.seed + dist.rank)  # per-rank augmentation / drop-path randomness; DDP broadcasts weights
        img_size = self.model.patch_embed.img_size[0]
        # evaluation as the model's record says (crop_pct, interpolation, mean / std), unless overridden: the
        # same transform as `python -m whitebox.validate` on this checkpoint; training normalises the same way
        self.eval_config = resolve_eval_config(self.model, **eval_overrides(args))
        transform = create_transform(
            input_size=img_size,
            is_training=True,
            auto_augment=args.aa or None,
            interpolation="bicubic",
            re_prob=args.reprob,
            re_mode="pixel",
            re_count=1,
            mean=self.eval_config["mean"],
            std=self.eval_config["std"],
        )
        # timm's transforms draw from the global streams: seeded_dataset runs each under the sample's own seed
        train_set = seeded_dataset(train_base, transform, on_bad_image=args.on_bad_image)
        # uint8 (3, H, W): the loader normalises with the record's mean / std (below)
        test_tf = eval_transform(self.model, uint8=True, **eval_overrides(args))
        test_set = seeded_dataset(test_base, test_tf, on_bad_image=args.on_bad_image)
        self.sampler = ResumableBatchSampler(len(train_set), args.batch_size, dist.rank, dist.world_size, args.seed)
        test_sampler = ResumableBatchSampler(
            len(test_set), args.batch_size, dist.rank, dist.world_size, shuffle=False, drop_last=False
        )
        workers = args.workers if args.workers is not None else (0 if device.type == "cpu" else 8)
        norm = dict(mean=self.eval_config["mean"], std=self.eval_config["std"])  # for uint8 images
        self.loader = make_loader(train_set, self.sampler, workers, device=device, **norm)
        self.test_loader = make_loader(test_set, test_sampler, workers, device=device, **norm)

        self.steps_per_epoch = len(self.sampler) // args.accum_iter
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(train_set)} samples make no optimizer step of {self.effective_batch}; "
                "lower --batch-size or --accum-iter"
            )
        self.total_steps = self.steps_per_epoch * args.epochs
        if args.warmup_epochs is None:  # MAE's 5 epochs, or the same twentieth of a run not longer than that
            args.warmup_epochs = 5.0 if args.epochs > 5 else args.epochs / 20
        self.warmup_steps = round(args.warmup_epochs * self.steps_per_epoch)
        groups = param_groups_layer_decay(
            self.model,
            args.weight_decay,
            no_weight_decay_list=self.model.no_weight_decay(),
            layer_decay=args.layer_decay,
        )
        self.optimizer = torch.optim.AdamW(groups, lr=self.base_lr, betas=(0.9, 0.999), fused=device.type == "cuda")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.mixup = None
        if args.mixup > 0 or args.cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=args.mixup,
                cutmix_alpha=args.cutmix,
                label_smoothing=args.smoothing,
                num_classes=self.num_classes,
            )
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif args.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(args.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.train_model: nn.Module = self.model
        if dist.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.model.train()

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["label"].to(self.device, non_blocking=True)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        return self.criterion(self.train_model(x), y)

    @torch.no_grad()
    def evaluate(self, epoch_end: bool) -> dict[str, float]:
        """Top-1 / top-5 over the whole (sharded) test set."""
        self.model.eval()
        stats = torch.zeros(3, device=self.device, dtype=torch.float64)  # correct@1, correct@5, count
        for batch in self.test_loader:
            x, y = batch["image"].to(self.device), batch["label"].to(self.device)
            with amp_context(self.device, self.precision):
                logits = self.model(x)
            top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
            stats[0] += (top[:, 0] == y).sum()
            stats[1] += (top == y[:, None]).any(1).sum()
            stats[2] += len(y)
        stats = all_reduce_mean(stats)  # mean of sums = sums / world; the ratios are unchanged
        self.model.train()
        return {"top1": (stats[0] / stats[2]).item(), "top5": (stats[1] / stats[2]).item()}

    def record(self) -> dict[str, Any]:
        # the classifier it holds: its width and pooling (the encoder's, not the autoencoder's defaults)
        head = {"num_classes": self.num_classes, "global_pool": self.args.global_pool}
        return {"model_name": self.model_name, "model_kwargs": {**self.model_kwargs, **head}}

    def check_resume(self, ckpt: dict[str, Any], path: Path) -> None:
        if ckpt.get("model_name") != self.model_name:
            raise ValueError(f"{path} fine-tuned {ckpt.get('model_name')!r}, this run {self.model_name!r}")

    def summary(self) -> dict[str, Any]:
        return {
            "model_kwargs": self.model_kwargs,
            "eval_transform": _plain_config(self.eval_config),
            "num_classes": self.num_classes,
            "lr": self.base_lr,
            "effective_batch": self.effective_batch,
            "total_steps": self.total_steps,
            "params": count_params(self.model),
            "skipped_files": [f"{path}: {why}" for path, why in self.skipped_files],
        }

    def describe(self) -> str:
        return (
            f"fine-tune {self.model_name} ({count_params(self.model) / 1e6:.2f}M params) on {self.args.data}: "
            f"{self.num_classes} classes, batch {self.effective_batch}, lr {self.base_lr:.3g}, {self.total_steps} "
            f"steps -> {self.args.output}"
        )


def _plain_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def check_lr(args: argparse.Namespace, base_lr: float, effective_batch: int) -> None:
    """--min-lr at most the peak lr (known once the global batch is)."""
    source = "--lr" if args.lr is not None else f"--blr {args.blr:g} x global batch {effective_batch} / 256"
    require(
        args.min_lr <= base_lr,
        f"--min-lr {args.min_lr:g} is above the peak lr {base_lr:.3g} ({source}); lower --min-lr or raise the lr",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, and the relations between them that need no data."""
    args = build_parser().parse_args(argv)
    if args.warmup_epochs is not None:
        require(
            args.warmup_epochs < args.epochs,
            f"--warmup-epochs {args.warmup_epochs:g} is not shorter than the run (--epochs {args.epochs}); give "
            "fewer warmup epochs, or leave it unset",
        )
    if args.lr is not None:
        check_lr(args, args.lr, 0)
    check_aa(args.aa)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device)
    try:
        with RunFolder(args.output, info):
            result = Finetuning(args, info).run()
    finally:
        cleanup_distributed()
    if info.is_main:
        top1, best = 100 * result.get("top1", 0.0), 100 * result["best_top1"]
        print(finish_line(result, f" top-1 {top1:.2f}% (best {best:.2f}%)", info.world_size), file=sys.stderr)
    return result


if __name__ == "__main__":
    run_main(main)
