"""Evaluation during training in the results browser: each cell's validation.jsonl
(gentron.validation, `train.eval_every`) as numbers per arm and step, and the charts of them.

Two frames, both per arm (seeds averaged, grid.yaml's arm order) and step:

- `arm_curves`: the validation loss, the judge's mean, each judged category and the scores of
  train.eval_metrics on train.eval_prompt_set ("fid/fid", ...) against the step.
  The band: a t-interval over an arm's seeds where it has several (cut to [0, 1] for a judge score,
  to >= 0 for the loss); for one seed, the judge's scores (binary per prompt) carry a Wilson 95%
  interval over their prompts, the loss none.
- `timestep_curves`: the validation loss of each timestep bin at each evaluated step.

These are progress numbers on a small fixed sample, never a cell's final metrics (its evaluators'
JSON files; the Table view). Pure pandas and Altair; reports/plots.py draws them on the page.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy.stats import binomtest

from gentron.validation import VALIDATION_FILE, read_rows
from reports import results
from reports.results import AXIS_PREFIX

LOSS = "validation loss"
JUDGE_MEAN = "judge mean"
JUDGE = "judge "  # + a category: "judge color"
COLUMNS = ["grid", "cell_id", "step", "metric", "mean", "ci_low", "ci_high", "n"]
BIN_COLUMNS = ["grid", "cell_id", "step", "metric", "t_low", "t_high", "mean", "ci_low", "ci_high"]
LEVEL = 0.95


def read_validation(cell_dir: str | Path) -> list[dict]:
    """The rows of a cell's validation.jsonl (torn lines dropped); [] when it has none."""
    return read_rows(Path(cell_dir) / VALIDATION_FILE)


def wilson(rate: float, n: int) -> tuple[float, float]:
    """The Wilson 95% interval of a proportion `rate` of binary scores over n prompts."""
    if not n:
        return math.nan, math.nan
    k = min(n, max(0, round(rate * n)))
    ci = binomtest(k, n).proportion_ci(confidence_level=LEVEL, method="wilson")
    return float(ci.low), float(ci.high)


def cell_curves(rows: list[dict], grid: str, cell_id: str) -> pd.DataFrame:
    """One row per evaluated step and metric of one cell: its value, the Wilson interval of a judge
    score over its prompts (n: the prompts behind it; the loss has none)."""
    out = []
    for row in rows:
        step = int(row["step"])
        if isinstance(row.get("loss"), (int, float)):
            out.append((grid, cell_id, step, LOSS, float(row["loss"]), math.nan, math.nan, math.nan))
        judge = row.get("judge") or {}
        total = int(row.get("judge_prompts") or 0)
        per_category = total // len(judge) if judge else 0  # train.eval_prompts of every category
        for category, value in judge.items():
            out.append((grid, cell_id, step, JUDGE + category, float(value), *wilson(value, per_category),
                        per_category or math.nan))
        if isinstance(row.get("judge_mean"), (int, float)):
            # every category has the same prompts, so the mean of the categories is the rate over all of them
            out.append((grid, cell_id, step, JUDGE_MEAN, float(row["judge_mean"]), *wilson(row["judge_mean"], total),
                        total or math.nan))
        for name, value in (row.get("metrics") or {}).items():  # train.eval_metrics on train.eval_prompt_set
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.append((grid, cell_id, step, name, float(value), math.nan, math.nan,
                            row.get("metric_images") or math.nan))
    return pd.DataFrame(out, columns=COLUMNS)


def cell_timestep_curves(rows: list[dict], grid: str, cell_id: str) -> pd.DataFrame:
    """One row per evaluated step and timestep bin of one cell: the bin's validation loss."""
    out = []
    for row in rows:
        for (low, high), loss in zip(row.get("t_bins") or [], row.get("loss_bins") or []):
            out.append((grid, cell_id, int(row["step"]), f"t {int(low)}-{int(high)}", int(low), int(high),
                        float(loss), math.nan, math.nan))
    return pd.DataFrame(out, columns=BIN_COLUMNS)


def _per_arm(frame: pd.DataFrame, cells: pd.DataFrame, order: dict[str, list[str]],
             keys: list[str]) -> pd.DataFrame:
    """`frame`'s rows averaged over each arm's seeds per `keys` (step, ...), with a t-interval over
    seeds (results.group_over_seeds; one seed keeps its own interval), and `arm`: the arm's values."""
    if frame.empty:
        return frame.assign(arm=pd.Series(dtype=str), n_cells=pd.Series(dtype=int))
    arms = results.arm_columns(cells)
    by = (arms or ["grid"]) + keys
    grouped = results.group_over_seeds(frame, cells, by)
    for key in keys:
        grouped[key] = pd.to_numeric(grouped[key])
    grouped = results.sort_rows(grouped, arms, order) if arms else grouped
    label = results.short_labels(grouped, arms) if arms else grouped["grid"]
    return grouped.assign(arm=label).sort_values([*keys], kind="stable").reset_index(drop=True)


def arm_curves(rows_of: dict[str, list[dict]], cells: pd.DataFrame,
               order: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Per arm, step and metric of one grid's `cells`: mean over seeds, ci_low, ci_high, n_cells.
    `rows_of` maps a cell_id to its validation rows (read_validation)."""
    parts = [cell_curves(rows_of.get(c, []), g, c) for g, c in zip(cells["grid"], cells["cell_id"])]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    out = _per_arm(frame.drop(columns="n"), cells, order or {}, ["step"])
    # a t-interval over few seeds is wide: kept within what the numbers can be (a rate in [0, 1], a loss >= 0)
    rate = out["metric"].str.startswith(JUDGE) | (out["metric"] == JUDGE_MEAN)
    out.loc[rate, ["ci_low", "ci_high"]] = out.loc[rate, ["ci_low", "ci_high"]].clip(0, 1)
    loss = out["metric"] == LOSS
    out.loc[loss, "ci_low"] = out.loc[loss, "ci_low"].clip(lower=0)
    return out


def timestep_curves(rows_of: dict[str, list[dict]], cells: pd.DataFrame,
                    order: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Per arm, step and timestep bin (metric 't lo-hi', t_low, t_high) of one grid's `cells`: the
    bin's validation loss, mean over seeds, with its t-interval over them."""
    parts = [cell_timestep_curves(rows_of.get(c, []), g, c) for g, c in zip(cells["grid"], cells["cell_id"])]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=BIN_COLUMNS)
    return _per_arm(frame, cells, order or {}, ["step", "t_low", "t_high"])


def metrics_in_order(curves: pd.DataFrame) -> list[str]:
    """The validation loss, the judge's mean, its categories (alphabetically), then the evaluators'
    scores of train.eval_metrics ("<metric>/<score>", alphabetically)."""
    found = set(curves["metric"])
    judged = sorted(m for m in found if m.startswith(JUDGE) and m != JUDGE_MEAN)
    return ([m for m in (LOSS, JUDGE_MEAN) if m in found] + judged
            + sorted(found - {LOSS, JUDGE_MEAN} - set(judged)))


def latest_common_step(curves: pd.DataFrame) -> int | None:
    """The latest step every arm of `curves` has evaluated (else the latest of any)."""
    if curves.empty:
        return None
    common = set.intersection(*(set(part["step"]) for _, part in curves.groupby("arm")))
    return int(max(common)) if common else int(curves["step"].max())


def title_of(arms: list[str], cells: pd.DataFrame) -> str:
    axes = results.arm_columns(cells)
    return axes[0].removeprefix(AXIS_PREFIX) if len(axes) == 1 else "arm"


def step_chart(curves: pd.DataFrame, metric: str, arms: list[str], title: str, color, height: int = 340):
    """One metric against the training step, a line per arm, its band where it has one; `height`
    holds the plot, its axes and the legend below it."""
    import altair as alt  # deferred: the table, the first page, draws no chart

    rows = curves[curves["metric"] == metric]
    base = alt.Chart(rows).encode(x=alt.X("step:Q", title="training step"),
                                  color=color("arm:N", len(arms), title, domain=arms))
    scale = alt.Scale(zero=False)
    band = base.transform_filter("isValid(datum.ci_low) && isFinite(datum.ci_low)").mark_area(opacity=0.18).encode(
        y=alt.Y("ci_low:Q", scale=scale), y2="ci_high:Q")
    line = base.mark_line(point=alt.OverlayMarkDef(filled=True, size=40)).encode(
        y=alt.Y("mean:Q", title=metric, scale=scale),
        tooltip=["arm", "step", alt.Tooltip("mean:Q", format=".4f"), alt.Tooltip("ci_low:Q", format=".4f"),
                 alt.Tooltip("ci_high:Q", format=".4f"), alt.Tooltip("n_cells", title="seeds")])
    return alt.layer(band, line).properties(title=metric, height=height)


def timestep_chart(bins: pd.DataFrame, step: int, arms: list[str], title: str, color, height: int = 340):
    """The validation loss of each timestep bin at `step`, a line per arm, its band over seeds."""
    import altair as alt  # deferred: the table, the first page, draws no chart

    rows = bins[bins["step"] == step].assign(t=lambda f: (f["t_low"] + f["t_high"]) / 2)
    rows = rows.assign(ci_low=rows["ci_low"].where(rows["ci_low"] > 0))  # a log scale: a band down to zero is cut
    base = alt.Chart(rows).encode(x=alt.X("t:Q", title="timestep t (bin centre)"),
                                  color=color("arm:N", len(arms), title, domain=arms))
    band = base.transform_filter("isValid(datum.ci_low) && isFinite(datum.ci_low)").mark_area(opacity=0.18).encode(
        y=alt.Y("ci_low:Q"), y2="ci_high:Q")
    line = base.mark_line(point=alt.OverlayMarkDef(filled=True, size=40)).encode(
        y=alt.Y("mean:Q", title="validation loss", scale=alt.Scale(type="log")),
        tooltip=["arm", "metric", alt.Tooltip("mean:Q", format=".4f"), alt.Tooltip("n_cells", title="seeds")])
    return alt.layer(band, line).properties(title=f"validation loss by timestep at step {step}", height=height)
