"""whitebox: white-box transformers for vision (CRATE, CRATE-MAE, CRATE-alpha), built the way timm is built.

``import whitebox`` registers every model in timm's registry; ``whitebox.create_model`` and
``timm.create_model`` build the same models with the same weights.
"""

from registry import create_model, get_pretrained_cfg, is_model, list_models, list_pretrained, model_entrypoint

from . import layers, models
from .hub import push_to_hub, save_pretrained

__version__ = "0.2.0"

__all__ = [
    "__version__",
    "create_model",
    "get_pretrained_cfg",
    "is_model",
    "layers",
    "list_models",
    "list_pretrained",
    "model_entrypoint",
    "models",
    "push_to_hub",
    "save_pretrained",
]
