"""CBT: CBSA with the authors' pooling quirk and the corrected pooling, the layer and the whole model against
plain references of the authors' code; their checkpoint format through every route, the Drive tags through a
fake Google Drive; records, parameter counts, argument checks."""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch
import torch.nn.functional as F
from _servers import LocalServer
from reference_families import RefCBSA, RefCBT, RefISTA, RefPreNorm, cbt_to_official, randomize_all_

import whitebox
from registry import WeightsUnavailableError
from whitebox.layers import ContractBroadcastAttention, ContractBroadcastBlock
from whitebox.models.cbt import checkpoint_filter_fn

SHAPE = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
TAGS = {  # tag -> (Drive id, published top-1, GFLOPs, parameters)
    "cbt_tiny_patch16.in1k": ("1GovOGBPDkHJDpOYX8KVJJeDrjwQvHfhb", 63.2, 1.1, 1.8),
    "cbt_small_patch16.in1k": ("1sKZBbIxvgPJmfO89TKaggKD0EdUJ7jSu", 71.4, 4.0, 6.7),
    "cbt_base_patch16.in1k": ("1CouOjiy3T9YRhYJFk4gL8PVOgiJ-bFgn", 73.4, 15.1, 25.7),
    "cbt_large_patch16.in1k": ("1xdEClU6xb5qSwxvDZROKfLac8mJ7R6vb", 74.4, 47.3, 83.1),
}


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _cbsa_sd(ref: RefCBSA) -> dict:
    sd = ref.state_dict()
    return {
        "qkv.weight": sd["proj.weight"],
        "alpha": sd["step_rep"],
        "beta": sd["step_x"],
        "proj.weight": sd["to_out.weight"],
        "proj.bias": sd["to_out.bias"],
    }


# ----------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("side", [4, 14])  # 4 -> 8 repeats tokens; 14 -> 8 overlapping windows (their 224 px)
def test_cbsa_matches_the_reference_with_the_official_pooling(side):
    ref = randomize_all_(RefCBSA(64, 4), seed=1)
    ours = ContractBroadcastAttention(64, 4, grid_size=(side, side))
    ours.load_state_dict(_cbsa_sd(ref))
    x = torch.randn(2, 1 + side * side, 64)
    out, attn = ours(x, return_attention=True)
    assert _err(out, ref(x)) < 1e-5
    assert attn.shape == (2, 4, 64, 1 + side * side)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 64))  # each representative's contraction
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(xa).square().sum().backward()
    ref(xb).square().sum().backward()
    assert _err(xa.grad, xb.grad) < 1e-4
    assert _err(ours.alpha.grad, ref.step_rep.grad) < 1e-4 * max(1.0, ref.step_rep.grad.abs().max().item())


def test_official_pooling_holds_the_class_token_and_drops_the_last_patch():
    """The quirk the authors' weights depend on, and the corrected pooling beside it."""
    official = ContractBroadcastAttention(64, 4, grid_size=(4, 4), pool_size=(4, 4), pooling="official")
    corrected = ContractBroadcastAttention(64, 4, grid_size=(4, 4), pool_size=(4, 4), pooling="patch")
    w = torch.randn(1, 17, 64)  # class token first, then a 4 x 4 grid of patches
    rep_official, rep_corrected = official.representatives(w), corrected.representatives(w)
    torch.testing.assert_close(rep_official[0], w[0, :16])  # 4 x 4 -> 4 x 4: one token per representative
    torch.testing.assert_close(rep_corrected[0], w[0, 1:])
    bumped_cls, bumped_last = w.clone(), w.clone()
    bumped_cls[:, 0] += 1.0
    bumped_last[:, -1] += 1.0
    assert not torch.equal(official.representatives(bumped_cls), rep_official)
    assert torch.equal(official.representatives(bumped_last), rep_official)  # the last patch never pooled
    assert torch.equal(corrected.representatives(bumped_cls), rep_corrected)  # the class token never pooled
    assert not torch.equal(corrected.representatives(bumped_last), rep_corrected)


def test_corrected_pooling_takes_any_grid():
    layer = ContractBroadcastAttention(64, 4, grid_size=(3, 5), pooling="patch")
    w = torch.randn(2, 1 + 15, 64)
    expected = F.adaptive_avg_pool2d(w[:, 1:].reshape(2, 3, 5, 64).permute(0, 3, 1, 2), (8, 8))
    torch.testing.assert_close(layer.representatives(w), expected.flatten(2).transpose(1, 2))
    assert layer(torch.randn(2, 16, 64)).shape == (2, 16, 64)
    assert layer(torch.randn(1, 1 + 35, 64), grid_size=(5, 7)).shape == (1, 36, 64)  # another grid, named
    assert layer(torch.randn(1, 1 + 36, 64)).shape == (1, 37, 64)  # a square one, inferred
    with pytest.raises(ValueError, match=r"35 patch tokens do not form the grid \(3, 5\) nor a square one"):
        layer(torch.randn(1, 36, 64))
    with pytest.raises(ValueError, match=r"16 patch tokens do not form the grid_size \(3, 5\) given"):
        layer(torch.randn(1, 17, 64), grid_size=(3, 5))
    with pytest.raises(ValueError, match="pooling='official' takes the first N - 1 of N tokens as a square grid"):
        ContractBroadcastAttention(64, 4)(torch.randn(1, 16, 64))
    with pytest.raises(ValueError, match="pooling must be 'official' or 'patch'"):
        ContractBroadcastAttention(64, 4, pooling="cls")


def test_block_matches_the_reference():
    attn = randomize_all_(RefPreNorm(64, RefCBSA(64, 4)), seed=2)
    ff = randomize_all_(RefPreNorm(64, RefISTA(64)), seed=3)
    ours = ContractBroadcastBlock(64, 4, grid_size=(4, 4))
    sd = {f"norm1.{k}": v for k, v in attn.norm.state_dict().items()}
    sd |= {f"attn.{k}": v for k, v in _cbsa_sd(attn.fn).items()}
    sd |= {f"norm2.{k}": v for k, v in ff.norm.state_dict().items()} | {"ista.weight": ff.fn.weight}
    ours.load_state_dict(sd)
    x = torch.randn(2, 17, 64)
    assert _err(ours(x), ff(attn(x) + x)) < 1e-5


# ----------------------------------------------------------------------------- the model
def _pair(seed: int = 0):
    ours = randomize_all_(whitebox.create_model("cbt_tiny_patch16", **SHAPE), seed).eval()
    ref = RefCBT(32, 8, 64, 2, 4, num_classes=1000)
    ref.load_state_dict(cbt_to_official(ours))  # strict: the authors' key set exactly
    return ours, ref.eval()


def test_model_matches_the_reference():
    ours, ref = _pair()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert _err(ours(x), ref(x)) < 1e-4
        assert _err(ours.forward_features(x), ref.tokens(x)) < 1e-4


def test_gradients_match_the_reference():
    ours, ref = _pair(seed=4)
    ours.train(), ref.train()
    x = torch.randn(4, 3, 32, 32)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(xa).logsumexp(-1).sum().backward()
    ref(xb).logsumexp(-1).sum().backward()
    assert _err(xa.grad, xb.grad) < 1e-4 * max(1.0, xb.grad.abs().max().item())
    theirs = {k: p.grad for k, p in ref.named_parameters()}
    mine = cbt_to_official(ours, {k: p.grad for k, p in ours.named_parameters()})
    assert mine.keys() == theirs.keys()
    worst = max(_err(g, theirs[k]) / max(theirs[k].abs().max().item(), 1.0) for k, g in mine.items())
    assert worst < 1e-4


def test_corrected_pooling_model_runs_on_a_rectangular_grid_and_official_refuses_it():
    model = whitebox.create_model("cbt_tiny_patch16", **{**SHAPE, "img_size": (32, 48)}, pooling="patch").eval()
    assert model.blocks[0].attn.grid_size == (4, 6) and model(torch.randn(1, 3, 32, 48)).shape == (1, 1000)
    with pytest.raises(ValueError, match="pooling='official' needs a square patch grid, got 4x6"):
        whitebox.create_model("cbt_tiny_patch16", **{**SHAPE, "img_size": (32, 48)})


# ----------------------------------------------------------------------------- the authors' files
def _official_bytes(tmp_path, seed: int = 5, **shape) -> tuple[bytes, RefCBT]:
    """A file as their main.py saves it: DataParallel state dict under 'state_dict', plus training state."""
    s = dict(img_size=32, patch=8, dim=64, depth=2, heads=4) | shape
    ref = randomize_all_(RefCBT(s["img_size"], s["patch"], s["dim"], s["depth"], s["heads"], 1000), seed).eval()
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    lion_state = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 2e-4, "params": [0]}]}
    scheduler = {"base_lrs": [2e-4], "last_epoch": 150, "_step_count": 151, "lr_lambdas": [None], "verbose": True}
    obj = {"epoch": 150, "arch": "Ours_tiny", "state_dict": state, "best_acc1": torch.tensor(63.2)}
    obj |= {"optimizer": lion_state, "scheduler": scheduler}
    path = tmp_path / "cbt_tiny_best.pth.tar"
    torch.save(obj, path)
    return path.read_bytes(), ref


def _agrees(model, ref, size: int = 32) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return _err(model.eval()(x), ref(x))


@pytest.mark.parametrize("route", ["file", "checkpoint_path", "timm"])
def test_official_file_loads_through_local_routes(tmp_path, route):
    data, ref = _official_bytes(tmp_path)
    path = tmp_path / "copy.pth.tar"
    path.write_bytes(data)
    name = "cbt_tiny_patch16"
    if route == "file":
        model = whitebox.create_model(name, **SHAPE, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    elif route == "checkpoint_path":
        model = whitebox.create_model(name, **SHAPE, checkpoint_path=path)
    else:
        model = timm.create_model(f"{name}.in1k", **SHAPE, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert _agrees(model, ref) < 1e-4


@pytest.fixture
def drive(tmp_path, monkeypatch):
    """A fake Google Drive (HTTPS through a local proxy) and every cache in tmp_path."""
    monkeypatch.setenv("WHITEBOX_HOME", str(tmp_path / "whitebox"))
    monkeypatch.delenv("WHITEBOX_OFFLINE", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with LocalServer() as srv:
        for var in ("HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(var, srv.url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", srv.ca_path)
        yield srv


@pytest.mark.parametrize("mode", ["direct", "form"])
def test_registered_tag_from_a_fake_drive_then_the_cache(tmp_path, drive, mode):
    data, ref = _official_bytes(tmp_path, seed=6)
    file_id = TAGS["cbt_tiny_patch16.in1k"][0]
    drive.drive[file_id] = (data, mode)
    model = whitebox.create_model("cbt_tiny_patch16.in1k", **SHAPE, pretrained=True)
    assert _agrees(model, ref) < 1e-4
    cached = tmp_path / "whitebox" / "checkpoints" / f"gdrive-{file_id}"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    drive.stop()  # from the cache now, through timm as well
    via_timm = timm.create_model("cbt_tiny_patch16.in1k", **SHAPE, pretrained=True)
    assert _agrees(via_timm, ref) < 1e-4


def test_a_drive_overlay_serves_any_size(tmp_path, drive):
    data, ref = _official_bytes(tmp_path, seed=7, patch=16, dim=32, heads=2, img_size=64)
    drive.drive["someFileId"] = (data, "form")
    shape = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    model = whitebox.create_model(
        "cbt_large_patch16", **shape, pretrained=True, pretrained_cfg_overlay=dict(gdrive_id="someFileId")
    )
    assert _agrees(model, ref, size=64) < 1e-4


def test_offline_without_cache_names_the_drive_file(tmp_path, monkeypatch):
    monkeypatch.setenv("WHITEBOX_HOME", str(tmp_path / "whitebox"))
    monkeypatch.setenv("WHITEBOX_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=TAGS["cbt_small_patch16.in1k"][0]):
        whitebox.create_model("cbt_small_patch16.in1k", **SHAPE, pretrained=True)


def test_native_weights_pass_the_filter_unchanged():
    model = whitebox.create_model("cbt_tiny_patch16", **SHAPE)
    sd = model.state_dict()
    out = checkpoint_filter_fn(sd, model)
    assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)


def test_unknown_official_key_is_named():
    sd = dict(RefCBT().state_dict())
    sd["transformer.layers.0.0.fn.qkv.weight"] = torch.zeros(1)
    model = whitebox.create_model("cbt_tiny_patch16", **SHAPE)
    with pytest.raises(ValueError, match=r"official CBT checkpoint has keys .*layers\.0\.0\.fn\.qkv\.weight"):
        checkpoint_filter_fn(sd, model)


def test_official_weights_adapt_to_classes_channels_and_size(tmp_path):
    data, ref = _official_bytes(tmp_path)
    path = tmp_path / "w.pth"
    path.write_bytes(data)
    ten = whitebox.create_model("cbt_tiny_patch16", **SHAPE, num_classes=10, checkpoint_path=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (
            _err(ten.forward_head(ten.forward_features(x), pre_logits=True), ref.mlp_head[0](ref.tokens(x)[:, 0]))
            < 1e-4
        )
    grey = whitebox.create_model("cbt_tiny_patch16", **SHAPE, in_chans=1, checkpoint_path=path).eval()
    g = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert _err(grey(g), ref(g.expand(-1, 3, -1, -1))) < 1e-4
    # a bare file does not record its grid: resampling needs the size it was trained at
    with pytest.raises(ValueError, match="does not record its image size"):
        whitebox.create_model("cbt_tiny_patch16", **{**SHAPE, "img_size": 48}, checkpoint_path=path)
    trained = {"img_size": SHAPE["img_size"], "patch_size": SHAPE["patch_size"]}
    big = whitebox.create_model(
        "cbt_tiny_patch16", **{**SHAPE, "img_size": 48}, checkpoint_path=path, pretrained_model_args=trained
    )
    assert big.pos_embed.shape == (1, 1 + 36, 64) and big(torch.randn(1, 3, 48, 48)).shape == (1, 1000)


# ----------------------------------------------------------------------------- records and sizes
def test_records_of_the_drive_tags():
    assert set(TAGS) <= set(whitebox.list_pretrained())
    for tag, (file_id, top1, gflops, params) in TAGS.items():
        cfg = whitebox.get_pretrained_cfg(tag)
        assert cfg.gdrive_id == file_id and cfg.license == "mit" and cfg.paper_ids == "arXiv:2509.16875"
        assert f"top-1 {top1}" in cfg.notes[0] and f"{gflops} GFLOPs" in cfg.notes[0] and f"{params}M" in cfg.notes[0]
        assert (cfg.interpolation, cfg.crop_pct, cfg.first_conv) == ("bilinear", 0.875, "patch_embed.proj.0.0")


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_parameter_counts_equal_the_published_and_the_authors_class(tag):
    arch = tag.removesuffix(".in1k")
    with torch.device("meta"):
        ours = whitebox.create_model(arch)
        d, depth, heads = ours.embed_dim, len(ours.blocks), ours.blocks[0].attn.num_heads
        ref = RefCBT(224, 16, d, depth, heads, num_classes=1000)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    assert round(count / 1e6, 1) == TAGS[tag][3]
    assert {k: v.shape for k, v in cbt_to_official(ours).items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(patch_size=4), "patch_size must be 8 or 16"),
        (dict(pooling="mean"), "pooling must be 'official' .* or 'patch'"),
        (dict(pool_size=0), r"pool_size must be an integer in \[1, 1024\]"),
        (dict(pool_size=(8, 8, 8)), "pool_size must be an integer or a pair"),
        (dict(lambd=-1.0), r"lambd must be a finite number in \[0.0"),
    ],
)
def test_bad_arguments_are_refused_up_front(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        whitebox.create_model("cbt_tiny_patch16", **{**SHAPE, **kwargs})


def test_pool_size_sets_the_number_of_representatives():
    model = whitebox.create_model("cbt_tiny_patch16", **SHAPE, pool_size=(2, 3))
    assert model.blocks[0].attn.num_representatives == 6 and torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()
