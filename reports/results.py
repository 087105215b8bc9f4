"""Run folders as the results browser's tables. The folder's layout, stage states and file readers
belong to ablations.runfolder; this module only shapes them for display.

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

from ablations import runfolder
from ablations.runfolder import (AXIS_PREFIX, CONFIG_PREFIX, RESULT_COLUMNS, STAGES, as_text, cell_dirs,  # noqa: F401
                                 find_grids, grid_stamp, group_over_seeds, prompt_sets, read_cell,
                                 read_json_or_empty, samples_with_scores, train_log)
from eval import verdicts

log = logging.getLogger(__name__)

MIN_PROMPTS = 20  # an entry from fewer prompts per cell than this is flagged (FEW) wherever it is shown
FEW = "†"  # marks an entry from fewer than MIN_PROMPTS prompts (the LaTeX export: a dagger too)
SEED = AXIS_PREFIX + "seed"
STEPS, BATCH = CONFIG_PREFIX + "train.steps", CONFIG_PREFIX + "train.batch_size"


@dataclass
class GridData:
    """One grid: long results (one row per cell and metric), one row per cell, and problems found."""

    name: str
    path: str
    results: pd.DataFrame
    cells: pd.DataFrame
    problems: list[str] = field(default_factory=list)  # what needs a rerun: shown as warnings
    rerun: str = ""  # the command that plans this grid's current cells again and resumes them
    notes: list[str] = field(default_factory=list)  # what is under way (cells whose process is alive): no action
    order: dict[str, list[str]] = field(default_factory=dict)  # axis -> its arms in the grid file's order
    description: str = ""  # grid.yaml's one line about the grid


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
    raw = runfolder.read_yaml_or_empty(grid_dir / "grid.yaml")
    log.info("loaded grid %s: %d cells, %d result rows", name, len(cells), len(results))
    return GridData(name=name, path=str(grid_dir), results=results, cells=cells, problems=problems, rerun=rerun,
                    notes=cell_notes(cells, name, rerun), order=verdicts.grid_layout(grid_dir)["order"],
                    description=str(raw.get("description") or "").strip())


def ended_since_read(grid: GridData) -> tuple[str, ...]:
    """The ids of the cells `grid` reads as running whose process is gone now: it died after the
    grid was read (its files need not have changed since), so that reading is out of date."""
    if grid.cells.empty:
        return ()
    running = grid.cells[grid.cells["run_status"] == "running"]
    return tuple(c for c, path in zip(running["cell_id"], running["path"]) if runfolder.status(path).status != "running")


def _waiting(cells: pd.DataFrame) -> pd.DataFrame:
    """The current cells that need a run to go on: every one but those whose process is alive."""
    cells = cells[cells["status"] != "stale"]
    return cells[cells["run_status"] != "running"]


def cell_problems(cells: pd.DataFrame, grid: str, rerun: str) -> list[str]:
    """Sentences naming each stage some current cells have not reached, and the command that produces
    it. Cells whose process is alive (running) are left out: they go on by themselves (cell_notes).
    While some run, cells not started yet are queued behind them rather than waiting for a rerun."""
    if cells.empty:
        return [f"Grid '{grid}' has no cells yet. Produce them with `{rerun}`."]
    problems = []
    waiting = _waiting(cells)
    if (cells["run_status"] == "running").any():
        waiting = waiting[waiting["run_status"] != "pending"]
    for stage in STAGES:
        missing = waiting.loc[waiting["stage." + stage] != "done", "cell_id"].tolist()
        if missing:
            problems.append(f"{len(missing)} of {len(cells[cells['status'] != 'stale'])} cells in '{grid}' lack "
                            f"{_STAGE_TEXT[stage]} ({_ids(missing)}). Rerun `{rerun}` to resume them.")
    return problems


def cell_notes(cells: pd.DataFrame, grid: str, rerun: str) -> list[str]:
    """What is under way in the grid: cells whose process is alive, and the cells queued behind them."""
    if cells.empty:
        return []
    current = cells[cells["status"] != "stale"]
    running = current[current["run_status"] == "running"]
    if running.empty:
        return []
    notes = [f"{len(running)} of {len(current)} cells in '{grid}' are running (their process is alive: "
             f"{_ids(running['cell_id'].tolist())}); their stages finish without a rerun."]
    queued = _waiting(current)
    queued = queued[queued["run_status"] == "pending"]
    if not queued.empty:
        notes.append(f"{len(queued)} cells in '{grid}' have not started ({_ids(queued['cell_id'].tolist())}): "
                     f"a grid run working through its cells starts them; if none is going, `{rerun}` does.")
    return notes


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")


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


def own_axes(cells: pd.DataFrame) -> list[str]:
    """The axes these cells give a value (the seed included): another grid's axes are left out."""
    return [c for c in axis_columns(cells) if cells[c].notna().any()]


def varying_columns(cells: pd.DataFrame, prefix: str) -> list[str]:
    """Columns with the prefix that take more than one value across the cells (what one can group by)."""
    cols = [c for c in cells.columns if c.startswith(prefix)]
    return [c for c in cols if as_text(cells[c]).nunique() > 1]


def arm_columns(cells: pd.DataFrame) -> list[str]:
    """The axes that define an arm: every axis but the seed that these cells give a value (an axis
    only another grid's cells have, or only stale cells had, says nothing about them)."""
    return [c for c in own_axes(cells) if c != SEED]


def arm_labels(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """'conditioning=adaln, size=T/2' per row (the grid name is added when several grids are shown)."""
    if not columns:
        return pd.Series("all", index=frame.index)
    parts = [c.removeprefix(AXIS_PREFIX).removeprefix(CONFIG_PREFIX) + "=" + as_text(frame[c]) for c in columns]
    label = parts[0]
    for part in parts[1:]:
        label = label + ", " + part
    return label


def short_labels(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """An arm's values alone ('adaln', 'tiny T5 (span corruption)') where one axis defines the arms
    (the axis name goes in the plot's title), else arm_labels."""
    if len(columns) == 1:
        return as_text(frame[columns[0]])
    return arm_labels(frame, columns)


def _natural(value: str):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def ordered(values, order: list[str] | None = None) -> list[str]:
    """The distinct values as text, in the grid file's order (`order`: grid_layout's list for the
    axis); values it does not name follow, numbers by value, then text."""
    texts = list(dict.fromkeys(as_text(pd.Series(list(values), dtype=object))))
    known = [v for v in (order or []) if v in texts]
    return known + sorted((v for v in texts if v not in known), key=_natural)


def sort_rows(frame: pd.DataFrame, columns: list[str], order: dict[str, list[str]] | None = None,
              last: list[str] = ()) -> pd.DataFrame:
    """`frame` sorted column by column in each column's arm order (`order` keyed by axis name, as
    grid_layout gives it), then by `last` (e.g. cell_id) as text."""
    order = order or {}
    keys = {}
    for i, col in enumerate(columns):
        rank = {v: k for k, v in enumerate(ordered(frame[col], order.get(col.removeprefix(AXIS_PREFIX))))}
        keys[f"_rank{i}"] = as_text(frame[col]).map(rank)
    keys |= {f"_last{i}": frame[c].astype(str) for i, c in enumerate(last)}
    if not keys:
        return frame
    return frame.assign(**keys).sort_values(list(keys), kind="stable").drop(columns=list(keys))


def decimals(values: pd.Series) -> int:
    """Decimals that give the largest |value| three significant digits: 0.812, 23.4, 1234."""
    largest = pd.to_numeric(values, errors="coerce").abs().max()
    if not largest or pd.isna(largest):
        return 3
    return int(max(0, 2 - np.floor(np.log10(largest))))


def format_ci(mean, low, high, digits: int = 3) -> str:
    """'0.812 [0.780, 0.840]': the mean and its 95% CI with `digits` decimals, both ends written out (an
    interval over prompts need not be symmetric)."""
    if mean is None or pd.isna(mean):
        return ""
    if pd.isna(low) or pd.isna(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_entry(mean, low, high, digits: int = 3, n=None, min_prompts: int = MIN_PROMPTS) -> str:
    """format_ci with the number of prompts behind it: '0.812 [0.780, 0.840] n=120'; FEW marks an
    entry from fewer than `min_prompts` prompts per cell."""
    text = format_ci(mean, low, high, digits)
    if not text or n is None or pd.isna(n):
        return text
    return f"{text} n={int(n)}" + (f" {FEW}" if int(n) < min_prompts else "")


def count_text(values: pd.Series) -> str:
    """'20' or '20/4000' (the distinct values, in order of appearance); '' when none is known."""
    found = [str(int(v)) if isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer() else str(v)
             for v in values.dropna().unique()]
    return "/".join(found)


def provenance(long: pd.DataFrame, cells: pd.DataFrame, by: list[str] | None) -> pd.DataFrame:
    """Per group of `by` (or per cell, `by` None) and metric: `seeds` (training seeds with a score),
    `cells`, `steps` (train.steps, several joined by '/'), `batch` (train.batch_size) and `n`, the
    fewest prompts (the evaluator's n) of any of its cells."""
    keys = ["grid", "cell_id"]
    groups = keys if by is None else list(by)
    wanted = [c for c in dict.fromkeys([*groups, SEED, STEPS, BATCH]) if c in cells.columns and c not in keys]
    frame = long.drop(columns=[c for c in wanted if c in long.columns]).merge(cells[keys + wanted], on=keys,
                                                                               how="left")
    frame = frame[frame["mean"].notna()] if "mean" in frame else frame
    frame = frame.assign(**{c: as_text(frame[c]) for c in groups if c not in keys})
    n = frame["n"] if "n" in frame else pd.Series(np.nan, index=frame.index)
    frame = frame.assign(n=pd.to_numeric(n, errors="coerce"),
                         **{c: frame[c] if c in frame else np.nan for c in (SEED, STEPS, BATCH)})
    grouped = frame.groupby([*groups, "metric"], sort=False, dropna=False)
    return grouped.agg(seeds=(SEED, "nunique"), cells=("cell_id", "nunique"), steps=(STEPS, count_text),
                       batch=(BATCH, count_text), n=("n", "min")).reset_index()


def _budget(seeds: int, cells: int, steps: str, over_seeds: bool) -> str:
    count = f"{seeds} seed{'s' if seeds != 1 else ''}" if over_seeds else f"{cells} cell{'s' if cells != 1 else ''}"
    return f" ({count}" + (f" · {steps} steps)" if steps else ")")


def metric_table(long: pd.DataFrame, cells: pd.DataFrame, by: list[str] | None,
                 metrics_as_rows: bool = True, order: dict[str, list[str]] | None = None,
                 min_prompts: int = MIN_PROMPTS) -> pd.DataFrame:
    """Each metric's `mean [lo, hi] n=...` per arm (cells grouped by `by`, averaged over the rest, e.g.
    seeds: t-interval over them) or per cell (`by` None: the cell's CI over prompts); n is the fewest
    prompts of the cells behind the entry, FEW marks fewer than `min_prompts`. Metrics are the rows
    and arms/cells the columns, labelled with their axis values, seeds (or cells) and training
    steps, in the grid file's arm order (`order`: grid_layout's); or transposed."""
    cells = cells.loc[:, [c for c in cells.columns if not c.startswith(AXIS_PREFIX) or cells[c].notna().any()]]
    if by is None:
        keys = ["grid", "cell_id"]
        axes = own_axes(cells)
        frame = long.merge(cells[keys + [c for c in axes if c not in long.columns]], on=keys)
        frame = frame.assign(n_cells=1)
        by_cols = (["grid"] if cells["grid"].nunique() > 1 else []) + axes
        info = provenance(long, cells, None)
        frame = frame.merge(info, on=[*keys, "metric"], how="left", suffixes=("_raw", ""))
        frame["label"] = (arm_labels(frame, by_cols) + " · " + frame["cell_id"].str[:6]
                          + frame["steps"].map(lambda s: f" ({s} steps)" if isinstance(s, str) and s else ""))
        frame = sort_rows(frame, by_cols, order, last=["cell_id"])
    else:
        by = [c for c in by if c in cells.columns or c in long.columns]
        frame = group_over_seeds(long, cells, by)
        info = provenance(long, cells, by)
        frame = frame.merge(info, on=[*by, "metric"], how="left")
        over_seeds = SEED not in by
        frame["label"] = arm_labels(frame, by) + [_budget(s, c, t if isinstance(t, str) else "", over_seeds)
                                                  for s, c, t in zip(frame["seeds"].fillna(0).astype(int),
                                                                     frame["cells"].fillna(0).astype(int),
                                                                     frame["steps"])]
        frame = sort_rows(frame, by, order)
    digits = frame.groupby("metric")["mean"].transform(decimals)  # one precision per metric
    frame = frame.assign(value=[format_entry(m, lo, hi, d, n, min_prompts) for m, lo, hi, d, n in
                                zip(frame["mean"], frame["ci_low"], frame["ci_high"], digits, frame["n"])])
    columns = list(dict.fromkeys(frame["label"]))
    table = frame.pivot_table(index="metric", columns="label", values="value", aggfunc="first")
    table = table.reindex(columns=columns).fillna("")
    table.columns.name = None
    if metrics_as_rows:
        return table.reset_index()
    table = table.T
    table.index.name = "arm" if by is not None else "cell"
    table.columns.name = None
    return table.reset_index()


def shared_family(metrics) -> str | None:
    """The family ('compshapes_judge') every one of `metrics` ('compshapes_judge/color') belongs to, if one."""
    families = {str(m).rsplit("/", 1)[0] if "/" in str(m) else None for m in metrics}
    return families.pop() if len(families) == 1 else None


def short_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """A metric_table (metrics as rows) whose metrics share a family, with that family as the first
    column's name and the scores alone below it ('color', 'shape', ...): narrower, same content."""
    family = shared_family(table["metric"]) if "metric" in table and len(table) else None
    if family is None:
        return table
    return table.assign(metric=table["metric"].str.removeprefix(family + "/")).rename(columns={"metric": family})


def cells_table(cells: pd.DataFrame, order: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """One row per cell, in arm order then seed: its status (and why), the axis values its grid has,
    stage states and a link to its details (the grid too, when the cells come from several)."""
    axes = [c for c in own_axes(cells) if c != SEED] + [c for c in own_axes(cells) if c == SEED]  # arms, then seed
    cells = sort_rows(cells, ["grid", *axes], order, last=["cell_id"])
    table = cells[["grid", "cell_id", "status", *axes, *[f"stage.{s}" for s in STAGES], "status_reason"]].copy()
    table.insert(2, "run", "?view=Run+detail&cell=" + table["grid"] + "/" + table["cell_id"])
    if table["grid"].nunique() == 1:
        table = table.drop(columns="grid")  # one grid's table: its name is the heading
    table = table.rename(columns={c: c.removeprefix(AXIS_PREFIX) for c in axes} | {f"stage.{s}": s for s in STAGES}
                         | {"status_reason": "why"})
    return table.reset_index(drop=True)


def cell_labels(cells: pd.DataFrame, ids: bool = True) -> pd.Series:
    """'conditioning · adaln, seed 0 · 061678' per cell: its grid (when there are several), the values
    of its own grid's axes (never another grid's) and (with `ids`) its id."""
    several = cells["grid"].nunique() > 1
    out = pd.Series("", index=cells.index, dtype=object)
    for grid, part in cells.groupby("grid", sort=False):
        arms = arm_columns(part)
        text = short_labels(part, arms) if arms else pd.Series("all", index=part.index)
        if SEED in part and part[SEED].notna().any():
            text = text + ", seed " + as_text(part[SEED])
        prefix = f"{grid} · " if several and ids else ""
        out[part.index] = prefix + text + (" · " + part["cell_id"].str[:6] if ids else "")
    return out


def sort_cells(cells: pd.DataFrame, grids: list[str], orders: dict[str, dict[str, list[str]]]) -> pd.DataFrame:
    """Cells grid by grid (in `grids` order), each grid's in its arm order, then seed."""
    parts = []
    for grid in grids:
        part = cells[cells["grid"] == grid]
        if part.empty:
            continue
        axes = arm_columns(part)
        parts.append(sort_rows(part, [*axes, *([SEED] if SEED in part else [])], orders.get(grid), last=["cell_id"]))
    return pd.concat(parts) if parts else cells.iloc[0:0]


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


def score_spread(frames: dict[str, pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """Per sample key (prompt, seed, index) shared by two or more of `frames` (one per arm: samples
    with their per-image scores), the largest spread (max - min over the arms) of any score column
    ('<metric>/<score>'): 0 where the arms agree, NaN where no score is shared."""
    parts = []
    for label, frame in frames.items():
        scores = [c for c in frame.columns if "/" in str(c) and c not in ("path", "file", "frames")]
        if frame.empty or not scores:
            continue
        melted = frame[keys + scores].melt(id_vars=keys, var_name="score", value_name="value")
        parts.append(melted.assign(arm=label, value=pd.to_numeric(melted["value"], errors="coerce")).dropna(
            subset=["value"]))
    if not parts:
        return pd.DataFrame(columns=[*keys, "spread"])
    both = pd.concat(parts, ignore_index=True)
    per = both.groupby([*keys, "score"])["value"].agg(["max", "min", "count"]).reset_index()
    per = per[per["count"] >= 2]
    spread = per.assign(spread=per["max"] - per["min"]).groupby(keys)["spread"].max()
    return spread.reset_index()


# ---------------------------------------------------------------- one cell, in words


def differing_config(cell: pd.Series, grid_cells: pd.DataFrame) -> pd.DataFrame:
    """The config keys whose value varies across the grid's cells (what its arms and seeds set; the
    rest is the grid's base), with this cell's value and the others the grid holds."""
    rows = []
    for col in varying_columns(grid_cells, CONFIG_PREFIX):
        values = ordered(grid_cells[col])
        mine = as_text(pd.Series([cell.get(col)], dtype=object)).iloc[0]
        rows.append({"key": col.removeprefix(CONFIG_PREFIX), "this cell": mine,
                     "others in the grid": ", ".join(v for v in values if v != mine)})
    return pd.DataFrame(rows, columns=["key", "this cell", "others in the grid"])


def budget(cell: pd.Series, grid_cells: pd.DataFrame) -> dict[str, str]:
    """The cell's training budget in words: steps, batch size, its arm's seeds, sampling seeds."""
    def value(col):
        v = cell.get(col)
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else count_text(pd.Series([v]))

    arms = arm_columns(grid_cells)
    same_arm = grid_cells
    for col in arms:
        same_arm = same_arm[as_text(same_arm[col]) == as_text(pd.Series([cell.get(col)], dtype=object)).iloc[0]]
    seeds = ordered(same_arm[SEED]) if SEED in same_arm else []
    return {"train steps": value(STEPS), "batch size": value(BATCH),
            "seeds of this arm": ", ".join(seeds) or "-",
            "sampling seeds": ", ".join(json_list(cell.get(CONFIG_PREFIX + "sample.seeds"))) or "-",
            "prompt sets": ", ".join(json_list(cell.get(CONFIG_PREFIX + "sample.prompt_sets"))) or "-"}


def json_list(value) -> list[str]:
    """A flattened config list (JSON text, runfolder.flatten) as its items' texts; [] for none."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    try:
        loaded = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return [str(value)]
    return [str(v) for v in loaded] if isinstance(loaded, list) else [str(loaded)]


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
