"""The sources of issue 18: Hugging Face datasets (a save_to_disk folder, parquet files), WebDataset shards
(a stream split across ranks and workers without overlap or loss, resumed exactly), each one pretrained
on; built here from tiny images, no network."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.pretrain import main as pretrain
from whitebox.data import (
    EvalTransform,
    MAEAugment,
    ResumableBatchSampler,
    build_dataset,
    make_loader,
    seeded_dataset,
)
from whitebox.train import load_checkpoint_file

datasets = pytest.importorskip("datasets")
wds = pytest.importorskip("webdataset")

TINY = ["--img-size", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "1", "--num-heads", "2"]
TINY += ["--decoder-depth", "1", "--no-progress", "--no-tensorboard", "--batch-size", "4", "--warmup-steps", "1"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread, tmp_path, monkeypatch):
    """Training loops; the datasets cache inside the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]


def _hf(n: int, seed: int = 0):
    feats = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["cat", "dog", "emu"])})
    return datasets.Dataset.from_dict({"img": _images(n, seed), "fine": [i % 3 for i in range(n)]}, features=feats)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _shards(root: Path, counts: tuple[int, ...] = (10, 7)) -> str:
    """Tar shards of JPEG + .cls samples; sample j (over all shards) has label j."""
    root.mkdir(parents=True, exist_ok=True)
    j = 0
    for s, n in enumerate(counts):
        with wds.TarWriter(str(root / f"part-{s:06d}.tar")) as sink:
            for img in _images(n, seed=s):
                sink.write({"__key__": f"s{s}/{j:05d}", "jpg": _jpeg(img), "cls": j})
                j += 1
    return str(root / f"part-{{000000..{len(counts) - 1:06d}}}.tar")


# ----------------------------------------------------------------------------- Hugging Face datasets
def test_save_to_disk_folder_with_splits_columns_and_class_names(tmp_path):
    datasets.DatasetDict({"train": _hf(9), "test": _hf(3, seed=1)}).save_to_disk(str(tmp_path / "dd"))
    train = build_dataset(f"hf:{tmp_path / 'dd'}", "train")
    test = build_dataset(f"hf:{tmp_path / 'dd'}", "test")
    assert len(train) == 9 and len(test) == 3 and train.classes == ["cat", "dog", "emu"]
    assert train.labels.tolist() == [0, 1, 2] * 3 and train.image_column == "img" and train.label_column == "fine"
    img, label = train[4]
    assert img.mode == "RGB" and img.size == (24, 20) and label == 1
    assert np.array_equal(np.asarray(img), np.asarray(_images(9)[4]))  # PNG inside: lossless
    with pytest.raises(ValueError, match=r"--image-column 'pixels' is not a column; the columns are \['img', 'fine'\]"):
        build_dataset(f"hf:{tmp_path / 'dd'}", image_column="pixels")
    with pytest.raises(ValueError, match=r"has no split 'holdout'; its splits are \['train', 'test'\]"):
        build_dataset(f"hf:{tmp_path / 'dd'}:holdout")
    unlabelled = build_dataset(f"hf:{tmp_path / 'dd'}", label_column=None)
    assert unlabelled.label_column == "fine"  # found by its ClassLabel feature


def test_parquet_folder_and_named_columns(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    ds = _hf(8).rename_columns({"img": "picture", "fine": "y"})
    ds.select(range(5)).to_parquet(str(folder / "train-00000-of-00002.parquet"))
    ds.select(range(5, 8)).to_parquet(str(folder / "train-00001-of-00002.parquet"))
    train = build_dataset(f"hf:{folder}", "train", image_column="picture", label_column="y")
    assert len(train) == 8 and train.labels.tolist() == [i % 3 for i in range(8)]
    assert np.array_equal(np.asarray(train[6][0]), np.asarray(_images(8)[6]))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        build_dataset(f"hf:{tmp_path / 'absent'}")


@pytest.mark.parametrize("kind", ["save_to_disk", "parquet", "wds"])
def test_pretraining_runs_on_each_new_source(tmp_path, kind):
    if kind == "save_to_disk":
        _hf(12).save_to_disk(str(tmp_path / "src"))
        data = f"hf:{tmp_path / 'src'}"
    elif kind == "parquet":
        (tmp_path / "src").mkdir()
        _hf(12).to_parquet(str(tmp_path / "src" / "train-00000-of-00001.parquet"))
        data = f"hf:{tmp_path / 'src'}"
    else:
        data = "wds:" + _shards(tmp_path / "src", (6, 6))
    result = pretrain([*TINY, "--data", data, "--epochs", "1", "--output", str(tmp_path / "out")])
    assert result["step"] == 3 and np.isfinite(result["loss"])


# ----------------------------------------------------------------------------- WebDataset
def _batches(pattern: str, batch: int, rank: int, world: int, workers: int, epoch: int = 1, start: int = 0):
    source = build_dataset("wds:" + pattern)
    sampler = ResumableBatchSampler(len(source), batch, rank, world, seed=5)
    sampler.set_epoch(epoch, start)
    loader = make_loader(seeded_dataset(source, MAEAugment(16), num_patches=4), sampler, workers)
    return [b for b in loader]


def test_wds_stream_splits_across_ranks_and_workers_without_overlap_or_loss(tmp_path):
    pattern = _shards(tmp_path, (11, 9, 5))  # 25 samples: 3 global batches of 8, one sample dropped
    source = build_dataset("wds:" + pattern)
    assert len(source) == 25 and source.labels.tolist() == list(range(25))
    one = _batches(pattern, 8, 0, 1, workers=0)
    assert len(one) == 3
    seen = torch.cat([b["label"] for b in one]).tolist()
    assert len(set(seen)) == 24  # each sample once; which one is dropped depends on the seeded order
    for workers in (0, 2):
        ranks = [_batches(pattern, 4, r, 2, workers) for r in range(2)]
        for k in range(3):  # global batch k of 2 ranks x 4 = batch k of 1 rank x 8: same samples, same crops
            for key in ("label", "image", "noise"):
                assert torch.equal(torch.cat([ranks[0][k][key], ranks[1][k][key]]), one[k][key]), (workers, k, key)
    resumed = _batches(pattern, 8, 0, 1, workers=2, start=2)
    assert len(resumed) == 1 and torch.equal(resumed[0]["image"], one[2]["image"])
    other_epoch = _batches(pattern, 8, 0, 1, workers=0, epoch=2)
    assert torch.cat([b["label"] for b in other_epoch]).tolist() != seen


def test_wds_eval_order_covers_every_sample_and_bad_images_are_named(tmp_path, capsys):
    pattern = _shards(tmp_path, (4, 3))
    source = build_dataset("wds:" + pattern)
    sampler = ResumableBatchSampler(len(source), 3, shuffle=False, drop_last=False)
    labels = [b["label"] for b in make_loader(seeded_dataset(source, EvalTransform(16)), sampler)]
    assert torch.cat(labels).tolist() == list(range(7))
    bad = tmp_path / "bad"
    bad.mkdir()
    with wds.TarWriter(str(bad / "b-0.tar")) as sink:
        sink.write({"__key__": "ok", "jpg": _jpeg(_images(1)[0]), "cls": 0})
        sink.write({"__key__": "broken", "jpg": b"not a jpeg", "cls": 1})
    source = build_dataset(f"wds:{bad}/b-0.tar")
    sampler = ResumableBatchSampler(2, 2, shuffle=False, drop_last=False)
    batch = next(iter(make_loader(seeded_dataset(source, EvalTransform(16)), sampler)))
    assert batch["label"].tolist() == [0, 0] and batch["skipped"].tolist() == [0, 1]
    assert "sample broken of wds:" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"1 of 3 shards are not files, first .*part-000002.tar"):
        build_dataset(f"wds:{tmp_path}/part-{{000000..000002}}.tar", None)


def test_wds_pretraining_resume_is_exact(tmp_path):
    data = "wds:" + _shards(tmp_path / "src", (9, 7))
    common = [*TINY, "--data", data, "--epochs", "2", "--workers", "2"]
    pretrain([*common, "--output", str(tmp_path / "full")])
    pretrain([*common, "--output", str(tmp_path / "part"), "--stop-after", "3"])
    pretrain([*common, "--output", str(tmp_path / "part"), "--resume", "auto"])
    a, b = (load_checkpoint_file(tmp_path / d / "checkpoint-last.pth") for d in ("full", "part"))
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_linear_probe_on_hf_splits_and_wds_shards(tmp_path):
    """The probe program on a save_to_disk DatasetDict (train / test splits, class names) and on shards."""
    from recipes.linprobe import main as linprobe

    model = ["--model", "crate_tiny", "--img-size", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "1"]
    model += ["--num-heads", "2"]
    datasets.DatasetDict({"train": _hf(9), "test": _hf(3, seed=1)}).save_to_disk(str(tmp_path / "dd"))
    res = linprobe([*model, "--data", f"hf:{tmp_path / 'dd'}", "--output", str(tmp_path / "a")])
    assert res["num_train"] == 9 and res["num_test"] == 3 and res["num_classes"] == 3
    train = _shards(tmp_path / "train", (5, 5))
    test = _shards(tmp_path / "test", (3,))
    res = linprobe([*model, "--data", f"wds:{train}", "--test-data", f"wds:{test}", "--output", str(tmp_path / "b")])
    assert res["num_train"] == 10 and res["num_test"] == 3


def test_hub_names_and_splits_go_through_the_datasets_cache(tmp_path, monkeypatch):
    """hf:NAME[:SPLIT] asks datasets.load_dataset for NAME (its cache works offline); the split is chosen here."""
    calls = []

    def fake_load(name, *args, **kwargs):
        calls.append(name)
        return datasets.DatasetDict({"train": _hf(6), "validation": _hf(3, seed=2)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert len(build_dataset("hf:someone/pets")) == 6
    assert len(build_dataset("hf:someone/pets", "test")) == 3  # no 'test' split: validation
    assert len(build_dataset("hf:someone/pets:validation")) == 3  # the named split trains
    assert calls == ["someone/pets"] * 3

    def offline(name, *args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"hf:someone/absent could not be loaded .*HF_DATASETS_OFFLINE=1"):
        build_dataset("hf:someone/absent")


def test_device_loader_normalises_uint8_on_the_device_and_keeps_counters_on_the_host():
    from whitebox.data import SeededDataset, normalize

    base = [(Image.fromarray(np.full((16, 16, 3), 10 * i, np.uint8)), i) for i in range(4)]
    ds = SeededDataset(base, EvalTransform(16))
    raw = torch.stack([ds[(i, 0)]["image"] for i in range(4)])
    assert raw.dtype == torch.uint8  # workers send uint8
    batch = next(iter(make_loader(ds, ResumableBatchSampler(4, 4, shuffle=False), device="cpu")))
    assert batch["image"].dtype == torch.float32 and torch.equal(batch["image"], normalize(raw))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(batch["image"], (raw.float() / 255 - mean) / std, atol=1e-6)
    assert batch["label"].tolist() == [0, 1, 2, 3] and batch["skipped"].device.type == "cpu"


@pytest.mark.slow
def test_wds_torchrun_two_ranks_with_workers_match_one_process(tmp_path):
    """A real 2-process (gloo) run on shards, 2 loader workers per rank, equals one process at the same global batch."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    data = "wds:" + _shards(tmp_path / "src", (9, 7))
    common = [*TINY[:-4], "--data", data, "--epochs", "1", "--log-every", "1", "--warmup-steps", "1"]
    pretrain([*common, "--batch-size", "8", "--output", str(tmp_path / "one")])
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd += [str(root / "recipes" / "pretrain.py"), *common, "--batch-size", "4", "--workers", "2"]
    proc = subprocess.run(
        [*cmd, "--output", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (load_checkpoint_file(tmp_path / d / "checkpoint-last.pth") for d in ("one", "two"))
    assert a["step"] == b["step"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)


def test_wds_readers_read_only_their_own_samples_and_compressed_shards_are_named(tmp_path, monkeypatch):
    import gzip

    from whitebox.data.wds import WebDatasetSource

    pattern = _shards(tmp_path, (11, 9, 5))
    reads = []
    real = WebDatasetSource.read
    monkeypatch.setattr(WebDatasetSource, "read", lambda self, e: reads.append(e.key) or real(self, e))
    for rank in range(2):
        _batches(pattern, 4, rank, 2, workers=0)
    assert len(reads) == len(set(reads)) == 24  # 3 global batches of 8, each sample read once by one rank
    reads.clear()
    _batches(pattern, 8, 0, 1, workers=0, start=2)
    assert len(reads) == 8  # a resumed epoch reads nothing before its batch
    (tmp_path / "z.tar.gz").write_bytes(gzip.compress((tmp_path / "part-000000.tar").read_bytes()))
    with pytest.raises(ValueError, match=r"z.tar.gz is gzip-compressed; shards must be plain tar files"):
        build_dataset(f"wds:{tmp_path}/z.tar.gz")
