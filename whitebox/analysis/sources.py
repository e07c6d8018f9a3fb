"""Where the analysis takes its images from: files, folders, ``.npz`` packs or the bundled photos.

``--images`` accepts, in any mix: image files; folders (every image file under them, recursively,
in path order, so class sub-folders work); ``.npz`` files in the recipes' formats (``x`` or a JPEG pack
``jpeg``/``offsets``; a file with splits ``x_train``/``x_test`` is named as ``FILE.npz:SPLIT``); or the
word ``samples`` for the bundled photos. Anything else is refused by name.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_MAX_IMAGES", "IMAGE_EXTENSIONS", "ImageSource", "check_specs", "read_images"]

DEFAULT_MAX_IMAGES = 256  # folders and packs: the first 256 unless --num-images says otherwise
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
ALLOWED = (
    "--images takes image files, folders of images, .npz packs (x / x_SPLIT arrays or a jpeg/offsets JPEG "
    "pack; name a split as FILE.npz:SPLIT) or 'samples' (the bundled photos)"
)


@dataclass(frozen=True)
class ImageSource:
    """Images read for an analysis and what they are.

    Attributes:
        images: uint8 (B, size, size, 3), centre square crops resized to the model's size.
        description: where they came from, for the report (``'the first 256 of 50000 images of x.npz'``).
    """

    images: np.ndarray
    description: str


def _square(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return np.asarray(Image.fromarray(img[top : top + s, left : left + s]).resize((size, size), Image.BICUBIC))


def _decode(raw: bytes | Path, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw) if isinstance(raw, bytes) else raw) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"{what} is not an image that can be read ({type(err).__name__}: {err}); {ALLOWED}") from None


class _Pack:
    """The images of one ``.npz`` (arrays or JPEG pack), decoded on demand."""

    def __init__(self, spec: str) -> None:
        name, _, split = spec.partition(".npz:")
        path = Path(name + ".npz" if split or spec.endswith(".npz:") else spec)
        if not path.is_file():
            raise FileNotFoundError(f"--images {spec}: no such .npz file")
        try:
            archive = np.load(path)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"--images {spec}: not a readable .npz ({type(err).__name__}: {err}); {ALLOWED}") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"--images {spec}: holds a single array, not named arrays; {ALLOWED}")
        keys = set(archive.files)
        splits = sorted(k[2:] for k in keys if k.startswith("x_"))
        self.spec, self.archive, self.jpeg = spec, archive, None
        if split:
            if f"x_{split}" not in keys:
                raise ValueError(f"--images {spec}: no split {split!r} (x_{split}); the file holds splits {splits}")
            self.x = archive[f"x_{split}"]
        elif "jpeg" in keys and "offsets" in keys:
            self.jpeg, self.offsets = archive["jpeg"], archive["offsets"]
            if self.offsets.ndim != 1 or len(self.offsets) < 2 or np.any(np.diff(self.offsets) < 0):
                raise ValueError(f"--images {spec}: the JPEG pack's offsets must be (N + 1,) and increasing")
        elif "x" in keys:
            self.x = archive["x"]
        elif splits:
            raise ValueError(f"--images {spec} holds the splits {splits}; name one, e.g. --images {path}:{splits[-1]}")
        else:
            raise ValueError(f"--images {spec}: no images (keys {sorted(keys)}); {ALLOWED}")
        if self.jpeg is None and (self.x.dtype != np.uint8 or self.x.ndim != 4 or self.x.shape[-1] not in (1, 3)):
            raise ValueError(f"--images {spec}: images must be uint8 (N, H, W, 3), got {self.x.dtype} {self.x.shape}")

    def __len__(self) -> int:
        return len(self.offsets) - 1 if self.jpeg is not None else len(self.x)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.jpeg is not None:
            raw = self.jpeg[self.offsets[i] : self.offsets[i + 1]].tobytes()
            return _decode(raw, f"image {i} of the JPEG pack {self.spec}")
        img = self.x[i]
        return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def _folder(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(
            f"--images {path}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)}), also in sub-folders"
        )
    return files


def check_specs(specs: list[str] | None) -> None:
    """Refuse, before any model is built, ``--images`` values that cannot be read: missing paths, empty
    folders, packs without images, files that are not images (their headers are read, not decoded)."""
    from PIL import Image, UnidentifiedImageError

    if specs is None or specs == ["samples"]:
        return
    if not specs:
        raise ValueError(f"--images was given without a value; {ALLOWED}")
    for spec in specs:
        if spec == "samples":
            raise ValueError("--images samples (the bundled photos) cannot be mixed with other images")
        path = Path(spec)
        if spec.endswith(".npz") or ".npz:" in spec:
            _Pack(spec)
        elif path.is_dir():
            _folder(path)
        elif path.is_file():
            try:
                with Image.open(path):
                    pass
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise ValueError(
                    f"--images {spec} is not an image that can be read ({type(err).__name__}: {err}); {ALLOWED}"
                ) from None
        else:
            raise FileNotFoundError(f"--images {spec}: no such file or folder")


def read_images(specs: list[str] | None, size: int, count: int | None = None) -> ImageSource:
    """Read the images ``specs`` name (see the module docstring) as uint8 (B, size, size, 3).

    ``count``: use only the first ``count`` images; default all named image files, and at most
    ``DEFAULT_MAX_IMAGES`` when a folder or pack is named (the description says how many of how many).

    Raises:
        FileNotFoundError: a path that does not exist, a folder without images.
        ValueError: a file that is not an image or a readable pack, a pack without images or with
            unnamed splits, an empty list.
    """
    from ..sample_images import sample_batch

    if specs is not None and not specs:
        raise ValueError(f"--images was given without a value; {ALLOWED}")
    if specs is None or specs == ["samples"]:
        photos = sample_batch(size, count)
        return ImageSource(photos, f"the {len(photos)} bundled sample photos (whitebox.sample_images)")
    items: list[tuple[object, str]] = []  # (a path, or (pack, index)), name
    collections = False
    for spec in specs:
        path = Path(spec)
        if spec == "samples":
            raise ValueError("--images samples (the bundled photos) cannot be mixed with other images")
        if spec.endswith(".npz") or ".npz:" in spec:
            pack = _Pack(spec)
            items += [((pack, i), f"image {i} of {spec}") for i in range(len(pack))]
            collections = True
        elif path.is_dir():
            items += [(p, str(p)) for p in _folder(path)]
            collections = True
        elif path.is_file():
            items.append((path, spec))
        else:
            raise FileNotFoundError(f"--images {spec}: no such file or folder")
    limit = count if count is not None else (DEFAULT_MAX_IMAGES if collections else None)
    chosen = items[:limit] if limit is not None else items
    if not chosen:
        raise ValueError(f"--images {' '.join(specs)}: no images found")
    arrays = []
    for item, name in chosen:
        img = item[0][item[1]] if isinstance(item, tuple) else _decode(item, f"--images {name}")
        arrays.append(_square(img, size))
    named = " ".join(specs)
    if len(chosen) < len(items):
        what = f"the first {len(chosen)} of {len(items)} images of {named}"
    else:
        what = f"{len(chosen)} image{'s' if len(chosen) != 1 else ''} of {named}"
    return ImageSource(np.stack(arrays), what)
