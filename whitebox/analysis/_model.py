"""What the analysis needs to know about a model: its block stacks, its geometry, how to run it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..models._encoder import TokenEncoder
from ..models._mae import MaskedAutoencoder, check_mask_ratio

STAGES = ("encoder", "decoder")


BACKBONE = ("patch_embed", "blocks", "num_prefix_tokens", "forward_features")


def encoder_of(model: nn.Module) -> TokenEncoder:
    """The token encoder of a CRATE / ViT-style backbone or a masked autoencoder.

    Any other model with the backbone interface the analysis uses (``patch_embed`` with ``img_size``
    and ``dynamic_grid``, ``blocks``, ``num_prefix_tokens``, ``forward_features``) is its own encoder,
    so a new family need not subclass ``TokenEncoder``.
    """
    if isinstance(model, MaskedAutoencoder):
        return model.encoder
    if isinstance(model, TokenEncoder) or (isinstance(model, nn.Module) and all(hasattr(model, a) for a in BACKBONE)):
        return model
    raise TypeError(
        "expected a whitebox model (CRATE, CRATE-MAE, ViT-MAE or another TokenEncoder / MaskedAutoencoder), "
        f"got {type(model).__name__}"
    )


def block_stacks(model: nn.Module) -> dict[str, nn.Sequential]:
    """``{'encoder': blocks}``, plus ``'decoder'`` for a masked autoencoder, in forward order.

    A model with other stacks declares them itself with ``analysis_stacks() -> {stage: blocks}``.
    """
    declared = getattr(model, "analysis_stacks", None)
    if callable(declared):
        return dict(declared())
    stacks = {"encoder": encoder_of(model).blocks}
    if isinstance(model, MaskedAutoencoder):
        stacks["decoder"] = model.decoder_blocks
    return stacks


def check_stage(model: nn.Module, stage: str) -> nn.Sequential:
    stacks = block_stacks(model)
    if stage not in stacks:
        raise ValueError(f"stage must be one of {sorted(stacks)} for {type(model).__name__}, got {stage!r}")
    return stacks[stage]


def check_block_indices(blocks: nn.Sequential, indices: int | list[int] | None, stage: str) -> list[int]:
    """Normalise block indices (``None``: all; negative ones count from the end)."""
    n = len(blocks)
    if indices is None:
        return list(range(n))
    wanted = [indices] if isinstance(indices, int) else list(indices)
    out = []
    for i in wanted:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f"block index {i!r} out of range for the {n} {stage} blocks (use -{n} .. {n - 1})")
        out.append(i % n)
    return out


def image_geometry(model: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """Patch grid (gh, gw) of ``images`` after checking them against the model's patch embedding."""
    return encoder_of(model).patch_embed.dynamic_grid(images)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def run(
    model: nn.Module,
    images: torch.Tensor,
    decoder: bool = True,
    mask_ratio: float = 0.0,
    noise: torch.Tensor | None = None,
) -> None:
    """One forward pass through the encoder (and the decoder of a masked autoencoder) so hooks fire."""
    if isinstance(model, MaskedAutoencoder):
        mask_ratio = check_mask_ratio(mask_ratio)
        if decoder:
            model(images, mask_ratio=mask_ratio, noise=noise)
        else:
            model.forward_encoder(images, mask_ratio=mask_ratio, noise=noise)
    else:
        encoder_of(model).forward_features(images)
