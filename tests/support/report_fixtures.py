"""Builders of realistic run folders and sample folders, exactly in the layout of DESIGN.md
('A run folder', 'A sample folder', 'An evaluator's output'), for the report tests and benchmarks.

The grid runner writes the same files; these builders are the reports' reading of that contract.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import random
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageDraw, PngImagePlugin

from eval.common import result
from gentron.io import atomic_save_image, atomic_write_bytes, atomic_write_json, atomic_write_text
from reports.serving import CHROMIUM, CHROMIUM_ARGS

CATEGORIES = ["color", "shape", "texture", "spatial", "non_spatial", "complex"]
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ["circle", "square", "triangle"]
METRIC = "compshapes_judge"
PROMPT_SET = "compshapes_test"

BASE_CONFIG = {
    "model": {"size": "T/2", "conditioning": "cross_attn", "learn_sigma": False, "patch_size": 2},
    "text_encoders": [{"kind": "tiny_clip", "seed": 0}],
    "vae": {"kind": "identity"},
    "data": {"kind": "compshapes", "resolution": 32, "num_train": 20000, "seed": 0, "video": False, "num_frames": 8},
    "train": {"steps": 1500, "batch_size": 64, "lr": 1.0e-4, "weight_decay": 0.0, "ema_decay": 0.999,
              "grad_clip": 1.0, "caption_dropout": 0.1, "p_motion_free": 0.5, "ckpt_every": 500,
              "log_every": 10, "seed": 0, "precision": "auto", "grad_checkpointing": False},
    "sample": {"sampler": "dpmsolver++", "steps": 20, "cfg_scale": 4.0, "mfg_scale": None, "images_per_prompt": 1,
               "seeds": [42], "prompt_sets": [PROMPT_SET]},
    "eval": {"metrics": [METRIC]},
}
# where each grid axis lands in a cell's config
AXIS_KEYS = {"conditioning": ("model", "conditioning"), "size": ("model", "size"), "seed": ("train", "seed"),
             "mfg_scale": ("sample", "mfg_scale"), "cfg_scale": ("sample", "cfg_scale"),
             "lr": ("train", "lr"), "text_encoder": ("text_encoders",)}
STAGES = ("config", "train", "samples", "eval", "metrics")
# the grid runner's stage each fixture step stands for (ablations.runfolder.STAGES)
RUN_STAGES = {"train": "train", "samples": "sample", "eval": "evaluate", "metrics": "record"}


def prompts(n: int) -> list[dict]:
    """n CompShapes-like prompts cycling through the six categories."""
    out = []
    for i in range(n):
        color, other = list(COLORS)[i % 4], list(COLORS)[(i + 1) % 4]
        shape, other_shape = SHAPES[i % 3], SHAPES[(i + 1) % 3]
        text = {"color": f"a {color} {shape}", "shape": f"a {color} {shape} next to a {other_shape}",
                "texture": f"a striped {color} {shape}", "spatial": f"a {color} {shape} on the left of a {other} {other_shape}",
                "non_spatial": f"a {color} {shape} chasing a {other_shape}",
                "complex": f"a big {color} {shape} above a small striped {other} {other_shape}"}[CATEGORIES[i % 6]]
        out.append({"prompt_id": i, "prompt": text, "category": CATEGORIES[i % 6], "color": color, "shape": shape})
    return out


def draw(prompt: dict, seed: int, quality: float, size: int = 64, shift: int = 0) -> Image.Image:
    """A picture of the prompt's shape in its colour; low quality adds noise (what a judge would see)."""
    rng = np.random.default_rng(seed + 1000 * prompt["prompt_id"])
    image = Image.new("RGB", (size, size), (245, 245, 240))
    pen = ImageDraw.Draw(image)
    box = [12 + shift, 12, size - 12 + shift, size - 12]
    fill = COLORS[prompt["color"]]
    {"circle": pen.ellipse, "square": pen.rectangle,
     "triangle": lambda b, fill: pen.polygon([(b[0], b[3]), ((b[0] + b[2]) // 2, b[1]), (b[2], b[3])], fill=fill)}[
        prompt["shape"]](box, fill=fill)
    noise = rng.normal(0, 80 * (1 - quality), (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def write_sample_folder(folder: Path, prompt_list: list[dict], seeds=(42,), quality: float = 0.8,
                        video: bool = False, tag: str | None = None) -> list[dict]:
    """A sample folder (samples.jsonl + images, or GIFs + frame folders for video). `tag` is written into
    each PNG's metadata, so tests can check the voting page strips it."""
    folder = Path(folder)
    rows = []
    for p, seed in itertools.product(prompt_list, seeds):
        stem = f"{p['category']}/{p['prompt_id']:06d}_{seed}"
        row = {"prompt": p["prompt"], "seed": seed, "index": 0, "category": p["category"], "prompt_id": p["prompt_id"]}
        if video:
            frames = [draw(p, seed, quality, shift=2 * t) for t in range(4)]
            for t, frame in enumerate(frames):
                atomic_save_image(folder / stem / f"{t:03d}.png", frame)
            buffer = io.BytesIO()
            frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=150, loop=0)
            atomic_write_bytes(folder / f"{stem}.gif", buffer.getvalue())
            row.update(file=f"{stem}.gif", frames=f"{stem}/")
        else:
            _save_png(folder / f"{stem}.png", draw(p, seed, quality), tag)
            row["file"] = f"{stem}.png"
        rows.append(row)
    atomic_write_text(folder / "samples.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return rows


def _save_png(path: Path, image: Image.Image, tag: str | None) -> None:
    info = PngImagePlugin.PngInfo()
    if tag:
        info.add_text("system", tag)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buffer.getvalue())


def cell_config(axes: dict) -> dict:
    config = json.loads(json.dumps(BASE_CONFIG))
    for name, value in axes.items():
        keys = AXIS_KEYS.get(name, ("extra", name))
        target = config
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = [{"kind": value, "seed": 0}] if name == "text_encoder" else value
    return config


def cell_id_of(config: dict) -> str:
    return hashlib.sha1(yaml.safe_dump(config, sort_keys=True).encode()).hexdigest()[:10]


def arm_strength(axes: dict) -> float:
    """The 'true' quality of an arm: cross-attention beats adaLN, bigger models, T5 (most with CLIP)
    and moderate MFG help."""
    strength = 0.45
    strength += 0.3 if axes.get("conditioning", "cross_attn") == "cross_attn" else 0.0
    strength += {"T/2": 0.0, "S/2": 0.05, "B/2": 0.1}.get(axes.get("size", "T/2"), 0.0)
    strength += {"G/2": 0.08}.get(axes.get("scale"), 0.0)
    strength += {"t5": 0.04, "clip+t5": 0.08}.get(axes.get("text_encoder"), 0.0)
    mfg = axes.get("mfg_scale")
    if mfg is not None:
        strength += 0.08 * math.exp(-((mfg - 2.0) ** 2) / 2)
    return min(strength, 0.95)


def build_cell(grid_dir: Path, grid: str, axes: dict, *, n_prompts: int = 12, images: bool = True, video: bool = False,
               stop_after: str = "metrics", log_steps: int = 150, metric: str = METRIC) -> tuple[str, dict]:
    """One cell folder up to and including stage `stop_after` (one of STAGES). Returns (cell_id, metrics)."""
    config = cell_config(axes)
    cell_id = cell_id_of(config)
    atomic_write_text(grid_dir / cell_id / "config.yaml", yaml.safe_dump(config, sort_keys=True))
    atomic_write_json(grid_dir / cell_id / "cell.json", {"grid": grid, "cell_id": cell_id, "axes": axes})
    return cell_id, fill_cell(grid_dir / cell_id, axes, n_prompts=n_prompts, images=images, video=video,
                              stop_after=stop_after, log_steps=log_steps, metric=metric)


def fill_cell(cell_dir: Path, axes: dict, *, n_prompts: int = 12, images: bool = True, video: bool = False,
              stop_after: str = "metrics", log_steps: int = 150, metric: str = METRIC,
              prompt_set: str = PROMPT_SET, salt: int = 0) -> dict:
    """What the stages of a cell write, up to and including `stop_after`: train log, checkpoint,
    samples, evaluator output, metrics.json, and the manifest's stage entries. Returns the metrics.
    `salt` varies the judge's noise (two grids' arms of the same strength then score apart)."""
    reached = STAGES[: STAGES.index(stop_after) + 1]
    strength = arm_strength(axes)
    seed = int(axes.get("seed", 0))
    _write_train_log(cell_dir, strength, seed, log_steps, done="train" in reached)
    if "train" in reached:
        atomic_write_bytes(cell_dir / "checkpoints" / "last.pt", b"placeholder checkpoint")
    plist = prompts(n_prompts)
    if "samples" in reached and images:
        write_sample_folder(cell_dir / "samples" / prompt_set, plist, quality=strength, video=video)
    metrics = {}
    if "eval" in reached:
        evaluation = _evaluation(plist, strength, seed, video, metric, salt)
        atomic_write_json(cell_dir / "eval" / f"{metric}.json", evaluation)
        metrics = {f"{metric}/{k}": v for k, v in evaluation["aggregate"].items()}
    if "metrics" in reached:
        atomic_write_json(cell_dir / "metrics.json", metrics)
    _write_manifest(cell_dir, seed, "done" if stop_after == "metrics" else "running",
                    done=[RUN_STAGES[s] for s in reached if s in RUN_STAGES], metric=metric)
    return metrics


def _write_train_log(cell_dir: Path, strength: float, seed: int, steps: int, done: bool) -> None:
    """What gentron.train logs every log step (loss, mse, lr with warm-up, grad_norm, throughput, waits)."""
    rng = random.Random(seed)
    last = steps if done else steps // 2
    lines = []
    for s in range(last):
        loss = round(0.2 + (1.1 - strength) * math.exp(-s / 40) + rng.uniform(0, 0.03), 5)
        speed = 12.5 + rng.uniform(-1.5, 1.5)
        lines.append(json.dumps({
            "step": s * 10, "loss": loss, "mse": loss, "vb": None, "lr": 1e-4 * min(1.0, (s + 1) / 20),
            "grad_norm": round(0.3 + 2.0 * math.exp(-s / 30) + rng.uniform(0, 0.2), 4), "steps_per_s": speed,
            "images_per_s": speed * 64, "data_wait_s": 0.002 + rng.uniform(0, 0.001), "encode_s": 0.001}))
    atomic_write_text(cell_dir / "train_log.jsonl", "\n".join(lines) + "\n")


def _evaluation(plist: list[dict], strength: float, seed: int, video: bool, metric: str = METRIC,
                salt: int = 0) -> dict:
    rng = np.random.default_rng(seed * 7919 + int(strength * 1000) + salt)
    suffix = ".gif" if video else ".png"
    per_image = [{"file": f"{p['category']}/{p['prompt_id']:06d}_42{suffix}", "prompt_id": p["prompt_id"], "seed": 42,
                  "category": p["category"], "prompt": p["prompt"],
                  "scores": {p["category"]: float(np.clip(strength + rng.normal(0, 0.1), 0, 1))}} for p in plist]
    return result(metric, per_image, {"judge": "compshapes-oracle", "resolution": 32}, comparable_to_paper=False)


def _write_manifest(cell_dir: Path, seed: int, status: str, done: list[str] | None = None,
                    metric: str = METRIC) -> None:
    """A manifest in the grid runner's format (ablations.manifest): stages listed in `done` (default:
    all) are done."""
    stages = {s: {"status": "done", "start": "2025-01-01T00:00:00Z", "end": "2025-01-01T00:05:00Z",
                  "seconds": 300.0} for s in (RUN_STAGES.values() if done is None else done)}
    if "evaluate" in stages:
        stages["evaluate"]["metrics"] = [metric]
    atomic_write_json(cell_dir / "manifest.json", {
        "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        "versions": {"torch": "2.14.1"}, "python": "3.11", "host": "testhost", "seeds": {"train": seed},
        "start": "2025-01-01T00:00:00Z", "end": "2025-01-01T00:10:00Z" if status == "done" else None,
        "status": status, "stages": stages})


def build_grid(runs_dir: Path, grid: str = "conditioning", axes: dict | None = None, *, n_prompts: int = 12,
               images: bool = True, video: bool = False, stop_after: str = "metrics", parquet: bool = True,
               metric: str = METRIC) -> Path:
    """A grid folder: grid.yaml, one cell per combination of axis values, results.parquet."""
    axes = axes or {"conditioning": ["adaln", "cross_attn"], "seed": [0, 1]}
    grid_dir = Path(runs_dir) / grid
    atomic_write_text(grid_dir / "grid.yaml", yaml.safe_dump({"name": grid, "axes": axes, "base": BASE_CONFIG}))
    rows = []
    for combo in itertools.product(*axes.values()):
        cell_axes = dict(zip(axes, combo))
        cell_id, metrics = build_cell(grid_dir, grid, cell_axes, n_prompts=n_prompts, images=images, video=video,
                                      stop_after=stop_after, metric=metric)
        rows += [{"grid": grid, "cell_id": cell_id, "metric": m, **v, **{f"axis.{k}": x for k, x in cell_axes.items()}}
                 for m, v in metrics.items()]
    if parquet and rows:
        buffer = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buffer, index=False)
        atomic_write_bytes(grid_dir / "results.parquet", buffer.getvalue())
    return grid_dir


def build_planned_grid(runs_dir: Path, argv: list[str], *, n_prompts: int = 12, images: bool = True,
                       log_steps: int = 150, stop_after: str = "metrics") -> Path:
    """A grid folder as the grid runner lays it out for `python ablations/run.py <argv>`: its plan
    (ablations.grid.plan), grid.yaml and cell folders written by the runner's own `prepare`, then
    each cell's stage outputs (fill_cell) and results.parquet (ablations.results)."""
    from ablations import results as grid_results
    from ablations.grid import plan
    from ablations.launch import prepare

    planned = plan([*argv, f"runs_dir={runs_dir}"])
    prepare(planned)
    for cell in planned.cells:
        axes = {**cell.axes, **cell.arms, "mfg_scale": cell.config.sample.mfg_scale,
                "conditioning": cell.config.model.conditioning}  # what arm_strength reads
        fill_cell(planned.grid_dir / cell.cell_id, axes, n_prompts=n_prompts, images=images,
                  video=cell.config.data.video, stop_after=stop_after, log_steps=log_steps,
                  prompt_set=cell.config.sample.prompt_sets[0], metric=cell.config.eval.metrics[0],
                  salt=zlib.crc32(planned.grid_dir.name.encode()) % 10_000)
    grid_results.write_results(planned.grid_dir)
    return planned.grid_dir


def make_run_folder(runs_dir: Path) -> Path:
    """What `make run` leaves: the conditioning grid (2 cells, one seed) at the embedded default's
    size: 700 train-log lines (7,000 steps, log every 10) and 564 judged samples per cell."""
    return build_planned_grid(runs_dir, ["grid=conditioning"], n_prompts=564, log_steps=700)


def build_big_grid(runs_dir: Path, n_cells: int = 1000, grid: str = "big") -> Path:
    """A metrics-only grid of n_cells cells (no images), for the render benchmark: 10 seeds x arms."""
    arms = max(1, n_cells // 10)
    sizes = ["T/2", "S/2", "B/2", "XL/2", "G/2"]
    lrs = [round(1e-4 * (1 + i), 6) for i in range(math.ceil(arms / (2 * len(sizes))))]
    combos = list(itertools.product(["adaln", "cross_attn"], sizes, lrs))[:arms]
    grid_dir = Path(runs_dir) / grid
    atomic_write_text(grid_dir / "grid.yaml", yaml.safe_dump({"name": grid, "cells": n_cells}))
    rng = np.random.default_rng(0)
    rows = []
    for (cond, size, lr), seed in itertools.product(combos, range(10)):
        cell_axes = {"conditioning": cond, "size": size, "lr": lr, "seed": seed}
        config = cell_config(cell_axes)
        cell_id = cell_id_of(config)
        cell_dir = grid_dir / cell_id
        atomic_write_text(cell_dir / "config.yaml", yaml.safe_dump(config, sort_keys=True))
        atomic_write_json(cell_dir / "cell.json", {"grid": grid, "cell_id": cell_id, "axes": cell_axes})
        _write_manifest(cell_dir, seed, "done")
        metrics = {}
        for cat in CATEGORIES:
            mean = float(np.clip(arm_strength(cell_axes) + rng.normal(0, 0.05), 0, 1))
            metrics[f"{METRIC}/{cat}"] = {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n": 300}
        atomic_write_json(cell_dir / "metrics.json", metrics)
        rows += [{"grid": grid, "cell_id": cell_id, "metric": m, **v, **{f"axis.{k}": x for k, x in cell_axes.items()}}
                 for m, v in metrics.items()]
    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer, index=False)
    atomic_write_bytes(grid_dir / "results.parquet", buffer.getvalue())
    return grid_dir


# ---------------------------------------------------------------- servers for browser/HTTP tests

REPO = Path(__file__).resolve().parents[2]


# --- Debian's Chromium through Playwright (reports.serving.CHROMIUM; never a downloaded browser) ----
ARTIFACTS = REPO / "test-artifacts"


@contextmanager
def chromium():
    """A headless Chromium for one test module; screenshots go to ARTIFACTS."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
