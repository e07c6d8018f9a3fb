"""Publishing models: ``save_pretrained`` to a folder, ``push_to_hub`` to a Hugging Face repository.

Both write ``config.json`` (architecture, model arguments, pretrained record), ``model.safetensors``
(the state dict; no pickle) and a ``README.md`` model card, so that
``create_model('local-dir:DIR')`` and ``create_model('hf-hub:org/name')`` rebuild the same model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from registry._hub import CONFIG_NAME, WEIGHTS_NAME, model_config

from ._atomic import atomic_path, atomic_write_text

__all__ = ["model_card", "push_to_hub", "save_pretrained"]

CARD_NAME = "README.md"


def model_card(model: nn.Module, config: dict[str, Any] | None = None, repo_id: str | None = None) -> str:
    """A Hub model card (YAML front matter + markdown) describing the model and its weights."""
    config = config or model_config(model)
    cfg = config["pretrained_cfg"]
    arch = config["architecture"]
    is_mae = "mae" in arch
    lines = ["---", "library_name: whitebox", "tags:", "- whitebox", "- white-box-transformer"]
    lines += ["- masked-image-modeling" if is_mae else "- image-classification"]
    if cfg.get("license"):
        lines.append(f"license: {cfg['license']}")
    lines += ["---", "", f"# {arch}{'.' + cfg['tag'] if cfg.get('tag') else ''}", ""]
    n_params = sum(p.numel() for p in model.parameters())
    lines.append(f"A whitebox `{arch}` model ({n_params / 1e6:.2f}M parameters).")
    if cfg.get("paper"):
        lines += ["", f"Paper: {cfg['paper']}"]
    if cfg.get("origin_url"):
        lines += ["", f"Original weights: {cfg['origin_url']}"]
    if cfg.get("notes"):
        lines += ["", f"Notes: {cfg['notes']}"]
    lines += [
        "",
        "## Model arguments",
        "",
        "```json",
        json.dumps(config["model_args"], indent=2, sort_keys=True),
        "```",
    ]
    size = cfg.get("input_size")
    lines += ["", "## Input", "", f"- size: {tuple(size) if size else None}", f"- mean: {cfg.get('mean')}"]
    lines += [f"- std: {cfg.get('std')}", f"- interpolation: {cfg.get('interpolation')}"]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import whitebox",
        "",
        f"model = whitebox.create_model('hf-hub:{repo_id or 'ORG/NAME'}')",
    ]
    lines += ["```", ""]
    return "\n".join(lines)


def save_pretrained(
    model: nn.Module, save_directory: str | os.PathLike[str], card: bool = True, repo_id: str | None = None
) -> Path:
    """Write ``config.json``, ``model.safetensors`` (and ``README.md``) into ``save_directory``.

    Each file is written atomically; the folder is created when missing. Returns the folder.
    ``repo_id`` only fills in the usage line of the model card.
    ``create_model(f'local-dir:{save_directory}')`` rebuilds the model with these weights.
    """
    from safetensors.torch import save_file

    config = model_config(model)  # fails early, before anything is written, for a model without a record
    folder = Path(save_directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _check_no_shared(tensors)
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    if card:
        atomic_write_text(folder / CARD_NAME, model_card(model, config, repo_id))
    return folder


def _check_no_shared(tensors: dict[str, torch.Tensor]) -> None:
    seen: dict[int, str] = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        if v.numel() and ptr in seen:
            raise ValueError(f"tensors {seen[ptr]!r} and {k!r} share memory; safetensors cannot store tied weights")
        seen[ptr] = k


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Add whitebox model",
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Create (if needed) the Hub model repository ``repo_id`` and upload the ``save_pretrained`` files.

    The Hub address is ``HF_ENDPOINT`` (read now) or huggingface.co; the token is ``token`` or the
    one ``hf auth login`` stored. Returns ``huggingface_hub``'s commit information.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, tmp, repo_id=repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        # one commit with the three files (the Hub stores the weights through LFS / Xet as it decides)
        operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in sorted(folder.iterdir())]
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )
