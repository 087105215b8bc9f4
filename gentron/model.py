"""GenTron: a DiT backbone with text conditioning (adaLN or cross-attention) and, for video,
temporal self-attention in every block. See GENTRON.md sections 1-2 and DESIGN.md "Model"."""
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
    long_skip: bool = False                   # U-ViT long skips: block i's output joins block depth-1-i's input
    conv_head: bool = False                   # U-ViT: a residual 3x3 conv on the unpatchified output
    route_ratio: float = 0.0                  # TREAD: share of tokens that skip the routed blocks in training
    route_span: tuple[int, int] | None = None  # routed blocks [start, end); None: all but the first and last

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
        if not 0.0 <= self.route_ratio < 1.0:
            problems.append(f"route_ratio must be in [0, 1), got {self.route_ratio}")
        if self.route_span is not None:
            self.route_span = tuple(int(i) for i in self.route_span)
            start, end = self.route_span
            if not 0 <= start < end <= self.depth:
                problems.append(f"route_span {self.route_span} must be [start, end) with 0 <= start < end <= depth "
                                f"({self.depth})")
        if self.route_ratio and not problems and not self.routed_blocks:
            problems.append(f"route_ratio {self.route_ratio} needs a routed block, but depth {self.depth} leaves none "
                            "between its first and last: give route_span or turn routing off")
        if self.route_ratio and self.long_skip:
            problems.append("route_ratio and long_skip do not combine (a long skip would join token sets of "
                            "different sizes): turn one off")
        if problems:
            raise ValueError("invalid GenTronConfig: " + "; ".join(problems))

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def routed_blocks(self) -> range:
        start, end = self.route_span or (1, self.depth - 1)
        return range(start, end)

    @property
    def num_text_encoders(self) -> int:
        return len(self.text_widths)

    def to_dict(self) -> dict:
        return asdict(self)

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
        # Small pixel-space ViTs lose fine detail in the trunk and draw patch seams (U-ViT, Bao et al.
        # 2023): long skips hand shallow features to the deep half, a 3x3 conv smooths across patches.
        self.skip_projections = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(config.depth // 2)) \
            if config.long_skip else None
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels)
        self.conv_head = nn.Conv2d(config.out_channels, config.out_channels, 3, padding=1) if config.conv_head else None
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
        if self.conv_head is not None:
            zero.append(self.conv_head)  # a residual branch that starts closed
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
        cfg = self.config
        if len(text) != cfg.num_text_encoders:
            raise ValueError(f"model was built for {cfg.num_text_encoders} text encoder(s), got {len(text)} "
                             "TextEmbedding(s)")
        for i, (emb, tw, pw) in enumerate(zip(text, cfg.text_widths, cfg.pooled_widths)):
            if emb.tokens.shape[-1] != tw or emb.pooled.shape[-1] != pw:
                raise ValueError(f"text encoder {i}: model expects token width {tw} and pooled width {pw}, "
                                 f"got {emb.tokens.shape[-1]} and {emb.pooled.shape[-1]}")
        video = x.ndim == 5
        batch, frames = x.shape[0], (x.shape[1] if video else 1)
        if video:
            x = x.flatten(0, 1)
        grid_h, grid_w = x.shape[-2] // cfg.patch_size, x.shape[-1] // cfg.patch_size

        tokens = self.x_embedder(x) + self.pos_embed(grid_h, grid_w)
        c = self.t_embedder(t)
        for proj, emb in zip(self.pooled_projections, text):
            c = c + proj(emb.pooled)
        cross = cfg.conditioning == "cross_attn"
        contexts = [(emb.tokens, emb.mask) if cross else (None, None) for emb in text]
        if frames > 1:  # conditioning is per clip; every frame of a clip gets the same
            c = c.repeat_interleave(frames, dim=0)
            contexts = [(ctx.repeat_interleave(frames, dim=0), m.repeat_interleave(frames, dim=0))
                        if ctx is not None else (None, None) for ctx, m in contexts]

        frame_pos = motion_off = None
        if cfg.temporal:
            frame_pos = self.frame_pos(frames).to(tokens.dtype)
            if motion_free is not None:
                motion_off = motion_free.to(device=x.device, dtype=torch.bool)

        # TREAD (Krause et al. 2025): in training, a random share of the tokens skips the routed
        # blocks and rejoins unchanged after them. Those blocks cost that much less, every token is
        # still denoised and in the loss, and sampling runs all tokens through every block.
        routed = cfg.routed_blocks if self.training and cfg.route_ratio > 0 else range(0)
        kept = self.kept_tokens(batch, frames, tokens.shape[1], x.device) if routed else None
        # one temporal mask per token count the blocks see: all tokens, and the kept ones when routing
        counts = (tokens.shape[1], kept.shape[1]) if routed else (tokens.shape[1],)
        masks = {n: temporal_mask(motion_off, n, frames) for n in counts} if motion_off is not None else {}
        skips, first_deep = [], cfg.depth - cfg.depth // 2
        for i, block in enumerate(self.blocks):
            if routed and i == routed.start:
                all_tokens, tokens = tokens, tokens.gather(1, kept)
            if self.skip_projections is not None and i >= first_deep:
                tokens = self.skip_projections[i - first_deep](torch.cat([tokens, skips.pop()], dim=-1))
            context, context_mask = contexts[i % len(contexts)]  # interleaved cross-attention
            args = (tokens, c, context, context_mask, frames, frame_pos, masks.get(tokens.shape[1]))
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, *args, use_reentrant=False)
            else:
                tokens = block(*args)
            if routed and i == routed.stop - 1:
                tokens = all_tokens.scatter(1, kept, tokens)
            if self.skip_projections is not None and i < cfg.depth // 2:
                skips.append(tokens)

        out = self.unpatchify(self.final_layer(tokens, c), grid_h, grid_w)
        if self.conv_head is not None:
            out = out + self.conv_head(out)
        return out.unflatten(0, (batch, frames)) if video else out

    def kept_tokens(self, batch: int, frames: int, num_tokens: int, device: torch.device) -> torch.Tensor:
        """Indices (B*T, K, D) of the tokens the routed blocks see: a random (1 - route_ratio) share per
        clip, the same positions in every frame so temporal attention still lines frames up."""
        keep = max(1, round(num_tokens * (1 - self.config.route_ratio)))
        order = torch.rand(batch, num_tokens, device=device).argsort(dim=1)[:, :keep].sort(dim=1).values
        index = order.repeat_interleave(frames, dim=0)
        return index[..., None].expand(-1, -1, self.config.hidden_size)

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
