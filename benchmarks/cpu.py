"""Train-step / inference throughput and peak memory of a whitebox model against the plain reference.

The reference (``tests/reference.py``) is CRATE written naively from the equations: explicit
softmax attention (an N x N matrix per head), the three-product ISTA step, MAE's gather-based
masking. Both run in the same process, interleaved, and the median of the repetitions is reported.
Peak memory is measured in a fresh subprocess per implementation: the process's peak resident
memory (VmHWM) during the measured steps, with glibc told to return large blocks to the system
so that RSS follows live tensors. Reported: the peak over the resident state before the step
(model, gradients, optimizer) and the total peak.

    python benchmarks/cpu.py                        # the issue's two configurations for crate_mae_base
    python benchmarks/cpu.py --model crate_mae_tiny --img-size 64 --batch 4 --reps 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from reference import RefCRATE, RefCrateMAE, crate_mae_to_official, crate_to_official  # noqa: E402

import whitebox  # noqa: E402


def build(impl: str, model_name: str, img_size: int) -> tuple[torch.nn.Module, callable]:
    """The model and a function ``step_loss(x)`` returning a scalar training loss."""
    ours = whitebox.create_model(model_name, img_size=img_size)
    enc = ours.encoder if hasattr(ours, "encoder") else ours
    dim, depth, heads = enc.embed_dim, len(enc.blocks), enc.blocks[0].attn.num_heads
    patch = enc.patch_embed.patch_size
    if hasattr(ours, "decoder_blocks"):
        if impl == "ours":
            return ours, lambda x, noise: ours(x, noise=noise).loss
        ref = RefCrateMAE(
            img_size, patch, 3, dim, depth, heads, len(ours.decoder_blocks), lambd=enc.blocks[0].ista.lambd
        )
        ref.load_state_dict(crate_mae_to_official(ours, ref))
        del ours
        return ref, lambda x, noise: ref(x, noise=noise)[0]
    if impl == "ours":
        return ours, lambda x, noise: ours(x).logsumexp(-1).mean()
    ref = RefCRATE(img_size, patch, 3, dim, depth, heads, ours.num_classes)
    ref.load_state_dict(crate_to_official(ours))
    return ref, lambda x, noise: ref(x).logsumexp(-1).mean()


def make_step(model: torch.nn.Module, loss_fn, batch: int, img_size: int, train: bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img_size, img_size, generator=gen)
    patch = getattr(model, "patch", None) or getattr(model, "patch_size", None) or model.patch_embed.patch_size
    patch_count = (img_size // patch) ** 2
    noise = torch.rand(batch, patch_count, generator=gen)
    if not train:
        model.eval()

        def infer():
            with torch.inference_mode():
                loss_fn(x, noise)

        return infer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(x, noise).backward()
        opt.step()

    return step


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(impl: str, model_name: str, img_size: int, batch: int, train: bool) -> dict:
    """Run in a subprocess: peak RSS during two steps, over the resident state before them."""
    model, loss_fn = build(impl, model_name, img_size)
    step = make_step(model, loss_fn, batch, img_size, train)
    step()  # allocate gradients and optimizer state
    gc.collect()
    base = _rss_kib("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    step()
    step()
    peak = _rss_kib("VmHWM:")
    return {"step_mib": (peak - base) / 1024, "total_mib": peak / 1024}


def memory_in_subprocess(impl: str, model_name: str, img_size: int, batch: int, train: bool, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    args = [sys.executable, __file__, "--_memory", impl, "--model", model_name, "--img-size", str(img_size)]
    args += ["--batch", str(batch), "--threads", str(threads)] + ([] if train else ["--inference-only"])
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(model_name: str, img_size: int, batch: int, reps: int, train: bool) -> dict[str, float]:
    """Images/s, median of ``reps`` interleaved timings of one step each."""
    steps = {}
    for impl in ("reference", "ours"):
        model, loss_fn = build(impl, model_name, img_size)
        steps[impl] = make_step(model, loss_fn, batch, img_size, train)
        steps[impl]()  # warm-up
    times: dict[str, list[float]] = {impl: [] for impl in steps}
    for _ in range(reps):
        for impl, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[impl].append(time.perf_counter() - t0)
    return {impl: batch / statistics.median(ts) for impl, ts in times.items()}


def run_config(model_name: str, img_size: int, batch: int, reps: int, threads: int) -> list[dict]:
    rows = []
    for train in (True, False):
        ips = throughput(model_name, img_size, batch, reps, train)
        mem = {impl: memory_in_subprocess(impl, model_name, img_size, batch, train, threads) for impl in ips}
        rows.append(
            dict(
                model=model_name,
                img_size=img_size,
                batch=batch,
                mode="train step" if train else "inference",
                ref_ips=ips["reference"],
                ours_ips=ips["ours"],
                speedup=ips["ours"] / ips["reference"],
                ref_step_mib=mem["reference"]["step_mib"],
                ours_step_mib=mem["ours"]["step_mib"],
                step_mem_ratio=mem["ours"]["step_mib"] / mem["reference"]["step_mib"],
                ref_total_mib=mem["reference"]["total_mib"],
                ours_total_mib=mem["ours"]["total_mib"],
                total_mem_ratio=mem["ours"]["total_mib"] / mem["reference"]["total_mib"],
            )
        )
    return rows


def format_table(rows: list[dict]) -> str:
    head = (
        "| model | px | batch | mode | reference img/s | ours img/s | speed-up | reference peak MiB (step / total) "
        "| ours peak MiB (step / total) | memory ratio (step / total) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['model']} | {r['img_size']} | {r['batch']} | {r['mode']} | {r['ref_ips']:.2f} | {r['ours_ips']:.2f} "
        f"| {r['speedup']:.2f}x | {r['ref_step_mib']:.0f} / {r['ref_total_mib']:.0f} "
        f"| {r['ours_step_mib']:.0f} / {r['ours_total_mib']:.0f} "
        f"| {r['step_mem_ratio']:.2f} / {r['total_mem_ratio']:.2f} |"
        for r in rows
    ]
    return head + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="crate_mae_base")
    parser.add_argument("--img-size", type=int, default=None, help="one configuration (default: 224/b8 and 384/b4)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5, help="interleaved timed steps per implementation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--inference-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_memory", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args._memory:
        print(json.dumps(measure_memory(args._memory, args.model, args.img_size, args.batch, not args.inference_only)))
        return
    configs = [(args.img_size, args.batch)] if args.img_size else [(224, 8), (384, 4)]
    rows = []
    for img_size, batch in configs:
        rows += run_config(args.model, img_size, batch, args.reps, args.threads)
        print(format_table(rows[-2:]), flush=True)
    print(f"\n{torch.__version__}, {args.threads} threads, fp32, median of {args.reps} interleaved steps\n")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
