"""timm's model contract, held by every whitebox model as timm itself builds it (``timm.create_model``).

Supervised models: complete records, forward, backward into every parameter, the backbone interface
(``num_features``, ``head_hidden_size``, ``forward_head(pre_logits=True)``, ``reset_classifier``,
``global_pool=''``), ``features_only`` with its record, and FX tracing forward and backward through
torchvision's feature extractor. Masked autoencoders keep their ``MAEOutput`` forward and answer the
backbone interface through their encoder.
"""

from __future__ import annotations

import pytest
import timm
import torch

import whitebox
from whitebox.models import MAEOutput, MaskedAutoencoder

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4)
ALL = whitebox.list_models()
SUPERVISED = [n for n in ALL if not isinstance(whitebox.create_model(n, **{**SMALL, "depth": 1}), MaskedAutoencoder)]
X = torch.randn(2, 3, 32, 32)


def _small(name: str, **kwargs) -> torch.nn.Module:
    extra = dict(decoder_depth=1, decoder_num_heads=4) if name.startswith("vit_mae") else {}
    return timm.create_model(name, **{**SMALL, **extra, **kwargs})


def test_supervised_models_are_known():
    assert {"crate_tiny", "crate_small", "crate_base", "crate_large"} <= set(SUPERVISED)
    assert {"crate_alpha_base_patch16", "crate_alpha_large_patch14"} <= set(SUPERVISED)
    assert {"tost_cab_tiny_12_p16", "tost_cab_large_24_p8", "cbt_tiny_patch16", "cbt_large_patch16"} <= set(SUPERVISED)
    assert {"tost_ista_tiny_patch16", "tost_ista_small_patch16"} <= set(SUPERVISED)


# per family: a graph node inside the second block (training graph) and inside the third (eval graph), and the
# tokens a block sees (ToST's TSSA layers run on the patch tokens; its class token enters after them)
FX_NODES = {
    "tost_ista_": ("blocks.1.ista.relu", "blocks.2.attn.softmax", 17),
    "tost_": ("blocks.1.attn.softmax", "blocks.2.mlp.fc2", 16),
    "cbt_": ("blocks.1.ista.relu", "blocks.2.attn.adaptive_avg_pool2d", 17),
    "crate_": ("blocks.1.ista.relu", "blocks.2.attn.proj", 17),
}


def _fx_nodes(name: str) -> tuple[str, str, int]:
    return next(v for k, v in FX_NODES.items() if name.startswith(k))


@pytest.mark.parametrize("name", timm.list_models([f"{n}*" for n in ALL], include_tags=True))
def test_every_record_is_complete_and_names_real_layers(name):
    model = timm.create_model(name, **SMALL)
    cfg, state = model.pretrained_cfg, model.state_dict()
    assert cfg["architecture"] == timm.models.get_arch_name(name)
    assert len(cfg["input_size"]) == 3 and len(cfg["mean"]) == len(cfg["std"]) == 3
    assert isinstance(cfg["fixed_input_size"], bool)
    assert cfg["first_conv"] + ".weight" in state
    assert cfg["classifier"] and cfg["num_classes"] >= 0
    if cfg["num_classes"]:
        assert cfg["classifier"] + ".weight" in state
    assert whitebox.get_pretrained_cfg(name).first_conv == cfg["first_conv"]  # the record timm holds


@pytest.mark.parametrize("name", SUPERVISED)
def test_forward_backward_reach_every_parameter(name):
    model = _small(name, num_classes=42).train()
    out = model(X)
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    out.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", SUPERVISED)
def test_backbone_interface(name):
    model = _small(name).eval()
    assert model.num_classes == 1000 and model.num_features == model.head_hidden_size == 64
    feats = model.forward_features(X)
    assert feats.shape == (2, 1 + 16, model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(X).shape == (2, model.head_hidden_size)
    torch.testing.assert_close(model(X), model.forward_head(feats, pre_logits=True))
    model.reset_classifier(0, "")
    assert model(X).shape == feats.shape  # no pooling: the tokens
    headless = _small(name, num_classes=0, global_pool="").eval()
    assert headless(X).shape == feats.shape


@pytest.mark.parametrize("name", SUPERVISED)
def test_features_only_carries_its_record(name):
    model = _small(name, features_only=True, out_indices=(0, 2)).eval()
    assert model.default_cfg is model.pretrained_cfg
    assert model.pretrained_cfg["first_conv"] == whitebox.get_pretrained_cfg(name).first_conv
    assert model.pretrained_cfg["first_conv"].startswith("patch_embed.proj")
    assert "num_classes" not in model.pretrained_cfg and "classifier" not in model.pretrained_cfg
    assert [f.shape for f in model(X)] == [(2, 64, 4, 4)] * 2
    assert model.feature_info.channels() == [64, 64] and model.feature_info.reduction() == [8, 8]


@pytest.mark.parametrize("name", SUPERVISED)
def test_fx_feature_extraction_forward_and_backward(name):
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = _small(name).train()
    train_nodes, eval_nodes = get_graph_node_names(model)
    train_node, eval_node, tokens = _fx_nodes(name)
    assert train_node in train_nodes and eval_node in eval_nodes
    extractor = create_feature_extractor(
        model, train_return_nodes=["blocks.1", train_nodes[-1]], eval_return_nodes=["blocks.1", eval_nodes[-1]]
    )
    out = extractor(X)
    assert out["blocks.1"].shape == (2, tokens, 64) and out[train_nodes[-1]].shape == (2, 1000)
    out[train_nodes[-1]].mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    extractor.eval()
    with torch.no_grad():
        torch.testing.assert_close(extractor(X)[eval_nodes[-1]], model(X))
        _, inter = model.forward_intermediates(X, indices=[1], output_fmt="NLC")
        torch.testing.assert_close(extractor(X)["blocks.1"][:, tokens - 16 :], inter[0])


@pytest.mark.parametrize("name", [n for n in ALL if n not in SUPERVISED])
def test_masked_autoencoders_keep_their_forward_and_answer_as_backbones(name):
    model = _small(name, num_classes=5).eval()
    out = model(X)
    assert isinstance(out, MAEOutput) and out.pred.shape == (2, 16, 8 * 8 * 3)
    assert model.num_features == model.head_hidden_size == 64 and model.num_classes == 5
    feats = model.forward_features(X)
    assert feats.shape == (2, 17, 64)
    assert model.forward_head(feats).shape == (2, 5)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model.forward_head(feats).shape == (2, 64)
    assert model.pretrained_cfg["classifier"] == "encoder.head"
    features = _small(name, features_only=True, out_indices=(1,))
    assert [f.shape for f in features(X)] == [(2, 64, 4, 4)]
