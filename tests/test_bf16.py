"""bfloat16 autocast with fp32 master weights: every matrix product in bf16, outputs close to fp32.

Tolerances (relative L2 error against the fp32 run with the same weights, images and mask). bf16
keeps 8 significant bits (relative rounding 2^-9, about 0.2%); rounding each product's inputs,
through a few layers, gives errors of about 1%, and small gradients (the class token's) more:

* prediction and latent: 3e-2;  loss: 1e-2 (a mean over many patches averages rounding out);
* gradients: 3e-2 for all parameters together, 1e-1 for any single tensor.

These are for the 2-layer test models. Errors compound with depth (CRATE re-normalises after
every layer and has no residual around ISTA): for the 24-layer CRATE-MAE-Base, CPU bf16 autocast
measured 3.0% on the prediction and 0.12% on the loss, so ``benchmarks/gpu.py`` checks the
full-size model on a GPU against 6e-2 and 1e-2. In both, our error is the plain reference's.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_kwargs
from torch.utils._python_dispatch import TorchDispatchMode

import whitebox

PRED_TOL, LOSS_TOL, GRAD_TOL, GRAD_TENSOR_TOL = 3e-2, 1e-2, 3e-2, 1e-1
MATMUL_OPS = {
    "aten.mm",
    "aten.addmm",
    "aten.bmm",
    "aten.baddbmm",
    "aten.convolution",
    "aten.convolution_backward",
    "aten._scaled_dot_product_flash_attention_for_cpu",
}


class MatmulDtypes(TorchDispatchMode):
    """Records the dtypes of the tensor inputs of every matrix-product op."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: dict[str, set[torch.dtype]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in MATMUL_OPS:
            self.dtypes.setdefault(name, set()).update(a.dtype for a in args if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Four real photos (the bundled CC0 samples) at 32 px, ImageNet-normalised."""
    pytest.importorskip("skimage", reason="the sample photos come from scikit-image")
    from whitebox.sample_images import sample_batch

    x = torch.from_numpy(sample_batch(32, 4)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("name", ["crate_mae_tiny", "vit_mae_base"])
def test_mae_bf16_autocast_close_to_fp32(name, images):
    model = whitebox.create_model(name, **tiny_kwargs(name))
    noise = torch.rand(images.shape[0], model.encoder.patch_embed.num_patches)
    ref = model(images, noise=noise)
    ref.loss.backward()
    ref_grads = _grads(model)

    with MatmulDtypes() as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images, noise=noise)
        out.loss.backward()
    # every product, forward and backward, ran on bf16 operands (the SDPA backward also takes
    # its fp32 log-sum-exp, so it is not listed): nothing falls back to fp32 matrix work
    assert rec.dtypes.keys() >= {"aten.convolution", "aten.addmm", "aten._scaled_dot_product_flash_attention_for_cpu"}
    assert all(dtypes == {torch.bfloat16} for dtypes in rec.dtypes.values()), rec.dtypes

    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert torch.equal(out.mask, ref.mask)
    assert rel(out.pred, ref.pred) < PRED_TOL
    assert rel(out.latent, ref.latent) < PRED_TOL
    assert abs(out.loss.item() - ref.loss.item()) / ref.loss.item() < LOSS_TOL

    grads = _grads(model)
    assert grads.keys() == ref_grads.keys()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    for n, g in grads.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), n
        assert rel(g, ref_grads[n]) < GRAD_TENSOR_TOL, n
    flat, ref_flat = (torch.cat([g[n].flatten() for n in sorted(g)]) for g in (grads, ref_grads))
    assert rel(flat, ref_flat) < GRAD_TOL


def test_bf16_error_is_the_references(images):
    """Our bf16 rounding error is no worse than the plain reference's (same weights, same mask):
    fused attention and the two-product ISTA lose nothing to the equations as written."""
    from reference import RefCrateMAE, crate_mae_to_official, randomize_

    model = randomize_(whitebox.create_model("crate_mae_tiny", **tiny_kwargs("crate_mae_tiny"))).eval()
    ref = RefCrateMAE(img_size=32, patch=8, dim=64, depth=2, heads=4).eval()
    ref.load_state_dict(crate_mae_to_official(model, ref))
    noise = torch.rand(images.shape[0], model.encoder.patch_embed.num_patches)
    with torch.no_grad():
        ours32, ref32 = model(images, noise=noise).pred, ref(images, noise=noise)[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours16, ref16 = model(images, noise=noise).pred, ref(images, noise=noise)[1]
    torch.testing.assert_close(ours32, ref32, rtol=1e-4, atol=1e-5)
    ours_err, ref_err = rel(ours16, ours32), rel(ref16, ref32)
    assert 0 < ours_err < PRED_TOL
    assert ours_err <= 1.5 * ref_err


@pytest.mark.parametrize("name", ["crate_tiny", "crate_alpha_base_patch16", "tost_cab_tiny_12_p16", "cbt_tiny_patch16"])
def test_crate_classifier_bf16_close_to_fp32(images, name):
    model = whitebox.create_model(name, **tiny_kwargs(name), num_classes=10).eval()
    with torch.no_grad():
        ref_feats, ref_logits = model.forward_features(images), model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats, logits = model.forward_features(images), model(images)
    assert rel(feats, ref_feats) < PRED_TOL
    assert rel(logits, ref_logits) < PRED_TOL


def test_bf16_train_steps_reduce_loss(images):
    """A few AdamW steps under autocast on one batch: weights stay fp32 and the loss goes down."""
    model = whitebox.create_model("crate_mae_tiny", **tiny_kwargs("crate_mae_tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    noise = torch.rand(images.shape[0], model.encoder.patch_embed.num_patches)
    losses = []
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(images, noise=noise).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
