"""Publishing models: ``save_pretrained`` to a folder, ``push_to_hub`` to a Hugging Face repository.

The files are timm's (``timm.models.save_for_hf``): ``config.json`` (architecture, model arguments,
pretrained record) and ``model.safetensors`` (no pickle), plus a ``README.md`` model card, so that
``create_model('local-dir:DIR')`` / ``create_model('hf-hub:org/name')`` (whitebox's or timm's)
rebuild the same model, and whitebox reads what timm's ``save_for_hf`` / ``push_to_hf_hub`` write.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import timm.models
from torch import nn

from .io import fsync_dir

__all__ = ["model_card", "push_to_hub", "save_pretrained"]


def model_card(config: dict[str, Any], num_params: int, repo_id: str | None = None, task: str | None = None) -> str:
    """A Hub model card (YAML front matter + markdown) for a saved ``config.json``.

    ``task`` is the model's own Hub pipeline tag (``model.task``); without it, a model with a
    classifier (``num_classes`` > 0) is ``image-classification``, else ``image-feature-extraction``.
    """
    cfg, arch = config.get("pretrained_cfg", {}), config["architecture"]
    if task is None:
        classes = config.get("num_classes", cfg.get("num_classes", 0))
        task = "image-classification" if classes else "image-feature-extraction"
    front = ["---", "library_name: timm", "tags:", "- whitebox", "- white-box-transformer", f"- {task}"]
    front += ([f"license: {cfg['license']}"] if cfg.get("license") else []) + ["---", ""]
    lines = [f"# {arch}{'.' + cfg['tag'] if cfg.get('tag') else ''}", ""]
    lines.append(f"A whitebox `{arch}` model ({num_params / 1e6:.2f}M parameters); timm reads it too.")
    for key, label in (("paper_name", "Paper"), ("paper_ids", "Paper ids"), ("origin_url", "Original weights")):
        if cfg.get(key):
            lines += ["", f"{label}: {cfg[key]}"]
    notes = cfg.get("notes")
    if notes:
        lines += ["", "Notes: " + (" ".join(notes) if isinstance(notes, (list, tuple)) else str(notes))]
    lines += ["", "## Model arguments", "", "```json", json.dumps(config.get("model_args", {}), indent=2), "```"]
    lines += ["", "## Input", ""] + [f"- {k}: {cfg.get(k)}" for k in ("input_size", "mean", "std", "interpolation")]
    name = repo_id or "ORG/NAME"
    lines += ["", "## Usage", "", "```python", "import whitebox", "", f"model = whitebox.create_model('hf-hub:{name}')"]
    lines += ["# or, with timm after `import whitebox`:", f"# timm.create_model('hf-hub:{name}', pretrained=True)"]
    return "\n".join(front + lines + ["```", ""])


def save_pretrained(
    model: nn.Module, save_directory: str | os.PathLike[str], card: bool = True, repo_id: str | None = None
) -> Path:
    """Write ``config.json``, ``model.safetensors`` (and ``README.md``) into ``save_directory``.

    The files are written into a temporary folder beside it and each is renamed into place, so a
    crash leaves the old file or the new one, never half of one. ``repo_id`` fills in the card's usage.
    """
    if not getattr(model, "pretrained_cfg", {}).get("architecture"):
        raise ValueError(
            f"{type(model).__name__} was not built by create_model (it has no pretrained_cfg naming its "
            "architecture); build it with create_model(...) to save it"
        )
    folder = Path(save_directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".saving-") as tmp:
        timm.models.save_for_hf(model, tmp, safe_serialization=True)
        if card:
            config = json.loads((Path(tmp) / "config.json").read_text(encoding="utf-8"))
            num_params = sum(p.numel() for p in model.parameters())
            task = getattr(model, "task", None)
            card_text = model_card(config, num_params, repo_id, task=task)
            (Path(tmp) / "README.md").write_text(card_text, encoding="utf-8")
        for path in sorted(Path(tmp).iterdir()):
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(path, folder / path.name)
    fsync_dir(folder)
    return folder


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Add whitebox model",
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Create (if needed) the Hub model repository ``repo_id`` and upload the ``save_pretrained`` files in one commit.

    The Hub address is ``HF_ENDPOINT`` (read now) or huggingface.co; the token is ``token`` or the
    one ``hf auth login`` stored. Returns ``huggingface_hub``'s commit information.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, tmp, repo_id=repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in sorted(folder.iterdir())]
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )
