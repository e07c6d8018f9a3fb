"""CRATE-alpha: the layer, block and model against the plain reference; the official layout on every route,
the Hub tags through a fake Hub on 127.0.0.1; cache, offline, shapes, parameter counts; the recipes from a tag."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from _servers import LocalServer
from conftest import SHARED_DATA
from reference import (
    Attention,
    OvercompleteISTAStep,
    PreNorm,
    RefCrateAlpha,
    crate_alpha_to_official,
    randomize_,
)

import whitebox
from registry import WeightsUnavailableError
from whitebox.layers import CrateAlphaBlock, OvercompleteISTA
from whitebox.models.crate_alpha import checkpoint_filter_fn

REPO, B16, L14 = "UCSC-VLAA/CRATE-alpha", "torch/crate_alpha_B16.pth", "torch/crate_alpha_L14.pth"
SHAPE = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
REF_SHAPE = dict(img_size=32, patch=8, dim=64, depth=2, heads=4)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- numerics against the reference
def test_overcomplete_ista_matches_the_reference_and_exposes_its_code():
    ref = randomize_(OvercompleteISTAStep(64), seed=1)
    ours = OvercompleteISTA(64)
    ours.load_state_dict(ref.state_dict())  # the official parameter names D, D1 ([d, 4d] each)
    assert ours.D.shape == ours.D1.shape == (64, 256)
    x = torch.nn.functional.layer_norm(torch.randn(2, 17, 64), (64,))
    codes = []
    ours.code.register_forward_hook(lambda _m, _a, out: codes.append(out))
    out = ours(x)
    z1, z2 = ref.codes(x)
    assert _max_err(out, ref(x)) < 1e-5
    assert codes[0].shape == (2, 17, 256) and _max_err(codes[0], z2) < 1e-5
    assert 0.2 < (z2 == 0).float().mean() < 0.95  # thresholded: a sparse, non-trivial code
    one_step = OvercompleteISTA(64, iterations=1)
    one_step.load_state_dict(ref.state_dict())
    torch.testing.assert_close(one_step(x), z1 @ ref.D1.t(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="iterations"):
        OvercompleteISTA(64, iterations=0)


@pytest.mark.parametrize("fused", [True, False])
def test_block_matches_the_reference(fused):
    attn = randomize_(PreNorm(64, Attention(64, 4, bias=False), eps=1e-6), seed=2)
    ff = randomize_(PreNorm(64, OvercompleteISTAStep(64), eps=1e-6), seed=3)
    ours = CrateAlphaBlock(64, 4, fused_attn=fused)
    sd = {f"norm1.{k}": v for k, v in attn.norm.state_dict().items()}
    sd |= {"attn.qkv.weight": attn.fn.qkv.weight, "attn.proj.weight": attn.fn.to_out[0].weight}
    sd |= {f"norm2.{k}": v for k, v in ff.norm.state_dict().items()} | {"ista.D": ff.fn.D, "ista.D1": ff.fn.D1}
    ours.load_state_dict(sd)
    assert ours.norm1.eps == ours.norm2.eps == 1e-6 and ours.attn.proj.bias is None
    x = torch.randn(2, 17, 64)
    y = x + attn(x)
    expected = y + ff(y)
    assert _max_err(ours(x), expected) < 1e-5


def _pair(seed: int = 0, **shape):
    """Our tiny model and the reference with identical weights (ours -> official names -> reference)."""
    ours = randomize_(whitebox.create_model("crate_alpha_base_patch16", **{**SHAPE, **shape}, num_classes=10), seed)
    s = {**SHAPE, **shape}
    ref = RefCrateAlpha(s["img_size"], s["patch_size"], 3, s["embed_dim"], s["depth"], s["num_heads"], 10)
    ref.load_state_dict(crate_alpha_to_official(ours))  # strict: the official key set exactly
    return ours.eval(), ref.eval()


def test_model_matches_the_reference_with_the_same_weights():
    ours, ref = _pair()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert _max_err(ours(x), ref(x)) < 1e-5
    assert ours.fc_norm.eps == 1e-5 and all(b.norm1.eps == 1e-6 for b in ours.blocks)  # two eps, as the official


def test_gradients_match_the_reference():
    ours, ref = _pair(seed=4)
    x = torch.randn(2, 3, 32, 32)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(xa).logsumexp(-1).sum().backward()
    ref(xb).logsumexp(-1).sum().backward()
    assert _max_err(xa.grad, xb.grad) < 1e-5
    theirs = {k: v.grad for k, v in ref.named_parameters()}
    ours_as_official = crate_alpha_to_official(ours, {k: p.grad for k, p in ours.named_parameters()})
    assert ours_as_official.keys() == theirs.keys()
    worst = max(_max_err(g, theirs[k]) / max(theirs[k].abs().max().item(), 1.0) for k, g in ours_as_official.items())
    assert worst < 1e-5


# ----------------------------------------------------------------------------- the official layout
def _official_file(tmp_path: Path, seed: int = 5, **shape) -> tuple[Path, RefCrateAlpha]:
    """A plain official state dict (as the Hub files are), written by the reference."""
    s = {**REF_SHAPE, **shape}
    ref = randomize_(RefCrateAlpha(s["img_size"], s["patch"], 3, s["dim"], s["depth"], s["heads"], 1000), seed).eval()
    path = tmp_path / "crate_alpha_official.pth"
    torch.save(ref.state_dict(), path)
    return path, ref


def _agrees(model: torch.nn.Module, ref: torch.nn.Module, size: int = 32) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return _max_err(model.eval()(x), ref(x))


def test_official_layout_has_the_official_keys(tmp_path):
    path, _ = _official_file(tmp_path)
    keys = list(torch.load(path, weights_only=True))
    assert len(keys) == 4 + 2 * 8 + 4
    assert {"conv1.weight", "transformer.layers.1.1.fn.D1", "transformer.layers.0.0.fn.to_out.0.weight"} <= set(keys)
    assert not any(k.endswith("to_out.0.bias") for k in keys)


@pytest.mark.parametrize("route", ["file", "checkpoint_path", "timm"])
def test_official_file_loads_through_local_routes(tmp_path, route):
    path, ref = _official_file(tmp_path)
    if route == "file":
        model = whitebox.create_model(
            "crate_alpha_base_patch16", **SHAPE, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )
    elif route == "checkpoint_path":
        model = whitebox.create_model("crate_alpha_base_patch16", **SHAPE, checkpoint_path=path)
    else:
        model = timm.create_model(
            "crate_alpha_base_patch16.in1k", **SHAPE, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )
    assert _agrees(model, ref) < 1e-5


def test_native_weights_pass_the_filter_unchanged():
    model = whitebox.create_model("crate_alpha_base_patch16", **SHAPE)
    sd = model.state_dict()
    out = checkpoint_filter_fn(sd, model)
    assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)


def test_unknown_official_key_is_named(tmp_path):
    _, ref = _official_file(tmp_path)
    sd = dict(ref.state_dict())
    sd["transformer.layers.0.1.fn.D2"] = torch.zeros(1)
    model = whitebox.create_model("crate_alpha_base_patch16", **SHAPE)
    with pytest.raises(ValueError, match=r"official CRATE-alpha checkpoint has keys .*layers\.0\.1\.fn\.D2"):
        checkpoint_filter_fn(sd, model)


def test_official_weights_adapt_to_classes_channels_and_size(tmp_path):
    path, ref = _official_file(tmp_path)
    ten = whitebox.create_model("crate_alpha_base_patch16", **SHAPE, num_classes=10, checkpoint_path=path).eval()
    assert ten.head.weight.shape == (10, 64)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # everything but the head is the official one
        feats = ten.forward_head(ten.forward_features(x), pre_logits=True)
        ref_feats = ref.mlp_head[0](_ref_tokens(ref, x)[:, 0])
    assert _max_err(feats, ref_feats) < 1e-5
    grey = whitebox.create_model("crate_alpha_base_patch16", **SHAPE, in_chans=1, checkpoint_path=path).eval()
    g = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # timm's rule for one channel: the conv weights summed over RGB
        assert _max_err(grey(g), ref(g.expand(-1, 3, -1, -1))) < 1e-4
    with pytest.raises(ValueError, match="does not record its image size"):  # a bare file: the grid is unknown
        whitebox.create_model("crate_alpha_base_patch16", **{**SHAPE, "img_size": 48}, checkpoint_path=path)
    trained = {"img_size": SHAPE["img_size"], "patch_size": SHAPE["patch_size"]}
    big = whitebox.create_model(
        "crate_alpha_base_patch16", **{**SHAPE, "img_size": 48}, checkpoint_path=path, pretrained_model_args=trained
    )
    assert big.pos_embed.shape == (1, 1 + 36, 64) and big(torch.randn(1, 3, 48, 48)).shape == (1, 1000)


def _ref_tokens(ref: RefCrateAlpha, img: torch.Tensor) -> torch.Tensor:
    x = ref.conv1(img)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([ref.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + ref.pos_embedding
    for attn, ff in ref.transformer.layers:
        x = attn(x) + x
        x = ff(x) + x
    return x


# ----------------------------------------------------------------------------- the Hub
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake Hugging Face Hub on 127.0.0.1 and every cache in tmp_path."""
    monkeypatch.setenv("WHITEBOX_HOME", str(tmp_path / "whitebox"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "WHITEBOX_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with LocalServer() as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


def test_records_of_the_hub_tags():
    assert {"crate_alpha_base_patch16.in1k", "crate_alpha_large_patch14.in1k"} <= set(whitebox.list_pretrained())
    for tag, filename, top1 in (
        ("crate_alpha_base_patch16.in1k", B16, "81.2"),
        ("crate_alpha_large_patch14.in1k", L14, "83.9"),
    ):
        cfg = whitebox.get_pretrained_cfg(tag)
        assert (cfg.hf_hub_id, cfg.hf_hub_filename) == (REPO, filename) and cfg.gdrive_id is None
        assert cfg.license == "apache-2.0" and cfg.paper_ids == "arXiv:2405.20299" and top1 in cfg.notes[0]
        assert "no LICENSE file" in cfg.notes[1]
        assert (cfg.interpolation, cfg.crop_pct, cfg.input_size) == ("bilinear", 0.875, (3, 224, 224))
    assert whitebox.get_pretrained_cfg("crate_alpha_base_patch16").tag == "in1k"  # the default tag
    for arch in ("base_patch8", "base_patch32", "large_patch8", "large_patch32"):  # architectures only
        assert not whitebox.get_pretrained_cfg(f"crate_alpha_{arch}").has_weights


def test_registered_tag_from_the_hub_then_the_cache(tmp_path, hub, monkeypatch):
    path, ref = _official_file(tmp_path)
    hub.hub[REPO] = {B16: path.read_bytes()}
    model = whitebox.create_model("crate_alpha_base_patch16.in1k", **SHAPE, pretrained=True)
    assert _agrees(model, ref) < 1e-5
    assert model.pretrained_cfg["hf_hub_id"] == REPO
    hub.stop()  # now only the Hub cache has it, for whitebox and for timm
    again = whitebox.create_model("crate_alpha_base_patch16", **SHAPE, pretrained=True)
    via_timm = timm.create_model("crate_alpha_base_patch16.in1k", **SHAPE, pretrained=True)
    assert _agrees(again, ref) < 1e-5 and _agrees(via_timm, ref) < 1e-5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode serves the cached file
    assert _agrees(whitebox.create_model("crate_alpha_base_patch16", **SHAPE, pretrained=True), ref) < 1e-5
    assert hub.requests.count(("GET", f"/{REPO}/resolve/main/{B16}")) == 1
    assert list((tmp_path / "hf" / "hub").glob("models--UCSC-VLAA--CRATE-alpha/snapshots/*/torch/crate_alpha_B16.pth"))


@pytest.mark.parametrize("revision", ["", "@v1.0"])
def test_hub_overlay_like_an_hf_hub_name(tmp_path, hub, revision):
    """Any Hub repository, revision and file in the official layout, via ``hf_hub_id`` / ``hf_hub_filename``."""
    path, ref = _official_file(tmp_path, seed=6)
    hub.hub["someone/crate-alpha-copy"] = {"weights/b16.pth": path.read_bytes()}
    overlay = dict(hf_hub_id=f"someone/crate-alpha-copy{revision}", hf_hub_filename="weights/b16.pth")
    model = whitebox.create_model("crate_alpha_base_patch16", **SHAPE, pretrained=True, pretrained_cfg_overlay=overlay)
    assert _agrees(model, ref) < 1e-5
    rev = revision.removeprefix("@") or "main"
    assert ("GET", f"/someone/crate-alpha-copy/resolve/{rev}/weights/b16.pth") in hub.requests


def test_large_tag_from_the_hub(tmp_path, hub):
    path, ref = _official_file(tmp_path, seed=7, patch=4, depth=3)
    hub.hub[REPO] = {L14: path.read_bytes()}
    model = whitebox.create_model(
        "crate_alpha_large_patch14.in1k", **{**SHAPE, "patch_size": 4, "depth": 3}, pretrained=True
    )
    assert _agrees(model, ref) < 1e-5


def test_saved_converted_model_round_trips(tmp_path, hub):
    path, ref = _official_file(tmp_path)
    model = whitebox.create_model("crate_alpha_base_patch16", **SHAPE, checkpoint_path=path)
    folder = whitebox.save_pretrained(model, tmp_path / "saved")
    assert _agrees(whitebox.create_model(f"local-dir:{folder}"), ref) < 1e-5
    whitebox.push_to_hub(model, "org/crate-alpha-tiny", token="test-token")
    assert _agrees(whitebox.create_model("hf-hub:org/crate-alpha-tiny"), ref) < 1e-5


def test_offline_without_cache_is_weights_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        whitebox.create_model("crate_alpha_large_patch14", **SHAPE, pretrained=True)
    msg = str(err.value)
    assert f"'{L14}' of Hub repo '{REPO}'" in msg and "offline mode is on" in msg
    assert str(tmp_path / "hf" / "hub" / "models--UCSC-VLAA--CRATE-alpha") in msg


@pytest.mark.slow
def test_full_size_b16_from_the_fake_hub(tmp_path, hub):
    """The registered tag at its real size: 104 official tensors, 72.33M parameters, the reference's logits."""
    ref = randomize_(RefCrateAlpha(224, 16, 3, 768, 12, 12, 1000), seed=8).eval()
    path = tmp_path / "b16.pth"
    torch.save(ref.state_dict(), path)
    assert len(ref.state_dict()) == 104
    hub.hub[REPO] = {B16: path.read_bytes()}
    model = whitebox.create_model("crate_alpha_base_patch16", pretrained=True).eval()
    assert sum(p.numel() for p in model.parameters()) == 72_328_936
    assert _agrees(model, ref, size=224) < 1e-4


# ----------------------------------------------------------------------------- sizes
PARAMS = {  # the official class instantiated at 224 px, 1000 classes (10 d^2 + 4 d per layer; stem, positions, head)
    "crate_alpha_base_patch32": 73_985_512,
    "crate_alpha_base_patch16": 72_328_936,
    "crate_alpha_base_patch8": 72_338_152,
    "crate_alpha_large_patch32": 255_982_568,
    "crate_alpha_large_patch14": 253_650_920,
    "crate_alpha_large_patch8": 253_786_088,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_equal_the_official_ones(name):
    with torch.device("meta"):
        model = whitebox.create_model(name)
    d, depth = model.embed_dim, len(model.blocks)
    p, n = model.patch_embed.patch_size, model.patch_embed.num_patches + 1
    by_hand = depth * (10 * d * d + 4 * d) + (3 * p * p * d + d) + n * d + d + 2 * d + 1000 * d + 1000
    assert sum(t.numel() for t in model.parameters()) == by_hand == PARAMS[name]


# ----------------------------------------------------------------------------- recipes from a tag
CIFAR_SMALL = SHARED_DATA / "cifar10_small.npz"
RECIPE_SHAPE = ["--img-size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "1", "--num-heads", "2"]


@pytest.mark.skipif(not CIFAR_SMALL.is_file(), reason=f"{CIFAR_SMALL} absent (shared data not on this machine)")
def test_finetune_and_linprobe_from_the_hub_tag(tmp_path, hub, one_thread):
    from recipes.finetune import main as finetune
    from recipes.linprobe import main as linprobe

    path, _ = _official_file(tmp_path, dim=32, depth=1, heads=2)
    hub.hub[REPO] = {B16: path.read_bytes()}
    common = ["--model", "crate_alpha_base_patch16.in1k", "--pretrained", *RECIPE_SHAPE, "--data", str(CIFAR_SMALL)]
    probe = linprobe([*common, "--max-train", "500", "--max-iter", "20", "--output", str(tmp_path / "probe")])
    assert probe["num_classes"] == 10 and probe["feature_dim"] == 32 and probe["top1"] > 0.15  # chance 0.10
    tuned = finetune(
        [
            *common,
            *("--epochs", "1", "--batch-size", "32", "--stop-after", "3", "--warmup-epochs", "0"),
            *("--workers", "0", "--no-progress", "--output", str(tmp_path / "ft")),
        ]
    )
    assert 0.0 <= tuned["top1"] <= 1.0
    ckpt = torch.load(tmp_path / "ft" / "checkpoint-last.pth", weights_only=True)
    assert ckpt["model_name"] == "crate_alpha_base_patch16.in1k" and ckpt["model"]["head.weight"].shape == (10, 32)
    assert hub.requests.count(("GET", f"/{REPO}/resolve/main/{B16}")) == 1  # the second run used the cache


def test_cpu_inference_benchmark_smoke(tmp_path, one_thread):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import cpu_infer

    out = tmp_path / "rows.json"
    rows = cpu_infer.main(
        ["--img-size", "32", "--batch", "1", "--warmup", "0", "--reps", "2", "--threads", "1", "--json", str(out)]
    )
    assert [r["model"] for r in rows] == ["crate_base", "crate_alpha_base_patch16"] and out.is_file()
    assert rows[0]["relative"] == 1.0 and all(r["images_per_s"] > 0 and len(r["batch_seconds"]) == 2 for r in rows)
