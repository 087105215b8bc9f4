"""The four stages of a cell: train -> sample -> evaluate -> record.

Each stage is a module-level function of the cell folder (so SLURM jobs can unpickle it) and is
idempotent: a stage marked done in manifest.json is skipped; a partial one is redone, and its work
resumes (training from checkpoints/last.pt, sampling skips the images it already wrote, evaluation
skips the metrics already in eval/). Cells whose configs differ only in sampling or evaluation
(same `train_key`) train once; the others link the checkpoint.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import importlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from ablations import manifest, runfolder
from ablations.grid import Cell, metric_prompt_set
from ablations.identity import train_key
from ablations.registries import registry
from ablations.runfolder import CELL, CHECKPOINT, CONFIG, METRICS, STAGES, TRAIN_LOG
from gentron.config import CellConfig, SampleConfig, load_config, save_config, to_dict
from gentron.generate import prompt_set, read_prompt_file
from gentron.io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)


# --- cell folders -------------------------------------------------------------------------------

def prepare(cell: Cell, grid_dir: Path) -> Path:
    """Write config.yaml, cell.json and a manifest for a planned cell (rewritten only on change)."""
    cell_dir = grid_dir / cell.cell_id
    info = {**cell.info(), "train_key": train_key(cell.config)}
    write_config(cell_dir, cell.config)
    _write_if_changed(cell_dir / CELL, json.dumps(info, indent=2, sort_keys=True) + "\n")
    manifest.create(cell_dir, info, cell.config)
    return cell_dir


def write_config(cell_dir: Path, config: CellConfig) -> None:
    """config.yaml, the record of the cell's config that every stage (and gentron.train's resume check)
    reads: written here when the cell is planned into its folder, and only when it changed."""
    path = cell_dir / CONFIG
    if not path.exists() or runfolder.read_yaml_or_empty(path) != to_dict(config):
        save_config(config, path)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def load(cell_dir: str | Path) -> tuple[Path, CellConfig, dict]:
    cell_dir = Path(cell_dir)
    return cell_dir, load_config(cell_dir / CONFIG), read_json(cell_dir / CELL)


def states(cell_dir: str | Path) -> dict[str, str]:
    """{stage: pending|running|done|failed} (ablations.runfolder.status)."""
    return runfolder.status(cell_dir).stages


def is_complete(cell_dir: str | Path) -> bool:
    return runfolder.status(cell_dir).complete


def _rank() -> int:
    """This process's rank in a multi-task job; only rank 0 writes manifests and runs non-train stages."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def _run_stage(cell_dir: Path, stage: str, body) -> None:
    if states(cell_dir)[stage] == "done":
        log.debug("%s %s: done, skipped", cell_dir.name, stage)
        return
    if _rank() != 0:
        if stage == "train":
            body()
        return
    with cell_lock(cell_dir):
        if states(cell_dir)[stage] == "done":  # finished by the process that held the cell before
            return
        started = manifest.begin(cell_dir, stage)
        try:
            extra = body() or {}
        except BaseException:
            manifest.finish(cell_dir, stage, started, "failed", STAGES)
            raise
        manifest.finish(cell_dir, stage, started, "done", STAGES, **extra)


# --- one process per cell -----------------------------------------------------------------------

LOCK = ".lock"
_held: dict[Path, list[int]] = {}  # cell folder -> [file descriptor, depth] of the locks this process holds


class CellBusy(RuntimeError):
    """Another process (another run of the grid, or a SLURM job) is running the cell."""


@contextlib.contextmanager
def cell_lock(cell_dir: str | Path):
    """Hold `<cell>/.lock` (flock) while this process works on the cell: another process that asks
    for it meanwhile gets CellBusy instead of running the cell a second time. The kernel releases the
    lock when its holder ends, kill -9 included, so a dead run never blocks a rerun. Nested holds in
    one process are counted. The file holds the holder's pid and host, for the message."""
    key = Path(cell_dir).resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown pid"
        os.close(fd)
        raise CellBusy(f"cell {key.name} is being run by another process ({holder}); not started here: let that "
                       f"run finish, or stop it and run again to resume the cell") from None
    # the holder's identity, written in place: the lock lives on this file's inode, which a rename would replace
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(),
              0)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            del _held[key]
            os.close(fd)  # releases the lock


# --- the stages ---------------------------------------------------------------------------------

def train_stage(cell_dir: str) -> None:
    cell_dir, config, info = load(cell_dir)
    _run_stage(cell_dir, "train", lambda: _train(cell_dir, config, info))


def _train(cell_dir: Path, config: dict, info: dict) -> dict:
    source = _trained_sibling(cell_dir, info)
    if source is not None:
        _adopt(source, cell_dir)
        return {"reused_from": source.name}
    from gentron.train import train

    ensure_encoders(info)
    result = train(config, cell_dir)
    if _rank() == 0 and result.stopped:
        raise RuntimeError(f"{cell_dir.name}: training stopped at step {result.step} of {result.steps} "
                           "(interrupted); rerun the grid to resume from checkpoints/last.pt")
    for sibling in _siblings(cell_dir, info):
        if states(sibling)["train"] != "done" and _rank() == 0:
            started = manifest.begin(sibling, "train")
            _adopt(cell_dir, sibling)
            manifest.finish(sibling, "train", started, "done", STAGES, reused_from=cell_dir.name)
    return {"steps": result.step}


def ensure_encoders(info: dict) -> None:
    """Train the cell's trained text encoders (cell.json `encoders`: folder -> recipe) that are not
    in their store yet; each is trained once and reused by every cell and grid that names it."""
    from gentron.text.pretrain import ensure_trained

    for folder, recipe in (info.get("encoders") or {}).items():
        ensure_trained(recipe, Path(folder).parent)


def _siblings(cell_dir: Path, info: dict) -> list[Path]:
    """Other cells of the grid that train the same model."""
    found = []
    for other in sorted(cell_dir.parent.glob(f"*/{CELL}")):
        if other.parent != cell_dir and read_json(other).get("train_key") == info["train_key"]:
            found.append(other.parent)
    return found


def _trained_sibling(cell_dir: Path, info: dict) -> Path | None:
    return next((s for s in _siblings(cell_dir, info) if states(s)["train"] == "done"), None)


def _adopt(source: Path, target: Path) -> None:
    """Hard-link source's final checkpoint into target (copy across filesystems), atomically."""
    dst = target / CHECKPOINT
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source / CHECKPOINT, tmp)
    except OSError:
        shutil.copyfile(source / CHECKPOINT, tmp)
    os.replace(tmp, dst)
    if (source / TRAIN_LOG).exists():
        atomic_write_text(target / TRAIN_LOG, (source / TRAIN_LOG).read_text(encoding="utf-8"))


def sample_stage(cell_dir: str) -> None:
    cell_dir, config, _ = load(cell_dir)
    _run_stage(cell_dir, "sample", lambda: _sample(cell_dir, config))


def _sample(cell_dir: Path, config: CellConfig) -> dict:
    from gentron.generate import generate

    counts = {}
    for name in config.sample.prompt_sets:
        records = prompt_records(name, config.sample)
        generate(config, cell_dir / CHECKPOINT, records, cell_dir / "samples" / name)
        counts[name] = len(records)
    return {"samples": counts}


def prompt_records(name: str, sample: SampleConfig) -> list[dict]:
    """The fixed prompts x seeds of a named prompt set (ablations/conf/prompt_sets.yaml)."""
    spec = registry("prompt_sets")[name]
    per_prompt = spec.get("images_per_prompt") or sample.images_per_prompt
    if spec["kind"] == "compshapes":
        records = prompt_set(spec["set"], sample.seeds, per_prompt)
        limit = spec.get("per_category")
        return [r for r in records if limit is None or r["prompt_id"] < limit]
    files = sorted(glob.glob(spec["glob"]))
    if not files:
        raise FileNotFoundError(f"prompt set '{name}': no files match {spec['glob']} "
                                "(set the environment variable named in ablations/conf/prompt_sets.yaml)")
    return [record for path in files for record in read_prompt_file(Path(path), sample.seeds, per_prompt)]


def evaluate_stage(cell_dir: str) -> None:
    cell_dir, config, _ = load(cell_dir)
    _run_stage(cell_dir, "evaluate", lambda: _evaluate(cell_dir, config))


def _evaluate(cell_dir: Path, config: CellConfig) -> dict:
    from eval.common import write_result

    metrics = registry("metrics")
    for name in config.eval.metrics:
        out = cell_dir / "eval" / f"{name}.json"
        if out.exists():
            continue
        samples = metric_prompt_set(name, config.sample.prompt_sets)
        module = importlib.import_module(metrics[name]["module"])
        write_result(out, module.evaluate(cell_dir / "samples" / samples, **metrics[name].get("options", {})))
    return {"metrics": config.eval.metrics}


def record_stage(cell_dir: str) -> None:
    cell_dir, config, _ = load(cell_dir)
    _run_stage(cell_dir, "record", lambda: _record(cell_dir, config))


def _record(cell_dir: Path, config: CellConfig) -> dict:
    """metrics.json: every evaluator's aggregate as '<metric>/<score>' -> {mean, ci_low, ci_high, n}."""
    flat = {}
    for name in config.eval.metrics:
        for score, value in read_json(cell_dir / "eval" / f"{name}.json")["aggregate"].items():
            flat[f"{name}/{score}"] = value
    atomic_write_json(cell_dir / METRICS, flat)
    return {}


STAGE_FUNCTIONS = {"train": train_stage, "sample": sample_stage, "evaluate": evaluate_stage, "record": record_stage}


def run_cell(cell_dir: str) -> str:
    """All stages of one cell, in order (each skipped when done), holding the cell throughout
    (cell_lock: CellBusy if another process holds it). Returns the cell folder."""
    if is_complete(cell_dir):
        return cell_dir
    with cell_lock(cell_dir):
        for stage in STAGES:
            STAGE_FUNCTIONS[stage](cell_dir)
    return cell_dir


def run_cells(cell_dirs: list[str]) -> list[str]:
    """Cells that share a train key, one after another (the first trains, the others link)."""
    return [run_cell(d) for d in cell_dirs]
