"""Linear probing of a frozen encoder (behind ``recipes/linprobe.py``).

Features: the class token or the mean of the patch tokens, from the last block (after the final
norm) or an intermediate one. Classifier, as in the MAE protocol: a BatchNorm without affine
parameters, then a linear layer; i.e. ``logits = W (f - mu) / sigma + b`` with the training set's
feature mean and standard deviation. Two solvers on cached features:

- ``lbfgs`` (default): full-batch L-BFGS on ``CE + wd / 2 * ||W||^2`` (fast and deterministic for
  sets that fit in memory);
- ``sgd``: mini-batch SGD with momentum, per-step warmup and cosine (the MAE recipe uses LARS at batch
  16384; no augmentation here because features are cached).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import atomic_save, seed_everything
from .common import (
    add_model_shape_args,
    amp_context,
    load_encoder,
    model_kwargs_from_args,
    resolve_precision,
    write_json,
)
from .data import EvalTransform, ResumableBatchSampler, SeededDataset, build_dataset
from .distributed import resolve_device
from .schedule import set_lr, warmup_cosine


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Linear probe of a frozen encoder: a registered model (--pretrained) or a pretrain.py checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=None, help="registered model (read from --checkpoint when it is pretrain.py's)")
    p.add_argument("--checkpoint", default=None, help="checkpoint from pretrain.py, or a weights file for --model")
    p.add_argument("--pretrained", action="store_true", help="load the registered pretrained weights")
    add_model_shape_args(p)
    p.add_argument("--data", required=True, help="labelled data: .npz, image folder or 'cifar10'")
    p.add_argument(
        "--test-data",
        default=None,
        help="a file or folder holding only the test images (default: the test split of --data)",
    )
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--download", action="store_true")
    p.add_argument("--data-root", default="data")
    p.add_argument("--max-train", type=int, default=None, help="use a seeded random subset of N training images")
    p.add_argument("--pool", default="token", choices=("token", "avg"), help="class token or mean of patch tokens")
    p.add_argument("--layer", type=int, default=None, help="block index for intermediate features (default: last)")
    p.add_argument("--crop-pct", type=float, default=1.0, help="evaluation centre-crop fraction")
    p.add_argument("--solver", default="lbfgs", choices=("lbfgs", "sgd"))
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations")
    p.add_argument("--epochs", type=int, default=90, help="sgd epochs")
    p.add_argument("--lr", type=float, default=0.1, help="sgd lr")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="output/linprobe")
    return p


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: Dataset,
    img_size: int,
    pool: str = "token",
    layer: int | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    workers: int = 0,
    crop_pct: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (N, d) in float32 and labels (N,) for every image of ``dataset``."""
    device = torch.device(device)
    encoder.eval().to(device)
    ds = SeededDataset(dataset, EvalTransform(img_size, crop_pct))
    sampler = ResumableBatchSampler(len(ds), batch_size, shuffle=False, drop_last=False)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda")
    feats, labels = [], []
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if layer is None:
            with amp_context(device, precision):
                tokens = encoder.forward_features(x)
            f = tokens[:, 0] if pool == "token" else tokens[:, encoder.num_prefix_tokens :].mean(1)
        else:
            f = _intermediate_pool(encoder, x, layer, pool, precision)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels).long()


def _intermediate_pool(encoder: nn.Module, x: torch.Tensor, layer: int, pool: str, precision: str) -> torch.Tensor:
    with amp_context(x.device, precision):
        ((patches, prefix),) = encoder.forward_intermediates(
            x,
            indices=[layer],
            output_fmt="NLC",
            intermediates_only=True,
            norm=True,
            stop_early=True,
            return_prefix_tokens=True,
        )
    return prefix[:, 0] if pool == "token" else patches.mean(1)


class LinearProbe(nn.Module):
    """``BatchNorm1d(affine=False)`` + ``Linear``: the MAE linear-probe head."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(f))


def fit_lbfgs(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4, max_iter: int = 300
) -> LinearProbe:
    """Full-batch L-BFGS on standardised features (the BatchNorm's statistics are the whole set's)."""
    probe = LinearProbe(feats.shape[1], num_classes).to(feats.device)
    with torch.no_grad():  # eval-mode BatchNorm with the set's mean and (unbiased) variance = standardisation
        probe.norm.running_mean.copy_(feats.mean(0))
        probe.norm.running_var.copy_(feats.var(0))
    probe.eval()
    z = probe.norm(feats).detach()
    opt = torch.optim.LBFGS(
        probe.linear.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe.linear(z), labels) + 0.5 * weight_decay * probe.linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def fit_sgd(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    epochs: int = 90,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> LinearProbe:
    """Mini-batch SGD (momentum 0.9) with warmup (10 % of steps) and cosine, on cached features."""
    probe = LinearProbe(feats.shape[1], num_classes).to(feats.device)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, len(feats) // batch_size)
    total = epochs * steps_per_epoch
    step = 0
    probe.train()
    for _ in range(epochs):
        perm = torch.randperm(len(feats), generator=g).to(feats.device)
        for k in range(steps_per_epoch):
            set_lr(opt, warmup_cosine(step, total, total // 10, lr))
            idx = perm[k * batch_size : (k + 1) * batch_size]
            loss = F.cross_entropy(probe(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return probe.eval()


@torch.no_grad()
def accuracy(probe: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> float:
    probe.eval()
    return (probe(feats).argmax(1) == labels).float().mean().item()


def linear_probe(
    encoder: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    img_size: int,
    pool: str = "token",
    layer: int | None = None,
    solver: str = "lbfgs",
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int = 256,
    workers: int = 0,
    weight_decay: float = 1e-4,
    max_iter: int = 300,
    epochs: int = 90,
    lr: float = 0.1,
    seed: int = 0,
    crop_pct: float = 1.0,
) -> dict[str, Any]:
    """Extract features, fit the probe, and return train / test top-1 (fractions) and the probe."""
    t0 = time.perf_counter()
    kw = dict(pool=pool, layer=layer, batch_size=batch_size, device=device, precision=precision, workers=workers)
    f_train, y_train = extract_features(encoder, train_set, img_size, crop_pct=crop_pct, **kw)
    f_test, y_test = extract_features(encoder, test_set, img_size, crop_pct=crop_pct, **kw)
    if (y_train < 0).any():
        raise ValueError("the training set has no labels; a linear probe needs labelled data")
    t1 = time.perf_counter()
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    dev = torch.device(device)
    f_train, y_train, f_test, y_test = (t.to(dev) for t in (f_train, y_train, f_test, y_test))
    with torch.autocast(dev.type, enabled=False):
        if solver == "lbfgs":
            probe = fit_lbfgs(f_train, y_train, num_classes, weight_decay, max_iter)
        elif solver == "sgd":
            probe = fit_sgd(f_train, y_train, num_classes, epochs, lr, weight_decay, batch_size, seed)
        else:
            raise ValueError(f"solver must be 'lbfgs' or 'sgd', got {solver!r}")
    return {
        "top1": accuracy(probe, f_test, y_test),
        "train_top1": accuracy(probe, f_train, y_train),
        "num_train": len(f_train),
        "num_test": len(f_test),
        "feature_dim": f_train.shape[1],
        "num_classes": num_classes,
        "extract_s": t1 - t0,
        "fit_s": time.perf_counter() - t1,
        "probe": probe,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    encoder, model_name, model_kwargs = load_encoder(
        args.model, args.checkpoint, args.pretrained, **model_kwargs_from_args(args)
    )
    img_size = encoder.patch_embed.img_size[0]
    train_set = build_dataset(args.data, args.train_split, args.download, args.data_root)
    if args.max_train:
        # a seeded random subset: folders list their images class by class, so a prefix would drop classes
        g = torch.Generator().manual_seed(args.seed)
        keep = torch.randperm(len(train_set), generator=g)[: args.max_train].sort().values.tolist()
        train_set = torch.utils.data.Subset(train_set, keep)
    if args.test_data:  # a file or folder holding only the test images
        test_set = build_dataset(args.test_data, None, args.download, args.data_root)
    else:
        test_set = build_dataset(args.data, args.test_split, args.download, args.data_root)
    result = linear_probe(
        encoder,
        train_set,
        test_set,
        img_size,
        pool=args.pool,
        layer=args.layer,
        solver=args.solver,
        device=device,
        precision=precision,
        batch_size=args.batch_size,
        workers=args.workers,
        weight_decay=args.weight_decay,
        max_iter=args.max_iter,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        crop_pct=args.crop_pct,
    )
    probe = result.pop("probe")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save(
        {
            "probe": probe.state_dict(),
            "args": {k: v for k, v in vars(args).items() if v is None or isinstance(v, (int, float, str, bool))},
        },
        out / "probe.pth",
    )
    write_json({**result, "args": vars(args), "model": model_name, "model_kwargs": model_kwargs}, out / "results.json")
    print(
        f"linear probe top-1 {100 * result['top1']:.2f}% (train {100 * result['train_top1']:.2f}%) on "
        f"{result['num_test']} test images | {result['feature_dim']}-d features, {args.pool} pool, "
        f"layer {args.layer if args.layer is not None else 'last'} | extract {result['extract_s']:.1f} s, "
        f"fit {result['fit_s']:.1f} s",
        file=sys.stderr,
    )
    return result
