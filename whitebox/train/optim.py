"""Parameter groups: weight decay on weight matrices only (MAE / timm convention)."""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed weight matrices, and undecayed norms, biases, tokens and position tables.

    A parameter is undecayed when it has fewer than 2 dimensions (norm scales, biases) or when the
    model's ``no_weight_decay()`` names it (class / mask tokens, learned position tables).
    Frozen parameters are left out.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name in skip or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
