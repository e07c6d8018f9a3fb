"""Quality benchmark: CRATE-MAE vs its ViT-MAE twin, pretrained the same way on CIFAR-10, then linear-probed.

Both models have the same width, depth, heads and patch (4 at 32 px); the twin has timm ViT blocks
(MLP ratio 4) in place of CRATE layers, and as many decoder layers as CRATE-MAE. Both are pretrained
for the same number of steps with the same recipe (``recipes/pretrain.py``, norm-pix loss), then
probed on frozen features (``recipes/linprobe.py``). Prints accuracy, parameters and images/s.

    python benchmarks/quality.py                      # CPU: small models on cifar10_small.npz, a few minutes
    python benchmarks/quality.py --device cuda        # GPU: width 192, depth 12, 50k JPEG CIFAR-10, ~5 min on an H100

Data come from ``../shared/data`` (see its README); the CIFAR-10 training set there is a JPEG copy, so
report results as "CIFAR-10 (JPEG copy)".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.linprobe import main as linprobe  # noqa: E402
from recipes.pretrain import main as pretrain  # noqa: E402
from whitebox.train import read_jsonl  # noqa: E402
from whitebox.train.distributed import resolve_device  # noqa: E402

PRESETS = {
    # ~2-4 minutes on 2 CPU cores
    "cpu": dict(
        embed_dim=64,
        depth=2,
        num_heads=4,
        steps=150,
        batch_size=64,
        blr=6e-3,
        workers=0,
        train="cifar10_small.npz",
        probe_train="cifar10_small.npz",
        probe_test=None,
    ),
    # sized for ~5 minutes on one H100 (both models, pretraining and probing)
    "gpu": dict(
        embed_dim=192,
        depth=12,
        num_heads=3,
        steps=2000,
        batch_size=256,
        blr=1.5e-3,
        workers=10,
        train="cifar10_jpeg_train.npz",
        probe_train="cifar10_jpeg_train.npz",
        probe_test="cifar10_jpeg_test.npz",
    ),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="default: gpu on CUDA, else cpu")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--output", default="output/quality")
    for key in ("embed_dim", "depth", "num_heads", "steps", "batch_size", "workers"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None)
    p.add_argument("--blr", type=float, default=None)
    p.add_argument("--pools", default="avg,token", help="feature pools to probe")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-baseline", action="store_true", help="skip probing the randomly initialised encoders")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    cfg = dict(PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")])
    cfg.update({k: v for k, v in vars(args).items() if k in cfg and v is not None})
    data = Path(args.data_dir)
    missing = [n for n in (cfg["train"], cfg["probe_train"], cfg["probe_test"]) if n and not (data / n).is_file()]
    if missing:
        sys.exit(f"data not found in {data}: {missing} (see ../shared/data/README.md)")
    shape = ["--img-size", "32", "--patch-size", "4", "--embed-dim", str(cfg["embed_dim"])]
    shape += ["--depth", str(cfg["depth"]), "--num-heads", str(cfg["num_heads"])]
    twins = {
        "crate_mae": ("crate_mae_tiny", shape),
        "vit_mae": (
            "vit_mae_base",
            [*shape, "--decoder-depth", str(cfg["depth"]), "--decoder-num-heads", str(cfg["num_heads"])],
        ),
    }
    rows = []
    for label, (name, model_args) in twins.items():
        out = Path(args.output) / label
        t0 = time.perf_counter()
        pre = pretrain([
            "--model", name, *model_args, "--data", str(data / cfg["train"]), "--output", str(out),
            "--steps", str(cfg["steps"]), "--batch-size", str(cfg["batch_size"]), "--blr", str(cfg["blr"]),
            "--warmup-steps", str(max(1, cfg["steps"] // 20)), "--norm-pix-loss", "--device", str(device),
            "--workers", str(cfg["workers"]), "--log-every", str(max(1, cfg["steps"] // 20)), "--no-progress",
            "--no-tensorboard", *(["--compile"] if args.compile else []),
        ])  # fmt: skip
        t_pre = time.perf_counter() - t0
        speeds = [r["images_per_s"] for r in read_jsonl(out / "metrics.jsonl")[1:]]  # first interval: warm-up
        row = {"model": label, "arch": name, "params_M": pre["params"] / 1e6, "final_loss": pre["loss"],
               "images_per_s": statistics.median(speeds) if speeds else pre["mean_images_per_s"],
               "pretrain_s": t_pre}  # fmt: skip
        random_row = {"model": f"{label} (random init)", "arch": name, "params_M": row["params_M"]}
        for pool in args.pools.split(","):
            probe = [
                "--data", str(data / cfg["probe_train"]), "--pool", pool, "--device", str(device),
                "--workers", str(cfg["workers"]), "--batch-size", "512",
            ]  # fmt: skip
            if cfg["probe_test"]:
                probe += ["--test-data", str(data / cfg["probe_test"])]
            ckpt = ["--checkpoint", str(out / "checkpoint-last.pth")]
            row[f"top1_{pool}"] = 100 * linprobe([*probe, *ckpt, "--output", str(out / f"linprobe_{pool}")])["top1"]
            if not args.no_baseline:
                rand = ["--model", name, *model_args, "--output", str(out / f"linprobe_random_{pool}")]
                random_row[f"top1_{pool}"] = 100 * linprobe([*probe, *rand])["top1"]
        rows.append(row)
        if not args.no_baseline:
            rows.append(random_row)
    dev_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    )
    test = cfg["probe_test"] or f"{cfg['probe_train']} (test split)"
    print(
        f"\npretrain on {cfg['train']}: {cfg['steps']} steps x batch {cfg['batch_size']}, d={cfg['embed_dim']}, "
        f"depth {cfg['depth']}, {cfg['num_heads']} heads, patch 4 @ 32 px, norm-pix loss, on {dev_name}; "
        f"linear probe (L-BFGS on frozen features) trained on {cfg['probe_train']}, tested on {test}"
    )
    pools = args.pools.split(",")
    head = ["model", "params (M)", "pretrain loss", "images/s"] + [f"probe top-1 {p} (%)" for p in pools]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for r in rows:
        cells = [r["model"], f"{r['params_M']:.2f}"]
        cells += [f"{r['final_loss']:.3f}", f"{r['images_per_s']:.0f}"] if "final_loss" in r else ["-", "-"]
        print("| " + " | ".join(cells + [f"{r[f'top1_{p}']:.1f}" for p in pools]) + " |")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "quality.json").write_text(
        json.dumps({"config": cfg, "device": dev_name, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
