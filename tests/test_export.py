"""Export: ``torch.export`` with a dynamic batch, and ONNX run by onnxruntime, for classifiers and the MAE encoder."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import whitebox

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
CASES = [
    "crate_tiny",
    "crate_alpha_base_patch16",
    "crate_mae_tiny",
    "vit_mae_base",
    "tost_cab_tiny_12_p16",
    "cbt_tiny_patch16",
]


def _exportable(name: str) -> torch.nn.Module:
    """A classifier as it is, a masked autoencoder's encoder with its token output (no head, no pooling)."""
    extra = dict(decoder_depth=1, decoder_num_heads=4) if name.startswith("vit_mae") else {}
    model = whitebox.create_model(name, **SMALL, **extra).eval()
    if hasattr(model, "encoder"):
        model = model.encoder
        model.reset_classifier(0, "")
    return model


@pytest.mark.parametrize("name", CASES)
def test_torch_export_with_a_dynamic_batch(name):
    model = _exportable(name)
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"x": {0: Dim("batch")}})
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_onnx_runs_in_onnxruntime_like_pytorch(name, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="ONNX export needs the export extra: pip install '.[export]'")
    pytest.importorskip("onnxscript", reason="ONNX export needs the export extra: pip install '.[export]'")
    model = _exportable(name)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model, (torch.randn(2, 3, 32, 32),), str(path), dynamo=True, dynamic_shapes={"x": {0: Dim("batch")}}
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=0, atol=1e-4)
