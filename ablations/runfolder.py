"""The run folder: its layout, the state of each cell's stages, and the readers of its files.

The grid runner writes it and the results browser reads it; both go through this module, so there
is one list of stages and one answer to "is this cell trained?" (`status`): a stage is done when its
manifest entry says so (written after its outputs) and its outputs are still what the entry recorded
when they were written (`record_outputs`: size, and a BLAKE2b digest of the small files), and every
stage before it is done. A stage whose outputs are missing or changed is `damaged`: the runner runs it
again, and the stages after it, and the cell counts as failed until then, naming the file and why.

    runs/<grid>/
        grid.yaml              the grid as last planned, with `plan_args` (the arguments that chose its
                               cells) and `cell_ids` (those cells); other cell folders are stale
        results.parquet        one row per (cell, metric), rebuilt from the cells' metrics.json
        jobs.json              SLURM job ids (launcher=slurm)
        cache/                 data and prompt caches shared by the cells
        <cell_id>/
            config.yaml        the resolved cell config      cell.json      grid, cell id, axes, train key
            manifest.json      provenance and stage states   train_log.jsonl
            checkpoints/last.pt                              samples/<prompt_set>/samples.jsonl + images
            eval/<metric>.json evaluator output              metrics.json   '<metric>/<score>' -> mean, CI
        .grid.lock             held while grid.yaml or results.parquet is written
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.special import stdtrit

from ablations import manifest
from ablations.outputs import (CHECKPOINT, EVAL, METRICS, SAMPLES, Damage, json_problem, read_jsonl,
                               verify_outputs)
from gentron.io import atomic_write_text, make_folder, process_alive, remove_stale_temporaries, writing

log = logging.getLogger(__name__)

STAGES = ("train", "sample", "evaluate", "record")
CONFIG, CELL, GRID, RESULTS = "config.yaml", "cell.json", "grid.yaml", "results.parquet"
TRAIN_LOG = "train_log.jsonl"
RESULT_COLUMNS = ["grid", "cell_id", "metric", "mean", "ci_low", "ci_high", "n"]
AXIS_PREFIX = "axis."
CONFIG_PREFIX = "config."
# grid.yaml: the command-line arguments that chose the cells (grid, profile, seeds, cell-config
# overrides), and the ids of those cells.
PLAN_ARGS, CELL_IDS = "plan_args", "cell_ids"
RUN_COMMAND = "python ablations/run.py"
DEFAULT_RUNS_DIR = "runs"
# A running stage whose process cannot be checked (another host, or no pid recorded) counts as stopped
# once no file of its cell changed for this long: training logs every few seconds, and sampling and
# evaluation write their outputs as they go.
STALL_SECONDS = 3600


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
    """A cache key that changes whenever anything read from the grid changes (a cell's status included:
    its checkpoint, evaluator outputs and samples.jsonl; not each image)."""
    grid_dir = Path(grid_dir)
    top = tuple(_mtime(grid_dir / n) for n in (RESULTS, GRID))
    cells = [p for p in grid_dir.iterdir() if p.is_dir()]
    watched = [*cells, *(c / n for c in cells for n in (METRICS, manifest.MANIFEST, CELL, CHECKPOINT, EVAL))]
    watched += [p for c in cells for p in (*c.glob(f"{EVAL}/*.json"), *c.glob(f"{SAMPLES}/*/samples.jsonl"))]
    latest = max((_mtime(p) for p in watched), default=0.0)
    return (_mtime(grid_dir), *top, len(cells), latest)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


# --- a cell's state ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CellStatus:
    """A cell's stage states and its overall status, read from its folder (`status`)."""
    stages: dict[str, str]  # stage -> pending | running | done | failed | damaged
    status: str  # running | stopped | done | failed | pending (cell_status's rules)
    reason: str  # why, in words
    damaged: tuple[Damage, ...] = field(default=())  # outputs of done stages that are missing or changed

    @property
    def complete(self) -> bool:
        return all(state == "done" for state in self.stages.values())

    def shown(self) -> dict[str, str]:
        """The stage states as tables show them: a `running` stage whose process is gone is `stopped`."""
        stopped = self.status == "stopped"
        return {s: "stopped" if stopped and state == "running" else state for s, state in self.stages.items()}


def status(cell_dir: str | Path, found: dict | None = None, config: dict | None = None,
           now: float | None = None) -> CellStatus:
    """The one reading of a cell's state, for the plan table, the stages and the results browser.
    `found` and `config` are the cell's manifest and config.yaml when the caller has read them already."""
    cell_dir = Path(cell_dir)
    unreadable = None
    if found is None:
        found = manifest.read_or_empty(cell_dir)
        if not found and (cell_dir / manifest.MANIFEST).exists():
            unreadable = json_problem(cell_dir / manifest.MANIFEST)
    states, damaged = _stage_states(cell_dir, found, config)
    if unreadable:  # nothing vouches for the cell's outputs: a run writes a new manifest and redoes every stage
        damaged = [Damage("manifest", manifest.MANIFEST, unreadable)]
    overall, reason = _overall(cell_dir, found, states, damaged, now)
    return CellStatus(states, overall, reason, tuple(damaged))


def stage_states(cell_dir: str | Path, found: dict | None = None, config: dict | None = None) -> dict[str, str]:
    """{stage: pending|running|done|failed|damaged} (status(...).stages)."""
    cell_dir = Path(cell_dir)
    return _stage_states(cell_dir, manifest.read_or_empty(cell_dir) if found is None else found, config)[0]


def _stage_states(cell_dir: Path, found: dict, config: dict | None) -> tuple[dict[str, str], list[Damage]]:
    """From the manifest, checked against the folder: a done stage whose outputs are missing or changed
    is `damaged`; an evaluation done with other metrics than the config now names counts as pending;
    and a done stage after one that is not done counts as pending (it is redone after it)."""
    out = {s: manifest.stage_state(found, s) for s in STAGES}
    entries = found.get("stages", {}) if isinstance(found.get("stages"), dict) else {}
    if out["evaluate"] == "done":
        config = read_yaml_or_empty(cell_dir / CONFIG) if config is None else config
        wanted = config.get("eval", {}).get("metrics")
        if wanted is not None and entries["evaluate"].get("metrics") != wanted:
            out["evaluate"] = "pending"
    damaged: list[Damage] = []
    for stage in STAGES:
        if out[stage] == "done":
            problems = verify_outputs(cell_dir, stage, entries.get(stage, {}))
            if problems:
                out[stage] = "damaged"
                damaged += problems
    blocked = False
    for stage in STAGES:
        if blocked and out[stage] == "done":
            out[stage] = "pending"
        blocked = blocked or out[stage] != "done"
    return out, damaged


def damage_text(damaged: tuple[Damage, ...] | list[Damage]) -> str:
    """The first damaged output, the count of the others, and what a rerun does about them."""
    first = damaged[0]
    more = f" (and {len(damaged) - 1} more damaged outputs)" if len(damaged) > 1 else ""
    if first.stage not in STAGES:
        return f"{first.line()}{more}; a rerun of the grid writes a new one and redoes every stage"
    return f"{first.stage} output {first.line()}{more}; a rerun of the grid recomputes it"


# --- readers ------------------------------------------------------------------------------------

def read_json_or_empty(path: Path) -> dict:
    """A JSON object, or {} for a missing or torn file (a running job may be writing the folder)."""
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def read_yaml_or_empty(path: Path) -> dict:
    try:
        loaded = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def flatten(config: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their JSON text so they can be grouped on."""
    flat = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=str) if isinstance(value, list) else value
    return flat


def read_cell(cell_dir: Path, grid: str, current: set[str] | None = None) -> dict:
    """One row describing a cell: ids, axes, flattened config, each stage's state and the cell's
    status (cell_status; `stale` when `current`, the ids of the grid's planned cells, lacks it)."""
    info = read_json_or_empty(cell_dir / CELL)
    config = read_yaml_or_empty(cell_dir / CONFIG)
    state = status(cell_dir, config=config)
    cell_id = info.get("cell_id", cell_dir.name)
    is_current = None if current is None else cell_id in current
    row = {"grid": grid, "cell_id": cell_id, "path": str(cell_dir),
           "status": "stale" if is_current is False else state.status, "run_status": state.status,
           "status_reason": state.reason, "current": is_current}
    row.update({AXIS_PREFIX + k: v for k, v in info.get("axes", {}).items()})
    row.update({CONFIG_PREFIX + k: v for k, v in flatten(config).items()})
    row.update({"stage." + k: v for k, v in state.stages.items()})
    return row


# --- a cell's status ----------------------------------------------------------------------------

def cell_status(cell_dir: str | Path, found: dict | None = None, now: float | None = None) -> tuple[str, str]:
    """(status, reason) of status(cell_dir)."""
    state = status(cell_dir, found, now=now)
    return state.status, state.reason


def _overall(cell_dir: Path, found: dict, states: dict[str, str], damaged: list[Damage],
             now: float | None) -> tuple[str, str]:
    """(status, reason): `done` (every stage done), `failed` (a stage failed, or an output of a done
    stage is missing or changed: the reason names it), `running` (a stage is running and its process
    is alive), `stopped` (a stage says running but its process is gone: the manifest's host is this
    machine and its pid is dead or now another process; or, where the process cannot be checked, no
    file of the cell changed for STALL_SECONDS), or `pending` (nothing running, stages left: not
    started, or waiting for the next stage or a rerun)."""
    if damaged:
        return "failed", damage_text(damaged)
    if "failed" in states.values() or found.get("status") == "failed":
        failed = [s for s, state in states.items() if state == "failed"]
        errors = [str(found.get("stages", {}).get(s, {}).get("error") or "") for s in failed]
        error = next((e for e in errors if e), "")
        return "failed", f"stage {', '.join(failed) or '?'} failed" + (f": {error}" if error else "")
    if all(state == "done" for state in states.values()):
        return "done", "every stage done"
    running = [s for s, state in states.items() if state == "running"]
    if not running:
        return "pending", "stages left: " + ", ".join(s for s, state in states.items() if state != "done")
    stage = running[0]
    entry = found.get("stages", {}).get(stage, {})
    host, pid = entry.get("host"), entry.get("pid")
    if host == socket.gethostname() and isinstance(pid, int):
        if process_alive(pid, _epoch(entry.get("start"))):
            return "running", f"{stage}: process {pid} on {host} is alive"
        return "stopped", f"{stage} says running, but its process {pid} on {host} is gone"
    idle = (time.time() if now is None else now) - last_activity(cell_dir)
    where = f"on {host}" if host else "on an unrecorded host"
    if idle > STALL_SECONDS:
        return "stopped", f"{stage} says running {where}, but no file of the cell changed for {idle / 3600:.1f} h"
    return "running", f"{stage} running {where}; last file change {idle / 60:.0f} min ago"


def _epoch(stamp) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def last_activity(cell_dir: str | Path) -> float:
    """The newest modification time among the files a running stage writes."""
    cell_dir = Path(cell_dir)
    paths = [cell_dir / manifest.MANIFEST, cell_dir / TRAIN_LOG, cell_dir / CHECKPOINT, cell_dir / EVAL,
             cell_dir / METRICS, *cell_dir.glob(f"{SAMPLES}/*"), *cell_dir.glob(f"{SAMPLES}/*/*")]
    return max((_mtime(p) for p in paths), default=0.0)


# --- the grid's plan ----------------------------------------------------------------------------

def grid_record(grid_dir: str | Path) -> dict:
    """What grid.yaml says about how its cells were chosen: name, profile, plan_args (None when the
    folder predates them and no profile is recorded) and cell_ids (None when not recorded)."""
    grid_dir = Path(grid_dir)
    raw = read_yaml_or_empty(grid_dir / GRID)
    name = raw.get("name", grid_dir.name)
    args = raw.get(PLAN_ARGS)
    if not isinstance(args, list):
        args = [f"grid={name}", f"profile={raw['profile']}"] if raw.get("profile") else None
    ids = raw.get(CELL_IDS)
    return {"name": name, "profile": raw.get("profile"), PLAN_ARGS: args,
            CELL_IDS: [str(i) for i in ids] if isinstance(ids, list) else None}


def current_cell_ids(grid_dir: str | Path, record: dict | None = None) -> set[str] | None:
    """The ids of the grid's planned cells (grid.yaml's cell_ids), or None when grid.yaml does not
    record them (cannot tell: every cell counts as current)."""
    record = grid_record(grid_dir) if record is None else record
    return set(record[CELL_IDS]) if record[CELL_IDS] is not None else None


def write_grid_record(grid_dir: str | Path, grid: dict, plan_args: list[str], cell_ids: list[str]) -> Path:
    """grid.yaml: the resolved grid, the arguments that chose its cells and their ids (grid_record reads it)."""
    record = {**grid, PLAN_ARGS: [str(a) for a in plan_args], CELL_IDS: list(cell_ids)}
    with grid_lock(grid_dir):
        return atomic_write_text(Path(grid_dir) / GRID, yaml.safe_dump(record, sort_keys=False))


GRID_LOCK = ".grid.lock"


@contextlib.contextmanager
def grid_lock(grid_dir: str | Path):
    """Hold `<grid>/.grid.lock` (flock, waiting for it) while writing the grid's own files (grid.yaml,
    results.parquet): runs of the same grid, and SLURM's results job, take turns. Taking it removes
    the temporaries that killed writes of those files left: nobody else writes them meanwhile."""
    grid_dir = make_folder(grid_dir)
    with writing(grid_dir / GRID_LOCK, "locking"):
        fd = os.open(grid_dir / GRID_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        remove_stale_temporaries(grid_dir, [GRID, RESULTS])
        yield
    finally:
        os.close(fd)


def remove_shared_temporaries(grid_dir: str | Path) -> list[Path]:
    """The temporaries killed writes left in the grid's shared folders (its top level and cache/,
    and the runs folder's encoder store), where other processes may be writing: only those whose
    writer is known dead, or that are older than a day (gentron.io.remove_stale_temporaries)."""
    grid_dir = Path(grid_dir)
    removed = remove_stale_temporaries(grid_dir, shared=True)
    for folder in (grid_dir / "cache", grid_dir.parent / "encoders"):
        removed += remove_stale_temporaries(folder, recursive=True, shared=True)
    return removed


def rerun_command(record: dict, runs_dir: str | Path | None = None) -> str:
    """The command that plans the grid's recorded cells again and resumes the unfinished ones."""
    args = record[PLAN_ARGS] or [f"grid={record['name']}"]
    if runs_dir is not None and Path(runs_dir) != Path(DEFAULT_RUNS_DIR):
        args = [*args, f"runs_dir={runs_dir}"]
    return " ".join([RUN_COMMAND, *map(shlex.quote, args)])


def collect(grid_dir: str | Path, cell_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per (cell, metric) of every cell with readable metrics (a metrics.json that is what
    its record stage wrote), plus an `axis.<name>` column per axis and the cell's `status` and
    `status_reason` (status()). A current cell (in `cell_ids`, else in grid.yaml's plan) that failed
    or stopped without readable metrics is not left out: it has a row per metric of the others with
    no mean, and its status and reason say why (e.g. failed: record output metrics.json is damaged).
    Cells still pending or running have no rows yet."""
    grid_dir = Path(grid_dir)
    current = set(cell_ids) if cell_ids is not None else current_cell_ids(grid_dir)
    folders = sorted({*cell_dirs(grid_dir), *(p.parent for p in grid_dir.glob(f"*/{METRICS}"))}) \
        if grid_dir.is_dir() else []
    rows, without = [], []
    for cell_dir in folders:
        info = read_json_or_empty(cell_dir / CELL)
        cell_id = info.get("cell_id", cell_dir.name)
        if cell_ids is not None and cell_id not in cell_ids:
            continue
        axes = {AXIS_PREFIX + k: v for k, v in (info.get("axes") or {}).items()}
        state = status(cell_dir)
        shown = {"status": state.status, "status_reason": state.reason}
        metrics = {} if any(d.stage == "record" for d in state.damaged) else read_json_or_empty(cell_dir / METRICS)
        found = [(metric, value) for metric, value in metrics.items() if isinstance(value, dict) and "mean" in value]
        for metric, value in found:
            rows.append({"grid": grid_dir.name, "cell_id": cell_id, "metric": metric,
                         **{k: value.get(k) for k in ("mean", "ci_low", "ci_high", "n")}, **axes, **shown})
        if not found and (current is None or cell_id in current):
            if state.status == "done":  # every stage done, and still no score to show
                shown = {"status": "failed", "status_reason": f"{METRICS} holds no metric with a mean"}
            if shown["status"] in ("failed", "stopped"):
                without.append((cell_dir, cell_id, axes, shown))
    names = sorted({row["metric"] for row in rows})
    for cell_dir, cell_id, axes, shown in without:
        metrics = names or read_yaml_or_empty(cell_dir / CONFIG).get("eval", {}).get("metrics") or ["(none)"]
        rows += [{"grid": grid_dir.name, "cell_id": cell_id, "metric": metric, "mean": None, "ci_low": None,
                  "ci_high": None, "n": 0, **axes, **shown} for metric in metrics]
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
    # n_cells counts the cells with a mean: a cell without readable metrics (collect) pools nothing
    out = grouped.agg(mean=("mean", "mean"), sd=("mean", "std"), n_cells=("mean", "count"),
                      cell_low=("ci_low", "first"), cell_high=("ci_high", "first")).reset_index()
    half = stdtrit(np.maximum(out["n_cells"] - 1, 1), 0.975) * out["sd"] / np.sqrt(np.maximum(out["n_cells"], 1))
    single = out["n_cells"] < 2
    out["ci_low"] = np.where(single, out["cell_low"], out["mean"] - half)
    out["ci_high"] = np.where(single, out["cell_high"], out["mean"] + half)
    return out.drop(columns=["sd", "cell_low", "cell_high"])


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
