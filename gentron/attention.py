"""The three attentions of a GenTron block, all on torch's scaled_dot_product_attention (SDPA picks
the flash / memory-efficient kernel where the inputs allow it)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H*Dh) -> (B, H, N, Dh)."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, Dh) -> (B, N, H*Dh)."""
    return x.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection (one matmul instead of three)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        # (B, N, 3, H, Dh) -> three (B, H, N, Dh) views, no copies before SDPA.
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)))


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to text tokens (keys/values, one fused KV projection).

    Keys and values are projected straight from the text encoder's own width (`context_dim`), as in
    Stable Diffusion's cross-attention: with interleaved encoders each block reads its encoder's raw
    features, and no shared token projection sits in between.

    `mask` is TextEmbedding.mask (B, L), True for real tokens; padded tokens get no attention. A
    row with no real token at all would make softmax 0/0 = NaN, so such rows attend to everything
    and their attention output is then zeroed before the output projection: "no text" gives
    `proj.bias` at every query (a constant, not text), without a data-dependent branch.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = _heads(self.q(x), self.num_heads)
        k, v = self.kv(context).unflatten(-1, (2, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        has_text = mask.any(dim=1)  # (B,)
        keep = (mask | ~has_text[:, None])[:, None, None, :]  # (B, 1, 1, L) broadcast over heads, queries
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return self.proj(_merge(out) * has_text[:, None, None].to(out.dtype))


def temporal_mask(motion_free: torch.Tensor, num_tokens: int, num_frames: int) -> torch.Tensor:
    """Per-sample temporal attention mask for TemporalSelfAttention's (b n) batch.

    motion_free (B,) bool: True -> identity (each frame attends only to itself, motion off),
    False -> full attention over frames. Returns (B * num_tokens, 1, T, T) bool, True = attend.
    """
    eye = torch.eye(num_frames, dtype=torch.bool, device=motion_free.device)
    per_sample = eye | ~motion_free[:, None, None]  # (B, T, T)
    return per_sample.repeat_interleave(num_tokens, dim=0)[:, None]


class TemporalSelfAttention(nn.Module):
    """Self-attention across the frames of a clip, at each spatial position independently.

    Tokens arrive as (b t) n d and attend over t as (b n) t d. Frame positions are added to the
    attention input only (not to the token stream), and the output projection starts at zero, so a
    fresh T2V model is exactly its T2I model applied frame by frame.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = SelfAttention(dim, num_heads)

    def forward(self, x: torch.Tensor, num_frames: int, frame_pos: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B*T, N, D), frame_pos (T, D), attn_mask from `temporal_mask` or None (motion on)."""
        n = x.shape[1]
        x = rearrange(x, "(b t) n d -> (b n) t d", t=num_frames)
        x = self.attn(x + frame_pos, attn_mask=attn_mask)
        return rearrange(x, "(b n) t d -> (b t) n d", n=n)
