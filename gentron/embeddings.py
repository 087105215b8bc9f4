"""Everything that turns an input into hidden-width vectors: patches, positions, timesteps, text.

Position embeddings are fixed sin-cos tables, never parameters, so they are absent from checkpoints
and a model trained on a 32x32 latent grid runs unchanged on a 64x64 one (tokens keep the absolute
grid positions they had, as in DiT; a larger grid adds positions beyond the trained range).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) positions -> (N, dim) table: sin of every frequency, then cos (the MAE/DiT layout)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """(grid_h * grid_w, dim) table in row-major token order. Like DiT, the first half of the width
    encodes the column and the second half the row, so DiT's tables are reproduced exactly."""
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding width must be a multiple of 4, got {dim}")
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


class PositionEmbedding2D(nn.Module):
    """Fixed 2D sin-cos positions for a grid of patches.

    The table for the configured grid is cached as a non-persistent buffer (it follows .to() but is
    not saved); any other grid size is computed on the fly from the shape alone, which keeps
    torch.compile happy (no data-dependent branching).
    """

    def __init__(self, dim: int, grid_size: int):
        super().__init__()
        self.dim = dim
        self.grid_size = grid_size
        self.register_buffer("table", sincos_2d(dim, grid_size, grid_size), persistent=False)

    def forward(self, grid_h: int, grid_w: int) -> torch.Tensor:
        if grid_h == grid_w == self.grid_size:
            return self.table
        return sincos_2d(self.dim, grid_h, grid_w, device=self.table.device)


class FramePositionEmbedding(nn.Module):
    """Fixed 1D sin-cos positions over frames, for temporal attention.

    Sin-cos rather than learned because: it has no parameters, so a T2I checkpoint is all a fresh
    T2V model needs; it is defined for any clip length, so training on 8 frames and sampling 16
    works; and a motion-free pseudo-video (an image repeated T times) still gets distinct, smooth
    frame positions without any frame position having to be learned from scarce video data.
    """

    def __init__(self, dim: int, max_frames: int):
        super().__init__()
        self.max_frames = max_frames
        self.register_buffer("table", sincos_1d(dim, torch.arange(max_frames)), persistent=False)

    def forward(self, num_frames: int) -> torch.Tensor:
        if num_frames > self.max_frames:
            raise ValueError(
                f"clip has {num_frames} frames but the model was built with max_frames="
                f"{self.max_frames}; raise GenTronConfig.max_frames"
            )
        return self.table[:num_frames]


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> hidden width: sinusoidal features, then a two-layer MLP (as DiT)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @staticmethod
    def frequencies(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """(B,) timesteps, integer or fractional -> (B, dim) [cos | sin] features (DiT's layout)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([args.cos(), args.sin()], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.frequencies(t, self.frequency_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, D): a conv whose kernel and stride are the patch size."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class PooledTextProjection(nn.Module):
    """One text encoder's pooled vector -> hidden width, added to the time embedding in c.

    Token features need no projection here: cross-attention reads them at the encoder's own width.
    """

    def __init__(self, pooled_width: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(pooled_width, hidden_size)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)
