"""Moved to ``whitebox.data`` (sources, transforms, the seeded wrapper, the sampler, the loader); this
module keeps the old import path working, including the two private names other modules import."""

from __future__ import annotations

import os

from PIL import Image

from whitebox.data import *  # noqa: F403
from whitebox.data import __all__  # noqa: F401
from whitebox.data.base import UNREADABLE as _UNREADABLE  # noqa: F401
from whitebox.data.base import open_image


def _open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """A decoded RGB image (``open_image``, decoded now so that a broken file fails here)."""
    img = open_image(path)
    img.load()
    return img
