"""A model states its task; the Hub card takes it from the model, not from the architecture's name."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_kwargs

import whitebox
from whitebox.hub import model_card


@pytest.mark.parametrize(
    "name, kwargs, task",
    [
        ("crate_tiny", {}, "image-classification"),
        ("crate_tiny", {"num_classes": 0}, "image-feature-extraction"),
        ("crate_mae_tiny", {}, "image-feature-extraction"),
        ("crate_mae_tiny", {"num_classes": 10}, "image-classification"),  # a fine-tuned MAE has a head
        ("vit_mae_base", {}, "image-feature-extraction"),
        ("crate_alpha_base_patch16", {}, "image-classification"),
    ],
)
def test_model_states_its_task_and_the_card_uses_it(name: str, kwargs: dict, task: str, tmp_path: Path) -> None:
    model = whitebox.create_model(name, **tiny_kwargs(name), **kwargs)
    assert model.task == task
    folder = whitebox.save_pretrained(model, tmp_path / "saved")
    assert f"- {task}\n" in (folder / "README.md").read_text()


def test_a_new_family_names_its_own_task(tmp_path: Path) -> None:
    """Nothing keys on the architecture's name: a model called '*mae*' that says it classifies is a classifier."""
    model = whitebox.create_model("crate_mae_tiny", **tiny_kwargs("crate_mae_tiny"))
    type(model).task = property(lambda self: "image-segmentation")  # a family with another task
    try:
        folder = whitebox.save_pretrained(model, tmp_path / "saved")
        assert "- image-segmentation\n" in (folder / "README.md").read_text()
    finally:
        del type(model).task
    card = model_card({"architecture": "my_mae_like_classifier", "num_classes": 5}, 10)
    assert "- image-classification\n" in card  # no task given: the head decides, not "mae" in the name


def _recipe_checkpoint(tmp_path: Path, name: str) -> Path:
    import torch

    kwargs = dict(tiny_kwargs(name), lambd=0.5)
    model = whitebox.create_model(name, **kwargs)
    path = tmp_path / "checkpoint.pth"
    torch.save(dict(model=model.state_dict(), model_name=name, model_kwargs=kwargs, step=1, args={}), path)
    return path


def test_a_family_states_its_adaptable_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry knows no MAE argument: CrateMAE's class declares mask_ratio / norm_pix_loss itself."""
    from registry._factory import ADAPTABLE_ARGS, adaptable_args
    from whitebox.models import CrateMAE, MaskedAutoencoder

    assert not {"mask_ratio", "norm_pix_loss"} & ADAPTABLE_ARGS
    assert adaptable_args("crate_mae_tiny") - ADAPTABLE_ARGS == MaskedAutoencoder.adaptable_args
    assert adaptable_args("crate_tiny") == adaptable_args("no_such_model") == ADAPTABLE_ARGS
    ckpt = _recipe_checkpoint(tmp_path, "crate_mae_tiny")
    model = whitebox.create_model(checkpoint_path=ckpt, mask_ratio=0.5, norm_pix_loss=True)
    assert model.mask_ratio == 0.5 and model.norm_pix_loss
    with pytest.raises(ValueError, match="lambd=5.0 here"):
        whitebox.create_model(checkpoint_path=ckpt, lambd=5.0)
    monkeypatch.setattr(CrateMAE, "adaptable_args", MaskedAutoencoder.adaptable_args | {"lambd"}, raising=False)
    assert whitebox.create_model(checkpoint_path=ckpt, lambd=5.0).encoder.blocks[0].ista.lambd == 5.0
