"""Measure this machine's step costs for the cells of one or more grids and store them in
ablations/conf/step_costs.yaml, the costs a dry run reads with `measure=false` (by default a dry run
measures the machine it runs on itself: ablations/measure.py, which runs the real trainer and sampler;
benchmarks/estimate_vs_wall.py compares its estimate with a grid's wall time).

    python benchmarks/step_costs.py grid=conditioning grid=text_encoder grid=scale grid=mfg [runs_dir=runs]

For each distinct cost key of the grids' cells (ablations.costs: model shape, conditioning,
encoders, image/video, batch, sampler) it times, in CPU seconds of this one thread
(time.thread_time, one intra-op thread), so the other processes of a shared machine do not count:
  train    --steps training steps (loss, backward, fused AdamW) at the cell's batch on random
           data with the text features of real training captions
  sample   one sampling batch of --sample-batch prompts at the cell's sampler, steps and guidance
  data     --items CompShapes images or clips drawn and rendered
  encoders --steps training steps of each trained text encoder's recipe
Encoders the grids load trained (gentron.text.pretrain) must exist (a grid run trains them first);
their cost does not depend on their weights, so the store is read only for their architecture.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from pathlib import Path

import torch
import yaml

from ablations import costs as sc
from ablations.grid import plan
from gentron.config import load_config, to_dict
from gentron.data import compshapes
from gentron.diffusion import Diffusion
from gentron.io import atomic_write_text
from gentron.model import GenTron
from gentron.text import PromptCache
from gentron.text.base import TextEmbedding
from gentron.config import resolve
from gentron.text import build_text_encoders
from gentron.vae import build_vae


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(config: dict):
    cfg = load_config(config)
    vae = build_vae(config["vae"])
    encoders = build_text_encoders(cfg.text_encoders)
    model = GenTron(resolve(cfg, [e.shape for e in encoders], (vae.channels, vae.downsample)))
    return cfg, vae, encoders, model


def captions(n: int, video: bool, seed: int = 0) -> list[str]:
    pool = compshapes.all_prompts("train", compshapes.VIDEO_CATEGORIES if video else compshapes.IMAGE_CATEGORIES)
    g = torch.Generator().manual_seed(seed)
    return [pool[i] for i in torch.randint(len(pool), (n,), generator=g).tolist()]


def text_batch(cache: PromptCache, prompts: list[str]) -> list[TextEmbedding]:
    return cache.encode(prompts)


def time_train(config: dict, steps: int) -> float:
    cfg, vae, encoders, model = build(config)
    diffusion = Diffusion.from_config(cfg.model)
    cache = PromptCache(encoders)
    b, d = cfg.train.batch_size, cfg.data
    side = d.resolution // vae.downsample
    shape = (b, d.num_frames, vae.channels, side, side) if d.video else (b, vae.channels, side, side)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    model.train()
    times = []
    for i in range(steps + 2):
        text = text_batch(cache, captions(b, d.video, seed=i))
        x0 = torch.randn(shape, generator=g)
        motion_free = torch.full((b,), bool(i % 2)) if d.video else None
        start = time.thread_time()
        loss = diffusion.training_loss(model, x0, text, motion_free=motion_free, generator=g)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        if i >= 2:  # warm-up steps not counted
            times.append(time.thread_time() - start)
    return sum(times) / len(times)


@torch.no_grad()
def time_sample(config: dict, batch: int) -> float:
    cfg, vae, encoders, model = build(config)
    model.eval()
    diffusion = Diffusion.from_config(cfg.model)
    cache = PromptCache(encoders)
    s, d = cfg.sample, cfg.data
    side = d.resolution // vae.downsample
    shape = (batch, d.num_frames, vae.channels, side, side) if d.video else (batch, vae.channels, side, side)
    text = cache.encode(captions(batch, d.video, seed=1))
    null = cache.encode([""] * batch)
    start = time.thread_time()
    diffusion.sample(model, text, null, shape, sampler=s.sampler, steps=s.steps, cfg_scale=s.cfg_scale,
                     mfg_scale=s.mfg_scale if d.video else None, generator=torch.Generator().manual_seed(0),
                     clip_x0=True)
    return (time.thread_time() - start) / batch


def time_data(config: dict, items: int) -> float:
    """Per unit of data.num_train: an image, and for video also a clip (the trainer draws both)."""
    d = config["data"]
    kinds = [False, True] if d["video"] else [False]
    start = time.thread_time()
    for video in kinds:
        data = compshapes.from_config({**d, "num_train": items, "video": video,
                                       "categories": d["categories"] if video == d["video"] else None})
        for i in range(items):
            data[i]
    return (time.thread_time() - start) / items


def time_encoder(recipe: dict, steps: int) -> float:
    from gentron.text.pretrain import _CLIPTrainer, _T5Trainer, load_recipe

    r = load_recipe({**recipe, "num_pairs": min(recipe.get("num_pairs", 10000), 512)})
    trainer = (_CLIPTrainer if r.objective == "clip_contrastive" else _T5Trainer)(r)
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=r.lr, foreach=True)
    times = []
    for i in range(steps + 2):
        start = time.thread_time()
        loss = trainer.loss(torch.Generator().manual_seed(i))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.thread_time() - start)
    return sum(times) / len(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("args", nargs="+", help="grid=<name> (repeatable), runs_dir=..., other grid options")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per key")
    parser.add_argument("--sample-batch", type=int, default=16, help="prompts per timed sampling batch")
    parser.add_argument("--items", type=int, default=100, help="CompShapes items rendered per data key")
    parser.add_argument("--out", default=str(sc.COSTS_FILE))
    parser.add_argument("--force", action="store_true", help="re-measure keys already in the file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    grids = [a.split("=", 1)[1] for a in args.args if a.startswith("grid=")]
    rest = [a for a in args.args if not a.startswith("grid=")]
    out = Path(args.out)
    costs = sc.load_costs(out)
    for section in ("train", "sample", "data", "encoders"):
        costs.setdefault(section, {})
    costs["machine"] = cpu_name()
    costs["torch"] = str(torch.__version__)
    costs["load_average"] = round(os.getloadavg()[0], 1)  # thread time grows on a loaded machine (shared cores)
    costs["unit"] = "CPU seconds of one thread per training step / sampled item / rendered item / encoder step"

    todo = {}
    for grid in grids:
        for cell in plan([f"grid={grid}", *rest]).cells:
            c = to_dict(cell.config)
            todo.setdefault(("train", sc.train_cost_key(cell)), lambda c=c: time_train(c, args.steps))
            todo.setdefault(("sample", sc.sample_cost_key(cell)), lambda c=c: time_sample(c, args.sample_batch))
            todo.setdefault(("data", sc.data_key(cell.config)), lambda c=c: time_data(c, args.items))
            for recipe in cell.encoders.values():
                todo.setdefault(("encoders", sc.encoder_cost_key(recipe)), lambda r=recipe: time_encoder(r, args.steps))
    for (section, key), measure in todo.items():
        if key in costs[section] and not args.force:
            print(f"{section:8s} {key}: {costs[section][key]:.4g} s (kept; --force re-measures)")
            continue
        costs[section][key] = round(float(measure()), 5)
        print(f"{section:8s} {key}: {costs[section][key]:.4g} s", flush=True)
        text = "# Written by benchmarks/step_costs.py; read by every dry run (ablations.costs).\n"
        atomic_write_text(out, text + yaml.safe_dump(copy.deepcopy(costs), sort_keys=True))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
