"""Official-layout converters of every family: the authors' checkpoint keys -> ours.

A leaf module (it imports only the key-renaming helpers), so that a family may read another family's
official files (a CRATE classifier from a CRATE-MAE encoder) without the model files importing each
other. Each family's ``checkpoint_filter_fn`` (in its model file) decides when to call these.
"""

from __future__ import annotations

import re

import torch

from ._adapt import MAE_UNUSED, prenorm_block, rename_all

__all__ = [
    "cbsa_repo_to_native",
    "crate_alpha_official_to_native",
    "crate_mae_official_to_native",
    "crate_official_to_native",
    "is_official_crate",
    "is_official_crate_alpha",
    "is_official_crate_mae",
    "vit_mae_official_to_native",
]

# the keys outside the blocks in lucidrains' vit-pytorch ``ViT``, which the CRATE, CRATE-alpha and CBSA
# repositories keep: learned positions, class token, ``mlp_head = Sequential(LayerNorm, Linear)``
_VIT_PYTORCH_KEYS = {
    "pos_embedding": "pos_embed",
    "cls_token": "cls_token",
    "mlp_head.0.weight": "fc_norm.weight",
    "mlp_head.0.bias": "fc_norm.bias",
    "mlp_head.1.weight": "head.weight",
    "mlp_head.1.bias": "head.bias",
}


def is_official_crate(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("transformer.layers.", "to_patch_embedding.")) for k in state_dict)


def crate_official_to_native(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official supervised CRATE keys (``model/crate.py``: ``to_patch_embedding.{1,2,3}``, ``pos_embedding``,
    ``transformer.layers.i.{0,1}`` with ``PreNorm``, ``mlp_head.{0,1}``) -> ``CRATE`` keys."""
    fixed = _VIT_PYTORCH_KEYS
    embed = {"1": "patch_embed.norm_in", "2": "patch_embed.proj", "3": "patch_embed.norm_out"}

    def rename(k: str) -> str | None:
        if k in fixed:
            return fixed[k]
        if m := re.fullmatch(r"to_patch_embedding\.([123])\.(weight|bias)", k):
            return f"{embed[m.group(1)]}.{m.group(2)}"
        if m := re.fullmatch(r"transformer\.layers\.(\d+)\.(.+)", k):
            leaf = prenorm_block(m.group(2), ("attn", "ista"))
            return f"blocks.{m.group(1)}.{leaf}" if leaf else None
        return None

    return rename_all(state_dict, rename, "official CRATE")


def cbsa_repo_to_native(
    state_dict: dict[str, torch.Tensor], attn_keys: dict[str, str], what: str
) -> dict[str, torch.Tensor]:
    """The CBSA repository's layout (``models.py``: ``to_patch_embedding.proj``, ``pos_embedding``,
    ``cls_token``, ``transformer.layers.i.{0,1}`` with ``PreNorm`` around the attention / ``ISTA``,
    ``mlp_head.{0,1}``) -> ours, shared by CBT and the white-box ToST written there.

    ``attn_keys`` maps the attention's own leaf names (after ``transformer.layers.i.0.fn.``) to ours
    (after ``blocks.i.``); an attention leaf not in it is dropped. ``what`` names the layout in errors
    (``rename_all``).
    """
    fixed = _VIT_PYTORCH_KEYS

    def rename(k: str) -> str | None:
        if k in fixed:
            return fixed[k]
        if m := re.fullmatch(r"to_patch_embedding\.(proj\.\d+\.[01]\.\w+)", k):
            return f"patch_embed.{m.group(1)}"
        if m := re.fullmatch(r"transformer\.layers\.(\d+)\.([01])\.norm\.(weight|bias)", k):
            return f"blocks.{m.group(1)}.norm{int(m.group(2)) + 1}.{m.group(3)}"
        if (m := re.fullmatch(r"transformer\.layers\.(\d+)\.0\.fn\.(.+)", k)) and m.group(2) in attn_keys:
            return f"blocks.{m.group(1)}.{attn_keys[m.group(2)]}"
        if m := re.fullmatch(r"transformer\.layers\.(\d+)\.1\.fn\.weight", k):
            return f"blocks.{m.group(1)}.ista.weight"
        return None

    return rename_all(state_dict, rename, what)


def is_official_crate_mae(state_dict: dict[str, torch.Tensor]) -> bool:
    return "blocks.0.layers.0.0.fn.qkv.weight" in state_dict


def crate_mae_official_to_native(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official CRATE-MAE keys (``model/crate_ae/crate_ae.py``: ``MaskedAutoencoderViT`` with ``PreNorm``
    blocks ``blocks.i.layers.0.{0,1}``, attention then the ISTA dictionary in the encoder, the linear
    step then attention in the decoder) -> ``CrateMAE`` keys; unused tensors are dropped."""

    def rename(k: str) -> str | None:
        if k in MAE_UNUSED:
            return ""
        if k in ("mask_token", "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"):
            return k
        if k in ("cls_token", "norm.weight", "norm.bias") or k.startswith("patch_embed."):
            return f"encoder.{k}"
        m = re.fullmatch(r"(blocks|decoder_blocks)\.(\d+)\.layers\.0\.(.+)", k)
        if m is None:
            return None
        decoder = m.group(1) == "decoder_blocks"
        leaf = prenorm_block(m.group(3), ("linear", "attn") if decoder else ("attn", "ista"))
        if leaf is None:
            return None
        return f"decoder_blocks.{m.group(2)}.{leaf}" if decoder else f"encoder.blocks.{m.group(2)}.{leaf}"

    return rename_all(state_dict, rename, "official CRATE-MAE")


def is_official_crate_alpha(state_dict: dict[str, torch.Tensor]) -> bool:
    return "conv1.weight" in state_dict or any(k.endswith(".fn.D") for k in state_dict)


def crate_alpha_official_to_native(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official keys (``torch_inference/model/crate_alpha.py``: ``conv1``, ``pos_embedding``, ``cls_token``,
    ``transformer.layers.i.{0,1}`` with ``PreNorm``, ``mlp_head.{0,1}``) -> ``CrateAlpha`` keys."""
    fixed = {"conv1.weight": "patch_embed.proj.weight", "conv1.bias": "patch_embed.proj.bias", **_VIT_PYTORCH_KEYS}

    def rename(k: str) -> str | None:
        if k in fixed:
            return fixed[k]
        if m := re.fullmatch(r"transformer\.layers\.(\d+)\.1\.fn\.(D1?)", k):  # the two dictionaries, as named
            return f"blocks.{m.group(1)}.ista.{m.group(2)}"
        if m := re.fullmatch(r"transformer\.layers\.(\d+)\.(.+)", k):
            leaf = prenorm_block(m.group(2), ("attn", "ista"))
            return f"blocks.{m.group(1)}.{leaf}" if leaf and not leaf.startswith("ista.") else None
        return None

    return rename_all(state_dict, rename, "official CRATE-alpha")


def vit_mae_official_to_native(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """facebookresearch/mae-style ViT keys (as the CRATE repo's ``mae_vit_*`` builds them) -> ``ViTMAE`` keys."""

    def rename(k: str) -> str | None:
        if k in MAE_UNUSED:
            return ""
        if k == "mask_token" or k.startswith(("decoder_blocks.", "decoder_norm.", "decoder_pred.")):
            return k
        if k.startswith(("patch_embed.", "blocks.", "norm.")) or k == "cls_token":
            return f"encoder.{k}"
        return None

    return rename_all(state_dict, rename, "official MAE")
