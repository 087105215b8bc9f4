"""The grid runner's entry point: plan, then print it (dry_run), report (action=status), cancel
(action=cancel) or run it locally (cells in sequence, or a process pool) or on SLURM (one job array
per stage, afterok dependencies, fire-and-forget unless wait=true).

    python ablations/run.py grid=conditioning seeds=[0,1,2] train.steps=500 launcher=slurm slurm=local
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
import torch

from ablations import costs, measure, preflight, results, runfolder, stages, validation_costs
from ablations.command_line import local_workers
from ablations.grid import Plan, plan, usage
from ablations.identity import train_key
from gentron.errors import EXIT_USER_ERROR, USER_ERRORS, ConfigError, one_line
from gentron.io import StorageError, make_folder
from gentron.progress import progress

log = logging.getLogger("ablations")
PROG = "python ablations/run.py"


def configure_logging() -> None:
    """INFO lines with time and source, in the runner and in each pool worker (a spawned process
    starts with logging unset and would drop them: "resuming ... at step n" among others)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(usage())
        return 0
    configure_logging()
    try:
        p = plan(argv)
        if p.run.dry_run:
            print(format_plan(p), flush=True)
            table = measure.plan_costs(p) if measure.enabled(p) else None  # None: the stored step costs
            print(costs.format_estimate(p) if table is None else measure.format_estimate(p, table))
            if evaluation := validation_costs.format_cost(p, table):  # train.eval_every's evaluations
                print(evaluation)
            print(seed_plan(p, table))
            return 0
        if p.run.action == "status":
            print(format_plan(p, jobs=True))
            return 0
        if p.run.action == "cancel":
            return cancel(p)
        check_resources(p)
        preflight.require(p)  # every weight, data path and reference in place before anything runs or is submitted
        return run_local(p) if p.run.launcher == "local" else run_slurm(p)
    except USER_ERRORS as e:  # one line: the problem and the fix (gentron.errors)
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR


def seed_plan(p: Plan, table: dict | None = None) -> str:
    """The seeds planner (eval.verdicts): from the variance the grid's finished cells measured, the
    seeds each metric needs to separate plan.min_effect, and what they cost at the estimated cell time
    (from the step-cost `table`, else the stored one)."""
    from eval import planner

    e = costs.estimate(p, table)
    arms = {tuple(sorted(cell.arms.items())) for cell in p.cells}
    return planner.format_seed_plan(p.grid_dir, n_arms=len(arms), per_cell_s=e["per_cell_s"], workers=e["workers"])


def command(p: Plan, *extra: str) -> str:
    """The command that plans exactly p's cells again (grid, profile, seeds, cell-config overrides,
    runs_dir as given), then `extra` (launcher, action)."""
    record = {"name": p.run.grid, runfolder.PLAN_ARGS: [str(a) for a in p.args]}
    return " ".join([runfolder.rerun_command(record, p.run.runs_dir), *extra])


# --- the plan table -----------------------------------------------------------------------------

def plan_table(p: Plan, jobs: bool = False) -> pd.DataFrame:
    """One row per cell: id, axis values, each stage's state (ablations.runfolder.status; a running
    stage whose process is gone shows `stopped`), and SLURM job states."""
    rows = []
    job_states = _job_states(p.grid_dir) if jobs else {}
    for cell in p.cells:
        row = {"cell": cell.cell_id, **cell.axes}
        row.update(runfolder.status(p.grid_dir / cell.cell_id).shown())
        if jobs:
            row["jobs"] = job_states.get(cell.cell_id, "")
        rows.append(row)
    return pd.DataFrame(rows)


def format_plan(p: Plan, jobs: bool = False) -> str:
    first = p.cells[0].config
    header = [f"grid '{p.run.grid}': {p.grid.description or ''}",
              f"profile '{p.run.profile}': {p.grid.note or ''}",
              f"{len(p.cells)} cells in {p.grid_dir}; evaluation: prompt sets "
              f"{first.sample.prompt_sets}, metrics {first.eval.metrics}"]
    table, footer = plan_table(p, jobs), []
    if not jobs:  # what each cell costs (ablations.costs), and what the plan loads that is not here (preflight)
        table, footer = costs.with_costs(p, table), [*costs.source_line(p), *time_limit_lines(p),
                                                     preflight.format_missing(p)]
    return "\n".join(header + [table.to_string(index=False)] + _damaged_lines(p) + footer)


def time_limit_lines(p: Plan) -> list[str]:
    """A warning per stage whose task needs longer than the SLURM profile's time limit and timeout requeues
    cover (slurm.launcher.time_limit_shortfall): training on the cell's GPUs, sampling per shard task."""
    if not p.run.slurm:
        return []
    from slurm.launcher import load_profile, time_limit_shortfall

    profile, gpus, found = load_profile(p.run.slurm), costs.plan_gpus(p), {}
    sampler = profile.for_stage("sample")
    for cell in p.cells:
        c = costs.cell_costs(cell, gpus)
        per_task = c["sample_gpu_hours"] / (profile.shards("sample") * sampler.nodes * sampler.gpus_per_node) \
            if c["sample_gpu_hours"] is not None and sampler.gpus_per_node else None
        for stage, hours in (("train", c["hours"]), ("sample", per_task)):
            if hours is not None and (why := time_limit_shortfall(profile, stage, hours)):
                found.setdefault(why, []).append(cell.cell_id)
    return [f"warning: {why} (cells {', '.join(cells)})" for why, cells in found.items()]


def _damaged_lines(p: Plan) -> list[str]:
    """One line per cell whose finished outputs are missing or changed: what, and that a run redoes it."""
    lines = []
    for cell in p.cells:
        state = runfolder.status(p.grid_dir / cell.cell_id)
        if state.damaged:
            lines.append(f"cell {cell.cell_id}: {runfolder.damage_text(state.damaged)}")
    return lines


def _job_states(grid_dir: Path) -> dict[str, str]:
    from slurm.launcher import grid_status, read_jobs

    if not read_jobs(grid_dir):
        return {}
    out: dict[str, list[str]] = {}
    for job in grid_status(grid_dir):
        out.setdefault(job["cell"], []).append(f"{job['stage']}:{job['job_id']}:{job['state']}")
    return {cell: " ".join(items) for cell, items in out.items()}


# --- refusing what cannot run -------------------------------------------------------------------

def check_resources(p: Plan) -> None:
    """Refuse paper-scale models where they cannot train: the local CPU, or a SLURM profile without GPUs."""
    sizes = costs.too_big_for_cpu(p)
    if not sizes:
        return
    if p.run.launcher == "slurm":
        from slurm.launcher import load_profile

        if load_profile(p.run.slurm).gpus_per_node > 0:
            return
        where = f"SLURM profile '{p.run.slurm}', which has no GPUs (gpus_per_node: 0)"
    else:
        if torch.cuda.is_available():
            return
        where = "this machine's CPU (launcher=local, no CUDA device)"
    largest = max(sizes.values())
    named = ", ".join(f"{size} ({params / 1e6:.0f}M transformer parameters)" for size, params in sizes.items())
    raise ConfigError(
        f"refusing to train {named} on {where}. These need GPUs: up to about "
        f"{largest * costs.BYTES_PER_PARAM / 1e9:.0f} GB for fp32 weights, gradients and AdamW state before activations "
        "(G/2 also FSDP and activation checkpointing across GPUs). Run them on a GPU cluster: "
        f"`{command(p, 'launcher=slurm', 'slurm=<profile>')}` with a "
        "profile of slurm/profiles/ that has gpus_per_node > 0; or run the CPU stand-ins with profile=embedded.")


# --- local --------------------------------------------------------------------------------------

def prepare(p: Plan) -> dict[str, list[str]]:
    """Write the grid's resolved grid.yaml and every cell's folder; cells grouped by train key. What
    killed writes left in the grid's shared folders is removed (those of each cell when it is taken)."""
    make_folder(p.grid_dir)
    runfolder.remove_shared_temporaries(p.grid_dir)
    runfolder.write_grid_record(p.grid_dir, p.grid.record(), p.args, [cell.cell_id for cell in p.cells])
    groups: dict[str, list[str]] = {}
    for cell in p.cells:
        cell_dir = stages.prepare(cell, p.grid_dir)
        groups.setdefault(train_key(cell.config), []).append(str(cell_dir))
    return groups


def run_local(p: Plan) -> int:
    groups = list(prepare(p).values())
    todo = [g for g in groups if not all(stages.is_complete(d) for d in g)]
    log.info("grid %s: %d cells, %d to run, %d complete", p.run.grid, len(p.cells),
             sum(map(len, todo)), len(p.cells) - sum(map(len, todo)))
    train_encoders(p, local_workers(p.run))
    workers = min(len(todo), local_workers(p.run))
    shards = stage_shards(p)
    failed, busy = _run_pool(todo, workers, shards) if workers > 1 else _run_sequential(todo, shards)
    return finish(p, failed, busy)


def stage_shards(p: Plan) -> dict[str, int]:
    """{stage: K} of the stages a plan's SLURM profile (`slurm=`, also honoured by launcher=local, which then
    runs the K parts one after another in the cell's process) splits into K array tasks per cell."""
    if not p.run.slurm:
        return {}
    from slurm.launcher import load_profile

    profile = load_profile(p.run.slurm)
    return {stage: profile.shards(stage) for stage in ("sample", "evaluate") if profile.shards(stage) > 1}


def train_encoders(p: Plan, workers: int) -> None:
    """Train the trained text encoders the grid's cells load and the store lacks, side by side (one
    thread each), before any cell needs them (gentron.text.pretrain)."""
    from gentron.text.pretrain import ensure_trained

    missing = {folder: recipe for cell in p.cells for folder, recipe in cell.encoders.items()
               if not Path(folder).is_dir()}
    if not missing:
        return
    log.info("training %d text encoders first: %s", len(missing), ", ".join(Path(f).name for f in missing))
    workers = min(workers, len(missing))
    if workers == 1:
        for folder, recipe in missing.items():
            ensure_trained(recipe, Path(folder).parent)
        return
    context = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_set_threads,
                             initargs=(threads,)) as pool:
        for future in [pool.submit(ensure_trained, recipe, str(Path(folder).parent)) for folder, recipe in missing.items()]:
            future.result()


def _run_sequential(groups: list[list[str]], shards: dict[str, int] | None = None) -> tuple[list[str], list[str]]:
    """(failed, busy): cells that failed, and cells another process holds (not started here)."""
    failed, busy = [], []
    for cell_dir in progress([d for g in groups for d in g], desc="cells", unit="cell", disable=not groups):
        try:
            stages.run_cell(cell_dir, shards)
        except stages.CellBusy as e:
            log.error("%s", e)
            busy.append(cell_dir)
        except StorageError:
            raise  # a full or read-only disk fails every cell alike: stop, and say so in one line
        except Exception:
            log.exception("cell %s failed; the others go on (rerun to resume it)", Path(cell_dir).name)
            failed.append(cell_dir)
    return failed, busy


PR_SET_PDEATHSIG = 1  # linux/prctl.h
ORPHAN_GRACE_S = 60  # after the parent died: time to write a checkpoint before a worker exits regardless


def _set_threads(threads: int, parent: int | None = None) -> None:
    """Pool worker initializer: share the cores, log as the runner does, and end with the parent process."""
    configure_logging()
    die_with_parent(parent)
    torch.set_num_threads(threads)


def die_with_parent(parent: int | None = None) -> None:
    """End this process when its parent ends, kill -9 included, so no worker trains on alone. On
    Linux the kernel sends SIGTERM at the parent's death (training then writes a checkpoint at the
    next step and stops; elsewhere SIGTERM ends the process); a watchdog thread sends it where prctl
    is missing, and exits the process ORPHAN_GRACE_S later if it is still running."""
    parent = os.getppid() if parent is None else parent
    armed = False
    if sys.platform.startswith("linux"):
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent, not armed), daemon=True, name="watch-parent").start()


def _watch_parent(parent: int, signal_self: bool) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    if signal_self:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _run_pool(groups: list[list[str]], workers: int, shards: dict[str, int] | None = None) -> tuple[list[str], list[str]]:
    """Cell groups in `workers` processes that share the CPU cores between them: on 2 cores two
    tiny cells at one thread each finish ~1.4x sooner than one after the other at two threads
    (small matmuls scale poorly across threads; benchmarks/train_throughput.py)."""
    failed, busy, storage = [], [], None
    context = multiprocessing.get_context("spawn")  # no forked torch state
    threads = max(1, torch.get_num_threads() // workers)  # the cores torch would use here (or OMP_NUM_THREADS)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_set_threads,
                             initargs=(threads, os.getpid())) as pool:
        futures = {pool.submit(_run_group, group, os.getpid(), shards): group for group in groups}
        for future in progress(as_completed(futures), total=len(futures), desc="cell groups", unit="group"):
            if future.cancelled():
                continue
            try:
                future.result()
            except stages.CellBusy as e:
                log.error("%s", e)
                busy += futures[future]
            except StorageError as e:  # the disk fails every cell alike: start no more, then say so
                storage = storage or e
                for queued in futures:
                    queued.cancel()
            except Exception:
                log.exception("cells %s failed; rerun to resume them", [Path(d).name for d in futures[future]])
                failed += futures[future]
    if storage is not None:
        raise storage
    return failed, busy


def _run_group(group: list[str], parent: int, shards: dict[str, int] | None = None) -> list[str]:
    """A pool task. A worker whose runner has died ends here instead of starting the cells still
    queued for it (the pool hands a worker its next task even after the runner is gone)."""
    if os.getppid() != parent:
        os._exit(1)
    return stages.run_cells(group, shards)


def finish(p: Plan, failed: list[str], busy: list[str] = ()) -> int:
    results.write_results(p.grid_dir)
    print(results.format_results(p.grid_dir, [c.cell_id for c in p.cells], p.grid.note or ""))
    slurm = ("launcher=slurm", f"slurm={p.run.slurm}") if p.run.launcher == "slurm" else ()
    if busy:
        print(f"{len(busy)} cells not started: another process is running them ({', '.join(Path(d).name for d in busy)}); "
              f"let it finish, or stop it and resume them with: {command(p, *slurm)}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} cells failed: {', '.join(Path(d).name for d in failed)}; see the log above, "
              f"fix and resume them with: {command(p, *slurm)}", file=sys.stderr)
    return 1 if failed or busy else 0


# --- SLURM --------------------------------------------------------------------------------------

def run_slurm(p: Plan) -> int:
    from slurm.launcher import load_profile, submit_stage

    profile = load_profile(p.run.slurm)
    groups = prepare(p)
    pending = [d for g in groups.values() for d in g if not stages.is_complete(d)]
    if not pending:
        log.info("grid %s: all %d cells complete", p.run.grid, len(p.cells))
        return finish(p, [])
    leads = [next(d for d in g if d in pending) for g in groups.values()
             if any(stages.states(d)["train"] != "done" for d in g) and any(d in pending for d in g)]
    submitted = {"train": submit_stage(profile, p.grid_dir, "train", stages.train_stage, leads)} if leads else {}
    after = submitted.get("train")
    for stage in stages.STAGES[1:]:
        staged, count = profile.for_stage(stage), profile.shards(stage)
        if count > 1:  # cells x K array tasks, each one shard of the cell; then the stage itself merges them
            cells = [d for d in pending for _ in range(count)]
            after = submitted[f"{stage}-shards"] = submit_stage(
                staged, p.grid_dir, f"{stage}-shards", stages.SHARD_FUNCTIONS[stage], cells, after=after,
                extra=[[k for _ in pending for k in range(count)], [count] * len(cells)])
        after = submitted[stage] = submit_stage(staged, p.grid_dir, stage, stages.STAGE_FUNCTIONS[stage], pending,
                                                after=after, extra=[[count] * len(pending)] if count > 1 else None)
    submitted["results"] = submit_stage(profile, p.grid_dir, "results", results.write_results, [str(p.grid_dir)],
                                        after=after)
    again = command(p, "launcher=slurm", f"slurm={p.run.slurm}")
    print(f"submitted {len(pending)} cells of grid '{p.run.grid}' to SLURM: one job array per stage "
          f"({', '.join(submitted)}), each after the previous one succeeded.\n"
          f"  status: {again} action=status\n  cancel: {again} action=cancel\n"
          f"  logs:   {p.grid_dir / 'slurm'}")
    if not p.run.wait:
        return 0
    _wait(submitted)
    return finish(p, [d for d in pending if not stages.is_complete(d)])


def _wait(submitted: dict) -> None:
    """Block until every stage's jobs ended; after a failed stage the later ones can never start
    (afterok), so they are cancelled instead of waited for."""
    for stage, jobs in progress(submitted.items(), desc="stages", unit="stage"):
        failed = []
        for job in jobs:
            try:
                job.results()  # every task's result: a multi-task job (one task per GPU) has one per task
            except Exception as e:  # submitit re-raises the job's error or reports its state
                log.error("%s job %s failed: %s", stage, job.job_id, str(e).splitlines()[0] if str(e) else e)
                failed.append(job)
        if failed:
            later = [job for s, jobs in submitted.items() if list(submitted).index(s) > list(submitted).index(stage)
                     for job in jobs]
            for job in later:
                job.cancel(check=False)
            log.error("stage %s: %d jobs failed (logs in %s); %d later jobs cancelled", stage, len(failed),
                      failed[0].paths.folder, len(later))
            return


def cancel(p: Plan) -> int:
    from slurm.launcher import cancel as scancel

    ids = scancel(p.grid_dir)
    print(f"cancelled {len(ids)} SLURM jobs of grid '{p.run.grid}'" + (f": {' '.join(ids)}" if ids else ""))
    return 0

