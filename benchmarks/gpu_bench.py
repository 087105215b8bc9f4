"""GPU benchmark of the trainer's real step at the paper's sizes: images/s, MFU and peak memory per GPU of
GenTron-XL/2 (CLIP-L) and G/2 (CLIP-L + T5-XXL, activation checkpointing), trained from feature shards.

    python benchmarks/gpu_bench.py --out gpu_bench.json                                   # one GPU
    torchrun --nproc_per_node=8 benchmarks/gpu_bench.py --out gpu_bench.json              # FSDP2 over 8 GPUs
    python benchmarks/gpu_bench.py --tiny --out tiny.json                                 # CPU, toy sizes

What is timed is gentron.train's step, made of the trainer's own functions in its order: the model
built, compiled (train.compile: on for CUDA) and wrapped by gentron.train._build_model (FSDP2 with
MixedPrecisionPolicy(bf16, fp32) when torchrun starts more than one process, train.strategy=fsdp),
the batch from gentron.data.training over feature shards (loader workers, pinned copies), noise from
gentron.train_step.StepNoise on the device, forward_backward under bf16 autocast, gradient clipping,
fused AdamW (per-tensor under FSDP2), the foreach EMA (gentron.optim.update_ema) and the device-side
finite check. Only the train log, validation and checkpoints are left out (tests/test_gpu_bench.py
checks that the weights after its steps equal gentron.train.train's, bit for bit).

The feature shards are written first by `gentron.data.encode` (the product's encode stage) from
CompShapes images at 256 px through a small AutoencoderKL with the SD VAE's layout (32 x 32 x 4
latents) and stand-in text encoders of the paper encoders' shapes (CLIP-L: 77 x 768 tokens and a 768
pooled vector; T5-XXL: 120 x 4096), one layer each: their weights are random (nothing is downloaded)
and their cost is not part of the step, as with any feature shards. The model sees the captions'
real token counts (padding past a batch's longest caption dropped), and the FLOPs count them.

Per size: s/step (--steps steps timed as one window after --warmup untimed ones, which compile),
images/s per GPU, MFU = 3 x forward FLOPs per image (gentron.sizes.count_flops at the batches'
median text lengths; the recomputed forward of activation checkpointing not counted, as is usual)
x images/s per GPU / the GPU's dense bf16 peak (--peak-tflops, or PEAK_BF16_TFLOPS by name), and
the peak memory per GPU: torch.cuda.max_memory_allocated over the timed steps, the largest of the
ranks (weights, gradients, AdamW state, EMA and activations). Also: the host's time per step before
and after the step's device-side changes (benchmarks/paper_step.py's part 2, on this device).

--tiny runs the same code on the CPU at toy sizes (XS/2 and T/2, 64 px, 8 x 8 latents, narrow
stand-in encoders, fp32); its numbers only show that the code runs, and its memory is the process's
peak resident set.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gentron import distributed as D
from gentron.config import load_config
from gentron.data.encode import encode_shards
from gentron.data.training import build_training_data
from gentron.diffusion import Diffusion
from gentron.sizes import count_flops, count_params
from gentron.train import _build_model
from gentron.train_step import FiniteWatch, StepNoise, autocast_for, device_settings, training_step

log = logging.getLogger("gpu_bench")

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "GH200": 989.0}

# (size, text encoders, activation checkpointing) of the two measurements.
PAPER = {"XL/2": ("CLIP-L", False), "G/2": ("CLIP-L+T5-XXL", True)}
TINY = {"XS/2": ("CLIP-L", False), "T/2": ("CLIP-L+T5-XXL", True)}


def stand_in_encoders(text: str, tiny: bool) -> list[dict]:
    """One-layer random text encoders with the paper encoders' token counts and widths (tiny: narrow)."""
    clip = {"kind": "tiny_clip", "seed": 0, "width": 32 if tiny else 768, "layers": 1, "heads": 2 if tiny else 12}
    t5 = {"kind": "tiny_t5", "seed": 0, "width": 48 if tiny else 4096, "layers": 1, "heads": 2 if tiny else 64,
          "max_length": 120}
    return [clip] if text == "CLIP-L" else [clip, t5]


def save_vae(folder: Path, tiny: bool) -> Path:
    """A random AutoencoderKL with the SD VAE's layout (4 latent channels, 8x down), built from its config."""
    from diffusers import AutoencoderKL

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        width = 8 if tiny else 32
        AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                      block_out_channels=(width, 2 * width, 2 * width, 2 * width),
                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4
                      ).save_pretrained(folder)
    return folder


def bench_cell(size: str, text: str, checkpointing: bool, batch: int, world: int, folder: Path, args) -> dict:
    """The cell whose step is timed: the paper profile's model and training keys, feature shards."""
    tiny = args.tiny
    workers = 1 if tiny else 4
    # A set per encoding: other encoders, sizes or shard counts (world x workers) do not share a folder.
    features = folder / f"features-{text}-{args.images}-{world * workers}shards"
    model = {"size": size, "conditioning": "cross_attn", "learn_sigma": True, "prediction": "epsilon",
             "noise_schedule": "linear", "timestep_std": None}
    return {
        "model": model,
        "text_encoders": stand_in_encoders(text, tiny),
        "vae": {"kind": "autoencoder_kl", "path": str(folder / "vae"), "scaling_factor": 0.18215},
        "data": {"kind": "compshapes", "resolution": 64 if tiny else 256, "num_train": args.images, "encode": "shards",
                 "features_dir": str(features), "num_workers": workers,
                 "shuffle_buffer": 64, "cache_dir": str(folder / "cache")},
        "train": {"steps": 10**6, "batch_size": batch * world, "lr": 1e-4, "lr_schedule": "constant", "warmup_steps": 0,
                  "ema_decay": 0.9999, "grad_clip": 1.0, "precision": "auto", "grad_checkpointing": checkpointing,
                  "strategy": "fsdp", "compile": None if not args.no_compile else False, "seed": 0},
    }


def encode(cfg, info: D.DistInfo, images: int) -> None:
    """The feature shards of the cell, one per loader worker of every rank (each rank writes its share,
    as the tasks of an encode array do; a complete shard is skipped)."""
    shards = info.world_size * cfg.data.num_workers
    for shard in range(info.rank, shards, info.world_size):
        encode_shards(cfg, Path(cfg.data.features_dir), shard, shards, batch_size=min(64, images))
    D.barrier(info)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(cfg, steps: int, warmup: int, info: D.DistInfo):
    """`warmup` + `steps` steps of the trainer (module docstring); returns (seconds per step over the
    timed steps, as one window: the host runs ahead of the device as in training, the batches' text
    token counts, the model, its EMA, the data)."""
    device = info.device()
    t = cfg.train
    device_settings(device)
    data = build_training_data(cfg, info, device, torch.float32, None, None, Path(cfg.data.cache_dir), None)
    generator = torch.Generator().manual_seed(t.seed)
    diffusion = Diffusion.from_config(cfg.model).to(device)
    noise = StepNoise(diffusion, t.batch_size, t.seed, t.grad_accum, info, device)
    model, ema, optimizer = _build_model(cfg, data, info, device, None, generator, noise)
    watch, autocast = FiniteWatch(device, info), autocast_for(t.precision, device)
    model.train()
    lengths = []
    for step in range(1, warmup + steps + 1):
        if step == warmup + 1:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            started = time.perf_counter()
        _, _, batch = training_step(model, optimizer, ema, diffusion, data, generator, noise, device, autocast, watch,
                                    step=step, lr=t.lr, grad_accum=t.grad_accum, grad_clip=t.grad_clip,
                                    ema_decay=t.ema_decay)  # constant learning rate
        if step > warmup:
            lengths.append(tuple(e.tokens.shape[1] for e in batch[1]))
    sync(device)
    s_per_step = (time.perf_counter() - started) / steps
    bad = watch.first_bad()
    if bad is not None:
        raise RuntimeError(f"the benchmark's step {bad[0]} was not finite: {bad[1]}")
    return s_per_step, lengths, model, ema, data


def peak_memory(device: torch.device, info: D.DistInfo) -> tuple[float, str]:
    if device.type == "cuda":
        peak = torch.tensor(float(torch.cuda.max_memory_allocated(device)), device=device)
        return float(D.all_reduce_max(peak, info)), "torch.cuda.max_memory_allocated (largest rank)"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, "peak RSS of the process (CPU)"


def peak_for(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def bench_size(size: str, text: str, checkpointing: bool, batch: int, folder: Path, info: D.DistInfo, args) -> dict:
    cfg = load_config(bench_cell(size, text, checkpointing, batch, info.world_size, folder, args))
    encode(cfg, info, args.images)
    s_per_step, lengths, model, ema, data = run_steps(cfg, args.steps, args.warmup, info)
    device = info.device()
    memory, memory_kind = peak_memory(device, info)
    config = D.unwrap(model).config
    median_lengths = tuple(int(statistics.median(n[i] for n in lengths)) for i in range(len(lengths[0])))
    flops = count_flops(config, median_lengths)
    per_gpu = batch / s_per_step
    peak = peak_for(device, args.peak_tflops)
    achieved = 3 * flops * per_gpu
    held = sum((q.to_local() if hasattr(q, "to_local") else q).numel() for q in model.parameters())  # FSDP2: a shard
    data.close()
    del model, ema
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"size": size, "text_encoders": text, "params": count_params(config)["total"], "params_on_rank0": held,
            "gpus": info.world_size,
            "fsdp2": info.world_size > 1, "batch_per_gpu": batch, "global_batch": batch * info.world_size,
            "activation_checkpointing": checkpointing, "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
            "compiled": device.type == "cuda" if cfg.train.compile is None else cfg.train.compile,
            "steps_timed": args.steps, "s_per_step": s_per_step, "images_per_s_per_gpu": per_gpu,
            "text_tokens": list(median_lengths), "forward_gflops_per_image": flops / 1e9,
            "achieved_tflops_per_gpu": achieved / 1e12, "peak_tflops": peak,
            "mfu": achieved / (peak * 1e12) if peak else None, "peak_memory_gb": memory / 1e9,
            "memory_kind": memory_kind}


def run(args) -> dict:
    info = D.init_distributed()
    device = info.device()
    sizes = TINY if args.tiny else PAPER
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tiny": args.tiny,
           "gpus": info.world_size, "torch": torch.__version__}
    # One folder for every rank (rank 0's temporary one unless --work: give a shared one across nodes).
    tmp = tempfile.TemporaryDirectory() if info.is_main and args.work is None else None
    folder = Path(D.all_gather_object(str(args.work or (tmp.name if tmp else "")), info)[0])
    try:
        if info.is_main:
            save_vae(folder / "vae", args.tiny)
        D.barrier(info)
        batches = {"XL/2": args.batch, "XS/2": args.batch, "G/2": args.memory_batch, "T/2": args.memory_batch}
        out["train"] = [bench_size(size, text, ckpt, batches[size], folder, info, args)
                        for size, (text, ckpt) in sizes.items() if not args.only or size in args.only]
    finally:
        D.barrier(info)
        if tmp is not None:
            tmp.cleanup()
    if info.is_main and not args.no_host:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: benchmarks/ is not installed
        from benchmarks.paper_step import host_time

        out["host"] = host_time(args.host_repeats, 1, device)
    D.shutdown(info)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes, seconds on a CPU (checks that the code runs)")
    parser.add_argument("--batch", type=int, default=None, help="XL/2 images per GPU (default 64; tiny 4)")
    parser.add_argument("--memory-batch", type=int, default=None, help="G/2 images per GPU (default 8; tiny 2; lower it if one GPU runs out of memory)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per size (default 20; tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps, compile (default 5; tiny 1)")
    parser.add_argument("--images", type=int, default=None, help="images in the feature shards (default 1024; tiny 32)")
    parser.add_argument("--only", nargs="+", default=None, help="measure only these sizes, e.g. --only G/2")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--no-compile", action="store_true", help="train.compile=false")
    parser.add_argument("--no-host", action="store_true", help="skip the host-time measurement")
    parser.add_argument("--host-repeats", type=int, default=None, help="host-time rounds (default 10; tiny 2)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the weights and shards here (default: rank 0's temporary folder; several nodes: a shared one)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (rank 0)")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_bench: no GPU here; running --tiny (the same code at toy sizes on the CPU)", file=sys.stderr)
        args.tiny = True
    tiny = args.tiny
    for name, paper, toy in (("batch", 64, 4), ("memory_batch", 8, 2), ("steps", 20, 2), ("warmup", 5, 1),
                             ("images", 1024, 32), ("host_repeats", 10, 2)):
        if getattr(args, name) is None:
            setattr(args, name, toy if tiny else paper)
    if tiny:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    logging.basicConfig(level=logging.WARNING)
    results = run(args)
    if int(os.environ.get("RANK", 0)) == 0:
        text = json.dumps(results, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
