"""Shared fixtures: tiny model factories and the reference implementation on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Small shapes that keep every registered variant's structure (family, embeddings, heads).
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


def tiny_kwargs(name: str) -> dict:
    kwargs = dict(TINY)
    if name.startswith("vit_mae"):
        kwargs.update(decoder_depth=2, decoder_num_heads=4)
    return kwargs


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread: the CI machine has 2 shared cores, and training loops spin-wait on more."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
