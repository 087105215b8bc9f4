"""The GenTron transformer block and the final layer."""
from __future__ import annotations

import torch
import torch.nn as nn

from gentron.attention import CrossAttention, SelfAttention, TemporalSelfAttention


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: the same per-sample shift/scale at every token (one fused addcmul, not three ops)."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GenTronBlock(nn.Module):
    """self-attn -> [cross-attn] -> [temporal self-attn] -> MLP, each a residual branch.

    Self-attention and MLP are pre-normed with adaLN-Zero driven by c (time + pooled text): a linear
    layer initialised to zero gives shift/scale/gate, so both branches start closed. Cross- and
    temporal attention are pre-normed with a plain LayerNorm: c already reaches the block through
    adaLN, and text tokens come in through the keys/values (docs/method.md).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_size: int,
                 context_dim: int | None, temporal: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
        cross_attn = context_dim is not None  # None: an adaLN-only block
        self.cross_norm = nn.LayerNorm(hidden_size, eps=1e-6) if cross_attn else None
        self.cross_attn = CrossAttention(hidden_size, context_dim, num_heads) if cross_attn else None
        self.temporal_norm = nn.LayerNorm(hidden_size, eps=1e-6) if temporal else None
        self.temporal_attn = TemporalSelfAttention(hidden_size, num_heads) if temporal else None
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, num_frames: int = 1,
                frame_pos: torch.Tensor | None = None,
                temporal_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B*T, N, D); c (B*T, D); context (B*T, L, D_text) and context_mask (B*T, L) for cross-attn;
        frame_pos (T, D) and temporal_mask (see attention.temporal_mask) for temporal attention."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = torch.addcmul(x, gate_msa[:, None], self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_norm(x), context, context_mask)
        if self.temporal_attn is not None:
            x = x + self.temporal_attn(self.temporal_norm(x), num_frames, frame_pos, temporal_mask)
        return torch.addcmul(x, gate_mlp[:, None], self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map from tokens to flattened latent patches."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))
