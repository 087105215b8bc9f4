"""This machine's step costs, measured by the dry run: what `ablations.costs.estimate` reads unless
`measure=false` (then the stored ablations/conf/step_costs.yaml).

For each distinct cost key of the plan's cells (ablations.costs: model shape, conditioning, encoders,
image/video, batch, sampler) the dry run runs the real code once, small, in a temporary folder:

    train    gentron.train.train for WARMUP_STEPS + TIMED_STEPS steps (log_every=1) on a few items of
             the cell's data; a step's cost is its train_log.jsonl time after the warm-up steps
    sample   gentron.generate.generate of one and of two batches of SAMPLE_IMAGES images (SAMPLE_CLIPS
             clips) from that run's checkpoint, at the cell's sampler, steps and guidance; a sample's cost
             is the second batch's time over its samples (loading the model is not per sample), plus
             the CompShapes judge's scoring of one (eval.judge on the two batches)
    fixed    what a run and a sampling pass cost whatever their length (`train/<key>`: the run's time
             beyond its steps; `sample/<key>`: the first batch's beyond its samples): building the
             model and data, loading checkpoints and encoders, writing checkpoints
    data     DATA_ITEMS CompShapes images (and clips) drawn and rendered
    encoders TIMED_STEPS steps of each trained text encoder's recipe (gentron.text.pretrain's loss and
             optimizer), plus its share of drawing the recipe's image pairs

A trained text encoder the store does not hold yet is stood in for by an untrained one of its recipe
(the same architecture, so the same cost); `train.init_from` is dropped (weights do not change the cost).
Costs are CPU seconds of one thread, as the file's: the torch threads a cell gets when the local
runner puts one cell on each core (thread CPU time; the training log's wall times scaled by the
thread's share of a core while it trained), so waiting for other processes does not inflate them.
What the current load does is applied to the estimate afterwards (`competing`, `load_factor`).

Results are cached per machine (CPU model, cores) and code version (a hash of the gentron/ sources
and of this file) in <cache>/step_costs/<cpu>-<cores>c-<version>.yaml, where <cache> is $GENTRON_CACHE, else
$XDG_CACHE_HOME/gentron, else ~/.cache/gentron: a second dry run on the same machine and code measures
nothing. $GENTRON_MEASURE=0 turns measuring off for every dry run (the test suite does).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from ablations import costs as sc
from ablations.command_line import local_workers
from ablations.grid import Cell, Plan, spec_folder
from gentron.config import load_config, to_dict
from gentron.io import atomic_write_text

log = logging.getLogger(__name__)

WARMUP_STEPS, TIMED_STEPS = 2, 6  # training steps run, then timed, per train key
SAMPLE_IMAGES, SAMPLE_CLIPS = 16, 2  # a sampling batch per sample key (per-sample cost falls with the batch)
DATA_ITEMS = 40  # CompShapes items rendered per data key
GENTRON_SOURCES = Path(__file__).resolve().parents[1] / "gentron"
MEASURE_ENV = "GENTRON_MEASURE"
SECTIONS = ("train", "sample", "data", "encoders", "fixed")
REMEASURE_LOAD = 1.0  # a cache measured at a load average this much above the current one is measured again


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int

    def describe(self) -> str:
        return f"{self.cpu}, {self.cores} cores"


def this_machine() -> Machine:
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return Machine(cpu or platform.processor() or platform.machine() or "unknown CPU", os.cpu_count() or 1)


def code_version() -> str:
    """12 hex digits of the sha1 of every gentron/ source file and of this one (paths and bytes): a
    changed model, trainer, sampler or way of measuring measures again."""
    digest = hashlib.sha1()
    for path in [*sorted(GENTRON_SOURCES.rglob("*.py")), Path(__file__).resolve()]:
        digest.update(str(path.relative_to(GENTRON_SOURCES.parent)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def cache_dir() -> Path:
    if os.environ.get("GENTRON_CACHE"):
        return Path(os.environ["GENTRON_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gentron"


def cache_path(machine: Machine | None = None, version: str | None = None) -> Path:
    machine = machine or this_machine()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", machine.cpu).strip("-").lower()[:60]
    return cache_dir() / "step_costs" / f"{slug}-{machine.cores}c-{version or code_version()}.yaml"


def enabled(p: Plan) -> bool:
    """measure=true (the default) and $GENTRON_MEASURE not 0/false."""
    return bool(p.run.measure) and os.environ.get(MEASURE_ENV, "1").lower() not in ("0", "false", "no")


def load_factor(workers: int, cores: int, others: float) -> float:
    """How much longer the cells take beside `others` runnable processes: `workers` cells at one core
    each, sharing `cores` with them, get cores/(workers+others) of a core each once the cores are
    oversubscribed."""
    return max(1.0, (min(workers, cores) + others) / cores)


def core_share(seconds: float = 0.3) -> float:
    """The share of one core a busy thread of this process gets now: CPU time over wall time of a spin."""
    cpu, wall = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall < seconds:
        pass
    return min(1.0, (time.process_time() - cpu) / (time.perf_counter() - wall))


def competing(cores: int, load: float, share: float) -> float:
    """Runnable processes competing with the cells for the cores. A busy thread that gets less than a
    core says how many (cores / share - 1); one that gets a whole core leaves at most cores - 1 others
    running, however high the load average (inside a container it counts the host's processes)."""
    return cores / share - 1 if share < 0.95 else min(load, cores - 1)


# --- the cost keys of a plan, measured ----------------------------------------------------------

def measurable(cell: Cell) -> bool:
    """CPU-sized cells on CompShapes that train (other data, paper-sized models and pretrained
    pipelines' baselines are not run here)."""
    return (not cell.baseline and cell.config.data.kind == "compshapes"
            and sc.counts(cell).params <= sc.CPU_PARAM_LIMIT)


def plan_costs(p: Plan, path: Path | None = None) -> dict:
    """The step-cost table (step_costs.yaml's structure) of the plan's cost keys: from the cache where
    this machine and code version measured them, else measured now (and cached). Keys that cannot be
    measured here are left out (the estimate lists them as not measured)."""
    import torch

    path = path or cache_path()
    machine = this_machine()
    cached, load = _read(path), os.getloadavg()[0]
    if cached.get("load_average", 0.0) > load + REMEASURE_LOAD:
        cached = {}  # measured on a busier machine (thread times inflate with load): measure again now
    table = {s: dict(cached.get(s) or {}) for s in SECTIONS}
    todo = _todo(p, table)
    if todo:
        workers = local_workers(p.run)
        threads = max(1, torch.get_num_threads() // workers)
        log.info("measuring %d step costs of this machine (%s, %d thread%s each; cached in %s)", len(todo),
                 machine.describe(), threads, "s" if threads > 1 else "", path)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with tempfile.TemporaryDirectory(prefix="gentron-measure-") as work:
                for what, run in todo.items():
                    try:
                        for measured_section, values in run(Path(work)).items():
                            table[measured_section].update(values)
                    except Exception as e:  # noqa: BLE001  one key unmeasured is said in the estimate, not fatal
                        log.warning("could not measure %s here: %s", " ".join(what), str(e).splitlines()[0] if str(e) else e)
        finally:
            torch.set_num_threads(before)
        atomic_write_text(path, "# Written by ablations/measure.py (a dry run); delete to measure again.\n" +
                          yaml.safe_dump({**table, "machine": machine.describe(), "torch": str(torch.__version__),
                                          "threads": threads, "load_average": round(load, 1)}, sort_keys=True))
        cached["load_average"] = round(load, 1)
    return {**table, "machine": machine.describe(), "cores": machine.cores, "source": str(path),
            "load_average": cached.get("load_average", round(load, 1))}


def _read(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _todo(p: Plan, table: dict) -> dict:
    """{(section, key): function(workdir) -> {section: {key: seconds}}} of the keys the table lacks."""
    todo: dict = {}
    for cell in p.cells:
        if not measurable(cell):
            continue
        train_key, sample_key = sc.train_cost_key(cell), sc.sample_cost_key(cell)
        if train_key not in table["train"] or sample_key not in table["sample"]:
            # per (train, sample) key: cells that share a model but sample differently (grid=mfg's guidance)
            # each get their sampling measured
            todo.setdefault(("cell", train_key, sample_key), lambda w, c=cell: time_cell(c, w))
        data_key = sc.data_key(cell.config)
        if data_key not in table["data"]:
            todo.setdefault(("data", data_key), lambda w, c=cell: {"data": {sc.data_key(c.config): time_data(
                to_dict(c.config)["data"], DATA_ITEMS)}})
        for recipe in cell.encoders.values():
            key = sc.encoder_cost_key(recipe)
            if key not in table["encoders"]:
                todo.setdefault(("encoders", key),
                                lambda w, r=recipe: {"encoders": {sc.encoder_cost_key(r): time_encoder(r)}})
    return todo


def time_cell(cell: Cell, work: Path) -> dict:
    """{"train": {key: s per step}, "sample": {key: s per sample}} of the cell, from gentron.train.train
    and gentron.generate.generate run small in `work`."""
    from gentron.generate import generate
    from gentron.generate import prompt_set as compshapes_prompts
    from gentron.train import train
    from gentron.train_log import LOG_FILE

    from eval import judge

    config = stand_in_config(cell, work / "encoders")
    run_dir = work / f"train-{cell.cell_id}-{zlib.crc32(sc.sample_cost_key(cell).encode()):08x}"
    started = time.thread_time()
    with _cpu_share() as share:
        result = train(config, run_dir)
    train_total = time.thread_time() - started
    rows = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines() if line.strip()]
    timed = [1.0 / r["steps_per_s"] for r in rows[WARMUP_STEPS:]]
    train_s = sum(timed) / len(timed) * share.value
    video = config.data.video
    n = min(config.sample.batch_size, SAMPLE_CLIPS if video else SAMPLE_IMAGES)  # one batch
    prompts = compshapes_prompts("compshapes_motion" if video else "compshapes_test", [0], 1)[:2 * n]
    config.sample.batch_size = n
    seconds = []
    for batches in (1, 2):  # a second batch costs what one batch costs without loading the model and encoders
        start = time.thread_time()
        generate(config, result.checkpoint, prompts[:batches * n], run_dir.parent / f"{run_dir.name}-samples{batches}")
        seconds.append(time.thread_time() - start)
    per_sample = (seconds[1] - seconds[0]) / n if seconds[1] > seconds[0] else seconds[1] / (2 * n)
    start = time.thread_time()  # the CompShapes judge's scoring of a sample, which the evaluate stage adds
    judge.evaluate(run_dir.parent / f"{run_dir.name}-samples2", out=work / "judged.json")
    scoring = (time.thread_time() - start) / (2 * n)
    # What a run and a sampling pass cost whatever their length: process set-up, building the model and
    # data, loading the checkpoint and encoders, writing checkpoints (thread time beyond the counted work).
    fixed = {f"train/{sc.train_cost_key(cell)}": round(max(0.0, train_total - config.train.steps * train_s), 3),
             f"sample/{sc.sample_cost_key(cell)}": round(max(0.0, seconds[0] - n * per_sample), 3)}
    return {"train": {sc.train_cost_key(cell): round(train_s, 5)},
            "sample": {sc.sample_cost_key(cell): round(per_sample + scoring, 5)},
            "fixed": fixed}


def stand_in_config(cell: Cell, store: Path):
    """The cell's config for timing: its model, encoders, data and batch, WARMUP_STEPS + TIMED_STEPS
    steps on a few items, logged every step, no init_from; trained encoders the store lacks stood in for
    by untrained ones of their recipes (written to `store`)."""
    from gentron.text.pretrain import encoder_spec, load_recipe

    values = to_dict(cell.config)
    for i, spec in enumerate(cell.config.text_encoders):
        recipe = cell.recipe(spec)
        if recipe is not None and not Path(spec_folder(spec)).is_dir():
            values["text_encoders"][i] = encoder_spec(load_recipe(recipe), store)
            _untrained_encoder(recipe, store)
    t = values["train"]
    steps = WARMUP_STEPS + TIMED_STEPS
    t.update(steps=steps, log_every=1, ckpt_every=steps, eval_every=0, init_from=None, tensorboard=False,
             warmup_steps=0)
    values["data"]["num_train"] = max(2 * t["batch_size"], 16)
    return load_config(values)


def _untrained_encoder(recipe: dict, store: Path) -> Path:
    from gentron.text.pretrain import _CLIPTrainer, _T5Trainer, load_recipe

    r = load_recipe(recipe)
    folder = store / r.folder_name()
    if not folder.is_dir():
        small = load_recipe({**recipe, "num_pairs": 16})
        trainer = (_CLIPTrainer if r.objective == "clip_contrastive" else _T5Trainer)(small)
        folder.mkdir(parents=True)
        trainer.save(folder)
    return folder


def time_data(data: dict, items: int) -> float:
    """CPU seconds per unit of data.num_train: an image, and for video also a clip (the trainer draws both)."""
    from gentron.data import compshapes

    kinds = [False, True] if data["video"] else [False]
    start = time.thread_time()
    for video in kinds:
        dataset = compshapes.from_config({**data, "num_train": items, "video": video,
                                          "categories": data["categories"] if video == data["video"] else None})
        for i in range(items):
            dataset[i]
    return round((time.thread_time() - start) / items, 6)


def time_encoder(recipe: dict, steps: int = TIMED_STEPS) -> float:
    """CPU seconds per step of a trained encoder's recipe (gentron.text.pretrain's loss, backward and
    AdamW step), plus its share of drawing the recipe's CompShapes image pairs (clip_contrastive)."""
    import torch

    from gentron.text.pretrain import _CLIPTrainer, _T5Trainer, load_recipe

    r = load_recipe(recipe)
    pairs = min(r.num_pairs, 64)
    start = time.thread_time()
    trainer = (_CLIPTrainer if r.objective == "clip_contrastive" else _T5Trainer)(load_recipe({**recipe,
                                                                                               "num_pairs": pairs}))
    setup = (time.thread_time() - start) * (r.num_pairs / pairs if r.objective == "clip_contrastive" else 1)
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=r.lr, foreach=True)
    times = []
    for i in range(WARMUP_STEPS + steps):
        start = time.thread_time()
        loss = trainer.loss(torch.Generator().manual_seed(i))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= WARMUP_STEPS:
            times.append(time.thread_time() - start)
    return round(sum(times) / len(times) + setup / r.steps, 6)


class _CpuShare:
    value = 1.0


class _cpu_share:  # noqa: N801  (a context manager read as a phrase)
    """The share of one core this thread got while the block ran (its CPU time over wall time, at most
    1; torch runs the cell's ops in this thread at one intra-op thread): wall times inside it times the
    share are what an idle core would take."""

    def __enter__(self) -> _CpuShare:
        self.share = _CpuShare()
        self.cpu, self.wall = time.thread_time(), time.perf_counter()
        return self.share

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.wall
        self.share.value = min(1.0, (time.thread_time() - self.cpu) / wall) if wall > 0 else 1.0


# --- what the dry run prints --------------------------------------------------------------------

def format_estimate(p: Plan, table: dict | None = None, load: float | None = None, share: float | None = None) -> str:
    """The dry run's time estimate from this machine's measured costs, with where they come from and
    what the current load (the 1-minute load average, and the share of a core a busy thread gets now)
    does to it."""
    table = plan_costs(p) if table is None else table
    e = sc.estimate(p, table)
    if e["gpu_only"] == len(p.cells):
        return sc.format_estimate(p, table)  # nothing to time here: it says why
    cores = table.get("cores") or this_machine().cores
    load = os.getloadavg()[0] if load is None else load
    share = core_share() if share is None else share
    others = competing(cores, load, share)
    factor = load_factor(e["workers"], cores, others)
    line = (f"estimated time on {e['workers']} core{'s' if e['workers'] != 1 else ''} of this machine: {e['total_s'] * factor / 60:.1f} min at the "
            f"current load ({e['encoders']} text encoders to train: {e['encoders_s'] * factor / 60:.1f} min; "
            f"{e['groups']} models to train and sample: {e['cells_s'] * factor / 60:.1f} min)\n"
            f"  measured here on {table['machine']}, load {load:.1f} (a busy thread gets {share:.2f} of a core now): ")
    if factor > 1:
        line += (f"{min(e['workers'], cores)} cells and about {others:.1f} other runnable processes share {cores} "
                 f"cores, so each cell runs {factor:.1f}x slower than on an idle machine ({e['total_s'] / 60:.1f} min)")
    else:
        line += "the cells get a core each, as on an idle machine"
    line += (f"\n  step costs: {table['source']}, measured at load {table.get('load_average', load):.1f} (a thread's "
             f"time grows on a busy machine; measure=false reads {sc.COSTS_FILE.name} instead)")
    return line + sc.estimate_notes(p, e)
