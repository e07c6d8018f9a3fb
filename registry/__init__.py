"""A generic model registry: names -> builders, pretrained records, ``create_model``.

It knows nothing about any model family; families register their entrypoints with
``@register_model`` and describe their weights with ``PretrainedCfg`` records.
"""

from ._builder import build_model_with_cfg, resolve_pretrained_cfg
from ._download import (
    ChecksumError,
    IncompleteDownloadError,
    WeightsUnavailableError,
    download_gdrive,
    download_hf_hub,
    download_url,
    resolve_pretrained_file,
)
from ._factory import create_model
from ._hub import apply_state_dict, load_checkpoint, load_pretrained, model_config, read_model_config
from ._io import UnsafeCheckpointError, load_state_dict_file
from ._pretrained import PretrainedCfg, generate_default_cfgs, split_model_name_tag
from ._registry import (
    UnknownModelError,
    get_pretrained_cfg,
    is_model,
    list_models,
    list_pretrained,
    model_entrypoint,
    register_model,
    register_pretrained_cfg,
)

__all__ = [
    "ChecksumError",
    "IncompleteDownloadError",
    "PretrainedCfg",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "WeightsUnavailableError",
    "apply_state_dict",
    "build_model_with_cfg",
    "create_model",
    "download_gdrive",
    "download_hf_hub",
    "download_url",
    "generate_default_cfgs",
    "get_pretrained_cfg",
    "is_model",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "load_pretrained",
    "load_state_dict_file",
    "model_config",
    "model_entrypoint",
    "read_model_config",
    "register_model",
    "register_pretrained_cfg",
    "resolve_pretrained_cfg",
    "resolve_pretrained_file",
    "split_model_name_tag",
]
