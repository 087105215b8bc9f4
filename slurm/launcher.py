"""Submit a grid's stages to SLURM through submitit, fire-and-forget, and check on them later.

    profile = load_profile("local")                       # slurm/profiles/local.yaml
    train = submit_stage(profile, grid_dir, "train", train_cell, cell_dirs)
    submit_stage(profile, grid_dir, "eval", eval_cell, cell_dirs, after=train)
    ...later, from another process...
    grid_status(grid_dir); cancel(grid_dir)

One job array per stage; each array task runs `fn(cell_dir)` (a module-level, importable function
that takes a path) wrapped in `CellTask`, which submitit requeues on preemption or timeout; the
function resumes from its own checkpoint. Job ids go to `<folder>/jobs.json`, submitit's logs and
pickles to `<folder>/slurm/<stage>/`. Without an accounting database `sacct` fails, so job states
come from squeue (which knows finished jobs for MinJobAge) and then from submitit's result files.
"""
from __future__ import annotations

import fcntl
import logging
import os
import pickle
import shlex
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import submitit
import yaml
from submitit.core.utils import JobPaths
from submitit.slurm.slurm import SlurmInfoWatcher

from gentron.errors import ConfigError
from gentron.io import atomic_write_json, read_json
from gentron.schema import parse

log = logging.getLogger(__name__)

PROFILES_DIR = Path(__file__).parent / "profiles"
JOBS_FILE = "jobs.json"


STAGE_KEYS = ("partition", "account", "qos", "constraint", "nodes", "tasks_per_node", "gpus_per_node",
              "cpus_per_task", "mem_gb", "timeout_min", "signal_delay_s", "array_parallelism", "max_num_timeout",
              "setup", "additional_parameters", "python")


@dataclass
class StageResources:
    """A profile's `sample:` or `evaluate:` section: that stage's job settings (a key left unset takes the
    profile's top-level value) and `shards`, the array tasks per cell that split the stage's work."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int | None = None
    tasks_per_node: int | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int | None = None
    signal_delay_s: int | None = None
    array_parallelism: int | None = None
    max_num_timeout: int | None = None
    setup: list[str] | None = None
    additional_parameters: dict[str, Any] | None = None
    python: str | None = None
    shards: int = 1

    def check(self, where: str) -> None:
        if self.shards < 1:
            raise ConfigError(f"'{where}.shards' must be at least 1, got {self.shards}")


@dataclass
class SlurmProfile:
    """A cluster profile (slurm/profiles/*.yaml), shaped like hydra-submitit-launcher's SlurmQueueConf.
    None means "not set" (the cluster's default)."""
    cluster: Literal["slurm", "local", "debug"] = "slurm"  # local: processes here; debug: in-process
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float = 4
    timeout_min: int = 60
    signal_delay_s: int = 90
    array_parallelism: int = 64
    max_num_timeout: int = 3
    setup: list[str] = field(default_factory=list)  # shell lines run before the job
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # other sbatch options
    python: str | None = None  # interpreter on the nodes; None: the one submitting
    sample: StageResources = field(default_factory=StageResources)  # the sample stage's jobs and shards
    evaluate: StageResources = field(default_factory=StageResources)  # the evaluate stage's jobs and shards

    def for_stage(self, stage: str) -> SlurmProfile:
        """The profile a stage's jobs run with: its section's settings over the top level (train, record
        and the rest: the top level itself). `shards` stays in the section."""
        section = getattr(self, stage, None) if stage in ("sample", "evaluate") else None
        if section is None:
            return self
        values = {k: getattr(section, k) for k in STAGE_KEYS if getattr(section, k) is not None}
        return replace(self, **values, sample=StageResources(), evaluate=StageResources())

    def shards(self, stage: str) -> int:
        """Array tasks per cell of `stage` (1: the stage runs whole, in one task per cell)."""
        return self.sample.shards if stage == "sample" else self.evaluate.shards if stage == "evaluate" else 1

    def check(self, where: str) -> None:
        for key in ("nodes", "tasks_per_node", "cpus_per_task", "timeout_min", "array_parallelism"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be at least 1, got {getattr(self, key)}")
        for key in ("gpus_per_node", "signal_delay_s", "max_num_timeout"):
            if getattr(self, key) < 0:
                raise ConfigError(f"'{key}' must be >= 0, got {getattr(self, key)}")
        if not 0 < self.mem_gb < float("inf"):  # also NaN
            raise ConfigError(f"'mem_gb' must be a positive number of GB, got {self.mem_gb}")
        if self.signal_delay_s >= self.timeout_min * 60:
            raise ConfigError(f"'signal_delay_s' ({self.signal_delay_s} s) must be shorter than the time "
                              f"limit 'timeout_min' ({self.timeout_min} min = {self.timeout_min * 60} s): the job "
                              "is warned that long before its end to write a checkpoint")
        for stage in ("sample", "evaluate"):
            section = getattr(self, stage)
            if any(getattr(section, k) is not None for k in STAGE_KEYS):
                try:
                    self.for_stage(stage).check(where)
                except ConfigError as e:
                    raise ConfigError(f"in section '{stage}': {e}") from None


# ---- profiles ----------------------------------------------------------------------------------

def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | os.PathLike) -> SlurmProfile:
    """A cluster profile by name (slurm/profiles/<name>.yaml) or path, validated, defaults filled."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise FileNotFoundError(
            f"no cluster profile {str(name_or_path)!r} ({path}); available: {available_profiles()} "
            "or a path to a YAML file"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"cluster profile {path} must be a mapping of settings, got {type(raw).__name__}")
    return validate_profile(raw, source=str(path))


def validate_profile(raw: dict | SlurmProfile, source: str = "profile") -> SlurmProfile:
    """The profile `raw` describes, validated by gentron.schema (unknown keys, types, ranges)."""
    return parse(SlurmProfile, raw, source=source)


# ---- executor and submission -------------------------------------------------------------------

def make_executor(profile: SlurmProfile | dict, folder: Path, job_name: str) -> submitit.AutoExecutor:
    """A submitit executor for `profile`, logging to `folder` (which must be on shared storage)."""
    profile = validate_profile(profile)
    cluster = profile.cluster
    kwargs: dict[str, Any] = {}
    if cluster == "slurm":
        kwargs = {"slurm_max_num_timeout": profile.max_num_timeout}
        if profile.python:  # else submitit uses this interpreter: the project's venv
            kwargs["slurm_python"] = shlex.quote(profile.python)
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **kwargs)
    except RuntimeError as e:  # submitit: 'Could not detect "srun"'
        raise RuntimeError(
            f"profile asks for SLURM but this machine has no SLURM client ({e}); start the local test "
            "cluster with `python -m tests.support.cluster start` in the checkout or use a profile with cluster: local"
        ) from e
    executor.update_parameters(
        name=job_name,
        timeout_min=profile.timeout_min,
        nodes=profile.nodes,
        tasks_per_node=profile.tasks_per_node,
        cpus_per_task=profile.cpus_per_task,
        mem_gb=profile.mem_gb,
        **({"gpus_per_node": profile.gpus_per_node} if profile.gpus_per_node else {}),
    )
    if cluster == "slurm":
        executor.update_parameters(**_slurm_parameters(profile))
    return executor


def _slurm_parameters(profile: SlurmProfile) -> dict:
    optional = {k: getattr(profile, k) for k in ("partition", "account", "qos", "constraint") if getattr(profile, k)}
    return {f"slurm_{k}": v for k, v in {
        **optional,
        "setup": list(profile.setup),
        "signal_delay_s": profile.signal_delay_s,
        "array_parallelism": profile.array_parallelism,
        "additional_parameters": dict(profile.additional_parameters),
    }.items()}


class CellTask(submitit.helpers.Checkpointable):
    """Runs `fn(cell_dir)` in a job. On preemption or timeout submitit calls `checkpoint`, which
    resubmits this same task: the requeued job calls `fn` again and `fn` resumes from the cell's
    own checkpoint. `fn` must be a module-level function (jobs unpickle it by module name).

    Training owns its shutdown: while the trainer runs, SIGTERM and submitit's signal (USR2, sent
    `signal_delay_s` before the time limit, and after SIGTERM on preemption) only ask it to stop
    after the current step and checkpoint (gentron.preemption). Once `fn` has returned or raised from
    that stop, the task hands USR2 to submitit's handler, which calls `checkpoint` and requeues the
    job: the requeued run resumes from the step the signal stopped. A SIGTERM without USR2 (scancel,
    SLURM's own preemption that requeues by itself) ends the job after the checkpoint, after
    waiting `TERM_GRACE_S` for a USR2 that may follow it. Outside training (sampling, evaluation)
    the signals keep submitit's immediate handling: those stages resume by themselves."""

    TERM_GRACE_S = 5.0

    def __init__(self, fn: Callable[[str], Any]) -> None:
        if "<locals>" in fn.__qualname__ or fn.__module__ == "__main__":
            raise ValueError(
                f"{fn.__qualname__} must be a module-level function of an installed module, so the "
                "job can import it; move it into the project's package"
            )
        self.fn = fn

    def __call__(self, cell_dir: str, *args: Any) -> Any:
        from gentron import preemption

        _job_logging()
        log.info("running %s.%s(%s)", self.fn.__module__, self.fn.__qualname__, ", ".join(map(str, (cell_dir, *args))))
        seen = len(preemption.caught())
        try:
            result = self.fn(cell_dir, *args)
        except Exception:
            self._after_stop(preemption.caught()[seen:])
            raise
        if getattr(result, "stopped", False):
            self._after_stop(preemption.caught()[seen:])
        return result

    def _after_stop(self, signals: list[int]) -> None:
        """`fn` stopped on `signals` (caught by the trainer, after its checkpoint): requeue through
        submitit's USR2 handler (it exits the process), or give a SIGTERM's USR2 time to arrive."""
        import signal
        import time

        from gentron.preemption import PREEMPT_SIGNAL

        if PREEMPT_SIGNAL in signals:
            handler = signal.getsignal(PREEMPT_SIGNAL)
            if callable(handler):  # submitit's checkpoint_and_try_requeue (in a SLURM job)
                log.info("the run stopped on %s after its checkpoint; requeueing", signal.Signals(PREEMPT_SIGNAL).name)
                handler(PREEMPT_SIGNAL, None)
        elif signal.SIGTERM in signals:
            log.info("the run stopped on SIGTERM after its checkpoint; waiting %.0f s for a requeue signal",
                     self.TERM_GRACE_S)
            time.sleep(self.TERM_GRACE_S)  # a USR2 now runs submitit's handler, which requeues and exits

    def checkpoint(self, cell_dir: str, *args: Any) -> submitit.helpers.DelayedSubmission:
        log.info("requeueing %s for %s; it resumes from its own checkpoint", self.fn.__qualname__, cell_dir)
        return submitit.helpers.DelayedSubmission(self, cell_dir, *args)


def _job_logging() -> None:
    """INFO lines in the job's log (the trainer's resume step, the stages' progress), as on the command line;
    a root handler a library installed already (a bare logging.warning does) keeps its format."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    root.setLevel(logging.INFO)


def time_limit_shortfall(profile: SlurmProfile, stage: str, hours: float) -> str | None:
    """Why a task of `stage` that needs `hours` of wall time cannot finish within its time limit and the
    requeues submitit makes when it times out (timeout_min x (1 + max_num_timeout): each requeued run
    resumes from the checkpoint the timeout signal wrote), with the fix; None when it can."""
    staged = profile.for_stage(stage)
    covered = staged.timeout_min * (1 + staged.max_num_timeout) / 60
    if hours <= covered:
        return None
    runs = -(-hours * 60 // staged.timeout_min)  # ceil
    return (f"{stage} needs ~{hours:,.0f} h per task but the profile allows {covered:,.0f} h (timeout_min "
            f"{staged.timeout_min} x {1 + staged.max_num_timeout} runs: the first and max_num_timeout="
            f"{staged.max_num_timeout} requeues); set max_num_timeout to at least {int(runs) - 1}, or give the "
            "cells more GPUs or fewer steps")


def submit_stage(profile: SlurmProfile | dict, folder: Path, stage: str, fn: Callable[..., Any], args: list,
                 after: list[submitit.Job] | None = None, extra: list[list] | None = None) -> list[submitit.Job]:
    """Submit `fn(arg)` for every arg (a cell directory) as one job array and return at once. With
    `extra` (lists as long as `args`), task i runs `fn(args[i], *(e[i] for e in extra))`: e.g. a shard
    k and the shard count K, for the array of cells x K tasks of a sharded stage.

    With `after`, the array starts only when all those jobs succeeded (afterok). Job ids are
    recorded in `folder/jobs.json` under `stage`, so `grid_status`/`cancel` work from any process.
    """
    if not args:
        raise ValueError(f"stage {stage!r}: no cells to submit")
    folder = Path(folder)
    profile = validate_profile(profile)
    executor = make_executor(profile, folder / "slurm" / stage, job_name=f"{folder.name}-{stage}")
    dependency = ""
    if after and profile.cluster != "slurm":
        _wait_all(after)  # local/debug executors have no scheduler to hold the jobs
    elif dependency := _afterok(after or []):
        executor.update_parameters(slurm_dependency=dependency)
    cell_dirs = [str(a) for a in args]
    extra = [list(e) for e in extra or []]
    if any(len(e) != len(cell_dirs) for e in extra):
        raise ValueError(f"stage {stage!r}: every extra argument list must hold one value per task")
    jobs = executor.map_array(CellTask(fn), cell_dirs, *extra)
    if profile.cluster == "slurm":
        for job in jobs:
            _use_queue_watcher(job)
    _record_jobs(folder, stage, jobs, cell_dirs, profile.cluster, shards=extra[0] if len(extra) == 2 else None)
    log.info("stage %s: submitted %d jobs (%s)%s", stage, len(jobs), jobs[0].job_id.split("_")[0],
             f" after {dependency}" if dependency else "")
    return jobs


def _afterok(after: list[submitit.Job]) -> str:
    """'afterok:<id>:<id>' for the jobs not already known to have succeeded ('' if none are left):
    a job that finished long ago may be gone from the controller, and sbatch rejects its id."""
    waiting = [job.job_id for job in after if _result_outcome(job.paths.result_pickle) != "success"]
    return "afterok:" + ":".join(waiting) if waiting else ""


def _wait_all(jobs: list[submitit.Job]) -> None:
    for job in jobs:
        job.wait()
        if _result_outcome(job.paths.result_pickle) != "success":
            raise RuntimeError(f"job {job.job_id} did not succeed (see {job.paths.stderr}); "
                               "not starting the next stage")


def _record_jobs(folder: Path, stage: str, jobs: list[submitit.Job], cell_dirs: list[str],
                 cluster: str, shards: list[int] | None = None) -> None:
    """Add the jobs to folder/jobs.json (with `shard` k for the tasks of a sharded stage); a resubmitted
    cell's entries replace its older ones."""
    entries = [{"job_id": job.job_id, "cell": Path(cell_dir).name, "cell_dir": cell_dir,
                "log_folder": str(job.paths.folder), "cluster": cluster, **({"shard": shards[i]} if shards else {})}
               for i, (job, cell_dir) in enumerate(zip(jobs, cell_dirs))]
    with _locked(folder):
        record = read_jobs(folder)
        new_cells = {e["cell_dir"] for e in entries}
        kept = [e for e in record.get(stage, []) if e["cell_dir"] not in new_cells]
        record[stage] = kept + entries
        atomic_write_json(folder / JOBS_FILE, record)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{JOBS_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_jobs(folder: Path) -> dict[str, list[dict]]:
    """folder/jobs.json as {stage: [{job_id, cell, cell_dir, log_folder, cluster[, shard]}, ...]}, {} if absent
    (a sharded stage's array is the stage `<stage>-shards`, one entry per cell and shard k)."""
    path = Path(folder) / JOBS_FILE
    return read_json(path) if path.exists() else {}


# ---- job states --------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def accounting_enabled() -> bool:
    """Whether sacct can answer: the cluster has an accounting storage plugin other than none."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    for line in out.splitlines():
        if line.startswith("AccountingStorageType"):
            return "accounting_storage/none" not in line
    return False


SQUEUE_FORMAT = "%i|%T|%N"
SQUEUE_HEADER = "JOBID|STATE|NODELIST"


def squeue_command(job_ids: list[str]) -> list[str]:
    """squeue for these jobs, one line per array task, finished ones included (for MinJobAge)."""
    return ["squeue", "--states=all", "--array", "-o", SQUEUE_FORMAT, "--jobs", ",".join(job_ids)]


class QueueInfoWatcher(SlurmInfoWatcher):
    """submitit's watcher, which polls sacct, falling back to squeue when accounting is off;
    with plain submitit, sacct fails there and every job stays UNKNOWN until its result exists."""

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None or accounting_enabled():
            return command
        return squeue_command([command[i + 1] for i, word in enumerate(command) if word == "-j"])

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        if text.startswith(SQUEUE_HEADER):
            text = "JobID|State|NodeList" + text[len(SQUEUE_HEADER):]
        return super().read_info(text)


QUEUE_WATCHER = QueueInfoWatcher(delay_s=60)


def _use_queue_watcher(job: submitit.Job) -> None:
    job.watcher = QUEUE_WATCHER
    QUEUE_WATCHER.register_job(job.job_id)


def _result_outcome(result_pickle: Path) -> str | None:
    """'success' or 'error' from a submitit result file, None when the job has not written it."""
    try:
        with open(result_pickle, "rb") as f:
            return pickle.load(f)[0]
    except (OSError, EOFError, pickle.UnpicklingError, IndexError, TypeError):
        return None


def _query_states(job_ids: list[str]) -> dict[str, str]:
    """{job_id: state} from squeue, then sacct when accounting is on; missing ids are unknown."""
    if not job_ids:
        return {}
    watcher = QueueInfoWatcher()
    states: dict[str, str] = {}
    commands = [squeue_command(job_ids)]
    if accounting_enabled():
        commands.append(["sacct", "-o", "JobID,State,NodeList", "--parsable2",
                         *[arg for jid in job_ids for arg in ("-j", jid.split("_")[0])]])
    for command in commands:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            log.debug("`%s` failed: %s", " ".join(command), proc.stderr.strip())
            continue
        for jid, info in watcher.read_info(proc.stdout).items():
            states.setdefault(jid, info["State"].split()[0])
    return states


def _state_from_files(entry: dict) -> str:
    paths = JobPaths(entry["log_folder"], job_id=entry["job_id"], task_id=0)
    outcome = _result_outcome(paths.result_pickle)
    return {"success": "COMPLETED", "error": "FAILED"}.get(outcome, "UNKNOWN")


def grid_status(folder: Path) -> list[dict]:
    """One dict per recorded job: stage, cell, job_id, state (PENDING/RUNNING/COMPLETED/FAILED/
    CANCELLED/TIMEOUT/..., or UNKNOWN when neither SLURM nor the result files know it)."""
    record = read_jobs(Path(folder))
    entries = [{"stage": stage, **entry} for stage, items in record.items() for entry in items]
    states = _query_states([e["job_id"] for e in entries if e["cluster"] == "slurm"])
    return [{"stage": e["stage"], "cell": e["cell"], "job_id": e["job_id"],
             "state": states.get(e["job_id"]) or _state_from_files(e)} for e in entries]


def cancel(folder: Path) -> list[str]:
    """scancel every SLURM job recorded in folder/jobs.json; returns the ids it asked to cancel."""
    entries = [e for items in read_jobs(Path(folder)).values() for e in items]
    job_ids = [e["job_id"] for e in entries if e["cluster"] == "slurm"]
    if len(job_ids) < len(entries):
        log.warning("%s: only SLURM jobs can be cancelled from their ids; local jobs are left",
                    folder)
    if not job_ids:
        log.info("no recorded SLURM jobs in %s", folder)
        return []
    proc = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:  # e.g. ids of long-finished jobs; the others are still cancelled
        log.warning("scancel: %s", proc.stderr.strip())
    log.info("cancelled %d jobs from %s", len(job_ids), folder)
    return job_ids


# ---- inside a job ------------------------------------------------------------------------------
