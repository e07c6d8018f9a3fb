"""Official checkpoint layouts load into whitebox models and give identical outputs; weights adapt to new shapes."""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import pytest
import torch
from conftest import TINY
from reference import RefCRATE, RefCrateMAE, crate_mae_to_official, crate_to_official, randomize_

import whitebox
from registry import UnsafeCheckpointError
from whitebox.convert import main
from whitebox.models.crate import checkpoint_filter_fn as crate_filter
from whitebox.models.crate_mae import checkpoint_filter_fn as crate_mae_filter
from whitebox.models.vit_mae import checkpoint_filter_fn as vit_mae_filter

LAMBD = 5.0  # the released CRATE-MAE-Base threshold; differs from the 0.5 default, so a lost value shows


def _tiny_mae(**kw):
    return randomize_(whitebox.create_model("crate_mae_tiny", **{**TINY, "lambd": LAMBD, **kw}).eval(), seed=1)


def _official_mae_file(tmp_path, model, name="official_mae.pth"):
    """An official-layout MAE training checkpoint: every tensor non-trivial, plus the run's args."""
    ref = randomize_(RefCrateMAE(lambd=LAMBD), seed=2)  # gives the unused decoder_embed random values
    state = crate_mae_to_official(model, ref)
    ref.load_state_dict(state)
    assert {"pos_embed", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias"} <= set(state)
    path = tmp_path / name
    torch.save({"model": state, "epoch": 799, "args": argparse.Namespace(lr=1.5e-4, model="mae_crate_base")}, path)
    return path, ref, state


def _official_crate_file(tmp_path, model, name="official_crate.pth"):
    state = {f"module.{k}": v for k, v in crate_to_official(model).items()}
    path = tmp_path / name
    torch.save({"state_dict": state, "epoch": 90, "best_acc1": torch.tensor(70.5), "arch": "CRATE_small"}, path)
    return path


def _tiny_crate(**kw):
    return randomize_(whitebox.create_model("crate_tiny", **{**TINY, "num_classes": 10, **kw}).eval(), seed=3)


def _assert_same_state(a, b, skip=()):
    sa = {k: v for k, v in a.state_dict().items() if not k.startswith(skip)}
    sb = {k: v for k, v in b.state_dict().items() if not k.startswith(skip)}
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------- CRATE-MAE
@pytest.mark.parametrize("route", ["checkpoint_path", "overlay"])
def test_official_crate_mae_gives_identical_loss_pred_mask(tmp_path, route):
    ours = _tiny_mae()
    path, ref, _ = _official_mae_file(tmp_path, ours)
    ref.eval()
    if route == "checkpoint_path":
        loaded = whitebox.create_model("crate_mae_tiny", **TINY, lambd=LAMBD, checkpoint_path=path)
    else:
        loaded = whitebox.create_model(
            "crate_mae_tiny", **TINY, lambd=LAMBD, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )
    loaded.eval()
    _assert_same_state(ours, loaded)
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        a, b = ours(imgs, noise=noise), loaded(imgs, noise=noise)
        r_loss, r_pred, r_mask = ref(imgs, noise=noise)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred) and torch.equal(a.mask, b.mask)
    # and the official computation itself, run by the reference in the official layout
    torch.testing.assert_close(b.pred, r_pred, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.loss, r_loss, rtol=1e-4, atol=1e-5)
    assert torch.equal(b.mask, r_mask)


def test_native_checkpoint_passes_unchanged():
    model = _tiny_mae()
    sd = model.state_dict()
    out = crate_mae_filter(sd, model)
    assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)
    crate = _tiny_crate()
    sd = crate.state_dict()
    out = crate_filter(sd, crate)
    assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)


def test_official_sincos_table_is_checked(tmp_path):
    model = _tiny_mae()
    _, _, state = _official_mae_file(tmp_path, model)
    state["decoder_pos_embed"] = state["decoder_pos_embed"] + 0.1
    with pytest.raises(ValueError, match="sin-cos"):
        crate_mae_filter(state, model)


def test_unknown_official_key_is_named(tmp_path):
    model = _tiny_mae()
    _, _, state = _official_mae_file(tmp_path, model)
    state["blocks.0.layers.0.1.fn.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"blocks\.0\.layers\.0\.1\.fn\.extra"):
        crate_mae_filter(state, model)


def test_missing_key_is_named(tmp_path):
    model = _tiny_mae()
    _, _, state = _official_mae_file(tmp_path, model)
    del state["decoder_blocks.1.layers.0.0.fn.weight"]
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"missing keys \['decoder_blocks\.1\.linear\.weight'\]"):
        whitebox.create_model("crate_mae_tiny", **TINY, checkpoint_path=path)


def test_shape_mismatch_is_named(tmp_path):
    model = _tiny_mae()
    path, _, _ = _official_mae_file(tmp_path, model)
    with pytest.raises(ValueError, match=r"encoder\.blocks\.0\.attn\.qkv\.weight: checkpoint \(64, 64\) vs model"):
        whitebox.create_model("crate_mae_tiny", **{**TINY, "embed_dim": 32}, checkpoint_path=path)


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"cls_token": torch.zeros(1)}, "x": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        whitebox.create_model("crate_mae_tiny", **TINY, checkpoint_path=path)
    assert not marker.exists()


def test_crate_mae_head_and_channels_adapt(tmp_path):
    ours = _tiny_mae()
    path, _, _ = _official_mae_file(tmp_path, ours)
    # a classifier on the pretrained encoder: new head, everything else loaded
    probe = whitebox.create_model("crate_mae_tiny", **TINY, lambd=LAMBD, num_classes=7, checkpoint_path=path).eval()
    _assert_same_state(ours.encoder, probe.encoder, skip=("head.",))
    assert probe.encoder.head.weight.shape == (7, 64)
    # one input channel: conv weights summed over RGB, so a grey image gives what RGB copies of it give
    with pytest.warns(UserWarning, match="decoder_pred"):
        grey = whitebox.create_model("crate_mae_tiny", **TINY, lambd=LAMBD, in_chans=1, checkpoint_path=path).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey.forward_features(x), ours.forward_features(x.repeat(1, 3, 1, 1)))


def test_crate_mae_other_image_size_loads(tmp_path):
    ours = _tiny_mae()
    path, _, _ = _official_mae_file(tmp_path, ours)
    big = whitebox.create_model("crate_mae_tiny", **{**TINY, "img_size": 48}, lambd=LAMBD, checkpoint_path=path)
    _assert_same_state(ours, big)  # positions are computed, nothing to resample


# ----------------------------------------------------------------------------- supervised CRATE
def test_official_crate_gives_identical_logits(tmp_path):
    ours = _tiny_crate()
    path = _official_crate_file(tmp_path, ours)
    loaded = whitebox.create_model("crate_tiny", **TINY, num_classes=10, checkpoint_path=path).eval()
    _assert_same_state(ours, loaded)
    ref = RefCRATE(num_classes=10).eval()
    ref.load_state_dict(crate_to_official(ours))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = loaded(x)
        assert torch.equal(logits, ours(x))
        torch.testing.assert_close(logits, ref(x), rtol=1e-4, atol=1e-4)


def test_crate_new_classes_channels_and_size(tmp_path):
    ours = _tiny_crate()
    path = _official_crate_file(tmp_path, ours)
    five = whitebox.create_model("crate_tiny", **TINY, num_classes=5, checkpoint_path=path).eval()
    _assert_same_state(ours, five, skip=("head.",))
    backbone = whitebox.create_model("crate_tiny", **TINY, num_classes=0, checkpoint_path=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), ours.forward_head(ours.forward_features(x), pre_logits=True))
    grey = whitebox.create_model("crate_tiny", **TINY, num_classes=10, in_chans=1, checkpoint_path=path)
    assert grey.patch_embed.proj.weight.shape == (64, 64) and grey.patch_embed.norm_in.weight.shape == (64,)
    torch.testing.assert_close(
        grey.patch_embed.proj.weight, ours.patch_embed.proj.weight.reshape(64, 8, 8, 3).sum(-1).reshape(64, 64)
    )
    with pytest.raises(ValueError, match=r"does not record its image size, and 16 positions could be 1x16, 2x8, 4x4"):
        whitebox.create_model("crate_tiny", **{**TINY, "img_size": 48}, num_classes=10, checkpoint_path=path)
    big = whitebox.create_model(
        "crate_tiny", **{**TINY, "img_size": 48}, num_classes=10, checkpoint_path=path, pretrained_model_args=TINY
    )
    assert big.pos_embed.shape == (1, 1 + 36, 64)
    torch.testing.assert_close(big.pos_embed[:, :1], ours.pos_embed[:, :1])  # the class token's row is kept
    with torch.no_grad():
        assert big(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_crate_takes_a_crate_mae_encoder(tmp_path):
    mae = _tiny_mae()
    path, _, _ = _official_mae_file(tmp_path, mae)
    enc = whitebox.create_model(
        "crate_tiny",
        **TINY,
        num_classes=0,
        lambd=LAMBD,
        embed_layer="conv",
        pos_embed="sincos",
        final_norm=True,
        fc_norm=False,
        checkpoint_path=path,
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc.forward_features(x), mae.forward_features(x))


# ----------------------------------------------------------------------------- ViT-MAE
def test_official_vit_mae_layout_loads():
    from conftest import tiny_kwargs

    kw = tiny_kwargs("vit_mae_base")
    ours = randomize_(whitebox.create_model("vit_mae_base", **kw).eval(), seed=4)
    sd = ours.state_dict()
    official = {k.removeprefix("encoder."): v for k, v in sd.items()}
    official.update(
        {
            "pos_embed": torch.randn(1, 17, 64),
            "decoder_pos_embed": ours.encoder.pos_embed.table.clone(),
            "decoder_embed.weight": torch.randn(64, 64),
            "decoder_embed.bias": torch.randn(64),
        }
    )
    out = vit_mae_filter(official, ours)
    assert out.keys() == sd.keys() and all(torch.equal(out[k], sd[k]) for k in sd)


# ----------------------------------------------------------------------------- command line
def test_convert_cli_writes_a_rebuildable_folder(tmp_path, capsys):
    ours = _tiny_mae()
    path, _, _ = _official_mae_file(tmp_path, ours)
    out = tmp_path / "converted"
    args = json.dumps({**TINY, "lambd": LAMBD})
    assert main([str(path), str(out), "--model", "crate_mae_tiny", "--model-args", args]) == 0
    assert "source sha256 " + hashlib.sha256(path.read_bytes()).hexdigest() in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    rebuilt = whitebox.create_model(f"local-dir:{out}").eval()
    assert rebuilt.encoder.blocks[0].ista.lambd == LAMBD
    imgs, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(imgs, noise=noise).pred, ours(imgs, noise=noise).pred)
