"""The weighted kNN classifier against DINO's ``knn_classifier`` written out plainly, and the record's
evaluation transform against timm's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

import whitebox
from whitebox.data_config import eval_transform, resolve_eval_config
from whitebox.train.knn import knn_accuracy, knn_scores

SHAPE = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


def dino_knn(train, train_labels, test, test_labels, k, T, num_classes):
    """DINO eval_knn.py's knn_classifier, one test image at a time (features normalised first, as its pipeline)."""
    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    probs_all, top1, top5 = [], 0, 0
    for i in range(test.shape[0]):
        sim = test[i] @ train.T
        distances, indices = sim.topk(k, largest=True, sorted=True)
        one_hot = torch.zeros(k, num_classes)
        one_hot[torch.arange(k), train_labels[indices]] = 1
        probs = (one_hot * (distances / T).exp()[:, None]).sum(0)
        _, predictions = probs.sort(0, True)
        correct = predictions == test_labels[i]
        top1 += int(correct[0])
        top5 += int(correct[: min(5, k)].sum())
        probs_all.append(probs)
    return torch.stack(probs_all), top1 / test.shape[0], top5 / test.shape[0]


@pytest.mark.parametrize(("k", "T"), [(20, 0.07), (5, 0.5), (1, 0.07)])
def test_knn_matches_dino(k, T):
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(200, 16, generator=g), torch.randn(37, 16, generator=g)
    train_labels, test_labels = torch.randint(0, 7, (200,), generator=g), torch.randint(0, 7, (37,), generator=g)
    ref_probs, ref1, ref5 = dino_knn(train, train_labels, test, test_labels, k, T, 7)
    scores = knn_scores(train, train_labels, test, 7, k=k, temperature=T, chunk_size=10)  # chunks must not matter
    torch.testing.assert_close(scores, ref_probs, rtol=1e-5, atol=1e-6)
    top1, top5 = knn_accuracy(train, train_labels, test, test_labels, num_classes=7, k=k, temperature=T)
    assert (top1, top5) == pytest.approx((ref1, ref5))


def test_knn_separates_clusters_and_ignores_feature_scale():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 32, generator=g) * 5
    labels = torch.arange(4).repeat_interleave(25)
    train = centres[labels] + torch.randn(100, 32, generator=g)
    test = centres[labels[::5]] + torch.randn(20, 32, generator=g)
    assert knn_accuracy(train, labels, test, labels[::5]) == (1.0, 1.0)
    scaled = knn_scores(train * 7.0, labels, test * 0.1, 4)  # cosine: the scale of a feature does not matter
    torch.testing.assert_close(scaled, knn_scores(train, labels, test, 4))
    shuffled = knn_accuracy(train, labels[torch.randperm(100, generator=g)], test, labels[::5])[0]
    assert shuffled < 0.7  # the labels, not the geometry alone, decide


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(k=0), "k must be a whole number from 1 to the 10"),
        (dict(k=11), "k must be a whole number from 1 to the 10"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(num_classes=2), "train_labels must lie in [0, 2)"),
    ],
)
def test_knn_bad_arguments(kwargs, message):
    train, labels, test = torch.randn(10, 4), torch.arange(10) % 3, torch.randn(3, 4)
    args = dict(num_classes=3, k=5) | kwargs
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        knn_scores(train, labels, test, **args)
    with pytest.raises(ValueError, match="same D"):
        knn_scores(train, labels, torch.randn(3, 5), 3, k=5)


# ----------------------------------------------------------------------------- evaluation transform
@pytest.mark.parametrize(
    ("name", "interpolation"), [("crate_tiny", "bicubic"), ("crate_alpha_base_patch16", "bilinear")]
)
def test_eval_config_is_the_record_at_the_built_size(name, interpolation):
    model = whitebox.create_model(name, num_classes=3, **SHAPE)
    record = resolve_model_data_config(model)
    cfg = resolve_eval_config(model)
    assert record["input_size"] == (3, 224, 224)  # what timm alone resolves for a model built at 32 px
    assert cfg == record | {"input_size": (3, 32, 32)}
    assert cfg["interpolation"] == interpolation and cfg["crop_pct"] == 0.875
    full = whitebox.create_model(name, num_classes=3, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    assert resolve_eval_config(full) == record  # built at its record's size: the record unchanged


def test_eval_overrides_and_transform_equal_timms():
    model = whitebox.create_model("crate_tiny", num_classes=3, **SHAPE)
    over = dict(img_size=48, crop_pct=0.5, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    cfg = resolve_eval_config(model, **over)
    assert cfg["input_size"] == (3, 48, 48) and cfg["crop_pct"] == 0.5 and cfg["mean"] == (0.5, 0.5, 0.5)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    mine = eval_transform(model, **over)(img)
    timm_tf = create_transform(
        input_size=48, crop_pct=0.5, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3, crop_mode="center"
    )
    torch.testing.assert_close(mine, timm_tf(img), rtol=0, atol=0)
    assert not torch.equal(eval_transform(model)(img)[:, :32, :32], mine[:, :32, :32])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(crop_pct=0.0), "crop_pct must be in"),
        (dict(crop_pct=1.2), "crop_pct must be in"),
        (dict(interpolation="cubic"), "interpolation must be one of bilinear, bicubic"),
        (dict(crop_mode="middle"), "crop_mode must be one of center, squash, border"),
        (dict(mean=(0.5, 0.5)), "mean must have 3 values"),
        (dict(std=(0.5, 0.0, 0.5)), "std must be positive"),
        (dict(img_size=0), "img_size must be positive"),
    ],
)
def test_eval_config_bad_overrides(kwargs, message):
    model = whitebox.create_model("crate_tiny", num_classes=3, **SHAPE)
    with pytest.raises(ValueError, match=message):
        resolve_eval_config(model, **kwargs)
