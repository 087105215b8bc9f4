"""GenTron model sizes, read like the paper's table, and their parameter counts.

What is counted: the transformer only, as trained: patch and timestep embedders, text projections,
blocks (self-attention, MLP, adaLN, cross-attention), final layer. Frozen text encoders and the VAE
are excluded; fixed sin-cos position tables are buffers, not parameters. Setting: 256px (32x32x4
latents, 256 tokens at /2), learn_sigma=True as DiT. `python -m gentron.sizes` prints every size.

Against the paper. DiT-XL/2 is 675,129,632 parameters; our adaLN XL/2 with CLIP-L is 674,567,456:
exactly DiT minus its class table (1001 x 1152) and its frozen pos_embed parameter (256 x 1152),
plus our pooled-text projection (768 x 1152 + 1152). With cross-attention and CLIP-L+T5-XXL we
count XL/2 = 910.7M (paper 930.0M, -2.1%) and G/2 = 3065.2M (paper 3083.8M, -0.6%). Nothing is tuned
to the paper. Each block's cross-attention reads its encoder's tokens at the encoder's own width
(K/V are Linear(768 or 4096 -> width), as Stable Diffusion's cross-attention does; interleaved, 14 of
XL/2's blocks read CLIP-L and 14 read T5-XXL); a width-to-width cross-attention behind one shared
token projection per encoder (PixArt's choice) would count 833.7M, 10% under the paper, which is why
we read the paper as the former. The remaining ~19M are not identified: the paper does not list its
embedders (a caption MLP or a second pooled projection would be about that size). G/2's MLP width is
itself uncertain (ViT-G uses 8192, which would add 245M).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gentron.model import GenTron, GenTronConfig


@dataclass(frozen=True)
class Size:
    depth: int
    hidden_size: int
    mlp_hidden_size: int
    num_heads: int
    note: str


# Scaled in depth, width and MLP width together (Zhai et al., "Scaling Vision Transformers").
# The small sizes are ours, for CPU runs: ViT/DiT widths with MLP = 4x width and head dim 64.
# CS is the embedded default's model (CompShapes on a CPU): 0.29M parameters at patch 2, 20 px.
BASES: dict[str, Size] = {
    "CS": Size(6, 48, 96, 3, "ours: the embedded default (CompShapes, 20 px, CPU); head dim 16, MLP 2x"),
    "T": Size(6, 192, 768, 3, "ours: ViT-Ti width at half its depth, for CPU runs; head dim 64"),
    "XS": Size(4, 64, 256, 4, "ours: XL's layout (MLP 4x width) at CPU width, to rehearse the paper "
                              "profile on a CPU; head dim 16"),
    "S": Size(12, 384, 1536, 6, "DiT-S; head dim 64"),
    "B": Size(12, 768, 3072, 12, "DiT-B; head dim 64"),
    "L": Size(24, 1024, 4096, 16, "DiT-L; head dim 64"),
    "XL": Size(28, 1152, 4608, 16, "paper (= DiT-XL); head dim 72"),
    "G": Size(48, 1664, 6656, 16, "paper; heads ours: head dim 104"),
}
PATCH_SIZES = (2, 4, 8)
SIZES: dict[str, tuple[Size, int]] = {
    f"{name}/{p}": (size, p) for name, size in BASES.items() for p in PATCH_SIZES
}

# Parameter counts the paper reports (with cross-attention; docs/method.md).
PAPER_PARAMS = {"XL/2": 930.0e6, "G/2": 3083.8e6}

# (token widths, pooled widths) per text-encoder choice; T5-XXL's pooled vector is its token mean.
TEXT_ENCODERS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "CLIP-L": ((768,), (768,)),
    "T5-XXL": ((4096,), (4096,)),
    "CLIP-L+T5-XXL": ((768, 4096), (768, 4096)),
}


def model_config(size_name: str, **overrides) -> GenTronConfig:
    """GenTronConfig with depth/width/MLP/heads/patch from the registry, then `overrides`."""
    if size_name not in SIZES:
        raise ValueError(f"unknown model size {size_name!r}; known sizes: {', '.join(SIZES)}")
    size, patch = SIZES[size_name]
    if "patch_size" in overrides and overrides["patch_size"] != patch:
        base = size_name.split("/")[0]
        raise ValueError(f"size {size_name!r} fixes patch_size={patch} but patch_size={overrides['patch_size']} "
                         f"was given; use size '{base}/{overrides['patch_size']}' instead")
    unknown = sorted(set(overrides) - set(GenTronConfig.field_names()))
    if unknown:
        raise ValueError(f"unknown GenTronConfig fields {unknown}; valid: {GenTronConfig.field_names()}")
    values = dict(depth=size.depth, hidden_size=size.hidden_size, mlp_hidden_size=size.mlp_hidden_size,
                  num_heads=size.num_heads, patch_size=patch)
    values.update(overrides)
    return GenTronConfig(**values)


def paper_config(size_name: str, conditioning: str = "cross_attn", text: str = "CLIP-L+T5-XXL",
                 **overrides) -> GenTronConfig:
    """The paper's counting setting: 256px (32x32x4 latents), learn_sigma as DiT."""
    text_widths, pooled_widths = TEXT_ENCODERS[text]
    values = dict(input_size=32, in_channels=4, learn_sigma=True, conditioning=conditioning,
                  text_widths=text_widths, pooled_widths=pooled_widths)
    values.update(overrides)
    return model_config(size_name, **values)


def param_breakdown(model: GenTron) -> dict[str, int]:
    """Transformer parameters by part; the parts sum to model.num_params()."""
    parts = {"blocks": 0, "cross_attn": 0, "temporal": 0, "text_proj": 0, "embedders": 0}
    for name, p in model.named_parameters():
        if name.startswith("blocks."):
            part = ("cross_attn" if ".cross_" in name else "temporal" if ".temporal_" in name else "blocks")
        elif name.startswith("pooled_projections."):
            part = "text_proj"
        else:  # patch and timestep embedders, final layer
            part = "embedders"
        parts[part] += p.numel()
    parts["total"] = sum(parts.values())
    return parts


def count_params(config: GenTronConfig) -> dict[str, int]:
    """param_breakdown of a model built on the meta device: no memory, no initialisation cost."""
    with torch.device("meta"):
        return param_breakdown(GenTron(config))


def count_flops(config: GenTronConfig, text_lengths: tuple[int, ...] | None = None, frames: int = 1) -> int:
    """Forward FLOPs of one sample (an image, or a clip of `frames` frames), counted by torch's
    FlopCounterMode on the meta device: every matmul and attention of the forward, a multiply-add
    counted as 2 FLOPs. Text tokens per encoder: `text_lengths` (default 77 each, CLIP's context).
    DiT-XL/2 at 256 px counts 237.2 GFLOPs here: DiT's 118.6 "Gflops" are multiply-adds. A training
    step costs 3x the forward (forward + backward), plus one forward per step more with activation
    checkpointing, which MFU conventionally leaves out."""
    from torch.utils.flop_counter import FlopCounterMode

    from gentron.text.base import TextEmbedding

    lengths = text_lengths or (77,) * len(config.text_widths)
    shape = (config.in_channels, config.input_size, config.input_size)
    with torch.device("meta"):
        model = GenTron(config)
        x = torch.empty(1, frames, *shape) if config.temporal else torch.empty(1, *shape)
        text = [TextEmbedding(torch.empty(1, n, w), torch.ones(1, n, dtype=torch.bool), torch.empty(1, p))
                for n, w, p in zip(lengths, config.text_widths, config.pooled_widths)]
        with FlopCounterMode(display=False) as counter:
            model(x, torch.zeros(1), text)
    return int(counter.get_total_flops())


def table(names: list[str] | None = None) -> str:
    header = (f"{'size':<6} {'conditioning':<11} {'text':<14} {'total':>9} {'blocks':>9} {'cross':>8} "
              f"{'text_proj':>9} {'embed':>7} {'paper':>8}")
    lines = [header, "-" * len(header)]
    for name in names or SIZES:
        for conditioning in ("adaln", "cross_attn"):
            for text in TEXT_ENCODERS:
                n = count_params(paper_config(name, conditioning, text))
                paper = PAPER_PARAMS.get(name) if conditioning == "cross_attn" and text == "CLIP-L+T5-XXL" else None
                paper_s = f"{paper / 1e6:.1f}M" if paper else ""
                lines.append(f"{name:<6} {conditioning:<11} {text:<14} {n['total'] / 1e6:8.1f}M "
                             f"{n['blocks'] / 1e6:8.1f}M {n['cross_attn'] / 1e6:7.1f}M {n['text_proj'] / 1e6:8.1f}M "
                             f"{n['embedders'] / 1e6:6.2f}M {paper_s:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m gentron.sizes",
        description="Print GenTron's transformer parameters per size, conditioning and text encoder at 256px "
                    "(32x32x4 latents, learn_sigma=True); text encoders and VAE excluded.")
    parser.add_argument("--size", choices=list(SIZES), metavar="SIZE",
                        help=f"only this size (one of {', '.join(SIZES)}); default: every size")
    args = parser.parse_args(argv)
    print("GenTron transformer parameters at 256px (32x32x4 latents, learn_sigma=True); text encoders and VAE"
          " excluded. blocks = self-attn + MLP + adaLN; cross = cross-attn with its LayerNorm.")
    print(table([args.size] if args.size else None))


if __name__ == "__main__":
    main()
