"""Run folders as the results browser's tables. The folder's layout, stage states and file readers
belong to ablations.runfolder; this module only shapes them for display.

Nothing here imports Streamlit: the browser caches these functions, tests and benchmarks call them
directly. Every reader tolerates half-finished cells and reports what is missing instead of raising.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ablations import runfolder
from ablations.runfolder import (AXIS_PREFIX, CONFIG_PREFIX, RESULT_COLUMNS, STAGES, as_text, cell_dirs,  # noqa: F401
                                 find_grids, grid_stamp, group_over_seeds, prompt_sets, read_cell,
                                 read_json_or_empty, samples_with_scores, train_log)

log = logging.getLogger(__name__)


@dataclass
class GridData:
    """One grid: long results (one row per cell and metric), one row per cell, and problems found."""

    name: str
    path: str
    results: pd.DataFrame
    cells: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    rerun: str = ""  # the command that plans this grid's current cells again and resumes them


def load_grid(grid_dir: str | Path) -> GridData:
    """Cells and results of one grid; results.parquet is preferred, metrics.json files fill in.
    Each cell's `status` is runfolder.cell_status, or `stale` for a cell the grid's plan (grid.yaml)
    no longer names."""
    grid_dir = Path(grid_dir)
    name = grid_dir.name
    record = runfolder.grid_record(grid_dir)
    current = runfolder.current_cell_ids(grid_dir, record)
    rerun = runfolder.rerun_command(record, grid_dir.parent)
    cells = pd.DataFrame([read_cell(d, name, current) for d in cell_dirs(grid_dir)])
    problems = cell_problems(cells, name, rerun)
    results = _read_results(grid_dir, cells, problems, rerun)
    log.info("loaded grid %s: %d cells, %d result rows", name, len(cells), len(results))
    return GridData(name=name, path=str(grid_dir), results=results, cells=cells, problems=problems, rerun=rerun)


def cell_problems(cells: pd.DataFrame, grid: str, rerun: str) -> list[str]:
    """Sentences naming each stage some current cells have not reached, and the command that produces it."""
    if cells.empty:
        return [f"Grid '{grid}' has no cells yet. Produce them with `{rerun}`."]
    problems = []
    cells = cells[cells["status"] != "stale"]
    for stage in STAGES:
        missing = cells.loc[cells["stage." + stage] != "done", "cell_id"].tolist()
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            problems.append(f"{len(missing)} of {len(cells)} cells in '{grid}' lack {_STAGE_TEXT[stage]} "
                            f"({shown}). Rerun `{rerun}` to resume them.")
    return problems


_STAGE_TEXT = {"train": "a finished training stage (checkpoints/last.pt)", "sample": "samples",
               "evaluate": "evaluator output (eval/*.json)", "record": "metrics.json"}


def _read_results(grid_dir: Path, cells: pd.DataFrame, problems: list[str], rerun: str) -> pd.DataFrame:
    parquet = grid_dir / "results.parquet"
    from_metrics = runfolder.collect(grid_dir)
    if parquet.exists():
        try:
            table = pd.read_parquet(parquet)
        except Exception as e:  # a torn or foreign file must not take the page down
            problems.append(f"{parquet} is unreadable ({e}); delete it and rerun `{rerun}` to rebuild it.")
        else:
            if len(from_metrics) > len(table):
                problems.append(f"results.parquet of '{grid_dir.name}' is older than the cells' metrics.json; "
                                "showing the newer metrics. It is rebuilt by the next grid run.")
                return from_metrics
            return runfolder.normalise(table, grid_dir.name)
    elif not from_metrics.empty:
        problems.append(f"'{grid_dir.name}' has no results.parquet yet; showing the cells' metrics.json.")
    return from_metrics


# ---------------------------------------------------------------- tables


def axis_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(AXIS_PREFIX)]


def varying_columns(cells: pd.DataFrame, prefix: str) -> list[str]:
    """Columns with the prefix that take more than one value across the cells (what one can group by)."""
    cols = [c for c in cells.columns if c.startswith(prefix)]
    return [c for c in cols if as_text(cells[c]).nunique() > 1]


def arm_columns(cells: pd.DataFrame) -> list[str]:
    """The axes that define an arm: every axis but the seed that these cells give a value (an axis
    only another grid's cells have, or only stale cells had, says nothing about them)."""
    return [c for c in axis_columns(cells) if c != AXIS_PREFIX + "seed" and cells[c].notna().any()]


def arm_labels(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """'conditioning=adaln, size=T/2' per row (the grid name is added when several grids are shown)."""
    if not columns:
        return pd.Series("all", index=frame.index)
    parts = [c.removeprefix(AXIS_PREFIX).removeprefix(CONFIG_PREFIX) + "=" + as_text(frame[c]) for c in columns]
    label = parts[0]
    for part in parts[1:]:
        label = label + ", " + part
    return label


def decimals(values: pd.Series) -> int:
    """Decimals that give the largest |value| three significant digits: 0.812, 23.4, 1234."""
    largest = pd.to_numeric(values, errors="coerce").abs().max()
    if not largest or pd.isna(largest):
        return 3
    return int(max(0, 2 - np.floor(np.log10(largest))))


def format_ci(mean, low, high, digits: int = 3) -> str:
    """'0.812 [0.780, 0.840]': the mean and its 95% CI with `digits` decimals."""
    if mean is None or pd.isna(mean):
        return ""
    if pd.isna(low) or pd.isna(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def metric_table(long: pd.DataFrame, cells: pd.DataFrame, by: list[str] | None,
                 metrics_as_rows: bool = True) -> pd.DataFrame:
    """Each metric's `mean [lo, hi]` per arm (cells grouped by `by`, averaged over the rest, e.g. seeds:
    t-interval over them) or per cell (`by` None: the cell's CI over prompts). Metrics are the rows
    and arms/cells the columns (labelled with their axis values and cell count), or transposed."""
    if by is None:
        keys = ["grid", "cell_id"]
        frame = long.merge(cells[keys + [c for c in axis_columns(cells) if c not in long.columns]], on=keys)
        frame = frame.assign(n_cells=1)
        label_cols = (["grid"] if cells["grid"].nunique() > 1 else []) + axis_columns(cells)
        frame["label"] = arm_labels(frame, label_cols) + " · " + frame["cell_id"].str[:6]
    else:
        frame = group_over_seeds(long, cells, by)
        frame["label"] = arm_labels(frame, by) + frame["n_cells"].map(lambda n: f" ({n} cell{'s' if n != 1 else ''})")
    digits = frame.groupby("metric")["mean"].transform(decimals)  # one precision per metric
    frame = frame.assign(value=[format_ci(m, lo, hi, d) for m, lo, hi, d in
                                zip(frame["mean"], frame["ci_low"], frame["ci_high"], digits)])
    order = list(dict.fromkeys(frame.sort_values([*(by or ["grid", "cell_id"])])["label"]))
    table = frame.pivot_table(index="metric", columns="label", values="value", aggfunc="first")
    table = table.reindex(columns=order).fillna("")
    table.columns.name = None
    if metrics_as_rows:
        return table.reset_index()
    table = table.T
    table.index.name = "arm" if by is not None else "cell"
    table.columns.name = None
    return table.reset_index()


def cells_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its status (and why), axis values, stage states and a link to its details."""
    axes = axis_columns(cells)
    table = cells[["grid", "cell_id", "status", *axes, *[f"stage.{s}" for s in STAGES], "status_reason"]].copy()
    table.insert(2, "run", "?view=Run+detail&cell=" + table["grid"] + "/" + table["cell_id"])
    table = table.rename(columns={c: c.removeprefix(AXIS_PREFIX) for c in axes} | {f"stage.{s}": s for s in STAGES}
                         | {"status_reason": "why"})
    return table.reset_index(drop=True)


def numeric_axes(cells: pd.DataFrame) -> list[str]:
    """Non-seed axes with two or more numeric values (named arms such as mfg's "off" may sit beside them)."""
    found = []
    for col in arm_columns(cells):
        values = pd.to_numeric(as_text(cells[col]), errors="coerce")
        if values.dropna().nunique() >= 2:
            found.append(col)
    return sorted(found, key=lambda c: ("mfg" not in c, c))


def numeric_axis_frame(grouped: pd.DataFrame, axis: str) -> pd.DataFrame:
    """`grouped` with `x`, the axis value as a number (NaN for a named arm: "off", "none"), and `named`,
    the label of a named arm (None on the numeric part)."""
    x = pd.to_numeric(as_text(grouped[axis]), errors="coerce")
    return grouped.assign(x=x, named=as_text(grouped[axis]).where(x.isna(), None))


# ---------------------------------------------------------------- training curves


def logged_quantities(log: pd.DataFrame) -> list[str]:
    """The numeric columns of a train log that hold a value somewhere (loss, lr, grad_norm, steps_per_s ...)."""
    skip = {"step", "cell"}
    return [c for c in log.columns if c not in skip and pd.to_numeric(log[c], errors="coerce").notna().any()]


def curve_frame(logs: pd.DataFrame, smoothing: float, quantities: list[str] | None = None) -> pd.DataFrame:
    """Long curves (cell, step, quantity, value, smoothed) from train logs with a `cell` column.
    `smoothed` is TensorBoard's smoothing: an exponential moving average with weight `smoothing` on
    the past, debiased at the start (pandas' ewm, adjust=True), per cell and quantity."""
    quantities = logged_quantities(logs) if quantities is None else quantities
    long = logs.melt(id_vars=["cell", "step"], value_vars=quantities, var_name="quantity", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"]).sort_values(["quantity", "cell", "step"], kind="stable")
    if smoothing <= 0:
        return long.assign(smoothed=long["value"]).reset_index(drop=True)
    smoothed = long.groupby(["quantity", "cell"], sort=False)["value"].transform(
        lambda v: v.ewm(alpha=1 - smoothing, adjust=True).mean())
    return long.assign(smoothed=smoothed).reset_index(drop=True)


# ---------------------------------------------------------------- one cell


def cell_detail(cell_dir: str | Path) -> dict:
    """What the run-detail view shows: config text, cell.json, manifest, log tail, eval protocols."""
    cell_dir = Path(cell_dir)
    config = cell_dir / "config.yaml"
    log_path = cell_dir / "train_log.jsonl"
    return {
        "config": config.read_text(encoding="utf-8") if config.exists() else None,
        "cell": read_json_or_empty(cell_dir / "cell.json"),
        "manifest": read_json_or_empty(cell_dir / "manifest.json"),
        "metrics": read_json_or_empty(cell_dir / "metrics.json"),
        "log_tail": log_path.read_text(encoding="utf-8").splitlines()[-20:] if log_path.exists() else [],
        "protocols": {p.stem: read_json_or_empty(p).get("protocol", {}) for p in sorted((cell_dir / "eval").glob("*.json"))},
        "stages": runfolder.stage_states(cell_dir),
    }
