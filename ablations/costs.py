"""What a plan's cells cost: one model of each cell, counted once, behind every estimate the runner
prints or acts on.

The model: `Cell.model()` (gentron.config.resolve of the cell, text encoders the grid trains itself
shaped by their recipes), its transformer parameters and forward FLOPs counted exactly by
gentron.sizes on the meta device (`counts`). Three estimates read it:

- `check_params` (launch.check_resources): cells beyond CPU_PARAM_LIMIT parameters need GPUs.
- `with_costs` (the plan table): parameters, and for GPU plans GPUs and the GPU-hours of each stage
  (train, encode, sample, evaluate): counted FLOPs at one calibrated rate, DiT's train.py on A100s
  as github.com/facebookresearch/DiT/issues/22 reports it (ablations.gpu_hours, which says what each
  stage counts). `benchmarks/gpu_bench.py` measures this code's own throughput on a GPU. With a SLURM
  profile the table also shows each stage's array tasks per cell and GPUs per task (the profile's
  `sample:` and `evaluate:` sections).
- `format_estimate` (the dry run): how long the grid takes on this machine's CPU, from measured step
  costs (ablations/conf/step_costs.yaml, written by benchmarks/step_costs.py). The file holds CPU
  seconds of one thread per unit of work, keyed by what decides the cost:
    train:    one training step (model shape, conditioning, encoders, image/video, batch, resolution)
    sample:   one sampled image or clip (the same, plus sampler steps and guidance branches)
    data:     one CompShapes image or clip drawn and rendered
    encoders: one training step of a trained text encoder's recipe
    fixed:    what a run (`train/<key>`) or a sampling pass (`sample/<key>`) costs whatever its length
  CPU time of one thread is what an idle core gives a cell that runs on one thread (the local runner
  gives each of N parallel cells one of N cores), and other processes on a shared machine do not
  inflate it. The estimate: encoders first (side by side), then the cell groups (cells that train one
  model) packed onto the workers, longest first; each group draws its data, trains once, and samples
  every cell's prompt set. Sampling with the judge's own cost is counted, and evaluation during
  training (train.eval_every: the validation loss and the judged samples); plotting and reports are not.
  The file's `calibration` scales it to a measured wall time.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ablations import gpu_hours as gh
from ablations import prompt_sets, runfolder
from ablations.command_line import local_workers
from ablations.grid import Cell, Plan
from ablations.identity import train_key
from ablations.registries import CONF_DIR
from gentron.config import CellConfig

CPU_PARAM_LIMIT = 100e6  # transformer parameters beyond which a CPU run is refused
BYTES_PER_PARAM = 16  # fp32 weights + gradients + AdamW's two moments
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


def stage_hours(cell: Cell, images: int | None) -> gh.StageHours:
    """GPU-hours of the cell's train, encode, sample and evaluate stages (ablations.gpu_hours), its
    model counted once (`counts`), a text encoder the grid trains shaped by its recipe."""
    return gh.stage_hours(cell.config, counts(cell).flops, images,
                          [cell.recipe(spec) for spec in cell.config.text_encoders])


def sample_count(cell: Cell, missing: list[str] | None = None) -> int:
    """Images (or clips) the cell's sample stage draws: every prompt set's prompts x seeds x images."""
    missing = [] if missing is None else missing
    return sum(_prompt_count(name, cell.config.sample, missing) for name in cell.config.sample.prompt_sets)


def cell_costs(cell: Cell, gpus: int | None) -> dict:
    """{params, gflops (forward, per image or clip), gpu_hours (the train stage), hours (it on `gpus`),
    encode_gpu_hours, images (sampled), sample_gpu_hours, evaluate_gpu_hours} of one cell; None where
    it cannot be counted here (a data set or a prompt set's files not here)."""
    c = counts(cell)
    missing: list[str] = []
    images = sample_count(cell, missing)
    h = stage_hours(cell, None if missing else images)
    return {"params": c.params, "gflops": c.flops / 1e9, "gpu_hours": h.train, "hours": h.train / gpus if gpus else None,
            "encode_gpu_hours": h.encode, "images": None if missing else images, "sample_gpu_hours": h.sample,
            "evaluate_gpu_hours": h.evaluate}


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
        if cell.baseline:  # a pretrained pipeline (ablations.baselines): not the grid's model, nothing trained
            row = {"params": "pipeline", "GPUs": gpus if gpus else "-", "train GPU-h (est.)": "0"}
            row.update({f"{stage} GPU-h (est.)": "0" if stage == "encode" else "-"
                        for stage in ("encode", "sample", "evaluate")})
            if tasks:
                row["tasks x GPUs"] = tasks
            rows.append(row)
            continue
        c = cell_costs(cell, gpus)
        row = {"params": f"{c['params'] / 1e6:.1f}M", "GPUs": gpus if gpus else "-",
               "train GPU-h (est.)": _hours(c["gpu_hours"])}
        for stage in ("encode", "sample", "evaluate"):
            row[f"{stage} GPU-h (est.)"] = _hours(c[f"{stage}_gpu_hours"])
        if tasks:
            row["tasks x GPUs"] = tasks
        rows.append(row)
    return rows


def _hours(h: float | None) -> str:
    if h is None:
        return "-"
    return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


def _stages_line(p: Plan) -> list[str]:
    return (["train: steps x batch x (3 model forwards; 4 with activation checkpointing) + the text encoders and VAE "
             "encoder per image with data.encode=per_batch; encode: one pass of the encoders over the data set "
             "(data.encode=shards; '-' until the plan can count it); sample: NFE x guidance branches x images x a "
             "forward + VAE decode + text encoders; evaluate: each metric's image models per image; "
             "'-': a prompt set's files are not here to count. tasks x GPUs: array tasks per cell x GPUs per task "
             "of each stage (the profile's sample.shards, evaluate.shards)"] if _shows_gpu_hours(p) else [])


def _shows_gpu_hours(p: Plan) -> bool:
    """Whether the plan table has the GPU-hour columns: GPU profiles, and any plan with GPUs to run on."""
    return p.run.profile != "embedded" or bool(plan_gpus(p))


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
    return [f"GPU-h (est.): {gh.SOURCE}", *_stages_line(p)] if _shows_gpu_hours(p) else []


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


def evaluation_steps(config) -> list[int]:
    """The steps a run evaluates at: its checkpoint steps (train.ckpt_every multiples below
    train.steps, and train.steps) that are multiples of train.eval_every."""
    t = config.train
    if not t.eval_every:
        return []
    saved = [*range(t.ckpt_every, t.steps, t.ckpt_every), t.steps]
    return [s for s in saved if s % t.eval_every == 0]


def judged_images(config) -> int:
    """Samples one evaluation draws: the judge's held-out prompts (none for other data kinds or with
    eval_prompts=0) and train.eval_prompt_set's samples (its benchmark size where its files are absent)."""
    from gentron.validation import judge_prompts

    images = len(judge_prompts(config))
    if config.train.eval_prompt_set:
        try:
            images += prompt_sets.prompt_count(config.train.eval_prompt_set, config.sample)
        except FileNotFoundError:
            pass  # neither files nor a declared size: the plan's preflight names the set
    return images


def evaluation_seconds(cell: Cell, table: dict, missing: list[str]) -> float:
    """CPU seconds of one thread for one evaluation of the cell (unmeasured costs count 0, named in `missing`)."""
    c, t = cell.config, cell.config.train
    step = _lookup(table, "train", train_cost_key(cell), missing)
    seconds = step * t.eval_batch / t.batch_size / gh.TRAIN_FORWARDS
    images = judged_images(c)
    if images:
        per_image = _lookup(table, "sample", sample_cost_key(cell), missing)
        seconds += images * per_image * t.eval_sample_steps / c.sample.steps
    return seconds


def evaluations_seconds(cell: Cell, table: dict, missing: list[str]) -> float:
    """CPU seconds of one thread for all of the cell's evaluations during training (train.eval_every)."""
    steps = evaluation_steps(cell.config)
    return len(steps) * evaluation_seconds(cell, table, missing) if steps else 0.0


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
        if cell.baseline:  # a pretrained pipeline samples: not the grid's model, and not measured here
            missing.append(f"baseline {cell.arms} (pipeline {cell.baseline.get('pipeline')}): its sampling")
        elif counts(cell).params > CPU_PARAM_LIMIT:
            gpu_only += 1
        elif not runfolder.status(p.grid_dir / cell.cell_id).complete:
            groups.setdefault(train_key(cell.config), []).append(cell)
    group_times = []
    for cells in groups.values():
        first = cells[0]
        seconds = first.config.data.num_train * _lookup(costs, "data", data_key(first.config), missing)
        seconds += first.config.train.steps * _lookup(costs, "train", train_cost_key(first), missing)
        seconds += evaluations_seconds(first, costs, missing) + fixed_seconds(costs, "train", train_cost_key(first))
        for cell in cells:
            sample = cell.config.sample
            n = sum(_prompt_count(name, sample, missing) for name in sample.prompt_sets)
            seconds += n * _lookup(costs, "sample", sample_cost_key(cell), missing)
            seconds += len(sample.prompt_sets) * fixed_seconds(costs, "sample", sample_cost_key(cell))
        group_times.append(seconds)
    encoders_s = _pack(encoder_times, workers)
    cells_s = _pack(sorted(group_times, reverse=True), workers)
    # What one more cell costs, done or not (the seeds planner's unit): training plus its sampling.
    every = [c for c in p.cells if not c.baseline and counts(c).params <= CPU_PARAM_LIMIT]
    per_cell = [c.config.data.num_train * _lookup(costs, "data", data_key(c.config), [])
                + c.config.train.steps * _lookup(costs, "train", train_cost_key(c), [])
                + evaluations_seconds(c, costs, []) + fixed_seconds(costs, "train", train_cost_key(c))
                + len(c.config.sample.prompt_sets) * fixed_seconds(costs, "sample", sample_cost_key(c))
                + sum(_prompt_count(n, c.config.sample, []) for n in c.config.sample.prompt_sets)
                * _lookup(costs, "sample", sample_cost_key(c), []) for c in every]
    return {"encoders_s": encoders_s, "cells_s": cells_s, "total_s": encoders_s + cells_s, "workers": workers,
            "groups": len(group_times), "encoders": len(encoder_times), "missing": sorted(set(missing)),
            "machine": costs.get("machine", "unknown"), "gpu_only": gpu_only,
            "per_cell_s": sum(per_cell) / len(per_cell) if per_cell else 0.0}


def fixed_seconds(costs: dict, stage: str, key: str) -> float:
    """What a training run or a sampling pass of `key` costs whatever its length (the table's `fixed`
    section, which ablations.measure writes; 0 where the table has none, as the stored file)."""
    return float((costs.get("fixed") or {}).get(f"{stage}/{key}", 0.0))


def _prompt_count(name: str, sample, missing: list[str]) -> int:
    """Samples of one prompt set (the benchmark's size where its files are not here: prompt_sets.prompt_count);
    0 (and a note in `missing`) when neither its files nor its size are known."""
    try:
        return prompt_sets.prompt_count(name, sample)
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


def format_estimate(p: Plan, costs: dict | None = None) -> str:
    """The estimate from the stored step costs (or `costs`, a table of the same structure)."""
    if costs is None and not COSTS_FILE.exists():
        return (f"estimated time: unknown ({COSTS_FILE} is missing; run `python benchmarks/step_costs.py "
                f"grid={p.run.grid}` to measure this machine's step costs)")
    costs = load_costs() if costs is None else costs
    e = estimate(p, costs)
    if e["gpu_only"] == len(p.cells):
        return (f"estimated time on this machine's CPU: not estimated: every cell is beyond {CPU_PARAM_LIMIT / 1e6:.0f}M "
                "parameters and needs GPUs (GPU-h (est.) above)")
    line = (f"estimated time on {e['workers']} core{'s' if e['workers'] != 1 else ''} of this machine: {e['total_s'] / 60:.1f} min "
            f"({e['encoders']} text encoders to train: {e['encoders_s'] / 60:.1f} min; {e['groups']} models to train "
            f"and sample: {e['cells_s'] / 60:.1f} min), from step costs measured on {e['machine']} "
            f"({COSTS_FILE.relative_to(CONF_DIR.parent.parent)})")
    scaled = calibrated(e, costs)
    if scaled is not None:
        cal = costs["calibration"]
        line += (f"\n  on an idle machine about {scaled / 60:.1f} min (calibration: {cal['what']} took "
                 f"{cal['measured_s'] / 60:.1f} min where these costs predict {cal['predicted_s'] / 60:.1f} min; "
                 f"the costs were measured at load average {costs.get('load_average', '?')})")
    return line + estimate_notes(p, e)


def estimate_notes(p: Plan, e: dict) -> str:
    """What the estimate `e` leaves out, one line each (empty when nothing)."""
    line = ""
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
