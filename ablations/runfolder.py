"""The run folder: its layout, the state of each cell's stages, and the readers of its files.

The grid runner writes it and the results browser reads it; both go through this module, so there
is one list of stages and one answer to "is this cell trained?" (its manifest's stage entries, which
turn `done` only after a stage's outputs are written).

    runs/<grid>/
        grid.yaml              the grid as planned
        results.parquet        one row per (cell, metric), rebuilt from the cells' metrics.json
        jobs.json              SLURM job ids (launcher=slurm)
        cache/                 data and prompt caches shared by the cells
        <cell_id>/
            config.yaml        the resolved cell config      cell.json      grid, cell id, axes, train key
            manifest.json      provenance and stage states   train_log.jsonl
            checkpoints/last.pt                              samples/<prompt_set>/samples.jsonl + images
            eval/<metric>.json evaluator output              metrics.json   '<metric>/<score>' -> mean, CI
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from ablations import manifest

log = logging.getLogger(__name__)

STAGES = ("train", "sample", "evaluate", "record")
CONFIG, CELL, METRICS, GRID, RESULTS = "config.yaml", "cell.json", "metrics.json", "grid.yaml", "results.parquet"
CHECKPOINT = Path("checkpoints") / "last.pt"
TRAIN_LOG = "train_log.jsonl"
SAMPLES, EVAL = "samples", "eval"
RESULT_COLUMNS = ["grid", "cell_id", "metric", "mean", "ci_low", "ci_high", "n"]
AXIS_PREFIX = "axis."
CONFIG_PREFIX = "config."


# --- layout -------------------------------------------------------------------------------------

def find_grids(runs_dir: str | Path) -> list[str]:
    """Names of the folders under `runs_dir` that look like grids (a grid.yaml, results or cells)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and _is_grid(p))


def _is_grid(path: Path) -> bool:
    if (path / GRID).exists() or (path / RESULTS).exists():
        return True
    return any((c / CELL).exists() for c in path.iterdir() if c.is_dir())


def cell_dirs(grid_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(grid_dir).iterdir()
                  if p.is_dir() and ((p / CONFIG).exists() or (p / CELL).exists()))


def grid_stamp(grid_dir: str | Path) -> tuple:
    """A cache key that changes whenever anything read from the grid changes."""
    grid_dir = Path(grid_dir)
    top = tuple(_mtime(grid_dir / n) for n in (RESULTS, GRID))
    cells = [p for p in grid_dir.iterdir() if p.is_dir()]
    latest = max((_mtime(c / n) for c in cells for n in (METRICS, manifest.MANIFEST, CELL)), default=0.0)
    return (_mtime(grid_dir), *top, len(cells), latest)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


# --- stage states -------------------------------------------------------------------------------

def stage_states(cell_dir: str | Path) -> dict[str, str]:
    """{stage: pending|running|done|failed} from the manifest; an evaluation done with other metrics
    than the config now names counts as pending (and so does the record stage after it)."""
    cell_dir = Path(cell_dir)
    found = manifest.read_or_empty(cell_dir)
    out = {s: manifest.stage_state(found, s) for s in STAGES}
    if out["evaluate"] == "done":
        config = read_yaml_or_empty(cell_dir / CONFIG)
        wanted = config.get("eval", {}).get("metrics")
        if wanted is not None and found["stages"]["evaluate"].get("metrics") != wanted:
            out["evaluate"] = out["record"] = "pending"
    return out


# --- readers ------------------------------------------------------------------------------------

def read_json_or_empty(path: Path) -> dict:
    """A JSON object, or {} for a missing or torn file (a running job may be writing the folder)."""
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def read_yaml_or_empty(path: Path) -> dict:
    try:
        loaded = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def flatten(config: dict) -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their JSON text so they can be grouped on."""
    if not config:
        return {}
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict()
    return {k: json.dumps(v, sort_keys=True, default=str) if isinstance(v, list) else v for k, v in flat.items()}


def read_cell(cell_dir: Path, grid: str) -> dict:
    """One row describing a cell: ids, axes, flattened config, manifest status and each stage's state."""
    info = read_json_or_empty(cell_dir / CELL)
    found = manifest.read_or_empty(cell_dir)
    row = {"grid": grid, "cell_id": info.get("cell_id", cell_dir.name), "path": str(cell_dir),
           "status": found.get("status", "unknown")}
    row.update({AXIS_PREFIX + k: v for k, v in info.get("axes", {}).items()})
    row.update({CONFIG_PREFIX + k: v for k, v in flatten(read_yaml_or_empty(cell_dir / CONFIG)).items()})
    row.update({"stage." + k: v for k, v in stage_states(cell_dir).items()})
    return row


def collect(grid_dir: str | Path, cell_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per (cell, metric) of every cell with a metrics.json, plus an `axis.<name>` column per axis."""
    grid_dir = Path(grid_dir)
    rows = []
    for metrics_path in sorted(grid_dir.glob(f"*/{METRICS}")):
        info = read_json_or_empty(metrics_path.parent / CELL)
        cell_id = info.get("cell_id", metrics_path.parent.name)
        if cell_ids is not None and cell_id not in cell_ids:
            continue
        axes = {AXIS_PREFIX + k: v for k, v in info.get("axes", {}).items()}
        for metric, value in read_json_or_empty(metrics_path).items():
            if isinstance(value, dict) and "mean" in value:
                rows.append({"grid": grid_dir.name, "cell_id": cell_id, "metric": metric,
                             **{k: value.get(k) for k in ("mean", "ci_low", "ci_high", "n")}, **axes})
    return normalise(pd.DataFrame(rows), grid_dir.name)


def normalise(table: pd.DataFrame, grid: str) -> pd.DataFrame:
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


def as_text(values: pd.Series) -> pd.Series:
    """Values as labels; None/NaN (e.g. mfg_scale: null) become 'none' so they group and sort."""
    return values.map(lambda v: "none" if v is None or (isinstance(v, float) and v != v) else str(v)).astype(object)


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


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a torn line (a job killed mid-write) is skipped."""
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def train_log(cell_dir: str | Path) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(Path(cell_dir) / TRAIN_LOG))


def prompt_sets(cell_dir: str | Path) -> list[str]:
    samples = Path(cell_dir) / SAMPLES
    return sorted(p.parent.name for p in samples.glob("*/samples.jsonl")) if samples.is_dir() else []


def per_image_scores(cell_dir: str | Path) -> pd.DataFrame:
    """Every evaluator's per-image scores, one row per file, columns '<metric>/<score>'."""
    rows: dict[str, dict] = {}
    for path in sorted((Path(cell_dir) / EVAL).glob("*.json")):
        result = read_json_or_empty(path)
        metric = result.get("metric", path.stem)
        for item in result.get("per_image", []) or []:
            entry = rows.setdefault(item.get("file"), {"file": item.get("file")})
            entry.update({f"{metric}/{k}": v for k, v in (item.get("scores") or {}).items()})
    return pd.DataFrame(list(rows.values()))


def samples_with_scores(cell_dir: str | Path, prompt_set: str) -> pd.DataFrame:
    """The cell's samples of one prompt set, one row per image, joined with the per-image scores."""
    folder = Path(cell_dir) / SAMPLES / prompt_set
    frame = pd.DataFrame(read_jsonl(folder / "samples.jsonl"))
    if frame.empty:
        return frame
    frame["path"] = [str(folder / f) for f in frame["file"]]
    frame["index"] = frame.get("index", pd.Series(0, index=frame.index)).fillna(0).astype(int)
    scores = per_image_scores(cell_dir)
    return frame.merge(scores, on="file", how="left") if not scores.empty else frame
