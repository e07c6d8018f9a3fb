"""Real photographs that ship with an installed package, for demos, tests and the default data.

They come from scikit-image's bundled sample data (public-domain / CC0 images such as
``astronaut``, ``coffee``, ``chelsea``, ``rocket``), so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

SAMPLE_NAMES: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "motorcycle_left",
    "motorcycle_right",
)


def load_sample_photos(names: tuple[str, ...] | None = None) -> list[np.ndarray]:
    """The bundled colour photos as (H, W, 3) uint8 arrays (sizes differ).

    Raises ``ImportError`` with the install command when scikit-image is missing.
    """
    try:
        import skimage.data as skdata
        import skimage.io as skio
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the embedded sample photos come from scikit-image: pip install 'whitebox-transformers[train]'"
        ) from err
    photos = []
    for name in names or SAMPLE_NAMES:
        if hasattr(skdata, name):
            img = getattr(skdata, name)()
        else:  # stereo pair and others are plain files in skimage/data
            img = skio.imread(skdata.__path__[0] + f"/{name}.png")
        photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return photos


def sample_batch(size: int = 224, count: int | None = None) -> np.ndarray:
    """Centre square crops of the sample photos resized to ``size``: (N, size, size, 3) uint8."""
    from PIL import Image

    out = []
    for img in load_sample_photos()[: count or None]:
        h, w = img.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crop = Image.fromarray(img[top : top + s, left : left + s]).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(crop))
    return np.stack(out)
