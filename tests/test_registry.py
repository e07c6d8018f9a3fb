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
    assert model.pretrained_cfg["architecture"] == "crate_tiny" and model.default_cfg is model.pretrained_cfg
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
    def __init__(self, width: int = 4, num_classes: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(width, num_classes)


@contextlib.contextmanager
def toy_family(name: str, default_cfgs: dict | None = None):
    """Register a model family that knows nothing of CRATE; remove it from timm's registry afterwards."""
    module_name = f"{name}_family"
    mod = types.ModuleType(module_name)
    if default_cfgs is not None:
        mod.default_cfgs = generate_default_cfgs(default_cfgs)
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

        registry._records._OURS.discard(name)
        del sys.modules[module_name]
        timm_registry._clear_model_entries(name)
        timm_registry._model_entrypoints.pop(name, None)


def test_registry_is_generic_and_lives_in_timm():
    """A family that knows nothing of CRATE registers and builds through the same machinery, seen by timm."""
    import timm

    cfgs = {"toy_net.v1": PretrainedCfg(file="/nonexistent.safetensors", model_args=dict(width=8), license="mit")}
    with toy_family("toy_net", cfgs):
        assert registry.is_model("toy_net") and "toy_net.v1" in registry.list_pretrained()
        assert timm.list_pretrained("toy_net*") == ["toy_net.v1"]
        cfg = registry.get_pretrained_cfg("toy_net.v1")
        assert cfg.architecture == "toy_net" and cfg.tag == "v1" and cfg.license == "mit"
        assert isinstance(timm.get_pretrained_cfg("toy_net.v1"), timm.models.PretrainedCfg)
        assert registry.create_model("toy_net", width=3).fc.in_features == 3
        assert registry.create_model("toy_net").fc.in_features == 4  # the class default
        assert registry.create_model("toy_net.v1").fc.in_features == 8  # a named tag brings its architecture
        assert timm.create_model("toy_net.v1").fc.in_features == 8
        with pytest.raises(ValueError, match="no pretrained tag 'v2'.*toy_net.v1"):
            registry.create_model("toy_net.v2")
        for create in (registry.create_model, timm.create_model):
            with pytest.raises(FileNotFoundError, match="nonexistent"):
                create("toy_net.v1", pretrained=True)
        with pytest.raises(TypeError, match=r"toy_net got unknown keyword argument\(s\) \['depth'\]; allowed: "):
            registry.create_model("toy_net", depth=2)


def test_a_name_timm_already_has_is_an_error_at_registration():
    def resnet18(pretrained: bool = False, **kwargs):
        return Toy()

    with pytest.raises(ValueError, match="'resnet18' of .* is already registered in timm by timm.models.resnet"):
        registry.register_model(resnet18)
    import timm

    assert type(timm.create_model("resnet18")).__name__ == "ResNet"  # timm's model is untouched


def test_timm_names_are_not_whitebox_names():
    with pytest.raises(registry.UnknownModelError, match="it is a timm model: use timm.create_model"):
        whitebox.create_model("resnet18")


def test_overlay_with_weights_needs_pretrained(tmp_path):
    with pytest.raises(ValueError, match=r"names weights \(file\) but pretrained is False"):
        whitebox.create_model("crate_tiny", pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth")))


def test_checkpoint_path_loads_native_weights(tmp_path):
    from safetensors.torch import save_file

    src = whitebox.create_model("crate_tiny", embed_dim=32, depth=1, num_heads=2, num_classes=3)
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    dst = whitebox.create_model("crate_tiny", embed_dim=32, depth=1, num_heads=2, num_classes=3, checkpoint_path=path)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(dst(x), src(x))
