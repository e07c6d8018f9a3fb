"""How attention layers scale with the number of tokens: forward + backward time and memory of ONE layer.

MSSA (CRATE, through ``scaled_dot_product_attention``), TSSA (ToST), CBSA (CBT, 64 representatives) and
timm's ``Attention`` (separate q, k, v; SDPA) at width d = 384 with 6 heads, for N = 196, 784, 3136 and
12544 tokens (224 px at patch 16, 8, 4, 2), in one run. Each round times every layer once, the layers
taking turns (a busy machine slows them alike); the median over rounds is reported with its ratio to
MSSA's. Memory: the bytes the layer keeps for its backward (every device) and, on CUDA, the peak
allocated during forward + backward above what was held before it.

    python benchmarks/attention.py                          # CPU, or CUDA when present
    python benchmarks/attention.py --tokens 196 784 --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import peak_memory_bytes, reset_peak_memory, synchronize

from whitebox.layers import ContractBroadcastAttention, SubspaceAttention, TokenStatisticsAttention

TOKENS = (196, 784, 3136, 12544)


def make_layers(dim: int, heads: int, num_tokens: int) -> dict[str, nn.Module]:
    """The four layers at width ``dim`` with ``heads`` heads; CBSA pools the (square) grid of the N tokens."""
    from timm.layers import Attention

    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"--tokens must be squares (a patch grid), got {num_tokens}")
    return {
        "MSSA (SDPA)": SubspaceAttention(dim, heads, fused_attn=True),
        "TSSA": TokenStatisticsAttention(dim, heads, qkv_bias=True),
        "CBSA": ContractBroadcastAttention(dim, heads, grid_size=(side, side), pooling="patch", num_prefix_tokens=0),
        "timm Attention": Attention(dim, num_heads=heads, qkv_bias=True),
    }


def saved_bytes(step: Callable[[], torch.Tensor], layer: nn.Module) -> int:
    """Bytes of the activations autograd saves for the backward of ``step()``: each storage once, the
    layer's own parameters left out (they are held anyway)."""
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    del out
    return sum(seen.values())


def measure(dim: int, heads: int, tokens: list[int], batch: int, warmup: int, rounds: int, device: str) -> list[dict]:
    rows = []
    for n in tokens:
        layers = {k: v.to(device) for k, v in make_layers(dim, heads, n).items()}
        x = torch.randn(batch, n, dim, device=device, generator=torch.Generator(device).manual_seed(0))
        grad = torch.randn_like(x)

        def forward(layer: nn.Module, x: torch.Tensor = x) -> torch.Tensor:
            return layer(x.detach().requires_grad_())

        def step(layer: nn.Module, grad: torch.Tensor = grad) -> None:
            forward(layer).backward(grad)

        memory, peaks = {}, {}
        for name, layer in layers.items():
            for _ in range(warmup):
                step(layer)
            layer.zero_grad(set_to_none=True)
            memory[name] = saved_bytes(lambda layer=layer: forward(layer), layer)
            peaks[name] = None
            if device.startswith("cuda"):  # CPU has no allocator statistics
                reset_peak_memory(device)
                before = torch.cuda.memory_allocated(device)
                step(layer)
                peaks[name] = peak_memory_bytes(device) - before
        times: dict[str, list[float]] = {name: [] for name in layers}
        for _ in range(rounds):
            for name, layer in layers.items():
                synchronize(device)
                start = time.perf_counter()
                step(layer)
                synchronize(device)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["MSSA (SDPA)"])
        for name in layers:
            median = statistics.median(times[name])
            rows.append(
                dict(
                    tokens=n,
                    layer=name,
                    ms=1e3 * median,
                    time_vs_mssa=median / base,
                    saved_mib=memory[name] / 2**20,
                    saved_vs_mssa=memory[name] / memory["MSSA (SDPA)"],
                    peak_mib=None if peaks[name] is None else peaks[name] / 2**20,
                    seconds=times[name],
                )
            )
        print(f"  N = {n}: done", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    cuda = any(r["peak_mib"] is not None for r in rows)
    head = "| N | layer | fwd+bwd ms | time / MSSA | saved for backward MiB | memory / MSSA |"
    head += " peak MiB |" if cuda else ""
    lines = [head, "| ---: | --- |" + " ---: |" * (4 + cuda)]
    for r in rows:
        line = f"| {r['tokens']} | {r['layer']} | {r['ms']:.1f} | {r['time_vs_mssa']:.2f} | {r['saved_mib']:.1f} "
        line += f"| {r['saved_vs_mssa']:.2f} |"
        line += f" {r['peak_mib']:.1f} |" if cuda else ""
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows (with every timing) here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("need --rounds >= 1, --warmup >= 0, --batch >= 1")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    where = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    )
    setting = f"one layer, d = {args.dim}, {args.heads} heads, batch {args.batch}, fp32, {where}"
    print(f"{setting}; median of {args.rounds} rounds", flush=True)
    rows = measure(args.dim, args.heads, args.tokens, args.batch, args.warmup, args.rounds, args.device)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(dict(device=where, rows=rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
