"""The generic registry: names, tags, pretrained records, create_model and the timm bridge."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

import registry
import whitebox
from registry import PretrainedCfg, generate_default_cfgs


def test_whitebox_reexports_the_registry():
    assert whitebox.create_model is registry.create_model
    assert whitebox.list_models is registry.list_models


def test_list_models_wildcards_and_excludes():
    assert whitebox.list_models("crate_mae_*") == [
        "crate_mae_base",
        "crate_mae_large",
        "crate_mae_small",
        "crate_mae_tiny",
    ]
    assert "crate_mae_base" not in whitebox.list_models("crate_*", exclude_filters="*mae*")
    assert set(whitebox.list_models(["vit_*", "*tiny"])) == {
        "vit_mae_base",
        "vit_mae_large",
        "crate_tiny",
        "crate_mae_tiny",
    }
    assert whitebox.list_models("nothing*") == []


def test_unknown_name_lists_the_closest():
    with pytest.raises(ValueError, match=r"unknown model 'crate_mae_bse'.*crate_mae_base"):
        whitebox.create_model("crate_mae_bse")
    with pytest.raises(registry.UnknownModelError):
        registry.model_entrypoint("nope")


def test_is_model_and_entrypoint():
    assert registry.is_model("crate_base") and registry.is_model("crate_base.in1k_whatever")
    assert not registry.is_model("resnet50_whitebox")
    assert registry.model_entrypoint("crate_base").__name__ == "crate_base"


def test_pretrained_without_weights_lists_the_variants_that_have_them():
    with pytest.raises(
        ValueError, match="no pretrained weights are registered for 'crate_tiny'; variants with weights"
    ):
        whitebox.create_model("crate_tiny", pretrained=True)


def test_model_records_its_pretrained_cfg_and_arguments():
    model = whitebox.create_model("crate_tiny", num_classes=3)
    assert model.pretrained_cfg.architecture == "crate_tiny"
    assert model._model_args["num_classes"] == 3 and model._model_args["embed_dim"] == 384


def test_pretrained_cfg_overlay_rejects_unknown_fields():
    with pytest.raises(TypeError, match=r"unknown pretrained_cfg field\(s\) \['weights'\]"):
        whitebox.create_model("crate_tiny", pretrained_cfg_overlay=dict(weights="x"))


def test_timm_create_model_builds_our_models():
    import timm

    model = timm.create_model("crate_base", num_classes=5)
    assert type(model).__name__ == "CRATE" and model.num_classes == 5
    assert "crate_mae_base" in timm.list_models("crate_mae*")


def test_import_whitebox_is_enough_in_a_fresh_interpreter():
    code = (
        "import whitebox; m = whitebox.create_model('crate_mae_tiny', img_size=32, patch_size=8, depth=1); "
        "import timm; t = timm.create_model('crate_tiny', num_classes=2, depth=1); "
        "print(type(m).__name__, t.num_classes)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["CrateMAE", "2"]


class Toy(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(width, num_classes)


@contextlib.contextmanager
def toy_family(name: str, pretrained_cfgs: dict | None = None):
    """Register a model family that knows nothing of CRATE; remove it from both registries afterwards."""
    module_name = f"{name}_family"
    mod = types.ModuleType(module_name)
    if pretrained_cfgs is not None:
        mod.pretrained_cfgs = generate_default_cfgs(pretrained_cfgs)
    sys.modules[module_name] = mod

    def entrypoint(pretrained: bool = False, **kwargs):
        return registry.build_model_with_cfg(Toy, name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module_name
    registry.register_model(entrypoint)
    try:
        yield
    finally:
        from timm.models import _registry as timm_registry

        registry._registry._entrypoints.pop(name)
        registry._registry._pretrained_cfgs.pop(name)
        del sys.modules[module_name]
        timm_registry._clear_model_entries(name)
        timm_registry._model_entrypoints.pop(name, None)


def test_registry_is_generic():
    """A family that knows nothing of CRATE registers and builds through the same machinery."""
    cfgs = {"toy_net.v1": PretrainedCfg(file="/nonexistent.safetensors", model_args=dict(width=8), license="mit")}
    with toy_family("toy_net", cfgs):
        assert registry.is_model("toy_net")
        assert "toy_net.v1" in registry.list_pretrained()
        cfg = registry.get_pretrained_cfg("toy_net.v1")
        assert cfg.architecture == "toy_net" and cfg.tag == "v1" and cfg.license == "mit"
        assert registry.create_model("toy_net", width=3).fc.in_features == 3
        assert registry.create_model("toy_net").fc.in_features == 4  # the class default
        assert registry.create_model("toy_net.v1").fc.in_features == 8  # a named tag brings its architecture
        with pytest.raises(ValueError, match="no pretrained tag 'v2'.*toy_net.v1"):
            registry.create_model("toy_net.v2")
        with pytest.raises(FileNotFoundError, match="nonexistent"):
            registry.create_model("toy_net.v1", pretrained=True)
        # a later record can be added, and made the default
        registry.register_pretrained_cfg("toy_net.v2", PretrainedCfg(file="/other.safetensors"), default=True)
        assert registry.get_pretrained_cfg("toy_net").tag == "v2"
        assert registry.list_pretrained("toy_net*") == ["toy_net.v1", "toy_net.v2"]


def test_checkpoint_path_loads_native_weights(tmp_path):
    from safetensors.torch import save_file

    src = whitebox.create_model("crate_tiny", embed_dim=32, depth=1, num_heads=2, num_classes=3)
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    dst = whitebox.create_model("crate_tiny", embed_dim=32, depth=1, num_heads=2, num_classes=3, checkpoint_path=path)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(dst(x), src(x))


def test_register_pretrained_cfg_replaces_a_weightless_placeholder():
    with toy_family("toy_net2"):
        assert registry.list_pretrained("toy_net2*") == []
        assert registry.list_models("toy_net2*") == ["toy_net2"]
        registry.register_pretrained_cfg("toy_net2.a", PretrainedCfg(url="http://127.0.0.1:9/w.safetensors"))
        assert registry.list_pretrained("toy_net2*") == ["toy_net2.a"]
        assert registry.get_pretrained_cfg("toy_net2").tag == "a"  # the placeholder record is gone
        with pytest.raises(registry.UnknownModelError):
            registry.register_pretrained_cfg("toy_nett.a", PretrainedCfg())
