"""ToST: TSSA (and its causal variant), the stem, Fourier positions, LayerScale blocks, class attention and the
whole model against plain references of the authors' code; their key layout through every local route and a
URL; argument checks and sizes."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
from _servers import LocalServer
from reference_families import (
    RefBaselineTSSA,
    RefCausalTSSA,
    RefCBT,
    RefClassAttentionBlock,
    RefConvStem,
    RefFourier,
    RefToST,
    RefToSTBlock,
    RefTSSA,
    randomize_all_,
    tost_to_official,
)

import whitebox
from whitebox.layers import CausalTokenStatisticsAttention, ConvStemPatchEmbed, TokenStatisticsAttention
from whitebox.models.tost import ClassAttentionBlock, FourierPosEmbed, ToSTBlock, checkpoint_filter_fn

SHAPE = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _tssa_sd(ref: RefTSSA) -> dict:
    sd = ref.state_dict()
    return {
        "qkv.weight": sd["qkv.weight"],
        "qkv.bias": sd["qkv.bias"],
        "temperature": sd["temp"],
        "proj.weight": sd["to_out.0.weight"],
        "proj.bias": sd["to_out.0.bias"],
    }


# ----------------------------------------------------------------------------- layers
def test_tssa_matches_the_reference_and_its_memberships_are_a_softmax_over_heads():
    ref = randomize_all_(RefTSSA(64, 4), seed=1)
    ours = TokenStatisticsAttention(64, 4, qkv_bias=True)
    ours.load_state_dict(_tssa_sd(ref))
    x = torch.randn(2, 50, 64)
    out, pi = ours(x, return_membership=True)
    assert _err(out, ref(x)) < 1e-5
    assert pi.shape == (2, 4, 50) and _err(pi, ref.membership(x)[1]) < 1e-6
    torch.testing.assert_close(pi.sum(dim=1), torch.ones(2, 50))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(xa).square().sum().backward()
    ref(xb).square().sum().backward()
    assert _err(xa.grad, xb.grad) < 1e-4
    assert _err(ours.temperature.grad, ref.temp.grad) < 1e-4 * max(1.0, ref.temp.grad.abs().max().item())


def test_tssa_is_linear_in_tokens_and_forms_no_token_by_token_matrix():
    """No intermediate of N x N elements: the largest tensor saved for backward grows with N, not N^2."""
    layer = TokenStatisticsAttention(32, 4)
    sizes = []
    for n in (64, 256):
        x = torch.randn(1, n, 32, requires_grad=True)
        biggest = []

        def pack(t, biggest=biggest):
            biggest.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x).sum()
        sizes.append(max(biggest))
    assert sizes[1] == 4 * sizes[0]  # 4x the tokens, 4x the largest saved tensor


def test_causal_tssa_matches_the_reference_and_is_causal():
    ref = randomize_all_(RefCausalTSSA(64, 4, block_size=32), seed=2)
    with torch.no_grad():
        ref.denom_bias.copy_(0.3 * torch.randn(4, 32, 1))
    ours = CausalTokenStatisticsAttention(64, 4, max_len=32)
    sd = ref.state_dict()
    ours.load_state_dict(
        {
            "qkv.weight": sd["c_attn.weight"],
            "qkv.bias": sd["c_attn.bias"],
            "proj.weight": sd["c_proj.weight"],
            "proj.bias": sd["c_proj.bias"],
            "temperature": sd["temp"],
            "position_bias": sd["denom_bias"],
        }
    )
    x = torch.randn(2, 20, 64)
    out, pi = ours(x, return_membership=True)
    assert _err(out, ref(x)) < 1e-5 and pi.shape == (2, 4, 20)
    changed = x.clone()
    changed[:, 12:] = torch.randn(2, 8, 64)  # the future of token 11
    torch.testing.assert_close(ours(changed)[:, :12], out[:, :12])
    assert _err(ours(changed)[:, 12:], out[:, 12:]) > 1e-3
    with pytest.raises(ValueError, match="sequence length 33 exceeds max_len 32"):
        ours(torch.randn(1, 33, 64))


def test_tssa_refuses_a_width_its_heads_do_not_divide():
    with pytest.raises(ValueError, match=r"dim \(30\) must be divisible by num_heads \(4\)"):
        TokenStatisticsAttention(30, 4)


@pytest.mark.parametrize("patch", [8, 16])
def test_stem_matches_the_reference_in_eval_and_training(patch):
    ref = randomize_all_(RefConvStem(patch, 64), seed=3)
    ours = ConvStemPatchEmbed(64, patch, 3, 64)
    ours.load_state_dict(ref.state_dict())  # the same keys: proj.{0,2,4,6}.{0,1}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _err(ours.eval()(x), ref.eval()(x)[0]) < 1e-5
        assert _err(ours.train()(x), ref.train()(x)[0]) < 1e-5  # batch statistics
    assert ours(x).shape == (2, (64 // patch) ** 2, 64)
    with pytest.raises(ValueError, match="patch_size 8 or 16"):
        ConvStemPatchEmbed(48, 12, 3, 64)


def test_fourier_positions_match_the_reference_on_a_rectangular_grid():
    ref = randomize_all_(RefFourier(64), seed=4)
    ours = FourierPosEmbed(64)
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        theirs = ref(2, 3, 5).reshape(2, 64, 15).permute(0, 2, 1)
        mine = ours((3, 5))
    assert mine.shape == (1, 15, 64) and _err(mine[0], theirs[1]) < 1e-5


@pytest.mark.parametrize("eta", [1.0, 1e-5])
def test_layerscale_block_matches_the_reference(eta):
    ref = randomize_all_(RefToSTBlock(64, 4, eta), seed=5)
    with torch.no_grad():
        ref.gamma1.fill_(eta)
        ref.gamma2.mul_(eta)
    ours = ToSTBlock(64, 4, layer_scale_init=eta)
    ours.load_state_dict(tost_to_official_block(ref.state_dict()))
    x = torch.randn(2, 16, 64)
    assert _err(ours(x), ref(x)) < 1e-5
    assert torch.equal(ToSTBlock(64, 4, layer_scale_init=eta).gamma1, torch.full((64,), eta))


def tost_to_official_block(sd: dict) -> dict:
    """The reference block's keys -> ours (the inverse of ``tost_to_official`` for one block)."""
    return {
        k.replace("attn.temp", "attn.temperature").replace("attn.to_out.0.", "attn.proj."): v for k, v in sd.items()
    }


@pytest.mark.parametrize("tokens_norm", [True, False])
def test_class_attention_block_matches_the_reference(tokens_norm):
    ref = randomize_all_(RefClassAttentionBlock(64, 4, 1.0, tokens_norm), seed=6)
    ours = ClassAttentionBlock(64, 4, tokens_norm=tokens_norm)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 17, 64)
    out = ours(x)
    assert _err(out, ref(x)) < 1e-5
    if tokens_norm:  # the authors' block doubles the normalised patch rows; the next block sees that
        normed = ref.norm2(x + ref.gamma1 * ref.attn(ref.norm1(x)))
        torch.testing.assert_close(out[:, 1:], 2 * normed[:, 1:])


# ----------------------------------------------------------------------------- the model
def _pair(seed: int = 0, patch: int = 8, img: int = 32, depth: int = 2):
    ours = whitebox.create_model("tost_cab_tiny_12_p16", **{**SHAPE, "patch_size": patch, "depth": depth})
    ours = randomize_all_(ours, seed).eval()
    ref = RefToST(patch, 64, depth, 4, num_classes=1000)
    ref.load_state_dict(tost_to_official(ours))  # strict: the authors' key set exactly
    return ours, ref.eval()


@pytest.mark.parametrize(("patch", "img"), [(8, 32), (16, 64)])
def test_model_matches_the_reference(patch, img):
    ours, ref = _pair(patch=patch, img=img)
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        assert _err(ours(x), ref(x)) < 1e-4
        assert _err(ours.forward_features(x), ref.forward_features(x)) < 1e-4
        rect = torch.randn(1, 3, img, 2 * img)  # computed positions: other sizes run without resampling
        assert _err(ours(rect), ref(rect)) < 1e-4


def test_gradients_match_the_reference():
    ours, ref = _pair(seed=7)
    ours.train(), ref.train()  # batch-norm statistics from the batch, as in training
    x = torch.randn(4, 3, 32, 32)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(xa).logsumexp(-1).sum().backward()
    ref(xb).logsumexp(-1).sum().backward()
    assert _err(xa.grad, xb.grad) < 1e-4 * max(1.0, xb.grad.abs().max().item())
    theirs = {k: p.grad for k, p in ref.named_parameters()}
    mine = tost_to_official(ours, {k: p.grad for k, p in ours.named_parameters()})
    assert mine.keys() == theirs.keys()
    worst = max(_err(g, theirs[k]) / max(theirs[k].abs().max().item(), 1.0) for k, g in mine.items())
    assert worst < 1e-4


# ----------------------------------------------------------------------------- the authors' layout
def _official_checkpoint(tmp_path, seed: int = 8):
    """A training checkpoint as their main.py writes it: {'model', 'optimizer', 'epoch', 'args', ...}."""
    ref = randomize_all_(RefToST(8, 64, 2, 4, num_classes=1000), seed).eval()
    path = tmp_path / "tost_checkpoint.pth"
    args = argparse.Namespace(model="tost_cab_tiny_12_p16", drop_path=0.0)
    torch.save({"model": ref.state_dict(), "optimizer": {"state": {}}, "epoch": 399, "args": args}, path)
    return path, ref


def _agrees(model, ref, size: int = 32) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return _err(model.eval()(x), ref(x))


def test_official_keys_are_what_their_model_names():
    keys = set(RefToST(8, 64, 2, 4).state_dict())
    assert {"pos_embeder.token_projection.weight", "blocks.0.attn.temp", "blocks.1.attn.to_out.0.bias"} <= keys
    assert {
        "patch_embed.proj.4.1.running_var",
        "cls_attn_blocks.1.gamma2",
        "patch_embed.proj.0.1.num_batches_tracked",
    } <= keys


@pytest.mark.parametrize("route", ["file", "checkpoint_path", "timm", "url"])
def test_official_checkpoint_loads_through_every_route(tmp_path, route, monkeypatch):
    path, ref = _official_checkpoint(tmp_path)
    name = "tost_cab_tiny_12_p16"
    if route == "file":
        model = whitebox.create_model(name, **SHAPE, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    elif route == "checkpoint_path":
        model = whitebox.create_model(name, **SHAPE, checkpoint_path=path)
    elif route == "timm":
        model = timm.create_model(name, **SHAPE, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    else:
        monkeypatch.setenv("WHITEBOX_HOME", str(tmp_path / "home"))
        with LocalServer() as srv:
            srv.files["tost.pth"] = path.read_bytes()
            overlay = dict(url=f"{srv.url}/files/tost.pth")
            model = whitebox.create_model(name, **SHAPE, pretrained=True, pretrained_cfg_overlay=overlay)
    assert _agrees(model, ref) < 1e-4


def test_native_weights_pass_the_filter_unchanged():
    model = whitebox.create_model("tost_cab_tiny_12_p16", **SHAPE)
    sd = model.state_dict()
    out = checkpoint_filter_fn(sd, model)
    assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)


def test_unknown_official_key_is_named():
    sd = dict(RefToST(8, 64, 2, 4).state_dict())
    sd["blocks.0.local_mp.conv1.weight"] = torch.zeros(1)  # XCiT's LPI, which ToST does not have
    model = whitebox.create_model("tost_cab_tiny_12_p16", **SHAPE)
    with pytest.raises(ValueError, match=r"official ToST checkpoint has keys .*blocks\.0\.local_mp\.conv1\.weight"):
        checkpoint_filter_fn(sd, model)


def test_official_weights_adapt_to_classes_and_channels(tmp_path):
    path, ref = _official_checkpoint(tmp_path)
    ten = whitebox.create_model("tost_cab_tiny_12_p16", **SHAPE, num_classes=10, checkpoint_path=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert ten.head.weight.shape == (10, 64)
        assert _err(ten.forward_head(ten.forward_features(x), pre_logits=True), ref.forward_features(x)[:, 0]) < 1e-4
    grey = whitebox.create_model("tost_cab_tiny_12_p16", **SHAPE, in_chans=1, checkpoint_path=path).eval()
    g = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # timm's rule for one channel: the first convolution summed over RGB
        assert _err(grey(g), ref(g.expand(-1, 3, -1, -1))) < 1e-4
    no_pos = whitebox.create_model("tost_cab_tiny_12_p16", **SHAPE, use_pos_embed=False, checkpoint_path=path)
    assert no_pos.pos_embed is None


# ----------------------------------------------------------------------------- names, sizes, arguments
NAMES = [f"tost_cab_{s}_{d}_p{p}" for p in (16, 8) for s, d in [("tiny", 12), ("small", 12)]]
NAMES += [f"tost_cab_{s}_24_p{p}" for p in (16, 8) for s in ("tiny", "small", "medium", "large")]
WIDTHS = {"tiny": (192, 4), "small": (384, 8), "medium": (512, 8), "large": (768, 16)}


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_is_the_authors_architecture(name):
    size, depth, patch = name.split("_")[2], int(name.split("_")[3]), int(name.split("_p")[-1])
    dim, heads = WIDTHS[size]
    with torch.device("meta"):
        ours = whitebox.create_model(name)
        ref = RefToST(patch, dim, depth, heads, num_classes=1000, eta=1.0 if depth == 12 else 1e-5)
    assert tost_to_official(ours).keys() == ref.state_dict().keys()
    assert {k: v.shape for k, v in tost_to_official(ours).items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert ours.blocks[0].gamma1.shape == (dim,) and ours.blocks[0].attn.num_heads == heads
    assert not whitebox.get_pretrained_cfg(name).has_weights  # no published weights


def test_layerscale_and_no_weight_decay():
    deep = whitebox.create_model("tost_cab_tiny_24_p16", **{**SHAPE, "depth": 2})
    shallow = whitebox.create_model("tost_cab_tiny_12_p16", **SHAPE)
    assert torch.all(deep.blocks[0].gamma1 == 1e-5) and torch.all(deep.cls_attn_blocks[0].gamma2 == 1e-5)
    assert torch.all(shallow.blocks[1].gamma2 == 1.0)
    assert shallow.no_weight_decay() == {"cls_token", "blocks.0.attn.temperature", "blocks.1.attn.temperature"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(patch_size=4), "patch_size must be 8 or 16"),
        (dict(global_pool="max"), "global_pool must be 'token', 'avg' or ''"),
        (dict(layer_scale_init=0.0), r"layer_scale_init must be a finite number in \(0.0"),
        (dict(cls_attn_layers=-1), r"cls_attn_layers must be an integer in \[0"),
        (dict(embed_dim=66), r"embed_dim \(66\) must be divisible by num_heads \(4\)"),
    ],
)
def test_bad_arguments_are_refused_up_front(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        whitebox.create_model("tost_cab_tiny_12_p16", **{**SHAPE, **kwargs})


# ----------------------------------------------------------------------------- the fully white-box variant
def _whitebox_to_official(model) -> dict:
    """Our WhiteBoxToST weights under the CBSA authors' names (their ToST baseline)."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("patch_embed.", "to_patch_embedding.").replace("pos_embed", "pos_embedding")
        k = {"fc_norm.weight": "mlp_head.0.weight", "fc_norm.bias": "mlp_head.0.bias"}.get(k, k)
        k = {"head.weight": "mlp_head.1.weight", "head.bias": "mlp_head.1.bias"}.get(k, k)
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            rest = {"attn.temperature": "0.fn.temp", "ista.weight": "1.fn.weight"}.get(rest, rest)
            rest = rest.replace("norm1.", "0.norm.").replace("norm2.", "1.norm.").replace("attn.qkv.", "0.fn.qkv.")
            rest = rest.replace("attn.proj.", "0.fn.to_out.")
            k = f"transformer.layers.{i}.{rest}"
        out[k] = v
    return out


def test_whitebox_tost_matches_the_cbsa_authors_baseline_and_loads_their_layout(tmp_path):
    ours = randomize_all_(whitebox.create_model("tost_ista_tiny_patch16", **SHAPE), seed=10).eval()
    ref = RefCBT(32, 8, 64, 2, 4, num_classes=1000, attn=RefBaselineTSSA)
    ref.load_state_dict(_whitebox_to_official(ours))  # strict: their key set exactly
    ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _err(ours(x), ref(x)) < 1e-4
    path = tmp_path / "baseline.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    loaded = whitebox.create_model("tost_ista_tiny_patch16", **SHAPE, checkpoint_path=path)
    assert _agrees(loaded, ref) < 1e-4
    assert (
        loaded.blocks[0].attn.qkv.bias is None and not whitebox.get_pretrained_cfg("tost_ista_tiny_patch16").has_weights
    )
    assert {"cls_token", "pos_embed", "blocks.1.attn.temperature"} <= loaded.no_weight_decay()


@pytest.mark.parametrize(
    ("name", "dim", "heads"), [("tost_ista_tiny_patch16", 192, 3), ("tost_ista_small_patch16", 384, 6)]
)
def test_whitebox_tost_sizes_are_the_baselines(name, dim, heads):
    with torch.device("meta"):
        ours = whitebox.create_model(name)
        ref = RefCBT(224, 16, dim, 12, heads, num_classes=1000, attn=RefBaselineTSSA)
    assert {k: v.shape for k, v in _whitebox_to_official(ours).items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }


def test_saved_converted_model_round_trips_through_local_dir_and_timm(tmp_path):
    path, ref = _official_checkpoint(tmp_path)
    model = whitebox.create_model("tost_cab_tiny_12_p16", **SHAPE, checkpoint_path=path)
    folder = whitebox.save_pretrained(model, tmp_path / "saved")
    assert _agrees(whitebox.create_model(f"local-dir:{folder}"), ref) < 1e-4
    assert _agrees(timm.create_model(f"local-dir:{folder}", pretrained=True), ref) < 1e-4
