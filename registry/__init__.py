"""A generic model registry on timm's: records, sources, safe loading, ``create_model``.

It knows nothing about any model family. Families describe their weights in a module-level
``default_cfgs`` (``generate_default_cfgs``), register entrypoints with ``register_model`` and
build with ``build_model_with_cfg``; timm lists, resolves and builds them like its own. What
this package adds to timm: Google Drive sources, sha256 pinning with a verified atomic cache,
offline errors that say how to supply a file, reading weights without running code, per-tag
architecture arguments and self-describing training checkpoints.
"""

from ._factory import build_model_with_cfg, checkpoint_model, create_model, read_model_config
from ._fetch import (
    ChecksumError,
    DriveFileUnavailableError,
    IncompleteDownloadError,
    WeightsUnavailableError,
    cache_root,
    check_hub_repo,
    check_relative_file,
    check_url,
    download_gdrive,
    download_hf_hub,
    download_url,
    resolve_pretrained_file,
    sha256_file,
)
from ._load import (
    CheckpointFormatError,
    CheckpointIsAFolderError,
    HeadAdaptedWarning,
    UnsafeCheckpointError,
    apply_state_dict,
    load_checkpoint,
    load_state_dict,
    read_checkpoint,
    read_state_dict,
    unwrap_state_dict,
)
from ._records import (
    PretrainedCfg,
    UnknownModelError,
    generate_default_cfgs,
    get_pretrained_cfg,
    is_model,
    list_models,
    list_pretrained,
    model_entrypoint,
    register_model,
    resolve_pretrained_cfg,
)
