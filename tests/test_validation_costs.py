"""The dry run's cost of evaluation during training (ablations.validation_costs)."""
from __future__ import annotations

import re

import pytest

from ablations import costs, gpu_hours, launch, validation_costs
from ablations.grid import plan

EVALUATING = ["grid=conditioning", "train.steps=400", "train.ckpt_every=50", "train.eval_every=50",
              "train.eval_prompts=8"]


def _plan(tmp_path, *args):
    return plan([*args, f"runs_dir={tmp_path}"])


@pytest.mark.parametrize("steps, ckpt_every, eval_every, expected", [
    (400, 50, 50, [50, 100, 150, 200, 250, 300, 350, 400]),
    (400, 50, 100, [100, 200, 300, 400]),
    (300, 500, 100, [300]),  # no checkpoint before the end: only the last step evaluates
    (250, 100, 150, []),  # checkpoints at 100, 200, 250: none a multiple of 150
    (400, 50, 0, []),
])
def test_evaluations_land_on_checkpoints_that_are_multiples_of_eval_every(tmp_path, steps, ckpt_every, eval_every,
                                                                          expected):
    p = _plan(tmp_path, "grid=conditioning", f"train.steps={steps}", f"train.ckpt_every={ckpt_every}",
              f"train.eval_every={eval_every}")
    assert costs.evaluation_steps(p.cells[0].config) == expected


def test_cpu_seconds_of_an_evaluation_from_the_step_costs(tmp_path):
    p = _plan(tmp_path, *EVALUATING, "train.eval_batch=64", "train.eval_sample_steps=10")
    cell = p.cells[0]
    table = {"train": {costs.train_cost_key(cell): 3.0}, "sample": {costs.sample_cost_key(cell): 0.5}}
    images = costs.judged_images(cell.config)
    assert images == 8 * 6  # eval_prompts per CompShapes image category
    batch, steps = cell.config.train.batch_size, cell.config.sample.steps
    expected = 3.0 * 64 / batch / 3 + images * 0.5 * 10 / steps
    assert costs.evaluation_seconds(cell, table, []) == pytest.approx(expected)
    missing = []
    assert costs.evaluation_seconds(cell, {}, missing) == 0.0
    assert len(missing) == 2


def test_gpu_hours_count_the_loss_forward_and_the_judged_samples(tmp_path):
    loss_only = _plan(tmp_path, *EVALUATING, "train.eval_prompts=0", "train.eval_batch=64").cells[0]
    assert validation_costs.evaluation_gpu_hours(loss_only) == pytest.approx(
        gpu_hours.hours(64 * costs.counts(loss_only).flops))
    short = _plan(tmp_path, *EVALUATING, "train.eval_sample_steps=10").cells[0]
    long = _plan(tmp_path, *EVALUATING, "train.eval_sample_steps=20").cells[0]
    judge_short = validation_costs.evaluation_gpu_hours(short) - validation_costs.evaluation_gpu_hours(loss_only)
    judge_long = validation_costs.evaluation_gpu_hours(long) - validation_costs.evaluation_gpu_hours(loss_only)
    assert judge_short > 0 and judge_long == pytest.approx(2 * judge_short)  # one forward pair per sampler step


def test_dry_run_prints_the_evaluation_cost_only_when_evaluating(tmp_path, capsys):
    assert launch.main([*EVALUATING, f"runs_dir={tmp_path}", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("evaluation during training"))
    assert "train.eval_every=50): 8 evaluations per cell" in line and "the judge on 48 samples of 10 steps" in line
    p = _plan(tmp_path, *EVALUATING)
    table = costs.load_costs()
    per_model = [8 * costs.evaluation_seconds(c, table, []) for c in p.cells]
    minutes = costs._pack(sorted(per_model, reverse=True), launch.local_workers(p.run)) / 60
    assert re.search(rf"about {minutes:.1f} min on \d+ cores? of this machine \(counted in the estimate above\)", line)
    assert launch.main(["grid=conditioning", "train.steps=400", f"runs_dir={tmp_path}", "dry_run=true"]) == 0
    assert "evaluation during training" not in capsys.readouterr().out


def test_dry_run_says_when_no_step_evaluates(tmp_path):
    p = _plan(tmp_path, "grid=conditioning", "train.steps=250", "train.ckpt_every=100", "train.eval_every=150")
    text = validation_costs.format_cost(p, {})
    assert text.startswith("evaluation during training (train.eval_every=150): 0 evaluations per cell")
    assert "make them meet" in text


def test_the_time_estimate_counts_the_evaluations(tmp_path):
    """The dry run's estimate is the same grid's without train.eval_every plus what its evaluations cost."""
    table = costs.load_costs()
    evaluating = _plan(tmp_path, *EVALUATING)
    plain = _plan(tmp_path, *[a for a in EVALUATING if not a.startswith("train.eval_every")])
    assert not any(c.config.train.eval_every for c in plain.cells)
    added = [costs.evaluations_seconds(c, table, []) for c in evaluating.cells]
    assert min(added) > 0
    with_eval, without = costs.estimate(evaluating, table, workers=1), costs.estimate(plain, table, workers=1)
    assert with_eval["total_s"] == pytest.approx(without["total_s"] + sum(added))
    assert with_eval["per_cell_s"] == pytest.approx(without["per_cell_s"] + sum(added) / len(added))


@pytest.mark.parametrize("eval_prompts, named", [(8, "the judge, fid, clip_score"), (0, "fid, clip_score")])
def test_the_cost_line_names_each_scorer_of_an_evaluation(tmp_path, eval_prompts, named):
    """With a prompt set scored during training, the line names the judge only when it runs (held-out
    CompShapes prompts, train.eval_prompts > 0) beside the set's metrics."""
    p = _plan(tmp_path, "grid=conditioning", "train.steps=400", "train.ckpt_every=200", "train.eval_every=200",
              f"train.eval_prompts={eval_prompts}", "train.eval_prompt_set=coco1k", "train.eval_metrics=[fid,clip_score]")
    text = validation_costs.format_cost(p, {})
    assert re.search(rf"and {named} on \d+ samples of", text), text
