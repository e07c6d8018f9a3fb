"""Full fine-tuning of an encoder for classification (behind ``recipes/finetune.py``).

The MAE fine-tuning recipe: AdamW(0.9, 0.999), ``lr = blr * effective_batch / 256`` with layer-wise
decay (block i of L gets ``lr * decay^(L + 1 - i)``, groups from the model's ``group_matcher``),
per-step warmup then cosine, label smoothing, mixup / cutmix and RandAugment from timm, drop path.
Runs on one process or under ``torchrun`` (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import atomic_save, get_rng_state, load_checkpoint_file, seed_everything, set_rng_state
from .common import (
    add_model_shape_args,
    amp_context,
    count_params,
    load_encoder,
    model_kwargs_from_args,
    resolve_precision,
    write_json,
)
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    ResumableBatchSampler,
    SeededDataset,
    build_dataset,
    dataset_labels,
    make_loader,
)
from .distributed import all_reduce_mean, barrier, cleanup_distributed, init_distributed
from .logger import MetricsLogger, Progress
from .schedule import scaled_lr, set_lr, warmup_cosine


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Fine-tune an encoder: a registered model (--pretrained) or a pretrain.py checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=None, help="registered model (read from --checkpoint when it is pretrain.py's)")
    p.add_argument("--checkpoint", default=None, help="checkpoint from pretrain.py, or a weights file for --model")
    p.add_argument("--pretrained", action="store_true")
    add_model_shape_args(p)
    p.add_argument("--global-pool", default="avg", choices=("token", "avg"))
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--data", required=True, help="labelled data: .npz, image folder or 'cifar10'")
    p.add_argument("--test-data", default=None, help="a file or folder of test images (default: test split of --data)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--download", action="store_true")
    p.add_argument("--data-root", default="data")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--accum-iter", type=int, default=1)
    p.add_argument("--blr", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--layer-decay", type=float, default=0.75)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=5)
    p.add_argument("--clip-grad", type=float, default=None)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.8)
    p.add_argument("--cutmix", type=float, default=1.0)
    p.add_argument(
        "--aa",
        default="rand-m9-mstd0.5-inc1-mmax9",
        help="timm auto-augment policy ('' for none); MAE's rand-m9-mstd0.5-inc1 capped at magnitude 9, because "
        "magnitude 10 asks Pillow >= 12 to posterize to 0 bits, which it refuses",
    )
    p.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    p.add_argument("--output", default="output/finetune")
    p.add_argument("--resume", default=None, help="checkpoint path or 'auto'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many steps in all")
    p.add_argument("--no-progress", action="store_true")
    return p


def train_transform(args: argparse.Namespace, img_size: int) -> Any:
    from timm.data import create_transform

    return create_transform(
        input_size=img_size,
        is_training=True,
        auto_augment=args.aa or None,
        interpolation="bicubic",
        re_prob=args.reprob,
        re_mode="pixel",
        re_count=1,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, precision: str) -> dict[str, float]:
    """Top-1 / top-5 over the whole (sharded) test set."""
    model.eval()
    stats = torch.zeros(3, device=device, dtype=torch.float64)  # correct@1, correct@5, count
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
        with amp_context(device, precision):
            logits = model(x)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        stats[0] += (top[:, 0] == y).sum()
        stats[1] += (top == y[:, None]).any(1).sum()
        stats[2] += len(y)
    stats = all_reduce_mean(stats)  # mean of sums = sums / world; the ratios are unchanged
    model.train()
    return {"top1": (stats[0] / stats[2]).item(), "top5": (stats[1] / stats[2]).item()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    info = init_distributed(args.device)
    try:
        return _run(args, info)
    finally:
        cleanup_distributed()


def _run(args: argparse.Namespace, info: Any) -> dict[str, Any]:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import param_groups_layer_decay

    device, out = info.device, Path(args.output)
    precision = resolve_precision(args.precision, device)
    seed_everything(args.seed + info.rank)
    train_base = build_dataset(args.data, args.train_split, args.download, args.data_root)
    if args.test_data:  # a file or folder holding only the test images
        test_base = build_dataset(args.test_data, None, args.download, args.data_root)
    else:
        test_base = build_dataset(args.data, args.test_split, args.download, args.data_root)
    num_classes = 1 + max(int(dataset_labels(train_base).max()), int(dataset_labels(test_base).max()))
    torch.manual_seed(args.seed)  # identical head initialisation on every rank
    kwargs = model_kwargs_from_args(args)
    encoder, model_name, model_kwargs = load_encoder(
        args.model,
        args.checkpoint,
        args.pretrained,
        num_classes,
        args.global_pool,
        drop_path_rate=args.drop_path,
        **kwargs,
    )
    model = encoder.to(device)
    seed_everything(args.seed + info.rank)  # per-rank augmentation / drop-path randomness; DDP broadcasts weights
    img_size = model.patch_embed.img_size[0]

    train_set = SeededDataset(train_base, train_transform(args, img_size))
    test_set = SeededDataset(test_base, EvalTransform(img_size))
    sampler = ResumableBatchSampler(len(train_set), args.batch_size, info.rank, info.world_size, args.seed)
    test_sampler = ResumableBatchSampler(
        len(test_set), args.batch_size, info.rank, info.world_size, shuffle=False, drop_last=False
    )
    workers = args.workers if args.workers is not None else (0 if device.type == "cpu" else 8)
    loader = make_loader(train_set, sampler, workers, pin_memory=device.type == "cuda")
    test_loader = make_loader(test_set, test_sampler, workers, pin_memory=device.type == "cuda")

    effective_batch = args.batch_size * args.accum_iter * info.world_size
    steps_per_epoch = len(sampler) // args.accum_iter
    if steps_per_epoch == 0:
        effective = args.batch_size * args.accum_iter * info.world_size
        raise ValueError(
            f"{len(train_set)} samples make no optimizer step of {effective}; lower --batch-size or --accum-iter"
        )
    total_steps = steps_per_epoch * args.epochs
    warmup = round(args.warmup_epochs * steps_per_epoch)
    base_lr = args.lr if args.lr is not None else scaled_lr(args.blr, effective_batch)
    groups = param_groups_layer_decay(
        model, args.weight_decay, no_weight_decay_list=model.no_weight_decay(), layer_decay=args.layer_decay
    )
    optimizer = torch.optim.AdamW(groups, lr=base_lr, betas=(0.9, 0.999), fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing, num_classes=num_classes
        )
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(args.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    train_model: nn.Module = model
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    step, best = 0, -math.inf
    resume = args.resume
    if resume == "auto":
        resume = str(out / "checkpoint-last.pth") if (out / "checkpoint-last.pth").is_file() else None
    if resume:
        ckpt = load_checkpoint_file(resume)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, best = int(ckpt["step"]), float(ckpt["best_top1"])
        rng = ckpt["rng"]
        set_rng_state(rng["per_rank"][info.rank] if "per_rank" in rng else rng)
    logger = evals = None
    if info.is_main:
        logger = MetricsLogger(out, step if resume else None, tensorboard=True)
        evals = MetricsLogger(out, step if resume else None, tensorboard=False, name="eval.jsonl")
    if info.is_main:
        write_json(
            {
                **vars(args),
                "model_kwargs": model_kwargs,
                "num_classes": num_classes,
                "lr": base_lr,
                "effective_batch": effective_batch,
                "total_steps": total_steps,
                "params": count_params(model),
            },
            out / "args.json",
        )
    stop = min(total_steps, args.stop_after or total_steps)
    bar = Progress(stop, step, enabled=info.is_main and not args.no_progress, desc="finetune")
    metrics: dict[str, float] = {}
    t_log, seen, acc, acc_n = time.perf_counter(), 0, torch.zeros((), device=device), 0
    model.train()
    while step < stop:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch, (step - epoch * steps_per_epoch) * args.accum_iter)
        batches = iter(loader)
        for _ in range(step - epoch * steps_per_epoch, steps_per_epoch):
            set_lr(optimizer, warmup_cosine(step, total_steps, warmup, base_lr, args.min_lr))
            for i in range(args.accum_iter):
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
                if mixup is not None:
                    x, y = mixup(x, y)
                no_sync = info.distributed and i < args.accum_iter - 1
                with train_model.no_sync() if no_sync else contextlib.nullcontext():
                    with amp_context(device, precision):
                        loss = criterion(train_model(x), y)
                    scaler.scale(loss / args.accum_iter).backward()
                acc += loss.detach() / args.accum_iter
            if args.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step, acc_n, seen = step + 1, acc_n + 1, seen + effective_batch
            bar.update()
            if step % args.log_every == 0 or step == stop:
                now = time.perf_counter()
                row = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "loss": float(all_reduce_mean(acc)) / acc_n,
                    "lr": max(g["lr"] for g in optimizer.param_groups),
                    "images_per_s": seen / (now - t_log),
                }
                acc.zero_()
                acc_n, seen, t_log = 0, 0, now
                if logger:
                    logger.log(row)
                bar.set(step, stop, loss=row["loss"], lr=row["lr"], img_s=round(row["images_per_s"]))
            if step % steps_per_epoch == 0 or step == stop:
                metrics = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    **evaluate(model, test_loader, device, precision),
                }
                is_best = metrics["top1"] > best
                best = max(best, metrics["top1"])
                rng = get_rng_state()
                if info.distributed:  # every rank's state, so a resumed run keeps ranks apart
                    per_rank = [None] * info.world_size
                    torch.distributed.all_gather_object(per_rank, rng)
                    rng = {"per_rank": per_rank}
                if info.is_main:
                    evals.log(metrics)
                    state = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "step": step,
                        "best_top1": best,
                        "rng": rng,
                        "model_name": model_name,
                        "model_kwargs": {**model_kwargs, "num_classes": num_classes},
                    }
                    atomic_save(state, out / "checkpoint-last.pth")
                    if is_best:
                        atomic_save(state, out / "checkpoint-best.pth")
                    print(
                        f"step {step}: test top-1 {100 * metrics['top1']:.2f}% top-5 {100 * metrics['top5']:.2f}% "
                        f"(best {100 * best:.2f}%)",
                        file=sys.stderr,
                    )
            if step >= stop:
                break
    bar.close()
    barrier()
    for lg in (logger, evals):
        if lg:
            lg.close()
    return {**metrics, "best_top1": best}
