"""What evaluation during training (`train.eval_every`, gentron.validation) adds to a plan, for the
dry run: evaluations per cell, and their CPU time on this machine and GPU-hours.

An evaluation runs where a checkpoint is written (every train.ckpt_every steps, and the last step)
at a multiple of eval_every, on the EMA weights:

- the validation loss: one forward of train.eval_batch items, a third of a training step's work per
  item (ablations.gpu_hours.TRAIN_FORWARDS: a forward and a backward of twice its cost);
- on CompShapes with train.eval_prompts > 0, the judge on eval_prompts held-out prompts per category:
  that many samples drawn in train.eval_sample_steps steps (the sample stage's cost per image,
  scaled from its sample.steps), plus the judge's scoring, which the stored sample costs include.

CPU seconds come from the same step-cost table as the run's estimate (ablations/conf/step_costs.yaml,
or a measured one); GPU-hours at the rate of the plan table's (ablations.gpu_hours). Drawing and encoding
the fixed validation batch once per run is left out (seconds).
"""
from __future__ import annotations

import dataclasses

from ablations import costs, gpu_hours, runfolder
from ablations.command_line import local_workers
from ablations.grid import Cell, Plan
from ablations.identity import train_key


def evaluation_gpu_hours(cell: Cell) -> float:
    """GPU-hours of one evaluation of the cell: the counted FLOPs of the loss's forward and the judged
    samples (gentron.generate.sampling_cost) at the rate of the stages' GPU-hours (ablations.gpu_hours)."""
    from gentron.generate import sampling_cost

    c, t = cell.config, cell.config.train
    flops = t.eval_batch * costs.counts(cell).flops
    images = costs.judged_images(c)
    if images:
        judged = dataclasses.replace(c, sample=dataclasses.replace(c.sample, steps=t.eval_sample_steps))
        flops += sampling_cost(judged, images).flops
    return gpu_hours.hours(flops)


def format_cost(p: Plan, table: dict | None = None) -> str:
    """The dry run's line on evaluation during training ('' when no cell evaluates): evaluations per
    cell, the CPU minutes on this machine's workers that the estimate includes, GPU-hours per cell."""
    from gentron.validation import judge_prompts

    evaluating = [c for c in p.cells if c.config.train.eval_every]
    if not evaluating:
        return ""
    table = costs.load_costs() if table is None else table
    first = evaluating[0].config.train
    counts = sorted({len(costs.evaluation_steps(c.config)) for c in evaluating})
    missing: list[str] = []
    groups: dict[str, float] = {}  # cells that train one model evaluate once
    for cell in evaluating:
        if costs.counts(cell).params <= costs.CPU_PARAM_LIMIT and not runfolder.status(
                p.grid_dir / cell.cell_id).complete:
            groups[train_key(cell.config)] = costs.evaluations_seconds(cell, table, missing)
    workers = local_workers(p.run)
    cpu_s = costs._pack(sorted(groups.values(), reverse=True), workers)
    gpu_h = max(len(costs.evaluation_steps(c.config)) * evaluation_gpu_hours(c) for c in evaluating)
    images = costs.judged_images(evaluating[0].config)
    scorers = (["the judge"] if judge_prompts(evaluating[0].config) else []) + list(first.eval_metrics)
    what = (f"validation loss on {first.eval_batch} items" + (f" and {', '.join(scorers)} on {images} samples of "
            f"{first.eval_sample_steps} steps" if images else ""))
    on_cpu = any(costs.counts(c).params <= costs.CPU_PARAM_LIMIT for c in evaluating)
    cpu = (f"about {cpu_s / 60:.1f} min on {workers} core{'s' if workers != 1 else ''} of this machine (counted in the estimate above); "
           if on_cpu else "")
    line = (f"evaluation during training (train.eval_every={first.eval_every}): {'/'.join(map(str, counts))} "
            f"evaluation{'' if counts == [1] else 's'} per cell ({what} each): {cpu}GPU-h (est.) per cell: "
            f"{costs._hours(gpu_h)}")
    if counts == [0]:
        line += (f"\n  no step evaluates: evaluation runs at checkpoints (train.ckpt_every={first.ckpt_every}, and "
                 f"the last step {first.steps}) that are multiples of train.eval_every; make them meet")
    if missing:
        line += "\n  not measured (left out): " + "; ".join(sorted(set(missing)))
    return line
