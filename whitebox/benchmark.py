"""``python -m whitebox.benchmark --model NAME``: images/s, step time, peak memory and GFLOP/image.

    python -m whitebox.benchmark --model crate_base --bench both --batch-size 256 --amp
    python -m whitebox.benchmark --model crate_mae_tiny --device cpu --batch-size 8 --num-bench-iter 5

timm's ``benchmark.py`` for whitebox models (same flag and field names where they overlap). A step
runs on one synthetic batch (random images, random labels): ``inference`` is a forward pass under
``torch.inference_mode``; ``train`` is forward, loss, backward and an SGD step (timm's default
optimizer). A classifier's loss is cross-entropy; a masked autoencoder's, its own reconstruction
loss (its forward is what pretraining runs). GFLOP per image are the exact analytic counts of
``whitebox.flops.count_flops`` (a train step counted as 3 forwards), not a profiler's; ``gmacs``
is half of it, timm's unit. Peak memory: on CUDA, the most the caching allocator held during the
timed steps; on the CPU, the peak resident memory of the whole process (``ru_maxrss``), which
includes torch itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._programs import (
    HelpFormatter,
    add_model_args,
    add_runtime_args,
    build_model,
    param_count,
    results_format,
    run_program,
    setup_runtime,
    write_results,
)
from .cli import choice, integer, program_name

BENCHES = ("inference", "train", "both")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("whitebox.benchmark"),
        description="Images per second, step time, peak memory and GFLOP per image of a registered model.",
        formatter_class=HelpFormatter,
    )
    add_model_args(p, img_size=True)
    b = p.add_argument_group("benchmark")
    b.add_argument("--bench", type=choice(BENCHES), metavar="KIND", default="both", help="inference, train or both")
    b.add_argument("--num-warm-iter", type=integer(ge=0), default=10, metavar="N", help="untimed steps first")
    b.add_argument("--num-bench-iter", type=integer(gt=0), default=40, metavar="N", help="timed steps")
    b.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing in train steps")
    add_runtime_args(p, batch_size=None)
    o = p.add_argument_group("output")
    o.add_argument("--results-file", metavar="FILE", help="write the results here (.json or .csv)")
    o.add_argument(
        "--results-format", type=choice(("json", "csv")), metavar="FORMAT", help="json or csv (unset: from the suffix)"
    )
    return p


class _Timer:
    def __init__(self, dev: Any) -> None:
        import torch

        self.sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


def _peak_memory_mb(dev: Any) -> float:
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    try:
        import resource
    except ImportError:  # not POSIX
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _bench(args: argparse.Namespace, model: Any, dev: Any, autocast: Any, train: bool) -> dict[str, float]:
    import torch
    from torch.nn import functional as F

    from .flops import count_flops
    from .models import MaskedAutoencoder

    size = tuple(getattr(model, "encoder", model).patch_embed.img_size)
    x = torch.randn(args.batch_size, 3, *size, device=dev)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    is_mae = isinstance(model, MaskedAutoencoder)
    classes = getattr(model, "num_classes", 0)
    y = torch.randint(0, max(classes, 1), (args.batch_size,), device=dev)
    if train:
        model.train()
        if args.grad_checkpointing:
            model.set_grad_checkpointing(True)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        if not train:
            with torch.inference_mode(), autocast:
                model(x)
            return
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(x)
            loss = out.loss if is_mae else (F.cross_entropy(out, y) if classes else out.float().mean())
        loss.backward()
        optimizer.step()

    model.train(train)
    timer = _Timer(dev)
    for _ in range(args.num_warm_iter):
        step()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = timer()
    for _ in range(args.num_bench_iter):
        step()
    elapsed = timer() - start
    flops = count_flops(model, size, "train" if train else "forward").total
    model.eval()
    return {
        "samples_per_sec": round(args.num_bench_iter * args.batch_size / elapsed, 2),
        "step_time": round(1000 * elapsed / args.num_bench_iter, 3),
        "batch_size": args.batch_size,
        "img_size": size[-1],
        "flops": flops,
        "gflops": round(flops / 1e9, 6),
        "gmacs": round(flops / 2e9, 6),
        "peak_mem_mb": round(_peak_memory_mb(dev), 1),
    }


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmarks the parsed flags ask for; returns timm-style ``infer_*`` / ``train_*`` fields."""
    from .flops import format_flops

    fmt = results_format(args.results_file, args.results_format)
    dev, autocast = setup_runtime(args)
    if args.batch_size is None:
        args.batch_size = 256 if dev.type == "cuda" else 16
    model, name = build_model(args, classifier=False)
    model = model.to(dev)
    results: dict[str, Any] = {"model": name, "param_count": round(param_count(model) / 1e6, 2), "device": str(dev)}
    results["amp"] = args.amp_dtype if args.amp else None
    for kind in ("inference", "train"):
        if args.bench in (kind, "both"):
            prefix = "infer" if kind == "inference" else "train"
            row = _bench(args, model, dev, autocast, train=kind == "train")
            results.update({f"{prefix}_{k}": v for k, v in row.items()})
            print(
                f"{name} {kind}: {row['samples_per_sec']:.1f} img/s, {row['step_time']:.2f} ms/step (batch "
                f"{args.batch_size}, {row['img_size']} px), {format_flops(row['flops'])}/img, peak "
                f"{row['peak_mem_mb']:.0f} MiB",
                file=sys.stderr,
            )
    if args.results_file:
        write_results(results, args.results_file, fmt)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import json

    results = benchmark(build_parser().parse_args(argv))
    print(json.dumps(results, indent=2))
    return results


def cli() -> int:
    """The ``whitebox-benchmark`` console script."""
    return run_program(main, build_parser)


if __name__ == "__main__":
    sys.exit(cli())
