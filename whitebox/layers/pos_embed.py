"""Fixed 2-D sin-cos position tables in the MAE channel layout, and their resampling."""

from __future__ import annotations

import torch
from torch import nn


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    r"""1-D sin-cos table: ``[sin(pos * omega), cos(pos * omega)]``, ``omega_i = 10000^{-2i/dim}``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int | tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """2-D sin-cos table of shape (num_prefix_tokens + gh * gw, dim), float32.

    MAE layout: the first half of the channels encodes the column (w) coordinate, the second half
    the row (h) coordinate; tokens run row-major; prefix tokens (the class token) get zero rows.

    Args:
        dim: token width d, divisible by 4.
        grid_size: patch grid (gh, gw), or an int for a square grid.
        num_prefix_tokens: leading rows of zeros.

    Raises:
        ValueError: ``dim`` not divisible by 4.

    Source: MAE ``util/pos_embed.py`` (``get_2d_sincos_pos_embed``).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    table = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    table = torch.cat([torch.zeros(num_prefix_tokens, dim, dtype=torch.float64), table], dim=0)
    return table.float()


class SinCosPosEmbed(nn.Module):
    """A fixed (non-trainable, non-persistent) 2-D sin-cos table for a patch grid.

    ``forward(grid_size)`` returns the (1, prefix + gh * gw, dim) table; a grid other than the one
    it was built for is computed exactly on the fly (sin-cos tables resample without interpolation).

    Args:
        dim: token width d, divisible by 4.
        grid_size: patch grid (gh, gw) (or an int for a square grid) the table is built for.
        num_prefix_tokens: leading rows of zeros (1: the class token).

    Raises:
        ValueError: ``dim`` not divisible by 4.

    Source: MAE ``util/pos_embed.py`` (``get_2d_sincos_pos_embed``), as CRATE-MAE uses it.
    """

    def __init__(self, dim: int, grid_size: int | tuple[int, int], num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        table = sincos_2d(dim, self.grid_size, num_prefix_tokens)[None]
        self.register_buffer("table", table, persistent=False)

    def forward(self, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The table for a patch grid: (1, [1 +] gh * gw, d), computed exactly for any grid (no resampling)."""
        if grid_size is None or tuple(grid_size) == self.grid_size:
            return self.table
        # Cached per grid, device and dtype so a GPU run at another size does not rebuild the table on
        # the host and copy it every step; kept out of the buffers so it never enters a state dict.
        key = (tuple(grid_size), self.table.device, self.table.dtype)
        cache = self.__dict__.setdefault("_other_grids", {})
        if key not in cache:
            table = sincos_2d(self.dim, key[0], self.num_prefix_tokens)[None]
            cache[key] = table.to(device=self.table.device, dtype=self.table.dtype)
        return cache[key]

    def extra_repr(self) -> str:
        """Width, grid and whether a class-token row is included, shown by ``print(module)``."""
        return f"dim={self.dim}, grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens}"
