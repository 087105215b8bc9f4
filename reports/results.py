"""Reading run folders (DESIGN.md 'A run folder') into tables for the results browser.

Nothing here imports Streamlit: the browser caches these functions, tests and benchmarks call them
directly. Every reader tolerates half-finished cells and reports what is missing instead of raising.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

log = logging.getLogger(__name__)

RUN_COMMAND = "python ablations/run.py grid={grid}"
RESULT_COLUMNS = ["grid", "cell_id", "metric", "mean", "ci_low", "ci_high", "n"]
AXIS_PREFIX = "axis."
CONFIG_PREFIX = "config."
STAGES = ("config", "train", "samples", "eval", "metrics")
VIDEO_SUFFIXES = (".gif", ".mp4", ".webm")


@dataclass
class GridData:
    """One grid: long results (one row per cell and metric), one row per cell, and problems found."""

    name: str
    path: str
    results: pd.DataFrame
    cells: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def find_grids(runs_dir: str | Path) -> list[str]:
    """Names of the folders under `runs_dir` that look like grids (a grid.yaml, results or cells)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and _is_grid(p))


def _is_grid(path: Path) -> bool:
    if (path / "grid.yaml").exists() or (path / "results.parquet").exists():
        return True
    return any((c / "cell.json").exists() for c in path.iterdir() if c.is_dir())


def cell_dirs(grid_dir: Path) -> list[Path]:
    return sorted(p for p in grid_dir.iterdir()
                  if p.is_dir() and ((p / "config.yaml").exists() or (p / "cell.json").exists()))


def grid_stamp(grid_dir: str | Path) -> tuple:
    """A cache key that changes whenever anything the browser reads from the grid changes."""
    grid_dir = Path(grid_dir)
    names = ("results.parquet", "grid.yaml")
    top = tuple(_mtime(grid_dir / n) for n in names)
    cells = [p for p in grid_dir.iterdir() if p.is_dir()]
    latest = max((_mtime(c / n) for c in cells for n in ("metrics.json", "manifest.json", "cell.json")), default=0.0)
    return (_mtime(grid_dir), *top, len(cells), latest)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def load_grid(grid_dir: str | Path) -> GridData:
    """Cells and results of one grid; results.parquet is preferred, metrics.json files fill in."""
    grid_dir = Path(grid_dir)
    name = grid_dir.name
    cells = pd.DataFrame([read_cell(d, name) for d in cell_dirs(grid_dir)])
    problems = cell_problems(cells, name)
    results = _read_results(grid_dir, cells, problems)
    log.info("loaded grid %s: %d cells, %d result rows", name, len(cells), len(results))
    return GridData(name=name, path=str(grid_dir), results=results, cells=cells, problems=problems)


def read_cell(cell_dir: Path, grid: str) -> dict:
    """One row describing a cell: ids, axes, flattened config, stage flags, manifest status."""
    info = _read_json_or_empty(cell_dir / "cell.json")
    manifest = _read_json_or_empty(cell_dir / "manifest.json")
    config = _read_yaml_or_empty(cell_dir / "config.yaml")
    row = {"grid": grid, "cell_id": info.get("cell_id", cell_dir.name), "path": str(cell_dir),
           "status": manifest.get("status", "unknown")}
    row.update({AXIS_PREFIX + k: v for k, v in info.get("axes", {}).items()})
    row.update({CONFIG_PREFIX + k: v for k, v in flatten(config).items()})
    row.update({"has_" + k: v for k, v in cell_stages(cell_dir).items()})
    return row


def cell_stages(cell_dir: Path) -> dict[str, bool]:
    samples = cell_dir / "samples"
    evals = cell_dir / "eval"
    return {
        "config": (cell_dir / "config.yaml").exists(),
        "train": (cell_dir / "checkpoints" / "last.pt").exists(),
        "samples": samples.is_dir() and any(samples.glob("*/samples.jsonl")),
        "eval": evals.is_dir() and any(evals.glob("*.json")),
        "metrics": (cell_dir / "metrics.json").exists(),
    }


def cell_problems(cells: pd.DataFrame, grid: str) -> list[str]:
    """Sentences naming each stage some cells have not reached, and the command that produces it."""
    if cells.empty:
        return [f"Grid '{grid}' has no cells yet. Produce them with `{RUN_COMMAND.format(grid=grid)}`."]
    problems = []
    for stage in STAGES:
        missing = cells.loc[~cells["has_" + stage].astype(bool), "cell_id"].tolist()
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            problems.append(f"{len(missing)} of {len(cells)} cells in '{grid}' lack {_STAGE_TEXT[stage]} "
                            f"({shown}). Rerun `{RUN_COMMAND.format(grid=grid)}` to resume them.")
    return problems


_STAGE_TEXT = {"config": "config.yaml", "train": "a final checkpoint (checkpoints/last.pt)",
               "samples": "samples", "eval": "evaluator output (eval/*.json)", "metrics": "metrics.json"}


def _read_results(grid_dir: Path, cells: pd.DataFrame, problems: list[str]) -> pd.DataFrame:
    parquet = grid_dir / "results.parquet"
    from_metrics = results_from_metrics(cells, grid_dir.name)
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
            return _normalise(table, grid_dir.name)
    elif not from_metrics.empty:
        problems.append(f"'{grid_dir.name}' has no results.parquet yet; showing the cells' metrics.json.")
    return from_metrics


def results_from_metrics(cells: pd.DataFrame, grid: str) -> pd.DataFrame:
    """The results.parquet rows rebuilt from each cell's metrics.json."""
    rows = []
    for cell in cells.to_dict("records") if not cells.empty else []:
        metrics = _read_json_or_empty(Path(cell["path"]) / "metrics.json")
        axes = {k: v for k, v in cell.items() if k.startswith(AXIS_PREFIX)}
        for metric, value in metrics.items():
            if isinstance(value, dict) and "mean" in value:
                rows.append({"grid": grid, "cell_id": cell["cell_id"], "metric": metric,
                             **{k: value.get(k) for k in ("mean", "ci_low", "ci_high", "n")}, **axes})
    return _normalise(pd.DataFrame(rows), grid)


def _normalise(table: pd.DataFrame, grid: str) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    table = table.copy()
    if "grid" not in table:
        table["grid"] = grid
    for col in ("mean", "ci_low", "ci_high"):
        table[col] = pd.to_numeric(table.get(col), errors="coerce")
    table["ci_low"] = table["ci_low"].fillna(table["mean"])
    table["ci_high"] = table["ci_high"].fillna(table["mean"])
    return table


def flatten(config: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their string form so they can be grouped on."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value, sort_keys=True, default=str)
        else:
            flat[name] = value
    return flat


def _read_json_or_empty(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _read_yaml_or_empty(path: Path) -> dict:
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


# ---------------------------------------------------------------- tables


def as_text(values: pd.Series) -> pd.Series:
    """Values as labels; None/NaN (e.g. mfg_scale: null) become 'none' so they group and sort."""
    return values.map(lambda v: "none" if v is None or (isinstance(v, float) and v != v) else str(v)).astype(object)


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


def group_over_seeds(results: pd.DataFrame, cells: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean over the cells of each group (typically the seeds of an arm) with a t-based 95% CI over them.

    A group of one cell keeps that cell's own CI (over prompts)."""
    extra = [c for c in by if c not in results.columns]
    merged = results.merge(cells[["grid", "cell_id", *extra]], on=["grid", "cell_id"], how="left") if extra else results
    keys = [*by, "metric"]
    merged = merged.assign(**{c: as_text(merged[c]) for c in by})
    grouped = merged.groupby(keys, sort=True, dropna=False)
    out = grouped.agg(mean=("mean", "mean"), sd=("mean", "std"), n_cells=("mean", "size"),
                      cell_low=("ci_low", "first"), cell_high=("ci_high", "first")).reset_index()
    half = stats.t.ppf(0.975, np.maximum(out["n_cells"] - 1, 1)) * out["sd"] / np.sqrt(out["n_cells"])
    single = out["n_cells"] < 2
    out["ci_low"] = np.where(single, out["cell_low"], out["mean"] - half)
    out["ci_high"] = np.where(single, out["cell_high"], out["mean"] + half)
    return out.drop(columns=["sd", "cell_low", "cell_high"])


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


def train_log(cell_dir: str | Path) -> pd.DataFrame:
    """train_log.jsonl as a table (torn last lines of a running job are skipped)."""
    path = Path(cell_dir) / "train_log.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


def prompt_sets(cell_dir: str | Path) -> list[str]:
    samples = Path(cell_dir) / "samples"
    return sorted(p.parent.name for p in samples.glob("*/samples.jsonl")) if samples.is_dir() else []


def samples_with_scores(cell_dir: str | Path, prompt_set: str) -> pd.DataFrame:
    """The cell's samples of one prompt set, one row per image, with every judge's per-image scores
    (columns '<metric>/<score>') joined on the file name."""
    folder = Path(cell_dir) / "samples" / prompt_set
    rows = []
    manifest = folder / "samples.jsonl"
    if manifest.exists():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["path"] = [str(folder / f) for f in frame["file"]]
    frame["index"] = frame.get("index", pd.Series(0, index=frame.index)).fillna(0).astype(int)
    scores = per_image_scores(cell_dir)
    return frame.merge(scores, on="file", how="left") if not scores.empty else frame


def per_image_scores(cell_dir: str | Path) -> pd.DataFrame:
    rows: dict[str, dict] = {}
    for path in sorted((Path(cell_dir) / "eval").glob("*.json")):
        result = _read_json_or_empty(path)
        metric = result.get("metric", path.stem)
        for item in result.get("per_image", []) or []:
            entry = rows.setdefault(item.get("file"), {"file": item.get("file")})
            entry.update({f"{metric}/{k}": v for k, v in (item.get("scores") or {}).items()})
    return pd.DataFrame(list(rows.values()))


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_SUFFIXES)


def cell_detail(cell_dir: str | Path) -> dict:
    """What the run-detail view shows: config text, cell.json, manifest, log tail, eval protocols."""
    cell_dir = Path(cell_dir)
    config = cell_dir / "config.yaml"
    log_path = cell_dir / "train_log.jsonl"
    return {
        "config": config.read_text(encoding="utf-8") if config.exists() else None,
        "cell": _read_json_or_empty(cell_dir / "cell.json"),
        "manifest": _read_json_or_empty(cell_dir / "manifest.json"),
        "metrics": _read_json_or_empty(cell_dir / "metrics.json"),
        "log_tail": log_path.read_text(encoding="utf-8").splitlines()[-20:] if log_path.exists() else [],
        "protocols": {p.stem: _read_json_or_empty(p).get("protocol", {}) for p in sorted((cell_dir / "eval").glob("*.json"))},
        "stages": cell_stages(cell_dir),
    }
