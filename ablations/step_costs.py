"""How long a grid will take on this machine, from measured step costs (ablations/conf/step_costs.yaml,
written by benchmarks/step_costs.py).

The file holds CPU seconds of one thread per unit of work, keyed by what decides the cost:
  train:    one training step (model shape, conditioning, encoders, image/video, batch, resolution)
  sample:   one sampled image or clip (the same, plus sampler steps and guidance branches)
  data:     one CompShapes image or clip drawn and rendered
  encoders: one training step of a trained text encoder's recipe
CPU time of one thread is what an idle core gives a cell that runs on one thread (the local runner
gives each of N parallel cells one of N cores), and other processes on a shared machine do not
inflate it. The estimate: encoders first (side by side), then the cell groups (cells that train one
model) packed onto the workers, longest first; each group draws its data, trains once, and samples
every cell's prompt set. Sampling with the judge's own cost is counted, plotting and reports are not.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ablations.grid import CONF_DIR, Plan

COSTS_FILE = CONF_DIR / "step_costs.yaml"


def encoders_label(specs: list[dict]) -> str:
    """'tiny_clip', 'clip+t5', ...: the encoder kinds in order (their widths and token lengths are
    what the cost depends on; the trained tiny ones share one recipe family)."""
    return "+".join(spec.get("kind", "?") for spec in specs)


def model_label(config: dict) -> str:
    from gentron.sizes import SIZES

    m = config["model"]
    size, patch = SIZES[m["size"]]
    depth = m.get("depth") or size.depth
    width = m.get("hidden_size") or size.hidden_size
    mlp = m.get("mlp_hidden_size") or size.mlp_hidden_size
    heads = m.get("num_heads") or size.num_heads
    return f"d{depth}-w{width}-m{mlp}-h{heads}-p{patch}"


def data_key(config: dict) -> str:
    d = config["data"]
    return f"r{d['resolution']}/" + (f"video{d['num_frames']}" if d["video"] else "image")


def train_key(config: dict) -> str:
    m, t = config["model"], config["train"]
    return (f"{model_label(config)}/{m['conditioning']}/{encoders_label(config['text_encoders'])}/"
            f"{data_key(config)}/b{t['batch_size']}")


def sample_key(config: dict) -> str:
    s = config["sample"]
    branches = "mfg" if config["data"]["video"] and s.get("mfg_scale") is not None else "cfg"
    return (f"{model_label(config)}/{config['model']['conditioning']}/{encoders_label(config['text_encoders'])}/"
            f"{data_key(config)}/{s['sampler']}{s['steps']}-{branches}")


def encoder_key(recipe: dict) -> str:
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
    """Seconds for the encoders, the cells, and in all, on `workers` idle cores; `missing`: cost
    keys the file lacks (the estimate then leaves them out and says so)."""
    from ablations import stages
    from ablations.launch import _auto_workers

    costs = load_costs() if costs is None else costs
    workers = workers or p.run.local.workers or _auto_workers()
    missing: list[str] = []
    recipes = {folder: recipe for cell in p.cells for folder, recipe in cell.encoders.items()
               if not Path(folder).is_dir()}
    encoder_times = sorted((recipe["steps"] * _lookup(costs, "encoders", encoder_key(recipe), missing)
                            for recipe in recipes.values()), reverse=True)
    groups: dict[str, list] = {}
    for cell in p.cells:
        cell_dir = p.grid_dir / cell.cell_id
        if (cell_dir / stages.CONFIG).exists() and stages.is_complete(cell_dir):
            continue
        groups.setdefault(stages.train_key(cell.config), []).append(cell)
    group_times = []
    for cells in groups.values():
        config = cells[0].config
        seconds = config["data"]["num_train"] * _lookup(costs, "data", data_key(config), missing)
        seconds += config["train"]["steps"] * _lookup(costs, "train", train_key(config), missing)
        for cell in cells:
            n = sum(len(stages.prompt_records(name, cell.config["sample"])) for name in cell.config["sample"]["prompt_sets"])
            seconds += n * _lookup(costs, "sample", sample_key(cell.config), missing)
        group_times.append(seconds)
    encoders_s = _pack(encoder_times, workers)
    cells_s = _pack(sorted(group_times, reverse=True), workers)
    return {"encoders_s": encoders_s, "cells_s": cells_s, "total_s": encoders_s + cells_s, "workers": workers,
            "groups": len(group_times), "encoders": len(encoder_times), "missing": sorted(set(missing)),
            "machine": costs.get("machine", "unknown")}


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
    if e["missing"]:
        line += ("\n  not measured (left out of the estimate): " + "; ".join(e["missing"]) +
                 f"\n  measure them: python benchmarks/step_costs.py grid={p.run.grid}")
    return line
