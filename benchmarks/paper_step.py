"""The trainer's step on a CPU, side by side in one run: what feature shards save over encoding each
batch, and what the host spends per step before and after moving the step's work to the device.

    python benchmarks/paper_step.py [--steps 24] [--batch 16] [--out paper_step.json]

1. Feature shards vs encoders per batch. The real trainer (gentron.train.train) on a small cell
   with the paper profile's code path at toy width: a T5 encoder in bfloat16 (a local folder, as
   google/flan-t5-xxl is loaded) and an AutoencoderKL with the SD VAE's layout (4 latent channels,
   8x down), streamed CompShapes images. `data.encode=shards` trains on the features that
   `gentron.data.encode` wrote once (that pass is timed and reported apart); `data.encode=per_batch`
   runs the T5 encoder and the VAE on every batch. Seconds per step are the median of the train
   log's windows after the first (warm-up); `encode_s` is the log's time in the frozen encoders
   per step. The counted FLOPs of the step's parts (ablations.gpu_hours) are printed alongside, so
   the measured ratio can be read against the FLOP ratio the plan's GPU-hours use.
2. Host time per step, before vs after, at the paper's shapes (global batch 2048 of 4 x 32 x 32
   latents over 8 ranks; --frames for T2V). "before" does what the step used to do, written out
   here: the global batch's timesteps and noise drawn with a CPU generator on every rank and sliced,
   copied to the device blocking and unpinned, each schedule lookup copying its table to the device,
   and the loss and gradient norm checked for NaN with a read back to the host every step. "after"
   is the current code: gentron.train_step.StepNoise (this rank's part, from its own generator, on
   the device), gentron.distributed.to_device, Diffusion.to (tables resident), FiniteWatch.update.
   The time is the host's: from the start of the work until the host may go on (on a GPU the queued
   kernels may still run; each arm starts on an idle device). On a CPU the device is the host, so the
   copies and reads cost no wait; what remains is host compute, dominated by the noise draw (on a
   GPU the "after" draw is a kernel launch).

Both parts use one intra-op thread; wall time. The machine's load average is printed: on a shared
machine the absolute numbers are noisy, the ratios (each pair measured in the same run) less so.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gentron import train_step
from gentron.config import load_config
from gentron.data.encode import encode_shards
from gentron.diffusion import Diffusion
from gentron.distributed import DistInfo, local_slice, to_device
from gentron.train import train
from gentron.train_step import FiniteWatch, StepNoise

LATENT = (4, 32, 32)  # 256 px through the SD VAE
GLOBAL_BATCH, WORLD = 2048, 8  # the paper profile's batch over one 8-GPU node


# --- 1. feature shards vs encoders per batch ----------------------------------------------------

def save_weights(folder: Path, t5_width: int, t5_layers: int, vae_width: int) -> tuple[Path, Path]:
    """A random T5 encoder with a byte-level tokenizer and a random AutoencoderKL (SD VAE layout)
    saved as local model folders, built from configs (no download)."""
    from diffusers import AutoencoderKL
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    t5, vae = folder / "t5", folder / "vae"
    config = T5Config(vocab_size=384, d_model=t5_width, d_kv=t5_width // 4, d_ff=2 * t5_width, num_layers=t5_layers,
                      num_heads=4, dropout_rate=0.0, feed_forward_proj="gated-gelu")
    T5EncoderModel(config).save_pretrained(t5)
    ByT5Tokenizer().save_pretrained(t5)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                  block_out_channels=(vae_width, 2 * vae_width, 2 * vae_width, 2 * vae_width),
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4
                  ).save_pretrained(vae)
    return t5, vae


def cell(folder: Path, args, encode: str) -> dict:
    t5, vae = folder / "t5", folder / "vae"
    return {
        "model": {"size": "S/2", "depth": args.depth, "hidden_size": args.width, "mlp_hidden_size": 4 * args.width,
                  "num_heads": 4, "learn_sigma": True},
        "text_encoders": [{"kind": "t5", "path": str(t5), "dtype": "bfloat16", "max_length": args.tokens}],
        "vae": {"kind": "autoencoder_kl", "path": str(vae), "scaling_factor": 0.18215},
        "data": {"resolution": args.resolution, "num_train": args.images, "encode": encode, "num_workers": 1,
                 "shuffle_buffer": 16, "features_dir": str(folder / "features"), "cache_dir": str(folder / "cache")},
        "train": {"steps": args.steps, "batch_size": args.batch, "lr_schedule": "constant", "warmup_steps": 0,
                  "log_every": args.log_every, "ckpt_every": 10**9, "compile": False},
    }


def train_arm(folder: Path, args, encode: str) -> dict:
    """Train the cell with `encode`; s/step and encoder s/step from its train log (windows after the first)."""
    cfg = load_config(cell(folder, args, encode))
    run_dir = folder / f"run-{encode}"
    train(cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows
    s_per_step = statistics.median(1 / r["steps_per_s"] for r in timed)
    return {"encode": encode, "s_per_step": s_per_step, "encode_s_per_step": statistics.median(r["encode_s"] for r in timed),
            "data_wait_s_per_step": statistics.median(r["data_wait_s"] for r in timed),
            "images_per_s": args.batch / s_per_step, "windows": len(timed)}


def step_flops(folder: Path, args) -> dict:
    """Counted FLOPs per training image of the benchmark cell's parts (ablations.gpu_hours)."""
    from ablations import gpu_hours

    cfg = load_config(cell(folder, args, "per_batch"))
    parts = gpu_hours.image_flops(cfg)
    return {"model_step": parts.train, "text_encoders": parts.text, "vae_encoder": parts.vae}


def shards_vs_per_batch(args) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_weights(folder, args.t5_width, args.t5_layers, args.vae_width)
        started = time.perf_counter()
        encode_shards(load_config(cell(folder, args, "shards")), folder / "features", 0, 1, device="cpu")
        encode_s = time.perf_counter() - started
        shards = train_arm(folder, args, "shards")
        per_batch = train_arm(folder, args, "per_batch")
        flops = step_flops(folder, args)
    predicted = (flops["model_step"] + flops["text_encoders"] + flops["vae_encoder"]) / flops["model_step"]
    return {"shards": shards, "per_batch": per_batch, "encode_pass_s": encode_s, "encode_pass_images": args.images,
            "ratio_per_batch_over_shards": per_batch["s_per_step"] / shards["s_per_step"],
            "flops_per_image": flops, "flop_ratio_per_batch_over_shards": predicted}


# --- 2. host time per step, before vs after -----------------------------------------------------

def lookups_per_loss(diffusion: Diffusion) -> list[str]:
    """The schedule tables one training loss looks up (learn_sigma, epsilon), in order: counted by
    running Diffusion.training_loss once on a stand-in model."""
    names: list[str] = []
    original = Diffusion._at

    def counting(self, name, t, like):
        names.append(name)
        return original(self, name, t, like)

    x0 = torch.zeros(2, 4, 2, 2)
    Diffusion._at = counting
    try:
        diffusion.training_loss(lambda x, t, text, motion_free=None: torch.zeros(2, 8, 2, 2), x0, [])
    finally:
        Diffusion._at = original
    return names


def host_before(diffusion: Diffusion, names: list[str], generator: torch.Generator, local: slice, shape, device):
    """The old step's host work: global batch drawn on the CPU, sliced, copied blocking and unpinned;
    every table lookup copies its table; the finite checks read the device's scalars back."""
    t = diffusion.sample_timesteps(GLOBAL_BATCH, generator)
    noise = torch.randn((GLOBAL_BATCH, *shape), generator=generator)
    t, noise = t[local].to(device), noise[local].to(device)
    for name in names:
        getattr(diffusion, name).to(device)[t]
    loss, grad_norm = noise.view(-1)[0], noise.view(-1)[1]  # stand-ins for the step's scalars on the device
    return bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))


def host_after(diffusion: Diffusion, names: list[str], noise: StepNoise, watch: FiniteWatch, step: int, shape, device):
    """The current step's host work (the trainer's own functions)."""
    t, eps = noise.draw(None, shape, device)
    for name in names:
        diffusion._at(name, t, eps)
    watch.update(step, eps.view(-1)[0], eps.view(-1)[1])


def host_time(repeats: int, frames: int, device: torch.device) -> dict:
    torch.set_num_threads(1)
    shape = (frames, *LATENT) if frames > 1 else LATENT
    diffusion = Diffusion(learn_sigma=True)
    names = lookups_per_loss(diffusion)
    resident = Diffusion(learn_sigma=True).to(device)
    info = DistInfo(rank=0, world_size=WORLD)
    previous, train_step.PER_RANK_NOISE = train_step.PER_RANK_NOISE, True  # the GPU's scheme, on any device
    try:
        noise = StepNoise(resident, GLOBAL_BATCH, 0, 1, info, device)
    finally:
        train_step.PER_RANK_NOISE = previous
    watch, generator = FiniteWatch(device, info), torch.Generator().manual_seed(0)
    latents = torch.randn((GLOBAL_BATCH // WORLD, *shape))  # the loader's batch, copied to the device each step
    pinned = latents.pin_memory() if device.type == "cuda" else latents  # as the loader hands it over on a GPU
    arms = {
        "before": lambda step: (latents.to(device), host_before(diffusion, names, generator, local_slice(GLOBAL_BATCH, info),
                                                                shape, device)),
        "after": lambda step: (to_device(pinned, device), host_after(resident, names, noise, watch, step, shape, device)),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for step in range(1, repeats + 2):  # interleaved, the first round not counted
        for name, fn in arms.items():
            started = time.perf_counter()
            fn(step)
            host = time.perf_counter() - started  # until the host may go on (the device may still be working)
            if device.type == "cuda":
                torch.cuda.synchronize()  # not timed: each arm starts on an idle device
            if step > 1:
                times[name].append(host)
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    return {"frames": frames, "global_batch": GLOBAL_BATCH, "world_size": WORLD, "lookups_per_step": len(names),
            "before_ms": before * 1e3, "after_ms": after * 1e3, "ratio_before_over_after": before / after,
            "device": str(device)}


# --- the run ------------------------------------------------------------------------------------

def run(args) -> dict:
    out = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": 1}
    out["encode_modes"] = shards_vs_per_batch(args)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_host else "cpu")
    out["host"] = [host_time(args.repeats, frames, device) for frames in sorted({1, args.frames})]
    return out


def report(r: dict) -> str:
    e = r["encode_modes"]
    lines = [f"load average {r['load_average'][0]:.2f} on {r['cpus']} CPUs, 1 intra-op thread, torch {r['torch']}",
             "1. trainer step (gentron.train), feature shards vs T5 + VAE per batch:",
             f"{'data.encode':<12} {'s/step':>8} {'encode s/step':>14} {'wait s/step':>12} {'images/s':>9}"]
    for arm in (e["shards"], e["per_batch"]):
        lines.append(f"{arm['encode']:<12} {arm['s_per_step']:8.4f} {arm['encode_s_per_step']:14.4f} "
                     f"{arm['data_wait_s_per_step']:12.4f} {arm['images_per_s']:9.1f}")
    f = e["flops_per_image"]
    lines += [f"per_batch / shards: {e['ratio_per_batch_over_shards']:.2f}x the time per step; counted FLOPs per image: "
              f"step {f['model_step'] / 1e6:.1f}M + T5 {f['text_encoders'] / 1e6:.1f}M + VAE encoder "
              f"{f['vae_encoder'] / 1e6:.1f}M = {e['flop_ratio_per_batch_over_shards']:.2f}x",
              f"the shards' one encode pass: {e['encode_pass_s']:.2f} s for {e['encode_pass_images']} images",
              "2. host time per step, before vs after (global batch 2048 over 8 ranks, 4x32x32 latents):"]
    for h in r["host"]:
        what = "T2I" if h["frames"] == 1 else f"T2V, {h['frames']} frames"
        lines.append(f"{what:<18} before {h['before_ms']:8.2f} ms  after {h['after_ms']:7.2f} ms  "
                     f"= {h['ratio_before_over_after']:.1f}x ({h['lookups_per_step']} table lookups, {h['device']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24, help="training steps per arm")
    parser.add_argument("--log-every", type=int, default=4, help="steps per timed window")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=256, help="CompShapes images encoded into the shards")
    parser.add_argument("--resolution", type=int, default=64, help="pixels (latents are 8x smaller)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--t5-width", type=int, default=128)
    parser.add_argument("--t5-layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64, help="T5 max_length")
    parser.add_argument("--vae-width", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed host-time rounds per arm")
    parser.add_argument("--frames", type=int, default=8, help="frames of the T2V host-time row (1: T2I only)")
    parser.add_argument("--cpu-host", action="store_true", help="time part 2 on the CPU even with a GPU")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = run(args)
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
