"""Data-loader throughput: whitebox's pretraining loader against torchvision's and timm's, in one run.

Generated ImageNet-like data: JPEGs of about 500 x 375 (quality 90) cut from the real photos bundled
with scikit-image (random crops, flips, scales and colour shifts, so that files compress like photos),
in class folders. Every loader applies the same transform (RandomResizedCrop(224, scale 0.2-1,
bicubic) + horizontal flip, MAE's pretraining augmentation), the same batch and the same workers:

- ``whitebox``: ``build_dataset`` + ``MAEAugment`` + ``ResumableBatchSampler`` + ``make_loader``
  (uint8 from the workers, float cast and normalisation in the main process / on the device);
- ``torchvision``: ``ImageFolder`` + ``DataLoader`` with ``ToTensor`` + ``Normalize`` (MAE's pipeline);
- ``timm``: ``create_loader`` without its prefetcher (normalised float from the workers);
- ``timm-prefetcher``: ``create_loader`` with ``use_prefetcher=True`` (uint8, normalised in the main process).

Each round runs every loader once over the whole set (a fresh loader, so its workers' CPU time is
collected when they exit), in a rotating order; the table shows medians over rounds of images/s and
CPU ms per image (main process + workers, from ``getrusage``). A small table compares decoders on the
same files, by CPU time, taking turns image by image. The last line is
``loader: whitebox X img/s, timm-prefetcher Y img/s, ratio R`` (R = X / Y).

    python benchmarks/loader.py                       # 1024 images, batch 64, 2 workers, 3 rounds
    python benchmarks/loader.py --images 2000 --rounds 4 --workers 8 --json loader.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from whitebox.data import (  # noqa: E402
    MAEAugment,
    ResumableBatchSampler,
    build_dataset,
    make_loader,
    open_image,
    seeded_dataset,
)
from whitebox.data.transforms import dct_reduction, decode, decode_crop, resized_crop  # noqa: E402
from whitebox.sample_images import load_sample_photos  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def generate(root: Path, count: int, classes: int = 10, seed: int = 0) -> None:
    """``count`` photo-like JPEGs (500 x 375 or 375 x 500, quality 90) in ``classes`` class folders."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p).convert("RGB") for p in load_sample_photos()]
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = (500, 375) if rng.random() < 0.8 else (375, 500)
        s = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.6)
        big = photo.resize((round(photo.width * s) + 1, round(photo.height * s) + 1), Image.BICUBIC)
        left, top = rng.integers(0, big.width - w + 1), rng.integers(0, big.height - h + 1)
        img = big.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(img).astype(np.float32) * rng.uniform(0.8, 1.2, 3) + rng.normal(0, 3, (h, w, 3))
        folder = root / f"class{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


# ----------------------------------------------------------------------------- the loaders
def whitebox_loader(root: Path, size: int, batch: int, workers: int, epoch: int) -> object:
    base = build_dataset(str(root), None)
    sampler = ResumableBatchSampler(len(base), batch, seed=0)
    sampler.set_epoch(epoch)
    return make_loader(seeded_dataset(base, MAEAugment(size), num_patches=(size // 16) ** 2), sampler, workers)


def torchvision_loader(root: Path, size: int, batch: int, workers: int, epoch: int) -> object:
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    ds = datasets.ImageFolder(str(root), transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)


def timm_loader(prefetcher: bool) -> Callable[..., object]:
    def build(root: Path, size: int, batch: int, workers: int, epoch: int) -> object:
        from timm.data import ImageDataset, create_loader

        return create_loader(
            ImageDataset(str(root)),
            input_size=(3, size, size),
            batch_size=batch,
            is_training=True,
            scale=(0.2, 1.0),
            hflip=0.5,
            color_jitter=None,
            interpolation="bicubic",
            num_workers=workers,
            use_prefetcher=prefetcher,
            persistent_workers=False,
            device=torch.device("cpu"),
        )

    return build


LOADERS = {
    "whitebox": whitebox_loader,
    "torchvision": torchvision_loader,
    "timm": timm_loader(False),
    "timm-prefetcher": timm_loader(True),
}


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_once(build: Callable[..., object], root: Path, size: int, batch: int, workers: int, epoch: int) -> dict:
    """One pass over the set: images/s and CPU ms per image (the workers are reaped, so their time counts)."""
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    loader = build(root, size, batch, workers, epoch)
    images = 0
    for b in loader:
        x = b["image"] if isinstance(b, dict) else b[0]
        assert x.dtype == torch.float32 and x.shape[1:] == (3, size, size)
        images += len(x)
    it = getattr(getattr(loader, "loader", loader), "_iterator", None)
    if it is not None:
        it._shutdown_workers()
    del loader
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    return {"images_per_s": images / wall, "cpu_ms_per_image": 1000 * cpu / images, "images": images}


# ----------------------------------------------------------------------------- decoders
def decoders(root: Path, size: int, count: int = 64, reps: int = 3) -> dict[str, float]:
    """CPU ms per image (this process) to decode one file and RandomResizedCrop it to ``size``.

    The ways take turns image by image (``reps`` passes over ``count`` files), so a busy machine slows
    them alike."""
    raw = [f.read_bytes() for f in sorted(root.rglob("*.jpg"))[:count]]
    aug = MAEAugment(size)
    boxes = []
    for data in raw:
        with Image.open(io.BytesIO(data)) as im:
            boxes.append(aug.crop_box(im.width, im.height, torch.Generator().manual_seed(len(boxes))))

    def pil(data: bytes, box: tuple[int, int, int, int]) -> None:  # Pillow decode + resize(box=), bicubic
        Image.open(io.BytesIO(data)).resize((size, size), Image.BICUBIC, box=box)

    def pil_draft(data: bytes, box: tuple[int, int, int, int]) -> None:  # Pillow, reduced DCT decode where possible
        img = Image.open(io.BytesIO(data))
        full, reduce = img.size, dct_reduction(box, size)
        if reduce > 1:
            img.draft("RGB", (-(-full[0] // reduce), -(-full[1] // reduce)))
        sx, sy = img.size[0] / full[0], img.size[1] / full[1]
        img.resize((size, size), Image.BICUBIC, box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))

    def pil_torch(data: bytes, box: tuple[int, int, int, int]) -> None:  # Pillow decode, torch resize
        img = Image.open(io.BytesIO(data))
        img.load()
        resized_crop(decode(img), box, size)

    def tv(data: bytes, box: tuple[int, int, int, int]) -> None:  # torchvision.io.decode_jpeg, torch resize
        resized_crop(decode(open_image(data)), box, size)

    def chosen(data: bytes, box: tuple[int, int, int, int]) -> None:  # whitebox's decode_crop
        decode_crop(open_image(data), box, size)

    ways = {
        "Pillow decode + resize": pil,
        "Pillow draft decode + resize": pil_draft,
        "Pillow decode, torch resize": pil_torch,
        "torchvision.io.decode_jpeg, torch resize": tv,
        "whitebox: Pillow draft where the crop is >= 4x, else torchvision.io": chosen,
    }
    cpu = dict.fromkeys(ways, 0.0)
    for _ in range(reps):
        for data, box in zip(raw, boxes, strict=True):
            for name, fn in ways.items():
                t0 = time.process_time()
                fn(data, box)
                cpu[name] += time.process_time() - t0
    return {name: 1000 * t / (reps * len(raw)) for name, t in cpu.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    p.add_argument("--data", default=None, help="a folder of class folders to use instead of generated JPEGs")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "imagenet-like"
        if not args.data:
            t0 = time.perf_counter()
            generate(root, args.images)
            print(f"generated {args.images} JPEGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows: dict[str, list[dict]] = {name: [] for name in LOADERS}
        names = list(LOADERS)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # take turns
                rows[name].append(run_once(LOADERS[name], root, args.img_size, args.batch, args.workers, r))
                print(f"round {r} {name}: {rows[name][-1]}", file=sys.stderr)
        sizes = (args.img_size, args.img_size // 2, 32)
        dec = {size: decoders(root, size) for size in sizes}
    table = {
        name: {k: statistics.median(x[k] for x in runs) for k in ("images_per_s", "cpu_ms_per_image")}
        for name, runs in rows.items()
    }
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), " + (
        f"{len(__import__('os').sched_getaffinity(0))} CPUs visible"
    )
    setup = f"{args.images} JPEGs, {args.img_size} px, batch {args.batch}, {args.workers} workers"
    print(f"\n{setup}, {args.rounds} rounds")
    print(f"machine: {machine}\n")
    print("| loader | images/s | CPU ms / image |\n| --- | ---: | ---: |")
    for name, t in table.items():
        print(f"| {name} | {t['images_per_s']:.0f} | {t['cpu_ms_per_image']:.2f} |")
    print(f"\n| decode + RandomResizedCrop, ms / image | {' | '.join(f'{n} px' for n in sizes)} |")
    print("| --- |" + " ---: |" * len(sizes))
    for name in dec[sizes[0]]:
        print(f"| {name} | " + " | ".join(f"{dec[n][name]:.2f}" for n in sizes) + " |")
    result = {"args": vars(args), "machine": machine, "loaders": table, "rounds": rows, "decoders": dec}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    x, y = table["whitebox"]["images_per_s"], table["timm-prefetcher"]["images_per_s"]
    print(f"loader: whitebox {x:.1f} img/s, timm-prefetcher {y:.1f} img/s, ratio {x / y:.2f}")
    return result


if __name__ == "__main__":
    main()
