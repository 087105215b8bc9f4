"""Forward+backward time and memory of our GenTron against diffusers' PixArtTransformer2DModel.

Both models are built with the same width, depth, heads, MLP width (4x), token count
(sample_size / patch), output channels and text length/width, and run in one process in interleaved
order (A B A B ...); the table gives medians over --repeats runs and the ratio ours/diffusers.

What cannot be matched (architecture, not implementation): PixArt-alpha uses adaLN-single (one
shared time MLP producing 6 x width, plus a learned per-block shift/scale table) where GenTron has a
Linear(width, 6 x width) per block; PixArt projects caption tokens with a two-layer MLP where we
use one linear per encoder; we also project a pooled text vector into c. All three act on one
vector (or the L text tokens) per sample, not on the image tokens, so their cost is small.

Memory: on GPU, torch.cuda.max_memory_allocated during a step. On CPU there is no allocator peak
to read (tracemalloc does not see torch, getrusage's peak only grows), so we report the bytes of
tensors saved for backward (autograd's saved-tensor hooks, deduplicated by storage): the activation
memory, which dominates a training step's peak beyond the weights.

Also reported: one motion-free-guidance sampling step (3 branches batched into one forward of
batch 3B on the video model) relative to one unguided forward of batch B.

    python benchmarks/model_step.py --size T/2 --batch 4 --input-size 16 --repeats 7
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from diffusers import PixArtTransformer2DModel

from gentron.model import GenTron
from gentron.sizes import model_config
from gentron.text.base import TextEmbedding


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device):
    """GPU: wall time. CPU: this thread's CPU time. The CPU runs use one intra-op thread, so every
    forward and backward op runs on this thread, and time the OS gives other processes (these
    machines are shared) is not counted."""
    return time.perf_counter() if device.type == "cuda" else time.thread_time()


def time_interleaved(fns: dict, args, device, before=lambda name: None) -> dict[str, list[float]]:
    """Time each function args.repeats times after args.warmup rounds, interleaved (A B A B ...) so
    that a noisy shared machine slows every contender alike."""
    times = {name: [] for name in fns}
    for i in range(args.warmup + args.repeats):
        for name, fn in fns.items():
            before(name)
            sync(device)
            start = clock(device)
            fn()
            sync(device)
            if i >= args.warmup:
                times[name].append(clock(device) - start)
    return times


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def saved_activation_bytes(model, step) -> int:
    """Bytes of distinct storages autograd saves for backward while `step` builds its graph, weights
    excluded (they are saved too, but exist anyway)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def build_pair(args, device):
    cfg = model_config(args.size, input_size=args.input_size, in_channels=4, learn_sigma=True,
                       conditioning="cross_attn", text_widths=(args.text_width,), pooled_widths=(args.text_width,))
    ours = GenTron(cfg).to(device)
    pixart = PixArtTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
        cross_attention_dim=cfg.hidden_size, sample_size=cfg.input_size, patch_size=cfg.patch_size,
        caption_channels=args.text_width, use_additional_conditions=False,
    ).to(device)
    return cfg, ours, pixart


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="T/2", help="gentron.sizes name (both models get its shape)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--input-size", type=int, default=16, help="latent side")
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--text-width", type=int, default=64)
    p.add_argument("--frames", type=int, default=4, help="clip length for the MFG measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)

    cfg, ours, pixart = build_pair(args, device)
    B, L = args.batch, args.text_len
    x = torch.randn(B, 4, args.input_size, args.input_size, device=device)
    t = torch.randint(0, 1000, (B,), device=device)
    tokens = torch.randn(B, L, args.text_width, device=device)
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    mask[:, L // 2:] = False  # half the captions' tokens are padding, as with real prompts
    text = [TextEmbedding(tokens, mask, tokens.mean(1))]

    def step_ours():
        with autocast(device):
            out = ours(x, t, text)
        out.float().square().mean().backward()

    def step_pixart():
        with autocast(device):
            out = pixart(x, encoder_hidden_states=tokens, timestep=t, encoder_attention_mask=mask,
                         added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        out.float().square().mean().backward()

    steps = {"ours (GenTron)": (ours, step_ours), "diffusers PixArt": (pixart, step_pixart)}
    times = time_interleaved({name: step for name, (_, step) in steps.items()}, args, device,
                             before=lambda name: steps[name][0].zero_grad(set_to_none=True))

    memory = {}
    for name, (model, step) in steps.items():
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            step()
            memory[name] = torch.cuda.max_memory_allocated()
        else:
            memory[name] = saved_activation_bytes(model, step)
    mem_label = "peak alloc" if device.type == "cuda" else "saved activations"

    print(f"size {args.size}: depth {cfg.depth}, width {cfg.hidden_size}, heads {cfg.num_heads}, "
          f"tokens {(args.input_size // cfg.patch_size) ** 2}, text {L}x{args.text_width}, batch {B}, "
          f"device {device}{' bf16 autocast' if device.type == 'cuda' else ' fp32'}, "
          f"threads {torch.get_num_threads()}, median of {args.repeats}, "
          f"{'wall' if device.type == 'cuda' else 'CPU (thread)'} time")
    print(f"{'model':<18} {'params':>9} {'fwd+bwd ms':>11} {mem_label + ' MiB':>22}")
    for name, (model, _) in steps.items():
        n = sum(q.numel() for q in model.parameters())
        print(f"{name:<18} {n / 1e6:8.2f}M {statistics.median(times[name]) * 1e3:11.1f} "
              f"{memory[name] / 2 ** 20:22.1f}")
    ratio = statistics.median(times["ours (GenTron)"]) / statistics.median(times["diffusers PixArt"])
    print(f"time ratio ours/diffusers: {ratio:.2f}  "
          f"memory ratio: {memory['ours (GenTron)'] / memory['diffusers PixArt']:.2f}")

    # Motion-free guidance: (uncond, no motion), (uncond, motion), (text, motion) in one batch of 3B.
    video = GenTron(model_config(args.size, input_size=args.input_size, in_channels=4, learn_sigma=True,
                                 text_widths=(args.text_width,), pooled_widths=(args.text_width,),
                                 temporal=True)).to(device).eval()
    clips = torch.randn(B, args.frames, 4, args.input_size, args.input_size, device=device)
    null = TextEmbedding(torch.zeros_like(tokens), mask, torch.zeros_like(tokens[:, 0]))
    text3 = [TextEmbedding.cat([null, null, text[0]])]
    motion_free3 = torch.tensor([True] * B + [False] * 2 * B, device=device)
    single = lambda: video(clips, t, text, motion_free=torch.zeros(B, dtype=torch.bool, device=device))  # noqa: E731
    mfg = lambda: video(clips.repeat(3, 1, 1, 1, 1), t.repeat(3), text3, motion_free=motion_free3)  # noqa: E731
    with torch.no_grad(), autocast(device):
        vt = time_interleaved({"single": single, "mfg": mfg}, args, device)
    s, m = statistics.median(vt["single"]), statistics.median(vt["mfg"])
    print(f"video ({args.frames} frames): unguided forward {s * 1e3:.1f} ms, MFG step (3 branches, one "
          f"batch of {3 * B}) {m * 1e3:.1f} ms = {m / s:.2f}x")


if __name__ == "__main__":
    main()
