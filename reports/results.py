"""Run folders as the results browser's tables. The folder's layout, stage states and file readers
belong to ablations.runfolder; this module only shapes them for display.

Nothing here imports Streamlit: the browser caches these functions, tests and benchmarks call them
directly. Every reader tolerates half-finished cells and reports what is missing instead of raising.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablations import runfolder
from ablations.runfolder import (AXIS_PREFIX, CONFIG_PREFIX, RESULT_COLUMNS, STAGES, as_text, cell_dirs,  # noqa: F401
                                 find_grids, grid_stamp, group_over_seeds, prompt_sets, read_cell,
                                 read_json_or_empty, samples_with_scores, train_log)

log = logging.getLogger(__name__)

RUN_COMMAND = "python ablations/run.py grid={grid}"
VIDEO_SUFFIXES = (".gif", ".mp4", ".webm")


@dataclass
class GridData:
    """One grid: long results (one row per cell and metric), one row per cell, and problems found."""

    name: str
    path: str
    results: pd.DataFrame
    cells: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def load_grid(grid_dir: str | Path) -> GridData:
    """Cells and results of one grid; results.parquet is preferred, metrics.json files fill in."""
    grid_dir = Path(grid_dir)
    name = grid_dir.name
    cells = pd.DataFrame([read_cell(d, name) for d in cell_dirs(grid_dir)])
    problems = cell_problems(cells, name)
    results = _read_results(grid_dir, cells, problems)
    log.info("loaded grid %s: %d cells, %d result rows", name, len(cells), len(results))
    return GridData(name=name, path=str(grid_dir), results=results, cells=cells, problems=problems)


def cell_problems(cells: pd.DataFrame, grid: str) -> list[str]:
    """Sentences naming each stage some cells have not reached, and the command that produces it."""
    if cells.empty:
        return [f"Grid '{grid}' has no cells yet. Produce them with `{RUN_COMMAND.format(grid=grid)}`."]
    problems = []
    for stage in STAGES:
        missing = cells.loc[cells["stage." + stage] != "done", "cell_id"].tolist()
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            problems.append(f"{len(missing)} of {len(cells)} cells in '{grid}' lack {_STAGE_TEXT[stage]} "
                            f"({shown}). Rerun `{RUN_COMMAND.format(grid=grid)}` to resume them.")
    return problems


_STAGE_TEXT = {"train": "a finished training stage (checkpoints/last.pt)", "sample": "samples",
               "evaluate": "evaluator output (eval/*.json)", "record": "metrics.json"}


def _read_results(grid_dir: Path, cells: pd.DataFrame, problems: list[str]) -> pd.DataFrame:
    parquet = grid_dir / "results.parquet"
    from_metrics = runfolder.collect(grid_dir)
    if parquet.exists():
        try:
            table = pd.read_parquet(parquet)
        except Exception as e:  # a torn or foreign file must not take the page down
            problems.append(f"{parquet} is unreadable ({e}); delete it and rerun "
                            f"`{RUN_COMMAND.format(grid=grid_dir.name)}` to rebuild it.")
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
    """The axes that define an arm: every axis but the seed."""
    return [c for c in axis_columns(cells) if c != AXIS_PREFIX + "seed"]


def arm_labels(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """'conditioning=adaln, size=T/2' per row (the grid name is added when several grids are shown)."""
    if not columns:
        return pd.Series("all", index=frame.index)
    parts = [c.removeprefix(AXIS_PREFIX).removeprefix(CONFIG_PREFIX) + "=" + as_text(frame[c]) for c in columns]
    label = parts[0]
    for part in parts[1:]:
        label = label + ", " + part
    return label


def wide_table(results: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: grid, cell id, axis values, then each metric's mean and 95% CI bounds."""
    keys = ["grid", "cell_id"]
    base = cells[keys + axis_columns(cells) + ["status"]].set_index(keys)
    if results.empty:
        return base.reset_index()
    values = results.pivot_table(index=keys, columns="metric", values=["mean", "ci_low", "ci_high"], aggfunc="first")
    metrics = sorted(results["metric"].unique())
    columns = {}
    for metric in metrics:
        columns[metric] = values[("mean", metric)]
        columns[f"{metric} lo"] = values[("ci_low", metric)]
        columns[f"{metric} hi"] = values[("ci_high", metric)]
    return base.join(pd.DataFrame(columns), how="left").reset_index()


def numeric_axes(cells: pd.DataFrame) -> list[str]:
    """Non-seed axes whose values are numbers (None allowed, e.g. mfg_scale: null = off), >= 2 values."""
    found = []
    for col in arm_columns(cells):
        values = pd.to_numeric(cells[col], errors="coerce")
        non_null = cells[col].notna()
        if values[non_null].notna().all() and values.dropna().nunique() >= 2:
            found.append(col)
    return sorted(found, key=lambda c: ("mfg" not in c, c))


# ---------------------------------------------------------------- one cell


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_SUFFIXES)


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
