"""Linear probing of a frozen encoder (``recipes/linprobe.py`` is the program around it).

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

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from whitebox.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    ResumableBatchSampler,
    align_labels,
    dataset_labels,
    describe_item,
    make_loader,
    seeded_dataset,
)

from .common import amp_context
from .schedule import set_lr, warmup_cosine


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
    on_bad_image: str = "skip",
    transform: Callable[[Any], torch.Tensor] | None = None,
    progress: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (N, d) in float32 and labels (N,) for every image of ``dataset`` (an unreadable one
    is replaced by the next readable, with a warning naming it, or stops the run: ``on_bad_image``).

    ``transform``: PIL image -> uint8 (3, H, W) tensor, normalised on the device with ``mean`` / ``std`` (as
    ``(x / 255 - mean) / std``), e.g. ``whitebox.data_config.eval_transform(encoder, uint8=True)`` with the
    ``mean`` / ``std`` of ``resolve_eval_config(encoder)`` (the model's record); a transform returning float
    images is taken as normalising itself (passed through). Unset: a bicubic resize to ``img_size / crop_pct``
    and centre crop, normalised with ``mean`` / ``std``. ``progress``:
    a label for a progress bar on stderr (tqdm, when installed), or None for none.
    """
    device = torch.device(device)
    encoder.eval().to(device)
    tf = transform if transform is not None else EvalTransform(img_size, crop_pct)
    ds = seeded_dataset(dataset, tf, on_bad_image=on_bad_image)
    sampler = ResumableBatchSampler(len(ds), batch_size, shuffle=False, drop_last=False)
    loader = make_loader(ds, sampler, workers, device=device, mean=mean, std=std)
    feats, labels = [], []
    for batch in _progress(loader, progress, len(ds)):
        x, y = batch["image"], batch["label"].cpu()
        if layer is None:
            with amp_context(device, precision):
                tokens = encoder.forward_features(x)
            f = tokens[:, 0] if pool == "token" else tokens[:, encoder.num_prefix_tokens :].mean(1)
        else:
            f = _intermediate_pool(encoder, x, layer, pool, precision)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels).long()


def _progress(loader: Iterable[dict[str, Any]], label: str | None, total: int) -> Any:
    """Batches of ``loader``, with a tqdm bar counting images when ``label`` is given and tqdm installed.

    On a terminal the bar redraws in place; elsewhere (a log file, a pipe), where each redraw would stay as
    its own line (the 100% line twice: the last update and the close), one line is printed at the end."""
    if label is None:
        yield from loader
        return
    if not sys.stderr.isatty():
        start, seen = time.perf_counter(), 0
        for batch in loader:
            yield batch
            seen += len(batch["label"])
        print(f"{label}: {seen} images in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield from loader
        return
    with tqdm(total=total, desc=label, unit="img", dynamic_ncols=True, file=sys.stderr) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch["label"]))


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


class NonFiniteFeaturesError(ValueError):
    """The features (or the fitted probe) hold NaN or infinite values: a probe of them means nothing."""


def check_finite_features(feats: torch.Tensor, dataset: Dataset | None = None, what: str = "training") -> None:
    """A ``NonFiniteFeaturesError`` naming how many rows of ``feats`` (N, d) are not finite and the first one."""
    bad = (~torch.isfinite(feats)).any(1).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        where = f" ({describe_item(dataset, i)})" if dataset is not None else ""
        raise NonFiniteFeaturesError(
            f"the encoder gave non-finite features (NaN or inf) for {len(bad)} of {len(feats)} {what} images, first "
            f"image {i}{where}: the weights may hold NaN or inf (a diverged run; check the checkpoint), or the "
            "activations overflow at this precision (try --precision fp32)"
        )


def _check_fit(probe: nn.Module, solver: str) -> None:
    if not all(torch.isfinite(p).all() for p in probe.parameters()):
        raise NonFiniteFeaturesError(
            f"the {solver} probe diverged to non-finite weights (NaN or inf) on finite features; lower --lr "
            "(sgd) or raise --weight-decay"
        )


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
    """Full-batch L-BFGS on standardised features (the BatchNorm's statistics are the whole set's).

    Raises ``NonFiniteFeaturesError`` for non-finite features or a fit that diverged."""
    check_finite_features(feats)
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
    _check_fit(probe, "L-BFGS")
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
    """Mini-batch SGD (momentum 0.9) with warmup (10 % of steps) and cosine, on cached features.

    Raises ``NonFiniteFeaturesError`` for non-finite features or a fit that diverged."""
    check_finite_features(feats)
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
    _check_fit(probe, "SGD")
    return probe.eval()


@torch.no_grad()
def accuracy(probe: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> float:
    probe.eval()
    return (probe(feats).argmax(1) == labels).float().mean().item()


def fit_probe(
    f_train: torch.Tensor,
    y_train: torch.Tensor,
    f_test: torch.Tensor,
    y_test: torch.Tensor,
    solver: str = "lbfgs",
    device: torch.device | str = "cpu",
    weight_decay: float = 1e-4,
    max_iter: int = 300,
    epochs: int = 90,
    lr: float = 0.1,
    batch_size: int = 256,
    seed: int = 0,
    num_classes: int | None = None,
    train_set: Dataset | None = None,
    test_set: Dataset | None = None,
) -> dict[str, Any]:
    """Fit the probe on features (N, d) and labels (N,); train / test top-1 (fractions) and the probe.

    ``num_classes``: unset, the largest label + 1. ``train_set`` / ``test_set``: only to name the first image
    whose features are not finite.

    Raises:
        NonFiniteFeaturesError: features holding NaN or inf, or a fit that diverged.
    """
    t0 = time.perf_counter()
    check_finite_features(f_train, train_set, "training")
    check_finite_features(f_test, test_set, "test")
    if num_classes is None:
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
        "fit_s": time.perf_counter() - t0,
        "probe": probe,
    }


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
    on_bad_image: str = "skip",
    transform: Callable[[Any], torch.Tensor] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """Extract features, fit the probe, and return train / test top-1 (fractions) and the probe.

    Both sets must be labelled (a ValueError otherwise, before any feature is computed); test classes
    are matched to training classes by name where both sets name them (``align_labels``: a test class
    training never saw is a ``LabelError``). Non-finite features are a ``NonFiniteFeaturesError``.
    ``transform``, ``mean``, ``std``: see :func:`extract_features`.
    """
    y_all = dataset_labels(train_set, "the training images")
    test_set = align_labels(train_set, test_set)
    t0 = time.perf_counter()
    kw = dict(pool=pool, layer=layer, batch_size=batch_size, device=device, precision=precision, workers=workers)
    kw.update(crop_pct=crop_pct, on_bad_image=on_bad_image, transform=transform, mean=mean, std=std)
    f_train, y_train = extract_features(encoder, train_set, img_size, **kw)
    f_test, y_test = extract_features(encoder, test_set, img_size, **kw)
    extract_s = time.perf_counter() - t0
    result = fit_probe(
        f_train,
        y_train,
        f_test,
        y_test,
        solver,
        device,
        weight_decay,
        max_iter,
        epochs,
        lr,
        batch_size,
        seed,
        num_classes=int(y_all.max()) + 1,
        train_set=train_set,
        test_set=test_set,
    )
    return {**result, "extract_s": extract_s}


# ----------------------------------------------------------------------------- saved features
FEATURE_KEYS = ("train", "train_labels", "test", "test_labels")


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file (hex): names a checkpoint's weights independently of where it lies."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_features(path: str | os.PathLike[str], features: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """Write ``features`` (``train``, ``train_labels``, ``test``, ``test_labels``; optional ``baseline_*``)
    and ``record`` (what made them: model, weights, layer, pool, transform, data) atomically."""
    from .checkpoint import atomic_save

    atomic_save({"features": {k: v.cpu() for k, v in features.items()}, "record": record}, path)


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'transform': {'crop_pct': 1.0}}`` -> ``{'transform.crop_pct': 1.0}``: a difference names its field."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, dict) and k != "model_kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def load_features(path: str | os.PathLike[str], record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Features saved by :func:`save_features`, if they were made as ``record`` says.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a features file, or made otherwise (each differing field named, then and now).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"--load-features {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"--load-features {path} is not a features file ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("features"), dict) or "record" not in obj:
        raise ValueError(f"--load-features {path} is not a features file written by --save-features")
    saved, feats = obj["record"], obj["features"]
    if missing := [k for k in FEATURE_KEYS if k not in feats]:
        raise ValueError(f"--load-features {path} lacks {', '.join(missing)}")
    then, now = _flat(saved), _flat(record)
    differ = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    if differ:
        lines = "; ".join(f"{k}: {then.get(k)!r} there, {now.get(k)!r} now" for k in differ)
        raise ValueError(
            f"--load-features {path} holds features of another set-up ({lines}); extract them again "
            "(leave out --load-features) or run with the flags that made them"
        )
    return feats
