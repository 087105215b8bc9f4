"""What a plan's cells cost: one model of each cell, counted once, behind every estimate the runner
prints or acts on.

The model: `Cell.model()` (gentron.config.resolve of the cell, text encoders the grid trains itself
shaped by their recipes), its transformer parameters and forward FLOPs counted exactly by
gentron.sizes on the meta device (`counts`). Three estimates read it:

- `check_params` (launch.check_resources): cells beyond CPU_PARAM_LIMIT parameters need GPUs.
- `with_costs` (the plan table): parameters, and for GPU plans GPUs and training GPU-hours from
  published throughput:

    DiT-XL/2, 256 px: 0.81 training steps/s at global batch 256 on 8 A100 (the DiT repository's
    PyTorch training script, github.com/facebookresearch/DiT), i.e. 25.9 images/s per A100.

  A cell's images per second per GPU are DiT-XL/2's scaled by the ratio of forward FLOPs per image
  (a clip of T frames counts T images' tokens). The estimate carries that script's precision and
  kernels; `benchmarks/gpu_bench.py` measures this code's own throughput on a GPU. Sampling GPU-hours
  come from the same throughput: gentron.generate.sampling_cost's forward FLOPs of a cell's images,
  at the FLOPs per GPU-second that training reached (a training sample costs about three forwards:
  the forward and a backward of twice its cost). With a SLURM profile the table also shows each
  stage's array tasks per cell and GPUs per task (the profile's `sample:` and `evaluate:` sections).
- `format_estimate` (the dry run): how long the grid takes on this machine's CPU, from measured step
  costs (ablations/conf/step_costs.yaml, written by benchmarks/step_costs.py). The file holds CPU
  seconds of one thread per unit of work, keyed by what decides the cost:
    train:    one training step (model shape, conditioning, encoders, image/video, batch, resolution)
    sample:   one sampled image or clip (the same, plus sampler steps and guidance branches)
    data:     one CompShapes image or clip drawn and rendered
    encoders: one training step of a trained text encoder's recipe
  CPU time of one thread is what an idle core gives a cell that runs on one thread (the local runner
  gives each of N parallel cells one of N cores), and other processes on a shared machine do not
  inflate it. The estimate: encoders first (side by side), then the cell groups (cells that train one
  model) packed onto the workers, longest first; each group draws its data, trains once, and samples
  every cell's prompt set. Sampling with the judge's own cost is counted, plotting and reports are not.
  The file's `calibration` scales it to a measured wall time.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ablations import runfolder, stages
from ablations.grid import Cell, Plan, local_workers
from ablations.identity import train_key
from ablations.registries import CONF_DIR
from gentron.config import CellConfig

CPU_PARAM_LIMIT = 100e6  # transformer parameters beyond which a CPU run is refused
BYTES_PER_PARAM = 16  # fp32 weights + gradients + AdamW's two moments
# DiT's published training throughput (see the module docstring).
DIT_XL2_STEPS_PER_S, DIT_XL2_BATCH, DIT_XL2_GPUS = 0.81, 256, 8
DIT_XL2_IMAGES_PER_GPU_S = DIT_XL2_STEPS_PER_S * DIT_XL2_BATCH / DIT_XL2_GPUS
THROUGHPUT_SOURCE = ("DiT-XL/2 0.81 steps/s at batch 256 on 8 A100 (facebookresearch/DiT), scaled by forward "
                     "FLOPs per image")
COSTS_FILE = CONF_DIR / "step_costs.yaml"


# --- the model of a cell ------------------------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    params: int  # transformer parameters
    flops: int  # forward FLOPs of one sample (an image, or a clip)


def counts(cell: Cell) -> Counts:
    """The cell's model, counted exactly (gentron.sizes, on the meta device; each shape counted once)."""
    config = cell.config
    frames = config.data.num_frames if config.data.video else 1
    lengths = tuple(s.tokens for s in cell.shapes())
    return _counted(json.dumps(cell.model().to_dict(), sort_keys=True), lengths, frames)


@functools.lru_cache(maxsize=256)
def _counted(model: str, lengths: tuple[int, ...], frames: int) -> Counts:
    from gentron import sizes
    from gentron.model import GenTronConfig

    config = GenTronConfig.from_dict(json.loads(model))
    return Counts(sizes.count_params(config)["total"], sizes.count_flops(config, lengths, frames))


@functools.lru_cache(maxsize=1)
def _dit_xl2_flops() -> int:
    """Forward FLOPs per image of DiT-XL/2 at 256 px (the throughput reference): gentron.sizes' paper
    setting of XL/2 with adaLN and one CLIP-L text encoder of 77 tokens."""
    from gentron import sizes

    return sizes.count_flops(sizes.paper_config("XL/2", "adaln", "CLIP-L"), (77,), 1)


def gpu_hours(config: CellConfig, flops: int) -> float:
    """Training GPU-hours of a cell whose model takes `flops` forward FLOPs per sample."""
    images_per_gpu_s = DIT_XL2_IMAGES_PER_GPU_S * _dit_xl2_flops() / flops  # samples (images or clips) per s
    return config.train.steps * config.train.batch_size / images_per_gpu_s / 3600


TRAIN_FORWARDS = 3  # a training sample's forward and backward, in forwards


def sampling_gpu_hours(config: CellConfig, images: int) -> float:
    """GPU-hours of drawing `images` samples of the cell (gentron.generate.sampling_cost's FLOPs) at the
    forward FLOPs per GPU-second of the training throughput gpu_hours uses."""
    from gentron.generate import sampling_cost

    flops_per_gpu_s = DIT_XL2_IMAGES_PER_GPU_S * TRAIN_FORWARDS * _dit_xl2_flops()
    return sampling_cost(config, images).flops / flops_per_gpu_s / 3600


def sample_count(cell: Cell, missing: list[str] | None = None) -> int:
    """Images (or clips) the cell's sample stage draws: every prompt set's prompts x seeds x images."""
    missing = [] if missing is None else missing
    return sum(_prompt_count(name, cell.config.sample, missing) for name in cell.config.sample.prompt_sets)


def cell_costs(cell: Cell, gpus: int | None) -> dict:
    """{params, gflops (forward, per image or clip), gpu_hours, hours (on `gpus`), images (sampled; None
    when a prompt set's files are not here to count), sample_gpu_hours} of one cell."""
    c = counts(cell)
    hours = gpu_hours(cell.config, c.flops)
    missing: list[str] = []
    images = sample_count(cell, missing)
    sampled = None if missing else sampling_gpu_hours(cell.config, images)
    return {"params": c.params, "gflops": c.flops / 1e9, "gpu_hours": hours, "hours": hours / gpus if gpus else None,
            "images": None if missing else images, "sample_gpu_hours": sampled}


def stage_tasks(p: Plan) -> str | None:
    """Array tasks per cell x GPUs per task of each stage of the plan's SLURM profile, e.g.
    'train 1x8, sample 8x1, evaluate 2x1'; None without a profile."""
    if not p.run.slurm:
        return None
    from slurm.launcher import load_profile

    profile = load_profile(p.run.slurm)
    parts = []
    for stage in ("train", "sample", "evaluate"):
        staged = profile.for_stage(stage)
        parts.append(f"{stage} {profile.shards(stage)}x{staged.nodes * staged.gpus_per_node}")
    return ", ".join(parts)


# --- where a plan can train ---------------------------------------------------------------------

def too_big_for_cpu(p: Plan) -> dict[str, int]:
    """{model.size: the most parameters of its cells} for the plan's cells beyond CPU_PARAM_LIMIT parameters."""
    sizes: dict[str, int] = {}
    for cell in p.cells:
        params = counts(cell).params
        if params > CPU_PARAM_LIMIT:
            sizes[cell.config.model.size] = max(params, sizes.get(cell.config.model.size, 0))
    return sizes


# --- the plan table's cost columns --------------------------------------------------------------

def plan_gpus(p: Plan) -> int | None:
    """GPUs a cell runs on: the SLURM profile's nodes x GPUs per node, else this machine's GPUs."""
    if p.run.slurm:
        from slurm.launcher import load_profile

        profile = load_profile(p.run.slurm)
        return profile.nodes * profile.gpus_per_node or None
    import torch

    return torch.cuda.device_count() or None


def cost_columns(p: Plan, gpus: int | None) -> list[dict]:
    """The plan table's cost columns per cell: params (M), GPUs, estimated GPU-hours."""
    rows, tasks = [], stage_tasks(p)
    for cell in p.cells:
        c = cell_costs(cell, gpus)
        row = {"params": f"{c['params'] / 1e6:.1f}M", "GPUs": gpus if gpus else "-",
               "GPU-h (est.)": _hours(c["gpu_hours"]),
               "sample GPU-h (est.)": "-" if c["sample_gpu_hours"] is None else _hours(c["sample_gpu_hours"])}
        if tasks:
            row["tasks x GPUs"] = tasks
        rows.append(row)
    return rows


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


def _sampling_line(p: Plan) -> list[str]:
    return (["sample GPU-h (est.): gentron.generate.sampling_cost's forward FLOPs of the cell's images at the FLOPs "
             f"per GPU-second of the training estimate ({TRAIN_FORWARDS} forwards per training sample); "
             "tasks x GPUs: array tasks per cell x GPUs per task of each stage (the profile's sample.shards, "
             "evaluate.shards)"] if p.run.profile != "embedded" else [])


def with_costs(p: Plan, table):
    """The plan table with each cell's parameters, and for GPU profiles its GPUs and GPU-hours."""
    import pandas as pd

    gpus = plan_gpus(p)
    costs = pd.DataFrame(cost_columns(p, gpus))
    if p.run.profile == "embedded" and not gpus:
        costs = costs[["params"]]
    return pd.concat([table, costs], axis=1)


def source_line(p: Plan) -> list[str]:
    """Where the GPU-hours come from, for plans that show them."""
    return [f"GPU-h (est.): {THROUGHPUT_SOURCE}", *_sampling_line(p)] if p.run.profile != "embedded" else []


# --- the CPU time of a local run ----------------------------------------------------------------

def encoders_label(config: CellConfig) -> str:
    """'tiny_clip', 'clip+t5', ...: the encoder kinds in order (their widths and token lengths are
    what the cost depends on; the trained tiny ones share one recipe family)."""
    return "+".join(spec.kind for spec in config.text_encoders)


def model_label(cell: Cell) -> str:
    m = cell.model()
    return f"d{m.depth}-w{m.hidden_size}-m{m.mlp_hidden_size}-h{m.num_heads}-p{m.patch_size}"


def data_key(config: CellConfig) -> str:
    d = config.data
    return f"r{d.resolution}/" + (f"video{d.num_frames}" if d.video else "image")


def train_cost_key(cell: Cell) -> str:
    c = cell.config
    return (f"{model_label(cell)}/{c.model.conditioning}/{encoders_label(c)}/{data_key(c)}/"
            f"b{c.train.batch_size}")


def sample_cost_key(cell: Cell) -> str:
    c, s = cell.config, cell.config.sample
    branches = "mfg" if c.data.video and s.mfg_scale is not None else "cfg"
    return (f"{model_label(cell)}/{c.model.conditioning}/{encoders_label(c)}/{data_key(c)}/"
            f"{s.sampler}{s.steps}-{branches}")


def encoder_cost_key(recipe: dict) -> str:
    return f"{recipe['objective']}/w{recipe['width']}-l{recipe['layers']}-b{recipe['batch_size']}"


def load_costs(path: Path = COSTS_FILE) -> dict:
    if not path.exists():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _lookup(costs: dict, section: str, key: str, missing: list[str]) -> float:
    value = (costs.get(section) or {}).get(key)
    if value is None:
        missing.append(f"{section} {key}")
        return 0.0
    return float(value)


def estimate(p: Plan, costs: dict | None = None, workers: int | None = None) -> dict:
    """Seconds for the encoders, the cells, and in all, on `workers` idle cores; `missing`: what the
    estimate leaves out and says so (cost keys the file lacks; prompt sets whose files are not here,
    so their prompts cannot be counted); `gpu_only`: cells too big for a CPU (CPU_PARAM_LIMIT), not
    estimated."""
    costs = load_costs() if costs is None else costs
    workers = workers or local_workers(p.run)
    missing: list[str] = []
    recipes = {folder: recipe for cell in p.cells for folder, recipe in cell.encoders.items()
               if not Path(folder).is_dir()}
    encoder_times = sorted((recipe["steps"] * _lookup(costs, "encoders", encoder_cost_key(recipe), missing)
                            for recipe in recipes.values()), reverse=True)
    groups: dict[str, list[Cell]] = {}
    gpu_only = 0
    for cell in p.cells:
        if counts(cell).params > CPU_PARAM_LIMIT:
            gpu_only += 1
        elif not runfolder.status(p.grid_dir / cell.cell_id).complete:
            groups.setdefault(train_key(cell.config), []).append(cell)
    group_times = []
    for cells in groups.values():
        first = cells[0]
        seconds = first.config.data.num_train * _lookup(costs, "data", data_key(first.config), missing)
        seconds += first.config.train.steps * _lookup(costs, "train", train_cost_key(first), missing)
        for cell in cells:
            sample = cell.config.sample
            n = sum(_prompt_count(name, sample, missing) for name in sample.prompt_sets)
            seconds += n * _lookup(costs, "sample", sample_cost_key(cell), missing)
        group_times.append(seconds)
    encoders_s = _pack(encoder_times, workers)
    cells_s = _pack(sorted(group_times, reverse=True), workers)
    # What one more cell costs, done or not (the seeds planner's unit): training plus its sampling.
    every = [c for c in p.cells if counts(c).params <= CPU_PARAM_LIMIT]
    per_cell = [c.config.data.num_train * _lookup(costs, "data", data_key(c.config), [])
                + c.config.train.steps * _lookup(costs, "train", train_cost_key(c), [])
                + sum(_prompt_count(n, c.config.sample, []) for n in c.config.sample.prompt_sets)
                * _lookup(costs, "sample", sample_cost_key(c), []) for c in every]
    return {"encoders_s": encoders_s, "cells_s": cells_s, "total_s": encoders_s + cells_s, "workers": workers,
            "groups": len(group_times), "encoders": len(encoder_times), "missing": sorted(set(missing)),
            "machine": costs.get("machine", "unknown"), "gpu_only": gpu_only,
            "per_cell_s": sum(per_cell) / len(per_cell) if per_cell else 0.0}


def _prompt_count(name: str, sample, missing: list[str]) -> int:
    """Samples of one prompt set; 0 (and a note in `missing`) when its prompt files are not here."""
    try:
        return len(stages.prompt_records(name, sample))
    except (FileNotFoundError, ValueError):
        missing.append(f"prompt set {name} (its prompt files are not here to count; preflight above)")
        return 0


def _pack(times: list[float], workers: int) -> float:
    """Makespan of jobs (longest first) on `workers` identical workers."""
    loads = [0.0] * max(1, workers)
    for t in times:
        loads[loads.index(min(loads))] += t
    return max(loads) if times else 0.0


def calibrated(e: dict, costs: dict) -> float | None:
    """The estimate scaled by the file's `calibration` (a grid's measured wall time on an idle machine
    over what the same costs predict for it), or None without one."""
    cal = costs.get("calibration") or {}
    if not cal.get("measured_s") or not cal.get("predicted_s"):
        return None
    return e["total_s"] * cal["measured_s"] / cal["predicted_s"]


def format_estimate(p: Plan) -> str:
    if not COSTS_FILE.exists():
        return (f"estimated time: unknown ({COSTS_FILE} is missing; run `python benchmarks/step_costs.py "
                f"grid={p.run.grid}` to measure this machine's step costs)")
    costs = load_costs()
    e = estimate(p, costs)
    if e["gpu_only"] == len(p.cells):
        return (f"estimated time on this machine's CPU: not estimated: every cell is beyond {CPU_PARAM_LIMIT / 1e6:.0f}M "
                "parameters and needs GPUs (GPU-h (est.) above)")
    line = (f"estimated time on {e['workers']} cores of this machine: {e['total_s'] / 60:.1f} min "
            f"({e['encoders']} text encoders to train: {e['encoders_s'] / 60:.1f} min; {e['groups']} models to train "
            f"and sample: {e['cells_s'] / 60:.1f} min), from step costs measured on {e['machine']} "
            f"({COSTS_FILE.relative_to(CONF_DIR.parent.parent)})")
    scaled = calibrated(e, costs)
    if scaled is not None:
        cal = costs["calibration"]
        line += (f"\n  on an idle machine about {scaled / 60:.1f} min (calibration: {cal['what']} took "
                 f"{cal['measured_s'] / 60:.1f} min where these costs predict {cal['predicted_s'] / 60:.1f} min; "
                 f"the costs were measured at load average {costs.get('load_average', '?')})")
    if e["gpu_only"]:
        line += f"\n  left out: {e['gpu_only']} cells beyond {CPU_PARAM_LIMIT / 1e6:.0f}M parameters, which need GPUs"
    unknown = [m for m in e["missing"] if m.startswith("prompt set ")]
    unmeasured = [m for m in e["missing"] if m not in unknown]
    if unknown:
        line += "\n  unknown (left out of the estimate): " + "; ".join(unknown)
    if unmeasured:
        line += ("\n  not measured (left out of the estimate): " + "; ".join(unmeasured) +
                 f"\n  measure them: python benchmarks/step_costs.py grid={p.run.grid}")
    return line
