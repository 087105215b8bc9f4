"""Which CompShapes video recipe teaches the tiny text-to-video model the stated motion?

    python benchmarks/motion_variants.py VARIANT [VARIANT ...] --init T2I.pt [--out /tmp/motion] [--n 32]
    python benchmarks/motion_variants.py --score runs/mfg/<cell> [--out DIR]    # score a trained cell only

Each variant trains one video cell without motion-free masks (the `off` arm of grid=mfg: clips only),
from a text-to-image checkpoint (`--init`, e.g. grid=conditioning's cross-attention cell) or from
scratch (`--init none`), then samples at lambda_T = 7.5 and prints the judge's motion metrics on
`--n` held-out motion prompts (compshapes_motion), `--n` motion prompts of seen colour-shape pairs
(compshapes_motion_seen, keys prefixed `seen/`), and one-object motion prompts of held-out and seen
pairs (`single/`, `single_seen/`: the arrow-of-time check), and the denoiser's loss change under the
reversed and the other axis's caption (`arrow/`, see arrow_losses). A variant is a set of
config overrides plus, for the motion magnitude, the travel of an object over a clip
(`compshapes.MOTION_DISTANCE`, which the judge's thresholds follow). Runs one thread
(torch.set_num_threads(1)), one variant at a time; each run folder is reused when rerun. The
variants and what they measured are in docs/ablations.md (grid=mfg).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from eval import judge
from eval.common import aggregate, per_prompt_means
from gentron.config import load_config
from gentron.data import compshapes
from gentron.generate import generate, prompt_set
from gentron.train import train

# The grid=mfg embedded cell before the recipe search: 8 frames, 0.3 of the image over a clip,
# 4,000 steps of 8 clips. Each variant below changes the named levers.
BASE = {"data": {"video": True, "num_train": 2000, "num_frames": 8},
        "train": {"batch_size": 8, "steps": 4000, "p_motion_free": 0.0, "ckpt_every": 1000},
        "sample": {"cfg_scale": 7.5, "mfg_scale": None}}
VARIANTS: dict[str, tuple[dict, float]] = {  # name: (overrides on BASE, motion distance)
    "init_only": ({"data": {"num_frames": 4}, "train": {"steps": 1}}, 0.5),  # the T2I model per frame
    "base": ({}, 0.3),
    "base_1k": ({"train": {"steps": 1000}}, 0.3),
    "dist05_1k": ({"train": {"steps": 1000}}, 0.5),
    "f4_1k": ({"data": {"num_frames": 4}, "train": {"steps": 1000}}, 0.3),
    "f4_dist05_1k": ({"data": {"num_frames": 4}, "train": {"steps": 1000}}, 0.5),
    "f4_dist05_2k": ({"data": {"num_frames": 4}, "train": {"steps": 2000}}, 0.5),
    "f4_dist05_b16_1k": ({"data": {"num_frames": 4}, "train": {"steps": 1000, "batch_size": 16}}, 0.5),
    "f4_dist05_lr2e-3_1k": ({"data": {"num_frames": 4}, "train": {"steps": 1000, "lr": 2e-3}}, 0.5),
    "f4_dist05_mf05_1k": ({"data": {"num_frames": 4}, "train": {"steps": 1000, "p_motion_free": 0.5}}, 0.5),
    "f4_dist05_mf05_2k": ({"data": {"num_frames": 4}, "train": {"steps": 2000, "p_motion_free": 0.5}}, 0.5),
    "f4_dist06_1k": ({"data": {"num_frames": 4}, "train": {"steps": 1000}}, 0.6),
    "f4_lr2e-3_1k": ({"data": {"num_frames": 4}, "train": {"steps": 1000, "lr": 2e-3}}, 0.3),
    "f4_3k": ({"data": {"num_frames": 4}, "train": {"steps": 3000}}, 0.3),
    "f8_1500": ({"train": {"steps": 1500}}, 0.3),  # the same compute as f4_3k
    "f4_dist05_500": ({"data": {"num_frames": 4}, "train": {"steps": 500}}, 0.5),
    # grid=mfg's embedded recipe (4 frames, 6,000 steps) on more distinct clips, and with larger travel
    "f4_6k": ({"data": {"num_frames": 4}, "train": {"steps": 6000}}, 0.3),
    "f4_6k_n20k": ({"data": {"num_frames": 4, "num_train": 20000}, "train": {"steps": 6000}}, 0.3),
    "f4_12k": ({"data": {"num_frames": 4}, "train": {"steps": 12000}}, 0.3),
    "f4_6k_uniform_t": ({"data": {"num_frames": 4}, "train": {"steps": 6000}, "model": {"timestep_std": None}}, 0.3),
    "f4_6k_n20k_dist05": ({"data": {"num_frames": 4, "num_train": 20000}, "train": {"steps": 6000}}, 0.5),
}


def merged(base: dict, over: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in over.items():
        out.setdefault(section, {}).update(values)
    return out


def set_motion_distance(distance: float) -> None:
    compshapes.MOTION_DISTANCE = judge.MOTION_DISTANCE = distance
    judge.MIN_TRAVEL = distance / 3


SINGLE_SEEDS = (42, 43)  # the one-object prompts' seeds; arrow_sheet shows the first


def single_object_phrases(pairs: str) -> list:
    """One phrase per (colour-shape pair, direction): the five held-out pairs, or the first five seen ones."""
    objects = list(itertools.product(compshapes.COLORS, compshapes.SHAPES))
    held = [o for o in objects if o in compshapes.HELD_OUT_COLOR_SHAPE]
    group = held if pairs == "held_out" else [o for o in objects if o not in compshapes.HELD_OUT_COLOR_SHAPE][:5]
    return [compshapes.Phrase(s, c, motion=d) for (c, s), d in itertools.product(group, compshapes.DIRECTIONS)]


def single_object_records(pairs: str) -> list[dict]:
    """One-object motion prompts ("a green circle moving left") of single_object_phrases, each at
    SINGLE_SEEDS. With one object there is nothing to route a direction to, so what they measure is
    whether the clip's arrow of time is right (motion_direction) or flipped (motion_reversed)."""
    return [{"prompt": phrase.text(), "seed": seed, "index": k, "category": "motion", "prompt_id": i}
            for i, phrase in enumerate(single_object_phrases(pairs)) for k, seed in enumerate(SINGLE_SEEDS)]


def score(cfg, checkpoint: Path, out: Path, n: int) -> dict:
    """The judge's motion metrics on four sets: `--n` held-out two-object motion prompts (no prefix),
    `--n` of seen colour-shape pairs (`seen/`), and the one-object prompts of held-out and seen pairs
    (`single/`, `single_seen/`); then arrow_losses (`arrow/`)."""
    sets = {"": [r for r in prompt_set("compshapes_motion", cfg.sample.seeds)][:n],
            "seen/": [r for r in prompt_set("compshapes_motion_seen", cfg.sample.seeds)][:n],
            "single/": single_object_records("held_out"), "single_seen/": single_object_records("seen")}
    row = {}
    for prefix, records in sets.items():
        folder = generate(cfg, checkpoint, records, out / (prefix.strip("/") or "held_out"))
        means = {k: v["mean"] for k, v in aggregate(per_prompt_means(judge.evaluate(folder)["per_image"])).items()}
        row.update({prefix + k: round(v, 3) for k, v in means.items()})
    return {**row, **arrow_losses(cfg, checkpoint)}


TURN = {"left": "up", "up": "right", "right": "down", "down": "left"}  # the other axis


@torch.no_grad()
def arrow_losses(cfg, checkpoint: Path) -> dict:
    """Does the denoiser read the sign of a stated direction, or only its axis? The EMA model's loss
    on true one-object clips (the single-object prompts of both pair groups, four layouts each) with
    their own caption, with the reversed direction's caption and with the other axis's, at the same
    timesteps and noise, per band of 250 timesteps (t = 999 is pure noise). Reported as the loss
    change in percent: a model that knows the arrow of time loses with the reversed caption."""
    from eval.motion import OPPOSITE
    from gentron.data.features import to_model_dtype
    from gentron.diffusion import Diffusion
    from gentron.generate import load_ema_model
    from gentron.text import build_text_encoders
    from gentron.text.cache import PromptCache

    model = load_ema_model(checkpoint).eval()
    diffusion = Diffusion.from_config(cfg.model)
    cache = PromptCache(build_text_encoders(cfg.text_encoders, "cpu"))
    phrases = [p for pairs in ("held_out", "seen") for p in single_object_phrases(pairs)] * 4
    x0 = torch.stack([compshapes.to_tensor(compshapes.render_clip(
        compshapes.scene_for_prompt(p.text(), i, num_frames=cfg.data.num_frames), cfg.data.resolution))
        for i, p in enumerate(phrases)])
    captions = {"true": [p.text() for p in phrases]}
    for name, swap in (("reversed", OPPOSITE), ("other_axis", TURN)):
        captions[name] = [replace(p, motion=swap[p.motion]).text() for p in phrases]
    texts = {k: to_model_dtype(cache.encode(v), torch.float32, torch.device("cpu")) for k, v in captions.items()}
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    row = {}
    for lo in range(0, diffusion.num_timesteps, 250):
        t = torch.randint(lo, min(lo + 250, diffusion.num_timesteps), (len(phrases),), generator=g)
        loss = {k: float(diffusion.training_loss(model, x0, text, t=t, noise=noise)["loss"]) for k, text in texts.items()}
        for name in ("reversed", "other_axis"):
            row[f"arrow/{name}_t{lo}"] = round(100 * (loss[name] / loss["true"] - 1), 1)
    return row


def run(name: str, init: str | None, out: Path, n: int) -> dict:
    over, distance = VARIANTS[name]
    set_motion_distance(distance)
    cfg = merged(BASE, over)
    cfg["train"]["init_from"] = init
    # variants of the same clips share their encoded data; the distance is not in the cache's key
    cfg["data"]["cache_dir"] = str(out / f"cache-{cfg['data']['num_frames']}f-{distance}-{cfg['data']['num_train']}")
    cfg = load_config(cfg)
    run_dir = out / name / "cell"
    start = time.time()
    result = train(cfg, run_dir)
    row = {"variant": name, "distance": distance, "overrides": over, "train_s": round(time.time() - start),
           **score(cfg, result.checkpoint, out / name / "samples", n), "total_s": round(time.time() - start)}
    print(json.dumps(row), flush=True)
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return row


def arrow_sheet(folder: Path, out: Path, rows: int = 8, scale: int = 4) -> Path:
    """The frames of the first `rows` one-object clips of the first seed (each pair's four directions in
    turn), one row per clip with its prompt: "left" beside "right" shows whether the sign was read."""
    from PIL import Image, ImageDraw

    from eval.common import read_samples

    samples = [s for s in read_samples(folder) if s.seed == SINGLE_SEEDS[0]][:rows]
    clips = [judge.load_frames(folder, s) for s in samples]
    side = clips[0][0].width * scale
    sheet = Image.new("RGB", (len(clips[0]) * (side + 4) + 200, rows * (side + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (sample, frames) in enumerate(zip(samples, clips)):
        for c, frame in enumerate(frames):
            sheet.paste(frame.convert("RGB").resize((side, side), Image.NEAREST), (c * (side + 4), r * (side + 4)))
        draw.text((len(frames) * (side + 4) + 4, r * (side + 4) + side // 2 - 6), sample.prompt, fill="black")
    sheet.save(out)
    return out


def score_cell(cell: Path, out: Path, n: int) -> dict:
    """Score a finished cell (a grid=mfg cell folder, or a variant's) without training it again, its
    samples in `out/<cell folder name>/` (never inside the cell), with `arrow_sheet.png` there (the
    seen-pair one-object clips)."""
    cfg = load_config(yaml.safe_load((cell / "config.yaml").read_text(encoding="utf-8")))
    folder = out / cell.name
    row = {"cell": str(cell), **score(cfg, cell / "checkpoints" / "last.pt", folder, n)}
    arrow_sheet(folder / "single_seen", folder / "arrow_sheet.png")
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="*", help=f"from: {', '.join(sorted(VARIANTS))}")
    parser.add_argument("--init", help="a T2I checkpoint, or 'none' to train from scratch")
    parser.add_argument("--score", type=Path, metavar="CELL", help="only score this trained cell folder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/motion_variants"))
    parser.add_argument("--n", type=int, default=32, help="held-out motion prompts sampled")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    if args.score:
        score_cell(args.score, args.out, args.n)
        return
    if not args.variants or not args.init:
        parser.error("name one or more variants and --init (or --score CELL)")
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    for name in args.variants:
        run(name, None if args.init == "none" else args.init, args.out, args.n)


if __name__ == "__main__":
    main()
