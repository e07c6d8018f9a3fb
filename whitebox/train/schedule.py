"""Learning-rate schedules, per optimizer step: linear warmup, then half-cosine decay.

    lr(s) = base * s / W                                       for s < W
    lr(s) = min + (base - min) * (1 + cos(pi * (s - W) / (T - W))) / 2   for W <= s < T

The schedule is a pure function of the step, so restoring the step restores it exactly.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer


def scaled_lr(blr: float, effective_batch: int) -> float:
    """MAE's linear scaling rule: ``lr = blr * effective_batch / 256``."""
    if effective_batch <= 0:
        raise ValueError(f"effective batch must be positive, got {effective_batch}")
    return blr * effective_batch / 256


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """The learning rate at optimizer step ``step`` (0-based) of ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * group['lr_scale']`` (layer-wise decay keeps its scale)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
