"""GPU benchmark of the paper setting: XL/2 training throughput and MFU, G/2 peak memory with FSDP2 and
activation checkpointing, and sampling throughput at 20 DPM-Solver++ steps with classifier-free guidance.

    python benchmarks/gpu_bench.py --out gpu_bench.json            # one GPU, about 5 minutes
    python benchmarks/gpu_bench.py --tiny --out tiny.json          # CPU, seconds: the same code at toy size

What runs is the product's own model (gentron.model.GenTron), loss (gentron.diffusion.Diffusion, the
paper profile's epsilon / linear / learn_sigma setting), optimizer (fused AdamW) and sampler, in bf16
autocast as the trainer runs on a GPU. Text features are random tensors of the encoders' shapes (CLIP-L:
77 x 768, T5-XXL: 120 x 4096) and latents are random 32 x 32 x 4 (256 px through the SD VAE): the frozen
encoders and the VAE are not timed, as with pre-extracted features (fast-DiT).

- train: images/s of XL/2 (cross-attention, CLIP-L) at --batch per GPU, and MFU = 3 x counted forward
  FLOPs per image (gentron.sizes.count_flops: forward + backward) x images/s / the GPU's dense bf16 peak
  (--peak-tflops, or the table below for known GPUs). Targets on an H100/H200-class GPU: >= 45% MFU.
- memory: G/2 (cross-attention, CLIP-L + T5-XXL interleaved) wrapped with FSDP2 (fully_shard per block)
  on a one-process group, activation checkpointing on, one training step at --memory-batch:
  torch.cuda.max_memory_allocated. Target: it fits one 80 GB GPU.
- sample: images/s of XL/2 at 20 DPM-Solver++ steps with CFG (cond + uncond in one batched forward).

Published reference points: DiT-XL/2 trains at 0.81 steps/s at global batch 256 on 8 A100 (25.9
images/s per GPU; facebookresearch/DiT); fast-DiT reports 0.84 steps/s at batch 128 on one A100 with
gradient checkpointing, mixed precision and pre-extracted features (107.5 images/s).

--tiny runs the same functions on the CPU at toy size (XS/2 and T/2 at 8 x 8 latents, tiny text
widths, a one-process gloo group for FSDP2); its numbers only show that the code runs. On a CPU the
memory figure is the process's peak resident set.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import time
from pathlib import Path

import torch

from gentron.diffusion import Diffusion
from gentron.model import GenTron
from gentron.sizes import count_flops, count_params, paper_config
from gentron.text.base import TextEmbedding

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "GH200": 989.0}

PAPER = {"image": 32, "train": ("XL/2", "CLIP-L", (77,)), "memory": ("G/2", "CLIP-L+T5-XXL", (77, 120))}
TINY = {"image": 8, "train": ("XS/2", (32,), (16,)), "memory": ("T/2", (32, 48), (16, 16))}


def model_and_text(size: str, text, lengths, image: int, batch: int, device, grad_checkpointing=False):
    """GenTron as the paper profile builds it (learn_sigma, 4 latent channels) and random text features."""
    if isinstance(text, str):
        config = paper_config(size, "cross_attn", text, input_size=image, grad_checkpointing=grad_checkpointing)
    else:
        config = paper_config(size, "cross_attn", "CLIP-L", input_size=image, text_widths=tuple(text),
                              pooled_widths=tuple(text), grad_checkpointing=grad_checkpointing)
    torch.manual_seed(0)
    model = GenTron(config).to(device)
    features = [TextEmbedding(torch.randn(batch, n, w, device=device), torch.ones(batch, n, dtype=torch.bool,
                                                                                  device=device),
                              torch.randn(batch, p, device=device))
                for n, w, p in zip(lengths, config.text_widths, config.pooled_widths)]
    return model, features, config


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_steps(model, text, config, batch, steps, device) -> float:
    """Seconds per training step (loss, backward, clip, fused AdamW step), after one warm-up step."""
    diffusion = Diffusion(learn_sigma=True, prediction="epsilon", schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=not _sharded(model))
    x0 = torch.randn(batch, config.in_channels, config.input_size, config.input_size, device=device)
    model.train()
    times = []
    for step in range(steps + 1):
        sync(device)
        start = time.perf_counter()
        with autocast(device):
            loss = diffusion.training_loss(model, x0, text)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sync(device)
        if step:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def _sharded(model) -> bool:
    return any(hasattr(p, "device_mesh") for p in model.parameters())


def bench_train(spec, image, batch, steps, device, peak_tflops) -> dict:
    size, text, lengths = spec
    model, features, config = model_and_text(size, text, lengths, image, batch, device)
    seconds = train_steps(model, features, config, batch, steps, device)
    flops = count_flops(config, lengths)
    images_per_s = batch / seconds
    achieved = 3 * flops * images_per_s
    return {"size": size, "batch": batch, "steps_timed": steps, "s_per_step": seconds, "images_per_s": images_per_s,
            "params": count_params(config)["total"], "forward_gflops_per_image": flops / 1e9,
            "achieved_tflops": achieved / 1e12, "peak_tflops": peak_tflops,
            "mfu": achieved / (peak_tflops * 1e12) if peak_tflops else None}


def _process_group(device) -> bool:
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)
    return True


def bench_memory(spec, image, batch, device) -> dict:
    """One FSDP2 + activation-checkpointing training step of the large size; its peak memory."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    size, text, lengths = spec
    created = _process_group(device)
    try:
        model, features, config = model_and_text(size, text, lengths, image, batch, device, grad_checkpointing=True)
        for block in model.blocks:  # as gentron.distributed.wrap_model shards for train.strategy=fsdp
            fully_shard(block)
        fully_shard(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = train_steps(model, features, config, batch, 1, device)
        peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    finally:
        if created:
            dist.destroy_process_group()
    return {"size": size, "batch": batch, "fsdp2": True, "activation_checkpointing": True,
            "params": count_params(config)["total"], "s_per_step": seconds, "peak_memory_gb": peak / 1e9,
            "memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (CPU)"}


@torch.no_grad()
def bench_sample(spec, image, batch, steps, cfg_scale, device) -> dict:
    size, text, lengths = spec
    model, features, config = model_and_text(size, text, lengths, image, batch, device)
    model.eval()
    null = [TextEmbedding(torch.zeros_like(e.tokens), e.mask, torch.zeros_like(e.pooled)) for e in features]
    diffusion = Diffusion(learn_sigma=True, prediction="epsilon", schedule="linear")
    shape = (batch, config.in_channels, config.input_size, config.input_size)
    times = []
    for run in range(2):  # the first run warms the kernels up
        generator = torch.Generator(device="cpu").manual_seed(run)
        sync(device)
        start = time.perf_counter()
        with autocast(device):
            diffusion.sample(model, features, null, shape, sampler="dpmsolver++", steps=steps, cfg_scale=cfg_scale,
                             generator=generator)
        sync(device)
        times.append(time.perf_counter() - start)
    return {"size": size, "batch": batch, "sampler": "dpmsolver++", "steps": steps, "cfg_scale": cfg_scale,
            "s_per_batch": times[-1], "images_per_s": batch / times[-1]}


def peak_for(device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def run(tiny: bool, batch: int, memory_batch: int, sample_batch: int, steps: int, peak_tflops: float | None) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    shapes = TINY if tiny else PAPER
    peak = peak_for(device, peak_tflops)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tiny": tiny,
           "torch": torch.__version__}
    out["train"] = bench_train(shapes["train"], shapes["image"], batch, steps, device, peak)
    out["memory"] = bench_memory(shapes["memory"], shapes["image"], memory_batch, device)
    out["sample"] = bench_sample(shapes["train"], shapes["image"], sample_batch, 20, 4.5, device)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, toy sizes, seconds (checks that the code runs)")
    parser.add_argument("--batch", type=int, default=None, help="XL/2 training batch (default 64; tiny 4)")
    parser.add_argument("--memory-batch", type=int, default=None, help="G/2 batch for the memory step (default 32)")
    parser.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 64; tiny 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; tiny 2)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.tiny:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    results = run(args.tiny, args.batch or (4 if args.tiny else 64), args.memory_batch or (2 if args.tiny else 32),
                  args.sample_batch or (2 if args.tiny else 64), args.steps or (2 if args.tiny else 20),
                  args.peak_tflops)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
