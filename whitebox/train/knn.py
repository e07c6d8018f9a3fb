"""Weighted k-nearest-neighbour classification on features: the quality signal of self-supervised runs.

The classifier of DINO's ``eval_knn.py`` (Caron et al., ICCV 2021; Wu et al., CVPR 2018), also used by
solo-learn: features are L2-normalised, each test feature takes its ``k`` most cosine-similar
training features, and neighbour ``j`` votes for its class with weight ``exp(s_j / T)``:

    score[c] = sum_{j in top-k} exp(s_j / T) [y_j = c],    prediction = argmax_c score[c]

with ``k = 20`` and ``T = 0.07`` by default (DINO's recommended values). Top-5 is taken over the
first ``min(5, k)`` classes by score, as DINO does.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["knn_accuracy", "knn_scores"]


def _check(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, k: int, temperature: float
) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            "features must be (N, D) and (M, D) with the same D, got "
            f"{tuple(train_features.shape)} and {tuple(test_features.shape)}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels must be ({train_features.shape[0]},), got {tuple(train_labels.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= train_features.shape[0]:
        raise ValueError(
            f"k must be a whole number from 1 to the {train_features.shape[0]} training features, got {k!r}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores of the weighted kNN vote (DINO ``eval_knn.py``'s ``probs``).

    Args:
        train_features: (N, D) features of the labelled reference set (normalised here).
        train_labels: (N,) integer classes in ``[0, num_classes)``.
        test_features: (M, D) features to classify (normalised here).
        num_classes: C.
        k: neighbours per test feature (1 <= k <= N).
        temperature: T of the vote weights ``exp(cosine / T)``.
        chunk_size: test features per similarity block (memory: chunk_size x N).

    Returns:
        (M, C) float32 scores; ``argmax`` over classes is the prediction.

    Raises:
        ValueError: mismatched shapes, k out of range, T <= 0, labels outside ``[0, num_classes)``.
    """
    _check(train_features, train_labels, test_features, k, temperature)
    if train_labels.numel() and (int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes):
        raise ValueError(
            f"train_labels must lie in [0, {num_classes}), got {int(train_labels.min())}..{int(train_labels.max())}"
        )
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    labels = train_labels.to(train.device, torch.long)
    out = []
    for start in range(0, test.shape[0], chunk_size):
        sim, idx = (test[start : start + chunk_size] @ train.T).topk(k, dim=1)  # (b, k) cosine, neighbour index
        weights = (sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes, device=train.device)
        out.append(scores.scatter_add_(1, labels[idx], weights))
    return torch.cat(out) if out else torch.zeros(0, num_classes, device=train.device)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (fractions in [0, 1]) of the weighted kNN classifier.

    ``num_classes`` defaults to ``1 + max label`` over both sets. Top-5 counts a hit among the first
    ``min(5, k, num_classes)`` classes by score. Shapes and errors as :func:`knn_scores`.
    """
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"test_labels must be ({test_features.shape[0]},), got {tuple(test_labels.shape)}")
    if test_labels.numel() == 0:
        raise ValueError("no test features to classify")
    if num_classes is None:
        num_classes = 1 + max(int(train_labels.max()), int(test_labels.max()))
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature)
    ranked = scores.argsort(dim=1, descending=True)[:, : min(5, k, num_classes)]
    hits = ranked == test_labels.to(ranked.device, torch.long)[:, None]
    return hits[:, 0].float().mean().item(), hits.any(dim=1).float().mean().item()
