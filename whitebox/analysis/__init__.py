"""White-box diagnostics: does each layer do the optimisation step it claims to do?

Measures (tokens as rows, ``Z`` (N, d) or (B, N, d)): ``coding_rate``, ``compression``, ``sparsity``,
``l1_norm``. ``layerwise_stats(model, images)`` measures them at every block of a CRATE, CRATE-MAE
or ViT-MAE model. Pictures: ``attention_maps`` (MSSA), ``feature_pca``, ``reconstruction_grid``.
``python -m whitebox.analysis MODEL`` writes all of it to a report folder with an ``index.html``.
Figures need matplotlib and Pillow (imported only when drawing).
"""

from ..cli import answering_help

__all__ = [
    "COLUMNS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LayerwiseStats",
    "attention_figure",
    "attention_maps",
    "coding_rate",
    "compression",
    "default_model_images",
    "feature_pca",
    "l1_norm",
    "layerwise_stats",
    "load_images",
    "normalize_images",
    "pca_figure",
    "pca_rgb",
    "reconstruction_grid",
    "save_png",
    "sparsity",
    "to_uint8",
    "unit_tokens",
    "write_report",
]

if not answering_help():  # `python -m whitebox.analysis --help` answers without torch
    from .attention import attention_figure, attention_maps
    from .figures import reconstruction_grid
    from .images import IMAGENET_MEAN, IMAGENET_STD, load_images, normalize_images, save_png, to_uint8
    from .layerwise import COLUMNS, LayerwiseStats, default_model_images, layerwise_stats
    from .measures import coding_rate, compression, l1_norm, sparsity, unit_tokens
    from .pca import feature_pca, pca_figure, pca_rgb
    from .report import write_report
