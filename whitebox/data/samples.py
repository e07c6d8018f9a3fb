"""The real photos bundled with scikit-image, as a small default source that needs nothing downloaded."""

from __future__ import annotations

from PIL import Image
from torch.utils.data import Dataset

__all__ = ["SamplePhotoDataset"]


class SamplePhotoDataset(Dataset):
    """The photos of ``whitebox.sample_images``, repeated to ``length`` samples (label = photo index).

    The photos are shrunk once so their short side is ``short_side``; random crops of them (the
    MAE augmentation) make the varied training set.
    """

    def __init__(self, length: int = 1024, short_side: int = 256) -> None:
        from whitebox.sample_images import load_sample_photos

        self.photos = []
        for arr in load_sample_photos():
            img = Image.fromarray(arr).convert("RGB")
            scale = short_side / min(img.size)
            if scale < 1:
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
            self.photos.append(img)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        k = i % len(self.photos)
        return self.photos[k], k
