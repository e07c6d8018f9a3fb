"""Process-group set-up for one process or ``torchrun`` (single or multi node).

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without them the job runs as one
process. NCCL is used for CUDA, gloo for CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``'auto'``/``None``: this rank's GPU when CUDA is present, else the CPU."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N, mps, xpu or xpu:N, got {device!r}") from None
    if dev.type in ("cuda", "xpu"):
        backend = getattr(torch, dev.type)
        if not backend.is_available():
            raise ValueError(f"--device {device}: {dev.type.upper()} is not available here; use --device cpu")
        if dev.index is None:
            dev = torch.device(dev.type, local_rank)
        if dev.index >= backend.device_count():
            raise ValueError(
                f"--device {device}: no {dev.type} device {dev.index} (this machine has {backend.device_count()}: "
                f"{dev.type}:0 to {dev.type}:{backend.device_count() - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS (Apple GPU) is not available here; use --device cpu")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N, mps, xpu or xpu:N, got {device!r}")
    return dev


def init_distributed(device: str | None = "auto", backend: str | None = None) -> DistInfo:
    """Join the process group when launched by ``torchrun``; otherwise describe a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def cleanup_distributed() -> None:
    """Destroy the default process group, if one was initialised (a no-op otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over all ranks (``x`` itself when not distributed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
