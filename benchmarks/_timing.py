"""Shared helpers for the benchmarks: device-synchronised timing and peak memory (JSON output: ``whitebox.io``).

t = median_time(step, warmup=3, reps=10, device="cuda")   # Timing(median, min, times)
reset_peak_memory("cuda"); step(); peak_memory_bytes("cuda")  # None on CPU
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of each timed call, after warm-up."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)


def synchronize(device: str | torch.device) -> None:
    """Wait for queued kernels on a CUDA device; a no-op elsewhere (CPU ops are synchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[], object], warmup: int = 3, reps: int = 10, device: str | torch.device = "cpu"
) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``reps`` times, each timed between device syncs.

    Syncing around every call makes each sample the full latency of one call (queued work
    included), so the median is the step time a training loop sees.
    """
    if warmup < 0 or reps < 1:
        raise ValueError(f"need warmup >= 0 and reps >= 1, got warmup={warmup}, reps={reps}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(times)


def reset_peak_memory(device: str | torch.device) -> None:
    """Start a new peak-memory window (CUDA only; CPU has no allocator statistics)."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: str | torch.device) -> int | None:
    """Peak bytes held by tensors on a CUDA device since the last reset; ``None`` on CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))
