"""CPU fp32 inference throughput of registered models, side by side in one process.

Each model classifies the same random batch under ``torch.inference_mode``; after warm-up the models
take turns (so that a busy machine slows them alike) and the median over the timed batches is
reported, with each model's throughput relative to the first one's.

    python benchmarks/cpu_infer.py                                   # crate_base vs crate_alpha_base_patch16
    python benchmarks/cpu_infer.py --models crate_base crate_alpha_large_patch14 --batch 4 --reps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import whitebox
from whitebox.flops import count_flops

DEFAULT_MODELS = ("crate_base", "crate_alpha_base_patch16")


def measure(models: list[str], img_size: int, batch: int, warmup: int, reps: int) -> list[dict]:
    """Images/s of each model (median of ``reps`` interleaved batches after ``warmup`` untimed ones)."""
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    nets = {name: whitebox.create_model(name, img_size=img_size).eval() for name in models}

    def run(net: torch.nn.Module) -> None:
        with torch.inference_mode():
            net(x)

    for net in nets.values():
        for _ in range(warmup):
            run(net)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(reps):
        for name, net in nets.items():
            start = time.perf_counter()
            run(net)
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, net in nets.items():
        ips = batch / statistics.median(times[name])
        rows.append(
            dict(
                model=name,
                params_m=sum(p.numel() for p in net.parameters()) / 1e6,
                gflop=count_flops(net).total / 1e9,
                images_per_s=ips,
                batch_seconds=times[name],
            )
        )
    for row in rows:
        row["relative"] = row["images_per_s"] / rows[0]["images_per_s"]
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | params (M) | GFLOP / image | images/s | relative to first |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['model']} | {r['params_m']:.2f} | {r['gflop']:.2f} | {r['images_per_s']:.2f} | {r['relative']:.2f}x |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="the first is the baseline")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per model")
    parser.add_argument("--reps", type=int, default=7, help="timed batches per model (interleaved)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args.models, args.img_size, args.batch, args.warmup, args.reps)
    print(format_table(rows))
    print(
        f"\n{torch.__version__}, fp32, {args.threads} threads, {args.img_size} px, batch {args.batch}, "
        f"median of {args.reps} interleaved batches after {args.warmup} warm-up batches per model"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
