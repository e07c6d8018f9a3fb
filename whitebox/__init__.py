"""whitebox: white-box transformers for vision (CRATE, CRATE-MAE, CRATE-alpha), built the way timm is built.

``import whitebox`` registers every model in timm's registry; ``whitebox.create_model`` and
``timm.create_model`` build the same models with the same weights.
"""

from typing import Any

from .cli import answering_help, quiet_interrupts, running_program

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

if running_program():  # a Ctrl-C while torch loads: one line, not a traceback
    quiet_interrupts()

if not answering_help():
    from registry import create_model, get_pretrained_cfg, is_model, list_models, list_pretrained, model_entrypoint

    from . import layers, models
    from .hub import push_to_hub, save_pretrained
else:  # one of our programs asked for --help only (`python -m whitebox.validate -h`): no torch, no timm

    def __getattr__(name: str) -> Any:
        """Should the program go on after all, its first use of the API imports it as usual."""
        if name not in __all__:
            raise AttributeError(f"module 'whitebox' has no attribute {name!r}")
        import importlib

        import registry

        from . import hub

        importlib.import_module(".models", __name__)  # registers the models
        importlib.import_module(".layers", __name__)
        if name not in globals():  # layers and models are set by their import
            globals()[name] = getattr(hub if name in ("push_to_hub", "save_pretrained") else registry, name)
        return globals()[name]
