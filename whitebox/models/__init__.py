"""Model families; importing this module registers every variant."""

from ._encoder import TokenEncoder
from ._mae import MAEOutput, MAEReconstruction, MaskedAutoencoder
from .cbt import CBT
from .crate import CRATE
from .crate_alpha import CrateAlpha
from .crate_mae import CrateMAE
from .tost import ToST
from .vit_mae import ViTMAE

__all__ = [
    "CBT",
    "CRATE",
    "CrateAlpha",
    "CrateMAE",
    "MAEOutput",
    "MAEReconstruction",
    "MaskedAutoencoder",
    "ToST",
    "TokenEncoder",
    "ViTMAE",
]
