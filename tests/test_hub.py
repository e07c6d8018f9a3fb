"""Weight sources against a real HTTP server on 127.0.0.1: plain URLs, Google Drive (HTTPS through the
server as a proxy, so that gdown runs unchanged), the Hub; cache, checksums, truncated downloads,
offline errors, Drive's error pages; save_pretrained / push_to_hub round trips."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from _servers import LocalServer
from conftest import TINY
from reference import RefCrateMAE, crate_mae_to_official, randomize_
from safetensors.torch import save_file

import whitebox
from registry import (
    ChecksumError,
    DriveFileUnavailableError,
    IncompleteDownloadError,
    WeightsUnavailableError,
    download_gdrive,
    download_url,
)

LAMBD = 5.0


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every cache in tmp_path, online, no real endpoints."""
    monkeypatch.setenv("WHITEBOX_HOME", str(tmp_path / "whitebox"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("WHITEBOX_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    for var in ("HTTPS_PROXY", "https_proxy"):  # Google Drive (HTTPS): the same nowhere
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(monkeypatch):
    with LocalServer() as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        for var in ("HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(var, srv.url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", srv.ca_path)
        yield srv


def _files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _tiny_mae():
    return randomize_(whitebox.create_model("crate_mae_tiny", **TINY, lambd=LAMBD).eval(), seed=5)


def _official_bytes(tmp_path, model) -> bytes:
    ref = randomize_(RefCrateMAE(lambd=LAMBD), seed=6)
    path = tmp_path / "official.pth"
    torch.save({"model": crate_mae_to_official(model, ref)}, path)
    return path.read_bytes()


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _same_outputs(a, b):
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        oa, ob = a.eval()(imgs, noise=noise), b.eval()(imgs, noise=noise)
    return torch.equal(oa.loss, ob.loss) and torch.equal(oa.pred, ob.pred) and torch.equal(oa.mask, ob.mask)


# ----------------------------------------------------------------------------- plain URLs
def test_url_download_is_cached_and_served_after_the_server_stops(tmp_path, server):
    ours = _tiny_mae()
    data = _official_bytes(tmp_path, ours)
    server.files["w.pth"] = data
    overlay = dict(url=f"{server.url}/files/w.pth", sha256=hashlib.sha256(data).hexdigest())
    first = whitebox.create_model(
        "crate_mae_tiny", **TINY, lambd=LAMBD, pretrained=True, pretrained_cfg_overlay=overlay
    )
    assert _same_outputs(first, ours)
    assert _files(tmp_path / "whitebox") == ["w.pth"]
    server.stop()
    again = whitebox.create_model(
        "crate_mae_tiny", **TINY, lambd=LAMBD, pretrained=True, pretrained_cfg_overlay=overlay
    )
    assert _same_outputs(again, ours)
    assert server.requests.count(("GET", "/files/w.pth")) == 1


def test_wrong_checksum_keeps_nothing(tmp_path, server):
    server.files["w.pth"] = b"not the weights you are looking for"
    with pytest.raises(ChecksumError, match="expected 00+"):
        download_url(f"{server.url}/files/w.pth", sha256="0" * 64)
    assert _files(tmp_path / "whitebox") == []


def test_truncated_download_keeps_nothing(tmp_path, server):
    server.files["w.pth"] = bytes(range(256)) * 64
    server.truncate["w.pth"] = 1000
    with pytest.raises(IncompleteDownloadError, match="of 16384"):
        download_url(f"{server.url}/files/w.pth")
    assert _files(tmp_path / "whitebox") == []


def test_http_error_is_reported(server):
    with pytest.raises(OSError, match="HTTP 404"):
        download_url(f"{server.url}/files/missing.pth")


def test_sha256_of_a_local_file_is_checked(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"model": _tiny_mae().state_dict()}, path)
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    whitebox.create_model(
        "crate_mae_tiny", **TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), sha256=good)
    )
    with pytest.raises(ChecksumError, match=good):
        whitebox.create_model(
            "crate_mae_tiny", **TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), sha256="f" * 64)
        )


# ----------------------------------------------------------------------------- Google Drive
@pytest.mark.parametrize("mode", ["direct", "form"])
def test_gdrive_file_and_confirmation_page(tmp_path, server, mode):
    data = bytes(range(256)) * 10
    server.drive["abc123"] = (data, mode)
    path = download_gdrive("abc123", sha256=hashlib.sha256(data).hexdigest())
    assert path == tmp_path / "whitebox" / "checkpoints" / "gdrive-abc123" and path.read_bytes() == data
    assert _files(tmp_path / "whitebox") == ["gdrive-abc123"]
    served = [p for m, p in server.requests if m == "GET"]
    assert served == (["/uc"] if mode == "direct" else ["/uc", "/download"])


def test_gdrive_wrong_checksum_keeps_nothing(tmp_path, server):
    server.drive["abc123"] = (b"some other bytes", "form")
    with pytest.raises(ChecksumError, match="expected 00+; the download was not kept"):
        download_gdrive("abc123", sha256="0" * 64)
    assert _files(tmp_path / "whitebox") == []


@pytest.mark.parametrize("mode", ["quota", "missing"])
def test_dead_drive_tag_names_tag_id_upstream_and_the_way_round(tmp_path, server, mode):
    """Drive answers with a page instead of the file: the error says whose file, where to report, what to do."""
    file_id = whitebox.get_pretrained_cfg("crate_small.in1k").gdrive_id
    server.drive[file_id] = (b"", mode)
    with pytest.raises(DriveFileUnavailableError) as err:
        whitebox.create_model("crate_small.in1k", pretrained=True)
    msg = str(err.value)
    assert msg.startswith("crate_small.in1k: Google Drive served a page instead of file " + file_id)
    assert "report it to https://github.com/Ma-Lab-Berkeley/CRATE/issues" in msg
    assert "pretrained_cfg_overlay=dict(file=PATH)" in msg
    if mode == "quota":
        assert "Too many users have viewed or downloaded this file recently" in msg
    assert _files(tmp_path / "whitebox") == []


def test_drive_copy_loaded_by_hand_as_the_error_says(tmp_path):
    ours = randomize_(whitebox.create_model("crate_small", depth=1).eval(), seed=3)
    path = tmp_path / "copy.safetensors"
    save_file(ours.state_dict(), str(path))
    mine = whitebox.create_model("crate_small.in1k", depth=1, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(mine.eval()(x), ours(x))


@pytest.mark.slow
def test_registered_crate_mae_base_tag_from_gdrive(tmp_path, server):
    """The real tag: its Drive id, lambda 5.0 from the record, official layout converted."""
    ours = randomize_(whitebox.create_model("crate_mae_base", lambd=LAMBD).eval(), seed=7)
    ref = RefCrateMAE(img_size=224, patch=16, dim=768, depth=12, heads=12, lambd=LAMBD)
    path = tmp_path / "base.pth"
    torch.save({"model": crate_mae_to_official(ours, ref)}, path)
    server.drive["11i5BMwymqOsunq44WD3omN5mS6ZREQPO"] = (path.read_bytes(), "form")
    model = whitebox.create_model("crate_mae_base", pretrained=True).eval()
    assert model.encoder.blocks[0].ista.lambd == 5.0
    imgs, noise = torch.randn(1, 3, 224, 224), torch.rand(1, 196)
    with torch.no_grad():
        assert torch.equal(model(imgs, noise=noise).pred, ours(imgs, noise=noise).pred)
    server.stop()  # timm's create_model takes the same route: from the verified cache now
    via_timm = timm.create_model("crate_mae_base.in1k", pretrained=True).eval()
    assert via_timm.encoder.blocks[0].ista.lambd == 5.0
    _assert_same_state(via_timm, model)


# ----------------------------------------------------------------------------- offline
def test_offline_without_cache_says_what_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        whitebox.create_model("crate_small", pretrained=True)
    msg = str(err.value)
    assert "1hYgDJl4EKHYfKprwhEjmWmWHuxnK6_h8" in msg and "offline" in msg
    assert str(tmp_path / "whitebox" / "checkpoints" / "gdrive-1hYgDJl4EKHYfKprwhEjmWmWHuxnK6_h8") in msg
    assert "drive.google.com/file/d/1hYgDJl4EKHYfKprwhEjmWmWHuxnK6_h8" in msg and "pretrained_cfg_overlay" in msg


def test_unreachable_network_without_cache(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="network is unreachable") as err:
        download_url("http://127.0.0.1:9/files/w.pth")
    key = "url-" + hashlib.sha256(b"http://127.0.0.1:9/files/w.pth").hexdigest()[:16]
    assert str(tmp_path / "whitebox" / "checkpoints" / key / "w.pth") in str(err.value)
    with pytest.raises(WeightsUnavailableError, match="Google Drive is unreachable"):
        download_gdrive("abc123")


@pytest.mark.slow
def test_unreachable_hub_without_cache(tmp_path):
    # huggingface_hub retries a refused connection with back-off (about 20 s) before giving up
    with pytest.raises(WeightsUnavailableError, match="Hub is unreachable, and it is not in the Hub cache"):
        whitebox.create_model("hf-hub:org/missing")


def test_hub_offline_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="offline mode is on") as err:
        whitebox.create_model("hf-hub:org/missing")
    assert str(tmp_path / "hf" / "hub" / "models--org--missing") in str(err.value)


def test_offline_serves_the_cache(tmp_path, server, monkeypatch):
    server.files["w.pth"] = b"cached bytes"
    download_url(f"{server.url}/files/w.pth")
    server.stop()
    monkeypatch.setenv("WHITEBOX_OFFLINE", "1")
    assert download_url(f"{server.url}/files/w.pth").read_bytes() == b"cached bytes"


# ----------------------------------------------------------------------------- saved models
def test_save_pretrained_and_local_dir_round_trip(tmp_path):
    ours = _tiny_mae()
    folder = whitebox.save_pretrained(ours, tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "crate_mae_tiny" and config["model_args"]["lambd"] == LAMBD
    assert config["model_args"]["embed_dim"] == 64
    rebuilt = whitebox.create_model(f"local-dir:{folder}")
    assert _same_outputs(rebuilt, ours)
    assert rebuilt.pretrained_cfg["file"] == str(folder) and rebuilt.pretrained_cfg["source"] == "local-dir"
    probe = whitebox.create_model(f"local-dir:{folder}", num_classes=3)  # the caller's arguments win
    assert probe.encoder.head.out_features == 3
    bare = whitebox.create_model(f"local-dir:{folder}", pretrained=False)
    assert not torch.equal(bare.mask_token, ours.mask_token)
    assert "- whitebox" in (folder / "README.md").read_text()


def test_local_dir_without_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        whitebox.create_model(f"local-dir:{tmp_path}")
    with pytest.raises(ValueError, match="allowed: 'hf-hub:', 'local-dir:'"):
        whitebox.create_model("s3:bucket/model")


def test_push_to_hub_then_hf_hub_name(tmp_path, server):
    ours = _tiny_mae()
    whitebox.push_to_hub(ours, "org/tiny", token="test-token")
    assert sorted(server.hub["org/tiny"]) == ["README.md", "config.json", "model.safetensors"]
    assert b"create_model('hf-hub:org/tiny')" in server.hub["org/tiny"]["README.md"]
    loaded = whitebox.create_model("hf-hub:org/tiny")
    assert _same_outputs(loaded, ours)
    server.stop()
    again = whitebox.create_model("hf-hub:org/tiny")  # from the Hub cache, server gone
    assert _same_outputs(again, ours)


def test_hub_checksum_mismatch_removes_the_blob(tmp_path, server):
    ours = _tiny_mae()
    whitebox.push_to_hub(ours, "org/tiny", token="test-token")
    overlay = dict(hf_hub_id="org/tiny", hf_hub_filename="model.safetensors", sha256="0" * 64)
    with pytest.raises(ChecksumError):
        whitebox.create_model("crate_mae_tiny", **TINY, pretrained=True, pretrained_cfg_overlay=overlay)
    assert not [p for p in (tmp_path / "hf").rglob("model.safetensors") if p.exists()]
    blobs = [p for p in (tmp_path / "hf").rglob("blobs/*") if p.is_file()]
    assert all(p.stat().st_size < 10_000 for p in blobs)  # config.json / README only


def test_hub_missing_file_is_reported(server):
    server.hub["org/empty"] = {}
    with pytest.raises(OSError, match="no file 'config.json'"):
        whitebox.create_model("hf-hub:org/empty")


def test_pretrained_without_weights_lists_the_tags_that_have_them():
    assert {"crate_mae_base.in1k", "crate_small.in1k"} <= set(whitebox.list_pretrained())
    with pytest.raises(ValueError, match=r"variants with weights: .*crate_mae_base\.in1k.*crate_small\.in1k"):
        whitebox.create_model("crate_mae_tiny", pretrained=True)
    cfg = whitebox.get_pretrained_cfg("crate_mae_base.in1k")
    assert cfg.model_args == {"lambd": 5.0} and cfg.gdrive_id == "11i5BMwymqOsunq44WD3omN5mS6ZREQPO"
    assert "5.0" in " ".join(cfg.notes) and cfg.license == "mit" and cfg.input_size == (3, 224, 224)


def test_corrupt_cached_file_is_reported_not_used(tmp_path, server):
    server.files["w.pth"] = b"the real bytes"
    good = hashlib.sha256(b"the real bytes").hexdigest()
    path = download_url(f"{server.url}/files/w.pth", sha256=good)
    path.write_bytes(b"the real byte")  # damaged after download
    with pytest.raises(ChecksumError, match="delete .*w.pth to download it again"):
        download_url(f"{server.url}/files/w.pth", sha256=good)


# ----------------------------------------------------------------------------- timm's saved-model layout
def _tiny_crate():
    return randomize_(whitebox.create_model("crate_tiny", **TINY, num_classes=10).eval(), seed=8)


def test_local_dir_round_trips_between_whitebox_and_timm(tmp_path):
    ours = _tiny_mae()
    folder = whitebox.save_pretrained(ours, tmp_path / "wb")
    assert _same_outputs(timm.create_model(f"local-dir:{folder}", pretrained=True), ours)
    clf = _tiny_crate()
    timm.models.save_for_hf(clf, tmp_path / "timm")  # timm's default: a pickle, pytorch_model.bin
    assert sorted(p.name for p in (tmp_path / "timm").iterdir()) == ["config.json", "pytorch_model.bin"]
    x = torch.randn(2, 3, 32, 32)
    for back in (
        whitebox.create_model(f"local-dir:{tmp_path / 'timm'}"),
        timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True),
        timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=3),  # a new head on a saved MAE
    ):
        assert back.pretrained_cfg["first_conv"] and back.pretrained_cfg["source"] == "local-dir"
    with torch.no_grad():
        assert torch.equal(whitebox.create_model(f"local-dir:{tmp_path / 'timm'}").eval()(x), clf(x))


def _run_in_fresh_python(code: str, server, tmp_path) -> str:
    """timm reads HF_ENDPOINT once, when huggingface_hub is imported: a fresh interpreter sees the fake Hub."""
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf-timm"), "HF_TOKEN": "test-token"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_hub_round_trips_between_whitebox_and_timm(tmp_path, server):
    ours, clf = _tiny_mae(), _tiny_crate()
    whitebox.push_to_hub(ours, "org/from-whitebox", token="test-token")
    torch.save(clf.state_dict(), tmp_path / "clf.pth")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    torch.save({"imgs": imgs, "noise": noise}, tmp_path / "inputs.pth")
    code = f"""
import torch, timm, whitebox
inputs = torch.load({str(tmp_path / "inputs.pth")!r})
mae = timm.create_model("hf-hub:org/from-whitebox", pretrained=True).eval()
with torch.no_grad():
    torch.save(mae(inputs["imgs"], noise=inputs["noise"]).pred, {str(tmp_path / "pred.pth")!r})
clf = timm.create_model("crate_tiny", **{TINY!r}, num_classes=10)
clf.load_state_dict(torch.load({str(tmp_path / "clf.pth")!r}))
timm.models.push_to_hf_hub(clf, "org/from-timm")
"""
    _run_in_fresh_python(code, server, tmp_path)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "pred.pth"), ours(imgs, noise=noise).pred)
        back = whitebox.create_model("hf-hub:org/from-timm").eval()
        assert torch.equal(back(imgs), clf(imgs))
    assert {"config.json", "model.safetensors", "pytorch_model.bin"} <= set(server.hub["org/from-timm"])
