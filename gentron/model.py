"""GenTron: a DiT backbone with text conditioning (adaLN or cross-attention) and, for video,
temporal self-attention in every block. See docs/method.md and DESIGN.md "Model"."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from gentron.attention import temporal_mask
from gentron.blocks import FinalLayer, GenTronBlock
from gentron.embeddings import (FramePositionEmbedding, PatchEmbed, PositionEmbedding2D,
                                PooledTextProjection, TimestepEmbedder)

if TYPE_CHECKING:  # annotation only: importing gentron.text would pull in the text encoders' libraries
    from gentron.text.base import TextEmbedding

CONDITIONINGS = ("adaln", "cross_attn")


@dataclass
class GenTronConfig:
    input_size: int = 32            # latent grid side the position table is cached for
    patch_size: int = 2
    in_channels: int = 4
    depth: int = 28
    hidden_size: int = 1152
    mlp_hidden_size: int = 4608
    num_heads: int = 16
    conditioning: str = "cross_attn"          # "adaln" | "cross_attn"
    text_widths: tuple[int, ...] = (768,)     # token width per text encoder
    pooled_widths: tuple[int, ...] = (768,)   # pooled width per text encoder
    learn_sigma: bool = False                 # also predict the variance: 2x output channels
    temporal: bool = False                    # T2V: temporal self-attention in every block
    max_frames: int = 32                      # longest clip the frame-position table covers
    grad_checkpointing: bool = False

    def __post_init__(self):
        self.text_widths = tuple(int(w) for w in self.text_widths)
        self.pooled_widths = tuple(int(w) for w in self.pooled_widths)
        problems = []
        if self.conditioning not in CONDITIONINGS:
            problems.append(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if not self.text_widths or len(self.text_widths) != len(self.pooled_widths):
            problems.append(f"text_widths {self.text_widths} and pooled_widths {self.pooled_widths} "
                            "need one entry per text encoder (at least one)")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            problems.append(f"hidden_size {self.hidden_size} must be a multiple of 4 (2D sin-cos positions)")
        if self.input_size % self.patch_size:
            problems.append(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if problems:
            raise ValueError("invalid GenTronConfig: " + "; ".join(problems))

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def num_text_encoders(self) -> int:
        return len(self.text_widths)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GenTronConfig:
        """The config a checkpoint stored with `to_dict` (a cell's is derived by gentron.config.resolve)."""
        return cls(**values)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class GenTron(nn.Module):
    def __init__(self, config: GenTronConfig):
        super().__init__()
        self.config = config
        cross = config.conditioning == "cross_attn"
        d = config.hidden_size
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, d)
        self.pos_embed = PositionEmbedding2D(d, config.input_size // config.patch_size)
        self.t_embedder = TimestepEmbedder(d)
        self.pooled_projections = nn.ModuleList(PooledTextProjection(pw, d) for pw in config.pooled_widths)
        self.frame_pos = FramePositionEmbedding(d, config.max_frames) if config.temporal else None
        self.blocks = nn.ModuleList(
            # interleaved cross-attention: block i reads text encoder i mod k, at that encoder's width
            GenTronBlock(d, config.num_heads, config.mlp_hidden_size,
                         context_dim=config.text_widths[i % config.num_text_encoders] if cross else None,
                         temporal=config.temporal)
            for i in range(config.depth)
        )
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels)
        self.grad_checkpointing = config.grad_checkpointing
        self.initialize_weights()

    def initialize_weights(self):
        """DiT's initialisation, plus zero output projections for cross- and temporal attention.

        xavier-uniform linears (the patch conv like a linear), N(0, 0.02) timestep MLP, zero adaLN
        modulation and final layer. Zeroing the cross-attention output projection (as PixArt-alpha
        does) and the temporal one (as GenTron does) makes every block the identity at init.
        """
        def _basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(_basic)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero = [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for block in self.blocks:
            zero.append(block.adaLN_modulation[-1])
            if block.cross_attn is not None:
                zero.append(block.cross_attn.proj)
            if block.temporal_attn is not None:
                zero.append(block.temporal_attn.attn.proj)
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def unpatchify(self, x: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W), DiT's patch layout (channels last inside a patch)."""
        p = self.config.patch_size
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=grid_h, w=grid_w, p=p, q=p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: list[TextEmbedding],
                motion_free: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) or (B, T, C, H, W); t (B,); text: one TextEmbedding per encoder, per clip;
        motion_free (B,) bool, True = identity temporal mask for that clip (None = motion on).

        Returns (B[, T], C_out, H, W). A temporal model treats a 4D batch as clips of one frame; a
        non-temporal model given clips runs on each frame independently.
        """
        self.check_text(text)
        video = x.ndim == 5
        batch, frames = x.shape[0], (x.shape[1] if video else 1)
        if video:
            x = x.flatten(0, 1)                                       # frames ride in the batch
        grid_h, grid_w = x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size
        tokens = self.x_embedder(x) + self.pos_embed(grid_h, grid_w)  # (B*T, N, D)
        c = self.conditioning_vector(t, text, frames)                 # (B*T, D): time + pooled text
        contexts = self.text_contexts(text, frames)                   # per encoder: tokens, mask
        frame_pos, mask = self.temporal_inputs(tokens, frames, motion_free)
        for i, block in enumerate(self.blocks):
            context, context_mask = contexts[i % len(contexts)]     # interleaved cross-attention
            args = (tokens, c, context, context_mask, frames, frame_pos, mask)
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, *args, use_reentrant=False)
            else:
                tokens = block(*args)
        out = self.unpatchify(self.final_layer(tokens, c), grid_h, grid_w)
        return out.unflatten(0, (batch, frames)) if video else out

    def check_text(self, text: list[TextEmbedding]) -> None:
        cfg = self.config
        if len(text) != cfg.num_text_encoders:
            raise ValueError(f"model was built for {cfg.num_text_encoders} text encoder(s), got {len(text)} "
                             "TextEmbedding(s)")
        for i, (emb, tw, pw) in enumerate(zip(text, cfg.text_widths, cfg.pooled_widths)):
            if emb.tokens.shape[-1] != tw or emb.pooled.shape[-1] != pw:
                raise ValueError(f"text encoder {i}: model expects token width {tw} and pooled width {pw}, "
                                 f"got {emb.tokens.shape[-1]} and {emb.pooled.shape[-1]}")

    def conditioning_vector(self, t: torch.Tensor, text: list[TextEmbedding], frames: int) -> torch.Tensor:
        """adaLN's input: the timestep embedding plus each encoder's projected pooled text, per frame."""
        c = self.t_embedder(t)
        for proj, emb in zip(self.pooled_projections, text):
            c = c + proj(emb.pooled)
        return c.repeat_interleave(frames, dim=0) if frames > 1 else c

    def text_contexts(self, text: list[TextEmbedding], frames: int) -> list[tuple]:
        """Cross-attention keys/values per encoder (None for adaLN-only blocks), one copy per frame."""
        if self.config.conditioning != "cross_attn":
            return [(None, None)]
        if frames == 1:
            return [(emb.tokens, emb.mask) for emb in text]
        return [(emb.tokens.repeat_interleave(frames, dim=0), emb.mask.repeat_interleave(frames, dim=0))
                for emb in text]

    def temporal_inputs(self, tokens: torch.Tensor, frames: int, motion_free: torch.Tensor | None):
        """Frame positions and the motion-free temporal mask (None where not temporal / motion on)."""
        if not self.config.temporal:
            return None, None
        frame_pos = self.frame_pos(frames).to(tokens.dtype)
        if motion_free is None:
            return frame_pos, None
        motion_off = motion_free.to(device=tokens.device, dtype=torch.bool)
        return frame_pos, temporal_mask(motion_off, tokens.shape[1], frames)

    @torch.no_grad()
    def load_t2i_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a T2I checkpoint: every non-temporal weight must be there (strict), temporal layers
        are left as they are (zero-initialised output projections on a fresh model)."""
        own = self.state_dict()
        is_temporal = lambda k: ".temporal_" in k  # noqa: E731  blocks.<i>.temporal_norm / temporal_attn
        wanted = {k for k in own if not is_temporal(k)}
        given = set(state_dict)
        missing = sorted(wanted - given)
        unexpected = sorted(given - wanted)
        mismatched = sorted(k for k in wanted & given if tuple(state_dict[k].shape) != tuple(own[k].shape))
        if missing or unexpected or mismatched:
            lines = []
            if missing:
                lines.append(f"missing non-temporal keys ({len(missing)}): {missing}")
            if unexpected:
                lines.append(f"unexpected keys ({len(unexpected)}): {unexpected} (temporal keys mean this is "
                             "already a T2V checkpoint: use load_state_dict)")
            if mismatched:
                lines.append("shape mismatches: " + ", ".join(
                    f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched))
            raise ValueError("T2I checkpoint does not fit this model (same size, conditioning and text "
                             "encoders needed): " + "; ".join(lines))
        self.load_state_dict(state_dict, strict=False)
