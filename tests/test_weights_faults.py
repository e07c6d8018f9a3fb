"""Weights load exactly what the user named, or say why not (issue 17, item 5).

Heads that do not fit, position tables of another grid, checkpoints the programs write, and
malformed files: each is adapted as documented, warned about by name, or refused by name.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed

import whitebox
from registry import CheckpointFormatError, HeadAdaptedWarning, UnsafeCheckpointError, read_checkpoint

SMALL = dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)


def _crate(**kw):
    model = whitebox.create_model("crate_tiny", **{**SMALL, **kw}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _caught(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w.message for w in caught if isinstance(w.message, HeadAdaptedWarning)]


# ----------------------------------------------------------------------------- heads
def test_checkpoint_path_without_num_classes_builds_the_checkpoints_head(tmp_path):
    ten = _crate(num_classes=10)
    torch.save(ten.state_dict(), tmp_path / "ten.pth")
    model, heads = _caught(lambda: whitebox.create_model("crate_tiny", checkpoint_path=tmp_path / "ten.pth", **SMALL))
    assert model.num_classes == 10 and not heads
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ten(x))


@pytest.mark.parametrize("name", ["crate_tiny", "crate_mae_tiny", "crate_alpha_base_patch32"])
def test_a_replaced_head_is_warned_with_keys_and_shapes(tmp_path, name):
    """Another family, another head shape: the caller's num_classes wins, with a warning naming both."""
    src = whitebox.create_model(name, **SMALL, num_classes=7)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model, heads = _caught(
        lambda: whitebox.create_model(name, checkpoint_path=tmp_path / "w.pth", num_classes=4, **SMALL)
    )
    assert model.get_classifier().out_features == 4 and len(heads) == 1
    assert "(7, 32)" in str(heads[0]) and "(4, 32)" in str(heads[0]) and heads[0].num_classes == 7
    # and a head dropped for features (num_classes=0) is said too
    model, heads = _caught(
        lambda: whitebox.create_model(name, checkpoint_path=tmp_path / "w.pth", num_classes=0, **SMALL)
    )
    assert len(heads) == 1 and "dropped" in str(heads[0]) and "(7, 32)" in str(heads[0])


def test_a_state_dict_without_head_weight_is_refused_by_name(tmp_path):
    sd = _crate(num_classes=10).state_dict()
    del sd["head.weight"]
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"missing keys \['head.weight'\]"):
        whitebox.create_model("crate_tiny", checkpoint_path=tmp_path / "w.pth", num_classes=10, **SMALL)


def test_a_backbone_without_head_loads_with_a_warning(tmp_path):
    sd = {k: v for k, v in _crate(num_classes=10).state_dict().items() if not k.startswith("head.")}
    torch.save(sd, tmp_path / "w.pth")
    model, heads = _caught(lambda: whitebox.create_model("crate_tiny", checkpoint_path=tmp_path / "w.pth", **SMALL))
    assert len(heads) == 1 and "has no head" in str(heads[0]) and "head.weight (1000, 32)" in str(heads[0])
    assert heads[0].num_classes is None and model.num_classes == 1000


# ----------------------------------------------------------------------------- position tables
def _rect_source():
    src = whitebox.create_model("crate_tiny", img_size=(16, 64), patch_size=4, embed_dim=32, depth=1, num_heads=2)
    with torch.no_grad():
        src.pos_embed.normal_()
    want = resample_abs_pos_embed(src.pos_embed.detach(), [8, 32], old_size=[4, 16], num_prefix_tokens=1)
    return src, want


def test_rectangular_table_through_local_dir_uses_the_recorded_grid(tmp_path):
    src, want = _rect_source()
    whitebox.save_pretrained(src, tmp_path / "saved")
    model = whitebox.create_model(f"local-dir:{tmp_path / 'saved'}", img_size=(32, 128))
    torch.testing.assert_close(model.pos_embed, want)


def test_rectangular_table_through_the_hub(tmp_path, server):
    src, want = _rect_source()
    whitebox.push_to_hub(src, "org/rect", token="test-token")
    model = whitebox.create_model("hf-hub:org/rect", img_size=(32, 128))
    torch.testing.assert_close(model.pos_embed, want)


def test_rectangular_table_through_checkpoint_path(tmp_path):
    src, want = _rect_source()
    shape = dict(patch_size=4, embed_dim=32, depth=1, num_heads=2)
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(
        ValueError, match=r"pos_embed \(64 patch positions\).*could be .*4x16, 8x8.*pretrained_model_args"
    ):
        whitebox.create_model("crate_tiny", img_size=(32, 128), checkpoint_path=tmp_path / "bare.pth", **shape)
    said = whitebox.create_model(
        "crate_tiny",
        img_size=(32, 128),
        checkpoint_path=tmp_path / "bare.pth",
        pretrained_model_args=dict(img_size=(16, 64)),
        **shape,
    )
    torch.testing.assert_close(said.pos_embed, want)
    # a recipe-style checkpoint records its arguments: no word needed
    record = dict(model_name="crate_tiny", model_kwargs=dict(img_size=(16, 64), **shape), model=src.state_dict())
    torch.save(record, tmp_path / "recorded.pth")
    model = whitebox.create_model(checkpoint_path=tmp_path / "recorded.pth", img_size=(32, 128))
    torch.testing.assert_close(model.pos_embed, want)


def test_a_recorded_grid_that_does_not_fit_the_table_is_refused(tmp_path):
    """Another member: the record says 2x8 but the table holds 4x16 positions."""
    src, _ = _rect_source()
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"recorded img_size \(8, 32\) and patch_size 4 give a 2x8 grid, not 64"):
        whitebox.create_model(
            "crate_tiny",
            img_size=(32, 128),
            patch_size=4,
            embed_dim=32,
            depth=1,
            num_heads=2,
            checkpoint_path=tmp_path / "bare.pth",
            pretrained_model_args=dict(img_size=(8, 32)),
        )


# ----------------------------------------------------------------------------- files that are not what was expected
def test_a_folder_as_checkpoint_path_says_so(tmp_path):
    whitebox.save_pretrained(_crate(), tmp_path / "saved")
    with pytest.raises(IsADirectoryError, match=r"is a folder.*model.safetensors.*local-dir:"):
        whitebox.create_model("crate_tiny", checkpoint_path=tmp_path / "saved", **SMALL)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "whitebox.analysis",
            "--checkpoint",
            str(tmp_path / "saved"),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "is a folder" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(IsADirectoryError, match="holds no weight files"):
        read_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize("odd", [3, "text", None, [torch.zeros(1)], {"nested": torch.zeros(1)}])
def test_a_non_tensor_entry_is_named(tmp_path, odd):
    torch.save(dict(_crate().state_dict(), extra=odd), tmp_path / "w.pth")
    with pytest.raises(CheckpointFormatError, match=rf"not tensors: 'extra' \(builtins.{type(odd).__name__}\)"):
        whitebox.create_model("crate_tiny", checkpoint_path=tmp_path / "w.pth", **SMALL)


@pytest.mark.parametrize(
    "value",
    [pathlib.Path("/data/run"), np.float32(0.5), np.int64(3), np.arange(3)],
    ids=["path", "f32", "i64", "array"],
)
def test_plain_values_in_training_args_are_not_called_code(tmp_path, value):
    torch.save({"model": _crate().state_dict(), "args": {"value": value}, "epoch": 1}, tmp_path / "w.pth")
    with pytest.raises(CheckpointFormatError) as err:
        whitebox.create_model("crate_tiny", checkpoint_path=tmp_path / "w.pth", **SMALL)
    msg = str(err.value)
    assert "would run code" not in msg and "plain values" in msg and "safe_globals" in msg
    assert ("pathlib" in msg) if isinstance(value, pathlib.Path) else ("numpy" in msg)


class _Gadget:  # a class of the test module: its pickle would import and run it
    pass


def test_real_code_is_still_refused_as_code(tmp_path):
    torch.save({"model": _crate().state_dict(), "args": {"p": pathlib.Path("/x"), "g": _Gadget()}}, tmp_path / "w.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"would run code .*_Gadget") as err:
        read_checkpoint(tmp_path / "w.pth")
    assert "pathlib" not in str(err.value)


# ----------------------------------------------------------------------------- what the programs write
RECIPE_TINY = ["--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--no-progress", "--no-tensorboard"]


def _labelled_npz(path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    y = np.arange(24) % 3
    np.savez(path, x_train=x[:16], y_train=y[:16], x_test=x[16:], y_test=y[16:])
    return path


@pytest.mark.slow
def test_every_checkpoint_the_programs_write_reloads_as_what_it_holds(tmp_path):
    from recipes.finetune import main as finetune
    from recipes.linprobe import main as linprobe
    from recipes.pretrain import main as pretrain

    data, pre, ft = _labelled_npz(tmp_path / "d.npz"), tmp_path / "pre", tmp_path / "ft"
    shape = ["--img-size", "16", "--patch-size", "8"]
    pretrain(
        [
            *shape,
            "--samples-per-epoch",
            "16",
            "--batch-size",
            "8",
            "--stop-after",
            "1",
            "--output",
            str(pre),
            *RECIPE_TINY,
        ]
    )
    common = ["--data", str(data), "--batch-size", "8", "--no-progress", "--workers", "0"]
    finetune(["--checkpoint", str(pre / "checkpoint-last.pth"), *common, "--epochs", "1", "--output", str(ft)])
    linprobe(["--checkpoint", str(pre / "checkpoint-last.pth"), "--data", str(data), "--output", str(tmp_path / "lp")])

    mae = whitebox.create_model(checkpoint_path=pre / "checkpoint-last.pth")  # the pretrained autoencoder
    assert type(mae).__name__ == "CrateMAE"
    saved = read_checkpoint(ft / "checkpoint-last.pth")
    clf, heads = _caught(lambda: whitebox.create_model(checkpoint_path=ft / "checkpoint-last.pth"))
    assert not heads and clf.num_classes == 3 and clf.pretrained_cfg["architecture"] == "crate_mae_tiny"
    assert type(clf).__name__ == "CRATE" and clf.global_pool == "avg"  # finetune.py's pooling, not the default
    assert clf.state_dict().keys() == saved["model"].keys()
    assert all(torch.equal(clf.state_dict()[k], v) for k, v in saved["model"].items())
    with torch.no_grad():
        assert clf.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "whitebox.analysis",
            "--checkpoint",
            str(ft / "checkpoint-last.pth"),
            "--images",  # its own test images: the command refuses to guess images for it
            f"{data}:test",
            "--out",
            str(tmp_path / "rep"),
            "--show",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    with pytest.raises(CheckpointFormatError, match=r"probe.pth holds no state dict of tensors .*'probe'"):
        whitebox.create_model(checkpoint_path=tmp_path / "lp" / "probe.pth")


# ----------------------------------------------------------------------------- sources and names
@pytest.fixture
def server(tmp_path, monkeypatch):
    from _servers import LocalServer

    monkeypatch.setenv("WHITEBOX_HOME", str(tmp_path / "whitebox"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "WHITEBOX_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with LocalServer() as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


def _written(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())


def test_two_urls_with_one_file_name_are_two_cache_entries(tmp_path, server):
    from safetensors.torch import save_file

    a, b = _crate(num_classes=3), _crate(num_classes=3)
    save_file(a.state_dict(), tmp_path / "a.safetensors")
    save_file(b.state_dict(), tmp_path / "b.safetensors")
    server.files["a/model.safetensors"] = (tmp_path / "a.safetensors").read_bytes()
    server.files["b/model.safetensors"] = (tmp_path / "b.safetensors").read_bytes()
    for src, where in ((a, "a"), (b, "b"), (a, "a")):
        url = f"{server.url}/files/{where}/model.safetensors"
        got = whitebox.create_model(
            "crate_tiny", **SMALL, num_classes=3, pretrained=True, pretrained_cfg_overlay=dict(url=url)
        )
        assert all(torch.equal(got.state_dict()[k], v) for k, v in src.state_dict().items()), where
    assert len(list((tmp_path / "whitebox").rglob("model.safetensors"))) == 2
    # the same name with another query string is another address too
    server.files["w.pth"] = b"x"
    from registry import download_url

    assert download_url(f"{server.url}/files/w.pth?v=1") != download_url(f"{server.url}/files/w.pth?v=2")


BAD_HUB_NAMES = [
    "",  # empty
    "../outside",
    "org/../../outside",
    "/abs/path",
    "org//name",
    "org/name/extra",
    "org/na me",
    "org/name@",  # empty revision
    "org/name@../../x",
    "org/name@main//x",
    "org--x/name",
    "org/name\x00",
    ".hidden/name",
]


@pytest.mark.parametrize("name", BAD_HUB_NAMES)
def test_bad_hub_names_are_refused_before_any_request(tmp_path, server, name):
    with pytest.raises(ValueError, match="invalid|names no|empty"):
        whitebox.create_model(f"hf-hub:{name}")
    if name:  # the same name as an overlay's hf_hub_id (an empty one is no source at all)
        with pytest.raises(ValueError, match="invalid"):
            overlay = dict(hf_hub_id=name)
            whitebox.create_model("crate_tiny", **SMALL, pretrained=True, pretrained_cfg_overlay=overlay)
    assert server.requests == [] and _written(tmp_path / "hf") == [] and _written(tmp_path / "whitebox") == []


@pytest.mark.parametrize(
    "overlay",
    [
        dict(hf_hub_id="org/name", hf_hub_filename="../../../etc/passwd"),
        dict(hf_hub_id="org/name", hf_hub_filename="/abs.pth"),
        dict(hf_hub_id="org/name", hf_hub_filename="dir//w.pth"),
        dict(hf_hub_id="org/name", hf_hub_filename="dir\\..\\w.pth"),
        dict(hf_hub_id="org/name", hf_hub_filename=""),
        dict(url="file:///etc/passwd"),
        dict(url="ftp://host/w.pth"),
        dict(url="http:///w.pth"),
        dict(gdrive_id="../../escape"),
        dict(gdrive_id="id/with/slash"),
        dict(url="http://127.0.0.1:9/w.pth", sha256="abc"),
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())[:40],
)
def test_bad_overlay_parts_are_refused_before_any_request_or_write(tmp_path, server, overlay):
    with pytest.raises(ValueError, match="invalid|expected|hexadecimal"):
        whitebox.create_model("crate_tiny", **SMALL, pretrained=True, pretrained_cfg_overlay=overlay)
    assert server.requests == [] and _written(tmp_path / "hf") == [] and _written(tmp_path / "whitebox") == []


@pytest.mark.parametrize("tail", ["w.pth/..", "w.pth/%2e%2e", "..", "w.pth/.hidden", "a%2Fb"])
def test_url_file_names_never_leave_the_cache_folder(tmp_path, server, tail):
    from registry import cache_root, download_url

    server.files["w.pth"] = b"bytes"
    with pytest.raises(OSError, match="HTTP 404"):  # the server has no such file: nothing is kept either
        download_url(f"{server.url}/files/{tail}")
    entries = list((tmp_path / "whitebox").rglob("*"))
    assert entries in ([], [cache_root()])  # nothing kept, no empty entry, nothing outside
    assert download_url(f"{server.url}/files/w.pth").parent.parent == cache_root()


@pytest.mark.parametrize("location", ["", "\x00"])
def test_empty_local_dir_is_refused(location):
    with pytest.raises(ValueError, match="names no folder"):
        whitebox.create_model(f"local-dir:{location}")


# ----------------------------------------------------------------------------- malformed config.json
MALFORMED = {
    "model_args a list": (
        json.dumps({"architecture": "crate_tiny", "model_args": [1, 2]}).encode(),
        r"'model_args' is a JSON array, expected an object",
    ),
    "pretrained_cfg a string": (
        json.dumps({"architecture": "crate_tiny", "pretrained_cfg": "in1k"}).encode(),
        r"'pretrained_cfg' is a JSON string",
    ),
    "not UTF-8": (b'{"architecture": "crate_\xff"}', "not UTF-8"),
    "not JSON": (b"architecture: crate_tiny", "not valid JSON"),
    "not an object": (b'["crate_tiny"]', "holds a JSON list, not an object"),
    "architecture a number": (b'{"architecture": 3}', "names no 'architecture'"),
    "model_args a number": (b'{"architecture": "crate_tiny", "model_args": 3}', r"'model_args' is a JSON number"),
    "record field a list": (
        json.dumps({"architecture": "crate_tiny", "pretrained_cfg": {"hf_hub_id": ["x"]}}).encode(),
        r"pretrained_cfg.hf_hub_id is a JSON array",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_config_json_is_named(tmp_path, case):
    data, message = MALFORMED[case]
    (tmp_path / "config.json").write_bytes(data)
    with pytest.raises(ValueError, match=message):
        whitebox.create_model(f"local-dir:{tmp_path}")


# ----------------------------------------------------------------------------- the tag's arguments
def _official_crate_mae(tmp_path, **shape):
    from reference import RefCrateMAE, crate_mae_to_official, randomize_

    ours = randomize_(whitebox.create_model("crate_mae_base", lambd=5.0, **shape).eval(), seed=3)
    ref = RefCrateMAE(
        img_size=shape.get("img_size", 224),
        patch=shape.get("patch_size", 16),
        dim=shape.get("embed_dim", 768),
        depth=shape.get("depth", 12),
        heads=shape.get("num_heads", 12),
        lambd=5.0,
    )
    path = tmp_path / "crate_mae_base_official.pth"
    torch.save({"model": crate_mae_to_official(ours, ref)}, path)
    return path, ours


def _lambd(model):
    return model.encoder.blocks[0].ista.lambd


MAE_SHAPE = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


def test_the_route_the_offline_error_suggests_gives_the_tags_model(tmp_path, monkeypatch):
    path, _ = _official_crate_mae(tmp_path, **MAE_SHAPE)
    monkeypatch.setenv("WHITEBOX_OFFLINE", "1")
    monkeypatch.setenv("WHITEBOX_HOME", str(tmp_path / "home"))
    with pytest.raises(Exception) as err:
        whitebox.create_model("crate_mae_base", pretrained=True)
    msg = str(err.value)
    assert "create_model('crate_mae_base.in1k', checkpoint_path=PATH)" in msg and "lambd=5.0" in msg
    calls = [
        lambda: whitebox.create_model("crate_mae_base.in1k", checkpoint_path=path, **MAE_SHAPE),
        lambda: whitebox.create_model(
            "crate_mae_base.in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **MAE_SHAPE
        ),
    ]
    for call in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and without a word: it is what was asked for
            assert _lambd(call()) == 5.0


def test_an_official_file_meeting_another_threshold_is_said(tmp_path):
    path, ours = _official_crate_mae(tmp_path, **MAE_SHAPE)
    with pytest.warns(UserWarning, match=r"crate_mae_base.in1k weights need lambd=5.0.*built with lambd=0.5"):
        model = whitebox.create_model("crate_mae_base", checkpoint_path=path, **MAE_SHAPE)
    assert _lambd(model) == 0.5  # what was asked for, now knowingly
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the caller chose: no word
        assert _lambd(whitebox.create_model("crate_mae_base", checkpoint_path=path, lambd=0.5, **MAE_SHAPE)) == 0.5
        native = tmp_path / "native.pth"
        torch.save(ours.state_dict(), native)  # our own layout: the caller's arguments, no guess
        whitebox.create_model("crate_mae_base", checkpoint_path=native, lambd=5.0, **MAE_SHAPE)


@pytest.mark.slow
def test_the_official_base_file_into_plain_crate_mae_base(tmp_path):
    path, ours = _official_crate_mae(tmp_path)
    with pytest.warns(UserWarning, match="lambd=5.0"):
        whitebox.create_model("crate_mae_base", checkpoint_path=path)
    tagged = whitebox.create_model("crate_mae_base.in1k", checkpoint_path=path).eval()
    x, noise = torch.randn(1, 3, 224, 224), torch.rand(1, 196)
    with torch.no_grad():
        assert _lambd(tagged) == 5.0 and torch.equal(tagged(x, noise=noise).pred, ours(x, noise=noise).pred)


def test_an_overlay_file_without_a_tag_records_no_grid(tmp_path):
    """Another route: pretrained=True with a file for an architecture that has no tag of its own."""
    src, want = _rect_source()
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    shape = dict(patch_size=4, embed_dim=32, depth=1, num_heads=2, pretrained=True)
    overlay = dict(file=str(tmp_path / "bare.pth"))
    with pytest.raises(ValueError, match=r"does not record its image size"):
        whitebox.create_model("crate_tiny", img_size=(32, 128), pretrained_cfg_overlay=overlay, **shape)
    model = whitebox.create_model(
        "crate_tiny",
        img_size=(32, 128),
        pretrained_cfg_overlay=overlay,
        pretrained_model_args=dict(img_size=(16, 64)),
        **shape,
    )
    torch.testing.assert_close(model.pos_embed, want)
