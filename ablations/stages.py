"""The four stages of a cell: train -> sample -> evaluate -> record.

Each stage is a module-level function of the cell folder (so SLURM jobs can unpickle it) and is
idempotent: a stage that is done (ablations.runfolder.status: marked done in manifest.json, its
outputs still as recorded) is skipped; a partial one is redone, and its work resumes (training from
checkpoints/last.pt, sampling skips the images it already wrote, evaluation skips the metrics already
in eval/). A stage whose outputs are missing or changed is redone with one log line per file naming
it and why: the damaged files are removed first (a damaged checkpoint is moved aside to
last.pt.corrupt, so training resumes from the checkpoint before it). Whenever a stage starts, the
outputs of the stages after it are removed and those stages redone: they were made from what it is
about to replace. Cells whose configs differ only in sampling or evaluation (same `train_key`) train
once; the others link the checkpoint.

Sample and evaluate can run in K shards (a SLURM profile's `sample.shards`, `evaluate.shards`): K array
tasks per cell run sample_shard / evaluate_shard (shard k of every prompt set, or of every metric into
eval/parts/<metric>/<k>-of-<K>.json) without touching the manifest, then the stage function itself, given
K, runs whatever shard is still missing, merges, and marks the stage done. launcher=local passes K to
the stage function alone, which then draws and scores the K shards one after another.

The process that holds a cell (cell_lock) removes what killed writes left in its folder first.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from ablations import manifest, outputs, runfolder
from ablations.baselines import mark_pretrained
from ablations.grid import Cell, metric_prompt_set
from ablations.identity import train_key
from ablations.registries import registry
from ablations.outputs import CHECKPOINT, EVAL, IMAGES, METRICS, SAMPLES, Damage
from ablations.runfolder import CELL, CONFIG, STAGES, TRAIN_LOG
from gentron.config import CellConfig, load_config, save_config, to_dict
from gentron.errors import one_line
from ablations.prompt_sets import prompt_records, sample_evaluation
from gentron.io import (StorageError, atomic_link_or_copy, atomic_write_json, atomic_write_text, read_json,
                        remove_stale_temporaries, storage_error, writing)

log = logging.getLogger(__name__)


# --- cell folders -------------------------------------------------------------------------------

def prepare(cell: Cell, grid_dir: Path) -> Path:
    """Write config.yaml, cell.json and a manifest for a planned cell (rewritten only on change)."""
    cell_dir = grid_dir / cell.cell_id
    # a baseline (a pretrained pipeline, ablations.baselines) trains nothing and shares no checkpoint
    info = {**cell.info(), "train_key": f"baseline-{cell.cell_id}" if cell.baseline else train_key(cell.config)}
    remove_stale_temporaries(cell_dir, shared=True)  # of killed writes here; the rest when the cell is taken
    write_config(cell_dir, cell.config)
    _write_if_changed(cell_dir / CELL, json.dumps(info, indent=2, sort_keys=True) + "\n")
    manifest.create(cell_dir, info, cell.config)
    if cell.baseline:
        mark_pretrained(cell_dir, info)
    return cell_dir


def write_config(cell_dir: Path, config: CellConfig) -> None:
    """config.yaml, the record of the cell's config that every stage (and gentron.train's resume check)
    reads: written here when the cell is planned into its folder, and only when it changed."""
    path = cell_dir / CONFIG
    if not path.exists() or runfolder.read_yaml_or_empty(path) != to_dict(config):
        save_config(config, path)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8", errors="replace") != text:
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


def _run_stage(cell_dir: Path, stage: str, body, config: CellConfig) -> None:
    if states(cell_dir)[stage] == "done":
        log.debug("%s %s: done, skipped", cell_dir.name, stage)
        return
    if _rank() != 0:
        if stage == "train":
            body()
        return
    with cell_lock(cell_dir):
        state = runfolder.status(cell_dir)
        if state.stages[stage] == "done":  # finished by the process that held the cell before
            return
        _remove_damaged(cell_dir, stage, [d for d in state.damaged if d.stage == stage])
        started = begin_stage(cell_dir, stage, config)
        try:
            extra = body() or {}
            recorded = outputs.record_outputs(cell_dir, stage, to_dict(config))
        except BaseException as error:
            disk = _disk_problem(error, cell_dir)
            try:
                manifest.finish(cell_dir, stage, started, "failed", STAGES, error=one_line(disk or error)[:1000])
            except StorageError:
                pass  # the disk that failed the stage takes no record of it either: it stays `running`
            if disk is not None and disk is not error:
                raise disk from error
            raise
        manifest.finish(cell_dir, stage, started, "done", STAGES, outputs=recorded, **extra)


def _disk_problem(error: BaseException, cell_dir: Path) -> StorageError | None:
    """A full, over-quota or read-only disk met by a write outside gentron.io (an appended log, a
    library's own file) as the StorageError that gentron.io raises for its own writes."""
    if isinstance(error, StorageError):
        return error
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return storage_error(error, error.filename or cell_dir)
    return None


def begin_stage(cell_dir: Path, stage: str, config: CellConfig) -> float:
    """Mark `stage` running, and reset the stages after it: their entries turn pending and their
    outputs are removed (they were made from the outputs this stage is about to replace)."""
    later = STAGES[STAGES.index(stage) + 1:]
    started = manifest.begin(cell_dir, stage, later)
    for after in later:
        for rel in outputs.stage_output_paths(cell_dir, after, to_dict(config)):
            _remove_output(cell_dir, rel, after)
    return started


def finish_stage(cell_dir: Path, stage: str, started: float, config: CellConfig, **extra) -> None:
    """Mark `stage` done, with the record of its outputs that runfolder.status checks them against."""
    recorded = outputs.record_outputs(cell_dir, stage, to_dict(config))
    manifest.finish(cell_dir, stage, started, "done", STAGES, outputs=recorded, **extra)


def _remove_output(cell_dir: Path, rel: str, stage: str) -> None:
    """Remove one output of a stage that is redone (the whole eval/ folder for evaluate's outputs)."""
    if rel.endswith("/" + IMAGES):
        return  # the sample folder goes with its samples.jsonl, below
    path = cell_dir / rel
    if rel.endswith("/samples.jsonl"):
        path = path.parent
    elif stage == "evaluate":
        path = cell_dir / EVAL
    with writing(path, "removing"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _remove_damaged(cell_dir: Path, stage: str, damaged: list[Damage]) -> None:
    """Log each damaged output of `stage` (the file and why) and remove it, so the stage makes it again:
    a damaged checkpoint is moved aside to last.pt.corrupt (training resumes from the one before it);
    a missing image is drawn again; of a sample folder whose images no longer add up, the images that
    no longer decode are removed (and drawn again), or the whole folder when every image still decodes."""
    for damage in damaged:
        after = ", and the stages after it" if stage != STAGES[-1] else ""
        log.warning("cell %s: %s; %s runs again%s", cell_dir.name, damage.line(), stage, after)
        path = cell_dir / damage.path
        with writing(path, "removing"):
            if damage.path == CHECKPOINT.as_posix():
                if path.exists():
                    os.replace(path, path.with_name(path.name + ".corrupt"))
            elif damage.path.startswith(SAMPLES + "/") and not damage.path.endswith("samples.jsonl"):
                folder = cell_dir / SAMPLES / Path(damage.path).relative_to(SAMPLES).parts[0]
                if "is missing" not in damage.why and not _remove_unreadable_images(folder):
                    shutil.rmtree(folder, ignore_errors=True)
            elif path.is_file():
                path.unlink()


def _remove_unreadable_images(folder: Path) -> int:
    """Delete the images of a sample folder that no longer decode; how many."""
    from PIL import Image

    removed = 0
    for name, _ in outputs.listed_images(folder):
        path = folder / name
        try:
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                image.load()
        except FileNotFoundError:
            continue
        except Exception:  # noqa: BLE001 - any decoder error means the file is not the image written
            path.unlink()
            removed += 1
    return removed


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
    with writing(key / LOCK, "locking"):
        fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown pid"
        os.close(fd)
        raise CellBusy(f"cell {key.name} is being run by another process ({holder}); not started here: let that "
                       f"run finish, or stop it and run again to resume the cell") from None
    try:
        # the holder's identity, written in place: the lock lives on this file's inode, which a rename would replace
        with writing(key / LOCK, "locking"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        remove_stale_temporaries(key, recursive=True)  # what killed writes of the cell left: it is ours now
    except BaseException:
        os.close(fd)
        raise
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
    if info.get("baseline"):
        return mark_pretrained(cell_dir, info)
    _run_stage(cell_dir, "train", lambda: _train(cell_dir, config, info), config)


def _train(cell_dir: Path, config: dict, info: dict) -> dict:
    source = _trained_sibling(cell_dir, info)
    if source is not None:
        _adopt(source, cell_dir)
        return {"reused_from": source.name}
    from gentron.train import train

    ensure_encoders(info)
    import eval.judge  # scores train.eval_every's held-out prompts (gentron.validation)

    result = train(config, cell_dir, judge=eval.judge, evaluation=sample_evaluation(config))
    if _rank() == 0 and result.stopped:
        raise RuntimeError(f"{cell_dir.name}: training stopped at step {result.step} of {result.steps} "
                           "(interrupted); rerun the grid to resume from checkpoints/last.pt")
    for sibling in _siblings(cell_dir, info):
        if states(sibling)["train"] != "done" and _rank() == 0:
            try:
                with cell_lock(sibling):
                    if states(sibling)["train"] == "done":
                        continue
                    sibling_config = load_config(sibling / CONFIG)
                    started = begin_stage(sibling, "train", sibling_config)
                    _adopt(cell_dir, sibling)
                    finish_stage(sibling, "train", started, sibling_config, reused_from=cell_dir.name)
            except CellBusy:
                continue  # its own process adopts the checkpoint when it gets to its train stage
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
    atomic_link_or_copy(source / CHECKPOINT, target / CHECKPOINT)
    if (source / TRAIN_LOG).exists():
        atomic_write_text(target / TRAIN_LOG, (source / TRAIN_LOG).read_text(encoding="utf-8"))


def sample_stage(cell_dir: str, shards: int = 1) -> None:
    """The sample stage: every prompt set's folder, drawn in `shards` parts one after another (each part
    drawn already, by a sample_shard task, is skipped) and merged. Done only once every part is merged."""
    cell_dir, config, _ = load(cell_dir)
    _run_stage(cell_dir, "sample", lambda: _sample(cell_dir, config, shards), config)


def sample_shard(cell_dir: str, k: int, shards: int) -> None:
    """Shard k of `shards` of every prompt set of the cell (one array task of a sharded sample stage; a
    stopped one resumes at the image). Leaves the manifest alone: sample_stage merges and marks it done.
    Runs side by side with the cell's other shards, so it holds no cell lock."""
    cell_dir, config, _ = load(cell_dir)
    if _rank() != 0:
        return
    found = states(cell_dir)  # read once: each reading checks the recorded outputs' digests
    if found["sample"] == "done":
        return
    if found["train"] != "done":
        raise RuntimeError(f"cell {cell_dir.name}: not trained yet; run the train stage before sampling")
    for name in config.sample.prompt_sets:
        _draw(cell_dir, config, name, (k, shards))


def _draw(cell_dir: Path, config: CellConfig, name: str, shard: tuple[int, int] | None) -> int:
    """Draw (shard k of K of) prompt set `name` into samples/<name>/; how many prompts the set has."""
    from gentron.generate import generate

    records = prompt_records(name, config.sample)
    # `noise: per_prompt` where a set draws one image per prompt from one seed (COCO-30K)
    noise = registry("prompt_sets")[name].get("noise", "seed")
    shard_arg = {"shard": shard} if shard is not None else {}
    baseline = read_json(cell_dir / CELL).get("baseline")  # a pretrained diffusers pipeline (eval.baseline)
    if baseline:
        from eval.baseline import generate_baseline

        generate_baseline(baseline, config, records, cell_dir / SAMPLES / name, noise=noise, **shard_arg)
        return len(records)
    generate(config, cell_dir / CHECKPOINT, records, cell_dir / SAMPLES / name, noise=noise, **shard_arg)
    return len(records)


def _sample(cell_dir: Path, config: CellConfig, shards: int = 1) -> dict:
    from gentron.generate import merge_shards

    counts = {}
    for name in config.sample.prompt_sets:
        try:
            if shards == 1:
                counts[name] = _draw(cell_dir, config, name, None)
                continue
            for k in range(shards):  # a shard already drawn is a no-op
                counts[name] = _draw(cell_dir, config, name, (k, shards))
            merge_shards(cell_dir / SAMPLES / name)
        except Exception as error:
            problem = None if read_json(cell_dir / CELL).get("baseline") else _checkpoint_problem(cell_dir / CHECKPOINT)
            if problem is None:
                raise
            _redo_training(cell_dir, problem)
            raise TrainingRedone(f"cell {cell_dir.name}: {problem}; train runs again") from error
    return {"samples": counts, **({"shards": shards} if shards > 1 else {})}


class TrainingRedone(RuntimeError):
    """The trained checkpoint no longer loads (its checksum fails: a checkpoint too big to be checked by
    content at every status): it was moved aside and the train stage reset, to run again."""


def _checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` is damaged (unreadable, or its checksum fails), or None. A checkpoint
    of a diverged run (non-finite weights) is not damaged: training it again would diverge again."""
    from gentron.checkpoint import PoisonedCheckpoint, load_checkpoint

    try:
        load_checkpoint(path)
    except PoisonedCheckpoint:
        return None
    except (ValueError, FileNotFoundError) as e:
        return str(e).split(";")[0]
    return None


def _redo_training(cell_dir: Path, problem: str) -> None:
    """Move a damaged checkpoint aside and reset the train stage (training resumes from the checkpoint
    kept before it), logging the file and why."""
    log.warning("cell %s: %s; train runs again, and the stages after it", cell_dir.name, problem)
    path = cell_dir / CHECKPOINT
    with writing(path, "removing"):
        if path.exists():
            os.replace(path, path.with_name(path.name + ".corrupt"))
    found = manifest.read(cell_dir)
    entry = found.setdefault("stages", {}).setdefault("train", {})
    entry.pop("outputs", None)
    entry.update(status="pending", reset_by=f"{problem} (found when sampling)")
    manifest.write(cell_dir, found)


def evaluate_stage(cell_dir: str, shards: int = 1) -> None:
    """The evaluate stage: every metric scored in `shards` parts one after another (each part scored
    already, by an evaluate_shard task, is read back) and merged into eval/<metric>.json."""
    cell_dir, config, _ = load(cell_dir)
    _run_stage(cell_dir, "evaluate", lambda: _evaluate(cell_dir, config, shards), config)


PARTS = "parts"  # eval/parts/<metric>/<k>-of-<K>.json: one shard's partial result


def part_path(cell_dir: Path, metric: str, k: int, shards: int) -> Path:
    return Path(cell_dir) / EVAL / PARTS / metric / f"{k}-of-{shards}.json"


def evaluate_shard(cell_dir: str, k: int, shards: int) -> None:
    """Shard k of `shards` of every metric of the cell into eval/parts/ (one array task of a sharded
    evaluate stage). Leaves the manifest alone: evaluate_stage merges the parts and marks it done.
    Runs side by side with the cell's other shards, so it holds no cell lock."""
    cell_dir, config, _ = load(cell_dir)
    if _rank() != 0:
        return
    found = states(cell_dir)
    if found["evaluate"] == "done":
        return
    if found["sample"] != "done":
        raise RuntimeError(f"cell {cell_dir.name}: its samples are not merged yet; run the sample stage first")
    for name in config.eval.metrics:
        if shardable(name) and not _scored(cell_dir / EVAL / f"{name}.json"):
            _score(cell_dir, config, name, (k, shards))


def shardable(metric: str) -> bool:
    """Whether the metric's evaluator scores a shard of the samples (its module has `merge`); the others run
    whole, once, in the evaluate stage after the shards."""
    return hasattr(importlib.import_module(registry("metrics")[metric]["module"]), "merge")


def _scored(out: Path) -> bool:
    return out.exists() and outputs.json_problem(out) is None  # kept from an interrupted run of this stage


def _score(cell_dir: Path, config: CellConfig, name: str, shard: tuple[int, int] | None) -> dict:
    """Metric `name` of the cell's samples, whole (shard None) or shard k of K written to its part file."""
    spec = registry("metrics")[name]
    samples = metric_prompt_set(name, config.sample.prompt_sets)
    module = importlib.import_module(spec["module"])
    extra = {} if shard is None else {"shard": shard, "out": part_path(cell_dir, name, *shard)}
    return module.evaluate(cell_dir / SAMPLES / samples, **spec.get("options", {}), **extra)


def _evaluate(cell_dir: Path, config: CellConfig, shards: int = 1) -> dict:
    from eval.common import write_result

    for name in config.eval.metrics:
        out = cell_dir / EVAL / f"{name}.json"
        if _scored(out):
            continue
        if shards == 1 or not shardable(name):
            write_result(out, _score(cell_dir, config, name, None))
            continue
        for k in range(shards):  # a part scored already (same samples, same options) is read back
            _score(cell_dir, config, name, (k, shards))
        module = importlib.import_module(registry("metrics")[name]["module"])
        write_result(out, module.merge([part_path(cell_dir, name, k, shards) for k in range(shards)]))
    return {"metrics": config.eval.metrics, **({"shards": shards} if shards > 1 else {})}


def record_stage(cell_dir: str) -> None:
    cell_dir, config, _ = load(cell_dir)
    _run_stage(cell_dir, "record", lambda: _record(cell_dir, config), config)


def _record(cell_dir: Path, config: CellConfig) -> dict:
    """metrics.json: every evaluator's aggregate as '<metric>/<score>' -> {mean, ci_low, ci_high, n}."""
    flat = {}
    for name in config.eval.metrics:
        for score, value in read_json(cell_dir / "eval" / f"{name}.json")["aggregate"].items():
            flat[f"{name}/{score}"] = value
    atomic_write_json(cell_dir / METRICS, flat)
    return {}


STAGE_FUNCTIONS = {"train": train_stage, "sample": sample_stage, "evaluate": evaluate_stage, "record": record_stage}
SHARD_FUNCTIONS = {"sample": sample_shard, "evaluate": evaluate_shard}  # one array task of a sharded stage


def _run_stages(cell_dir: str, shards: dict[str, int]) -> None:
    for stage in STAGES:
        if shards.get(stage, 1) > 1:
            STAGE_FUNCTIONS[stage](cell_dir, shards[stage])
        else:
            STAGE_FUNCTIONS[stage](cell_dir)


def run_cell(cell_dir: str, shards: dict[str, int] | None = None) -> str:
    """All stages of one cell, in order (each skipped when done), holding the cell throughout
    (cell_lock: CellBusy if another process holds it). `shards` ({"sample": K, "evaluate": K}) draws and
    scores those stages in K parts one after another, as K array tasks would. Returns the cell folder."""
    if is_complete(cell_dir):
        return cell_dir
    shards = dict(shards or {})
    with cell_lock(cell_dir):  # removes what killed writes left in the cell
        try:
            _run_stages(cell_dir, shards)
        except TrainingRedone:  # the checkpoint was found damaged when sampling: train again, once
            _run_stages(cell_dir, shards)
        # and what the stages left: a checkpoint's step file kept by a hard link onto itself leaves its link
        remove_stale_temporaries(cell_dir, recursive=True)
    return cell_dir


def run_cells(cell_dirs: list[str], shards: dict[str, int] | None = None) -> list[str]:
    """Cells that share a train key, one after another (the first trains, the others link)."""
    return [run_cell(d, shards) for d in cell_dirs]
