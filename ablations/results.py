"""runs/<grid>/results.parquet, rebuilt from the cells' cell.json and metrics.json (never edited),
and the table printed at the end of a run: mean and 95% CI per arm, seeds pooled. Neither leaves a
planned cell out without a word: a cell without readable metrics is shown with its status and the
reason (ablations.runfolder.collect, status).

Pooling over seeds is ablations.runfolder.group_over_seeds (the results browser's too): the mean of
the seeds' means with a t-based 95% CI across seeds; an arm with one seed keeps its CI over prompts.
Below the table, the verdicts: each arm's paired difference to the control with its CI, adjusted p
and verdict (eval.verdicts), also stored in results.parquet's verdict.* columns.
A baseline cell (a pretrained pipeline, ablations.baselines; its arm shown as `<name> (baseline)`) is
marked in results.parquet's `baseline` and `pipeline` columns.
"""
from __future__ import annotations

import io
import logging
import shlex
from pathlib import Path

import pandas as pd

from ablations.runfolder import (CELL, RESULTS, collect, current_cell_ids, grid_lock, group_over_seeds,
                                 read_json_or_empty, status)
from ablations.registries import CONF_DIR
from eval import verdicts
from gentron.io import atomic_write_bytes

log = logging.getLogger(__name__)

REPORT_HINT = "streamlit run reports/app.py"


def write_results(grid_dir: str | Path) -> Path:
    """Rebuild results.parquet atomically (a module-level function: also the SLURM 'results' stage).
    Every cell folder with metrics is in it; `current` is False for a stale cell, one the grid's plan
    (grid.yaml) no longer names: filter on it to read only the grid as it is planned now."""
    grid_dir = Path(grid_dir)
    table = collect(grid_dir)
    planned = current_cell_ids(grid_dir)
    table["current"] = True if planned is None else table["cell_id"].isin(planned)
    table = mark_baselines(table, grid_dir)
    table = verdicts.add_to_results(table, grid_verdicts(grid_dir, planned))
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    with grid_lock(grid_dir):
        path = atomic_write_bytes(grid_dir / RESULTS, buffer.getvalue())
    log.info("wrote %s (%d rows)", path, len(table))
    return path


def mark_baselines(table: pd.DataFrame, grid_dir: Path) -> pd.DataFrame:
    """`baseline` (True for a baseline cell: a pretrained pipeline, ablations.baselines) and `pipeline`
    (its folder or hub name) columns, from the cells' cell.json."""
    pipelines = {}
    for path in Path(grid_dir).glob(f"*/{CELL}"):
        info = read_json_or_empty(path)
        if isinstance(info.get("baseline"), dict):
            pipelines[str(info.get("cell_id", path.parent.name))] = str(info["baseline"].get("pipeline"))
    return table.assign(baseline=table["cell_id"].isin(pipelines), pipeline=table["cell_id"].map(pipelines))


def grid_verdicts(grid_dir: Path, cell_ids) -> pd.DataFrame:
    """Each arm against the grid's control (its first arm), paired over seeds and prompts, Holm-corrected
    over the grid's comparisons and metrics (eval.verdicts)."""
    return verdicts.grid_verdicts(grid_dir, cell_ids=None if cell_ids is None else sorted(cell_ids),
                                  higher_is_better=verdicts.directions_from_registry(CONF_DIR / "metrics.yaml"))


def arm_table(results: pd.DataFrame) -> pd.DataFrame:
    """Rows = metrics, columns = arms (every axis but the seed), cells 'mean [ci_low, ci_high]'."""
    arms = [c for c in results.columns if c.startswith("axis.") and c != "axis.seed"]
    pooled = group_over_seeds(results, results[["grid", "cell_id"]].drop_duplicates(), arms)
    pooled["arm"] = pooled[arms].astype(str).agg(", ".join, axis=1) if arms else "all"
    pooled["value"] = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if m == m else "no result" for m, lo, hi in
                       zip(pooled["mean"], pooled["ci_low"], pooled["ci_high"])]
    order = list(dict.fromkeys(pooled["arm"]))
    table = pooled.pivot(index="metric", columns="arm", values="value")[order]
    seeds = pooled.groupby("arm", sort=False)["n_cells"].max()
    table.loc["seeds (cells pooled)"] = [str(seeds[a]) for a in order]
    table.columns.name = " / ".join(a.removeprefix("axis.") for a in arms) or None
    return table


def format_results(grid_dir: str | Path, cell_ids: list[str], note: str = "") -> str:
    """The printed summary of the planned cells (results.parquet keeps every cell of the folder):
    the arm table, what the profile is, and where to look next."""
    grid_dir = Path(grid_dir)
    results = collect(grid_dir, cell_ids)
    lines = [f"results of grid '{grid_dir.name}'" + (f" ({note})" if note else "")]
    scored = set(results.loc[results["mean"].notna(), "cell_id"]) if not results.empty else set()
    if not scored:
        lines.append("no cell has metrics yet")
    else:
        lines.append("mean [95% CI] per arm; seeds pooled (t-interval over seed means; one seed: CI over prompts)")
        lines.append(arm_table(results).to_string())
        lines.append(verdicts.format_verdicts(grid_verdicts(grid_dir, cell_ids)))
    unscored = [c for c in cell_ids if c not in scored]
    if unscored:
        lines.append(f"{len(unscored)} of {len(cell_ids)} cells have no readable metrics, left out of the means above:")
        for cell_id in unscored:
            state = status(grid_dir / cell_id)
            lines.append(f"  {cell_id} ({_axes_text(grid_dir, cell_id)}): {state.status}: {state.reason}")
    lines += [f"table: {grid_dir / RESULTS}", f"browse: {REPORT_HINT} -- --runs {shlex.quote(str(grid_dir.parent))}"]
    return "\n".join(lines)


def _axes_text(grid_dir: Path, cell_id: str) -> str:
    axes = read_json_or_empty(grid_dir / cell_id / CELL).get("axes") or {}
    return ", ".join(f"{k}={v}" for k, v in axes.items()) or "no axes recorded"
