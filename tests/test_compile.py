"""torch.compile on every model (no graph breaks), MSSA on the fused SDPA kernel, no host-device sync.

``fullgraph=True`` turns any graph break into an error: a ``.item()``, a ``.tolist()``, Python
branching on a tensor's value or an unsupported call anywhere in forward + loss would fail here.
Dynamo's ``eager`` backend checks that for every model (tracing only); ``aot_eager`` also traces
the backward (one model per family), and one inductor compile (slow) generates real kernels.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_kwargs
from torch.utils._python_dispatch import TorchDispatchMode

import whitebox

MAE_MODELS = [n for n in whitebox.list_models() if "_mae_" in n]
CRATE_MODELS = [n for n in whitebox.list_models() if n.startswith("crate_") and "_mae_" not in n]
LINEAR_ATTENTION_MODELS = whitebox.list_models(["tost_*", "cbt_*"])  # ToST (TSSA) and CBT (CBSA)

# aten ops that read tensor data on the host (a device sync on a GPU) or give data-dependent shapes
SYNC_OPS = {
    "aten._local_scalar_dense",  # .item(), float(t), bool(t)
    "aten.is_nonzero",
    "aten.item",
    "aten.equal",
    "aten.nonzero",
    "aten.masked_select",
    "aten.unique",
    "aten._unique2",
    "aten.repeat_interleave",
}


class OpRecorder(TorchDispatchMode):
    """Records every aten op and every device a copy sends a tensor to."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()
        self.copy_devices: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.add(str(func.overloadpacket))
        if "device" in kwargs and str(func.overloadpacket) in ("aten._to_copy", "aten.to"):
            self.copy_devices.add(str(kwargs["device"]))
        return func(*args, **kwargs)


@pytest.fixture(autouse=True, scope="module")
def _dynamo_fails_loudly():
    # Compiles share one dynamo cache within this module (a recompile costs ~1 s, a fresh start
    # ~15 s); past the recompile limit dynamo would silently run eager, so make that an error.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


def _noise(model, batch: int) -> torch.Tensor:
    grid = model.encoder.patch_embed.grid_size
    return torch.rand(batch, grid[0] * grid[1])


@pytest.mark.parametrize("name", MAE_MODELS)
def test_mae_forward_and_loss_fullgraph(name):
    """Every MAE model traces as ONE graph (dynamo's "eager" backend: tracing only, no codegen)."""
    model = whitebox.create_model(name, **tiny_kwargs(name))
    x, noise = torch.randn(2, 3, 32, 32), _noise(model, 2)
    loss = torch.compile(lambda x, noise: model(x, noise=noise).loss, backend="eager", fullgraph=True)(x, noise)
    torch.testing.assert_close(loss, model(x, noise=noise).loss, rtol=1e-5, atol=1e-6)
    # the mask drawn inside the graph (noise=None) and the encoder's features: still one graph each
    torch.compile(lambda x: model(x).loss, backend="eager", fullgraph=True)(x)
    torch.compile(model.forward_features, backend="eager", fullgraph=True)(x)


@pytest.mark.parametrize("name", ["crate_mae_tiny", "vit_mae_base"])
def test_mae_train_graph_aot_eager(name):
    """Forward, loss and backward through AOT autograd (what inductor receives), one model per family:
    same loss and gradients as eager."""
    model = whitebox.create_model(name, **tiny_kwargs(name))
    x, noise = torch.randn(2, 3, 32, 32), _noise(model, 2)
    compiled = torch.compile(lambda x, noise: model(x, noise=noise).loss, backend="aot_eager", fullgraph=True)
    loss = compiled(x, noise)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    eager = model(x, noise=noise).loss
    eager.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", CRATE_MODELS + LINEAR_ATTENTION_MODELS)
def test_crate_classifier_and_features_fullgraph(name):
    model = whitebox.create_model(name, **tiny_kwargs(name), num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    logits = torch.compile(model, backend="eager", fullgraph=True)(x)
    feats = torch.compile(model.forward_features, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats, model.forward_features(x), rtol=1e-5, atol=1e-6)


def _captured_graphs(fn, *args) -> list[torch.fx.GraphModule]:
    graphs = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return graphs


def test_mssa_uses_fused_sdpa_with_shared_qkv():
    """Every attention layer is ONE ``scaled_dot_product_attention(w, w, w)`` call (q = k = v the same
    tensor), with no explicit softmax: nothing in MSSA keeps the fused kernel from being chosen."""
    model = whitebox.create_model("crate_mae_tiny", **tiny_kwargs("crate_mae_tiny"))
    assert all(m.fused_attn for m in model.modules() if isinstance(m, whitebox.layers.SubspaceAttention))
    (graph,) = _captured_graphs(lambda x: model(x).loss, torch.randn(2, 3, 32, 32))
    calls = [n for n in graph.graph.nodes if n.op == "call_function"]
    sdpa = [n for n in calls if "scaled_dot_product_attention" in str(n.target)]
    n_attn = len(model.encoder.blocks) + len(model.decoder_blocks)
    assert len(sdpa) == n_attn
    for node in sdpa:
        q, k, v = node.args[:3]
        assert q is k is v
    assert not [n for n in calls if "softmax" in str(n.target)]


def test_sdpa_same_tensor_matches_explicit_and_dispatches_to_flash():
    """``F.scaled_dot_product_attention(w, w, w)`` equals softmax(w w^T / sqrt(p)) w, and on CPU
    it runs the flash kernel (the fused one; the explicit path would be the math fallback)."""
    attn = whitebox.layers.SubspaceAttention(64, num_heads=4, fused_attn=True)
    x = torch.randn(2, 17, 64)
    with OpRecorder() as rec:
        fused = attn(x)
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in rec.ops
    explicit, _ = attn(x, return_attention=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-6)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if the flash kernel cannot take (w, w, w)
        torch.testing.assert_close(attn(x), explicit, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["crate_mae_tiny", "vit_mae_base"])
def test_train_step_has_no_host_sync(name):
    """No op that reads tensor data on the host or moves data between devices, in forward, loss
    (the masking included) and backward; and the whole step runs on the meta device, where any
    data-dependent read would raise. On a GPU, benchmarks/gpu.py also checks it with
    ``torch.cuda.set_sync_debug_mode("error")``."""
    model = whitebox.create_model(name, **tiny_kwargs(name))
    with OpRecorder() as rec:
        model(torch.randn(2, 3, 32, 32)).loss.backward()
    assert "aten.sort" in rec.ops  # the masking ran (argsort of the noise)
    assert not rec.ops & SYNC_OPS
    assert rec.copy_devices <= {"cpu"}
    with torch.device("meta"):
        meta_model = whitebox.create_model(name, **tiny_kwargs(name))
        loss = meta_model(torch.randn(2, 3, 32, 32)).loss
    loss.backward()
    assert loss.device.type == "meta"
    assert all(p.grad is not None for p in meta_model.parameters() if p.requires_grad)


@pytest.mark.slow
def test_inductor_train_step_matches_eager():
    """One real inductor compile of a tiny CRATE-MAE train step (forward, loss, backward, AdamW)."""
    torch.manual_seed(0)
    eager = whitebox.create_model("crate_mae_tiny", **tiny_kwargs("crate_mae_tiny"))
    compiled_model = whitebox.create_model("crate_mae_tiny", **tiny_kwargs("crate_mae_tiny"))
    compiled_model.load_state_dict(eager.state_dict())
    x, noise = torch.randn(4, 3, 32, 32), _noise(eager, 4)
    fn = torch.compile(lambda x, noise: compiled_model(x, noise=noise).loss, fullgraph=True)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (eager, compiled_model)]
    for _ in range(2):
        losses = (eager(x, noise=noise).loss, fn(x, noise))
        for loss in losses:
            loss.backward()
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
        for (n, a), b in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=n)
        for opt in opts:
            opt.step()
            opt.zero_grad()
    # Adam divides by the root of the squared gradient: where a gradient is ~1e-8, float noise of that
    # size changes the step by up to lr, so parameters agree to a fraction of one step, not to 1e-5
    for (n, a), b in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=n)


@pytest.mark.slow
def test_gpu_benchmark_cpu_smoke(tmp_path):
    """benchmarks/gpu.py --device cpu --small runs every row and writes a complete JSON."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu

    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    try:
        assert gpu.main(["--device", "cpu", "--small", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark pins 1 thread on CPU
    result = json.loads(out.read_text())
    assert result["complete"] and [r["name"] for r in result["rows"]] == list(gpu.ROWS)
    assert all(r["error"] is None and r["images_per_s"] > 0 for r in result["rows"])
    assert all(c["ok"] for c in result["checks"].values())
    assert result["flops_per_image"]["train"] == 3 * result["flops_per_image"]["forward"]
