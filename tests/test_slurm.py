"""slurm.launcher against the real one-node SLURM cluster (fixture `slurm_cluster`, started as root).

The job functions below live in this test module, which jobs cannot import by name (the checkout is
not on their import path), so cloudpickle ships them by value; everything they import (gentron,
slurm) comes from the project's editable install, exactly as in the grid's real jobs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

import slurm
from gentron.io import atomic_write_json, read_json
from gentron.distributed import init_distributed_from_slurm
from slurm.launcher import (cancel, grid_status, load_profile,
                            read_jobs, submit_stage, validate_profile)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL"}
PYTHON = sys.executable


# ---- job functions (run inside SLURM jobs) -----------------------------------------------------

def first_stage(cell_dir: str) -> str:
    import gentron

    rank = init_distributed_from_slurm()
    time.sleep(2)  # long enough for the second stage to be seen waiting on its dependency
    atomic_write_json(Path(cell_dir) / "first.json", {
        "python": sys.executable, "slurm_package": slurm.__file__, "gentron_package": gentron.__file__,
        "rank": rank, "master_addr": os.environ["MASTER_ADDR"], "end": time.time()})
    return Path(cell_dir).name


def second_stage(cell_dir: str) -> str:
    first = read_json(Path(cell_dir) / "first.json")
    atomic_write_json(Path(cell_dir) / "second.json", {"start": time.time(), "first_end": first["end"]})
    return "second-" + Path(cell_dir).name


def failing_stage(cell_dir: str) -> None:
    raise ValueError(f"deliberate failure in {cell_dir}")


def sleep_long(cell_dir: str) -> None:
    (Path(cell_dir) / "started").touch()
    time.sleep(600)


def count_steps(cell_dir: str) -> int:
    """A resumable task: N steps, progress saved after each; a restart continues from it."""
    cell = Path(cell_dir)
    task = read_json(cell / "task.json")
    progress_file = cell / "progress.json"
    progress = read_json(progress_file) if progress_file.exists() else {"step": 0, "total": 0}
    with open(cell / "starts.log", "a") as f:
        f.write(f"{progress['step']}\n")
    for step in range(progress["step"], task["steps"]):
        time.sleep(task["sleep_s"])
        progress = {"step": step + 1, "total": progress["total"] + step * step}
        atomic_write_json(progress_file, progress)
    atomic_write_json(cell / "result.json", progress)
    with open(cell / "finishes.log", "a") as f:
        f.write(f"{progress['step']}\n")
    return progress["total"]


def train_tiny(cell_dir: str) -> int:
    """Train the cell's config.json, slowed to task.json's sleep_s per step (the numbers unchanged);
    starts.log gets the step each start resumes from, stops.log each end's step and whether a
    signal stopped it. A stopped run raises, as the grid's train stage does."""
    import logging

    import gentron.train as T
    import gentron.train_step as S
    from gentron.checkpoint import checkpoint_dir, load_checkpoint, resume_checkpoint

    if "SLURM_JOB_ID" in os.environ:  # the job's log shows the trainer's resume line
        logging.basicConfig(level=logging.INFO)
    cell = Path(cell_dir)
    source = resume_checkpoint(checkpoint_dir(cell))
    with open(cell / "starts.log", "a") as f:
        f.write(f"{load_checkpoint(source)['step'] if source else 0}\n")
    real, pause = S.update_ema, read_json(cell / "task.json")["sleep_s"]

    def slow(ema, model, decay):
        real(ema, model, decay)
        time.sleep(pause)

    S.update_ema = slow  # each step's EMA update takes `sleep_s` longer
    result = T.train(read_json(cell / "config.json"), cell)
    with open(cell / "stops.log", "a") as f:
        f.write(f"{result.step} {int(result.stopped)}\n")
    if result.stopped:
        raise RuntimeError(f"training stopped at step {result.step}")
    return result.step


# ---- helpers -----------------------------------------------------------------------------------

def make_cells(root: Path, names: list[str]) -> list[Path]:
    cells = [root / name for name in names]
    for cell in cells:
        cell.mkdir(parents=True)
    return cells


def states_by(folder: Path, stage: str) -> dict[str, str]:
    return {s["cell"]: s["state"] for s in grid_status(folder) if s["stage"] == stage}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_stage_done(folder: Path, stage: str, timeout: float = 60) -> dict[str, str]:
    wait_for(lambda: set(states_by(folder, stage).values()) <= TERMINAL, timeout, f"stage {stage}")
    return states_by(folder, stage)


@pytest.fixture
def profile(slurm_cluster):
    """The local cluster's profile; requesting it starts the cluster (tests marked `slurm`)."""
    return load_profile("local")


# ---- tests -------------------------------------------------------------------------------------

def test_distributed_init_is_a_no_op_outside_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert init_distributed_from_slurm() == (0, 1, 0)
    assert "MASTER_ADDR" not in os.environ


def test_profiles_validate():
    assert load_profile("example").gpus_per_node == 8
    with pytest.raises(ValueError, match="profile: unknown config key 'partiton'; did you mean 'partition'"):
        validate_profile({"partiton": "debug"})
    with pytest.raises(ValueError, match="profile: nodes='2' must be of type int"):
        validate_profile({"nodes": "2"})
    with pytest.raises(ValueError, match="profile: cluster='slrum' is not allowed .did you mean 'slurm'"):
        validate_profile({"cluster": "slrum"})
    with pytest.raises(ValueError, match="'tasks_per_node' must be at least 1"):
        validate_profile({"tasks_per_node": 0})
    with pytest.raises(FileNotFoundError, match="available"):
        load_profile("no-such-profile")


@pytest.mark.slurm
def test_array_then_dependent_stage(tmp_path, profile):
    cells = make_cells(tmp_path, ["a", "b", "c"])
    first = submit_stage(profile, tmp_path, "first", first_stage, cells)
    second = submit_stage(profile, tmp_path, "second", second_stage, cells, after=first)

    assert set(states_by(tmp_path, "second").values()) == {"PENDING"}  # held by afterok
    assert wait_stage_done(tmp_path, "first") == dict.fromkeys("abc", "COMPLETED")
    assert wait_stage_done(tmp_path, "second") == dict.fromkeys("abc", "COMPLETED")

    assert [job.result() for job in first] == ["a", "b", "c"]
    assert [job.result() for job in second] == ["second-a", "second-b", "second-c"]
    assert all(job.done() and job.state == "COMPLETED" for job in first + second)
    last_first_end = max(read_json(c / "first.json")["end"] for c in cells)
    for cell in cells:
        env = read_json(cell / "first.json")
        assert env["python"] == PYTHON  # the project's venv, not a system python
        assert env["slurm_package"] == slurm.__file__
        assert env["rank"] == [0, 1, 0] and env["master_addr"]  # torch env:// variables exported
        assert read_json(cell / "second.json")["start"] >= last_first_end

    record = read_jobs(tmp_path)
    assert [e["cell"] for e in record["first"]] == ["a", "b", "c"]
    assert [e["job_id"] for e in record["second"]] == [job.job_id for job in second]

    # after jobs that already succeeded: no dependency left to wait on (their ids may be gone)
    (again,) = submit_stage(profile, tmp_path, "second", second_stage, cells[:1], after=first)
    assert again.result() == "second-a"
    assert len(read_jobs(tmp_path)["second"]) == 3  # the resubmitted cell replaced its entry


@pytest.mark.slurm
def test_status_falls_back_to_result_files(tmp_path, profile):
    cells = make_cells(tmp_path, ["done"])
    (job,) = submit_stage(profile, tmp_path, "one", second_stage, cells)  # fails: no first.json
    wait_stage_done(tmp_path, "one")
    # ids SLURM no longer knows (past MinJobAge): the state comes from submitit's result file
    shutil.copy(job.paths.result_pickle, job.paths.folder / "999999_0_0_result.pkl")
    record = read_jobs(tmp_path)
    record["one"] += [{**record["one"][0], "job_id": "999999_0", "cell": "forgotten"},
                      {**record["one"][0], "job_id": "999999_1", "cell": "lost"}]
    atomic_write_json(tmp_path / "jobs.json", record)
    assert states_by(tmp_path, "one") == {"done": "FAILED", "forgotten": "FAILED", "lost": "UNKNOWN"}


@pytest.mark.slurm
def test_failed_stage_cancels_its_dependents(tmp_path, profile):
    cells = make_cells(tmp_path, ["x"])
    failed = submit_stage(profile, tmp_path, "first", failing_stage, cells)
    submit_stage(profile, tmp_path, "second", second_stage, cells, after=failed)
    assert wait_stage_done(tmp_path, "first") == {"x": "FAILED"}
    assert wait_stage_done(tmp_path, "second") == {"x": "CANCELLED"}
    with pytest.raises(Exception, match="deliberate failure"):
        failed[0].result()


@pytest.mark.slurm
def test_cancel_sleeping_job(tmp_path, profile):
    cells = make_cells(tmp_path, ["sleeper"])
    (job,) = submit_stage(profile, tmp_path, "sleep", sleep_long, cells)
    wait_for(lambda: (cells[0] / "started").exists(), 30, "the job to start")
    assert states_by(tmp_path, "sleep") == {"sleeper": "RUNNING"}

    assert cancel(tmp_path) == [job.job_id]
    assert wait_stage_done(tmp_path, "sleep", timeout=30) == {"sleeper": "CANCELLED"}
    wait_for(lambda: job.done(force_check=True), 10, "submitit to see the job end")
    assert job.state == "CANCELLED"


@pytest.mark.slurm
def test_requeued_task_resumes_to_the_same_result(tmp_path, profile):
    task = {"steps": 30, "sleep_s": 0.4}  # >10 s left at the requeue; SLURM kills within ~5 s
    reference = make_cells(tmp_path / "reference", ["uninterrupted"])[0]
    atomic_write_json(reference / "task.json", {**task, "sleep_s": 0})
    expected = count_steps(str(reference))

    cells = make_cells(tmp_path / "grid", ["by_scontrol", "by_signal"])
    for cell in cells:
        atomic_write_json(cell / "task.json", task)
    jobs = submit_stage(profile, tmp_path / "grid", "train", count_steps, cells)

    def progressed(cell: Path) -> bool:
        return (cell / "progress.json").exists() and read_json(cell / "progress.json")["step"] >= 3

    wait_for(lambda: all(progressed(c) for c in cells), 40, "both tasks to make progress")
    subprocess.run(["scontrol", "requeue", jobs[0].job_id], check=True)  # an admin's requeue
    jobs[1]._interrupt()  # preemption: SIGTERM, then USR2 -> CellTask.checkpoint -> requeue

    assert wait_stage_done(tmp_path / "grid", "train", timeout=90) == dict.fromkeys(
        ["by_scontrol", "by_signal"], "COMPLETED")
    for job, cell in zip(jobs, cells):
        starts = [int(s) for s in (cell / "starts.log").read_text().split()]
        assert len(starts) == 2 and starts[0] == 0 and 3 <= starts[1] < task["steps"], starts
        assert (cell / "finishes.log").read_text().split() == [str(task["steps"])]  # killed, resumed
        assert read_json(cell / "result.json")["total"] == expected
        assert job.result() == expected


def _logged_steps(cell: Path) -> int:
    log_file = cell / "train_log.jsonl"
    return len(log_file.read_text().splitlines()) if log_file.exists() else 0


@pytest.mark.slurm
@pytest.mark.parametrize("how", ["timeout", "preemption"])
def test_a_signalled_training_job_checkpoints_that_step_and_resumes_from_it(tmp_path, profile, how):
    """USR2 (submitit's time-limit warning) or SIGTERM then USR2 (preemption) mid-run: the trainer
    finishes its step, checkpoints it and returns; the job requeues and resumes from that step, not
    from a periodic checkpoint (there is none: ckpt_every is past the end), and ends with the
    weights of an uninterrupted run."""
    from gentron.checkpoint import load_checkpoint
    from gentron.config import to_dict
    from gentron.train import train
    from tests.support.train_fixtures import state_equal, tiny_config

    cfg = tiny_config(tmp_path, train={"steps": 30, "ckpt_every": 1000, "log_every": 1})
    cell = make_cells(tmp_path / "grid", ["cell"])[0]
    atomic_write_json(cell / "config.json", to_dict(cfg))
    atomic_write_json(cell / "task.json", {"sleep_s": 0.3})
    (job,) = submit_stage(profile, tmp_path / "grid", "train", train_tiny, [cell])
    wait_for(lambda: _logged_steps(cell) >= 4, 90, "training to take steps")
    sent_at = _logged_steps(cell)
    job._interrupt(timeout=how == "timeout")

    assert wait_stage_done(tmp_path / "grid", "train", timeout=110) == {"cell": "COMPLETED"}
    starts = [int(s) for s in (cell / "starts.log").read_text().split()]
    stops = [line.split() for line in (cell / "stops.log").read_text().splitlines()]
    stopped_at = int(stops[0][0])
    assert stops[0][1] == "1" and sent_at <= stopped_at < sent_at + 5, (sent_at, stops)
    assert starts == [0, stopped_at] and stops[1] == ["30", "0"]
    assert f"at step {stopped_at} from {cell / 'checkpoints' / 'last.pt'}" in Path(job.paths.stderr).read_text()
    assert job.result() == 30
    straight = load_checkpoint(train(cfg, tmp_path / "straight").checkpoint)
    assert state_equal(straight["model"], load_checkpoint(cell / "checkpoints" / "last.pt")["model"])


def test_cell_task_requeues_only_after_the_trainer_checkpointed(tmp_path, monkeypatch):
    """In a job, submitit's USR2 handler requeues and exits. While the trainer runs, USR2 only stops
    it after the step; CellTask then hands the signal to that handler, with the checkpoint on disk."""
    import signal

    import gentron.train_step as S
    from gentron.checkpoint import load_checkpoint
    from gentron.config import to_dict
    from slurm.launcher import CellTask
    from tests.support.train_fixtures import tiny_config

    cell = make_cells(tmp_path, ["cell"])[0]
    atomic_write_json(cell / "config.json", to_dict(tiny_config(tmp_path, train={"steps": 6})))
    atomic_write_json(cell / "task.json", {"sleep_s": 0})
    real, calls, handled = S.update_ema, [], []

    def signal_at_step_two(ema, model, decay):
        real(ema, model, decay)
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGUSR2)

    def submitit_handler(signum, frame):  # checkpoint_and_try_requeue's stand-in
        handled.append((signum, load_checkpoint(cell / "checkpoints" / "last.pt")["step"]))

    monkeypatch.setattr(S, "update_ema", signal_at_step_two)  # the step's EMA update
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(RuntimeError, match="stopped at step 2"):
            CellTask(train_tiny)(str(cell))
        assert handled == [(signal.SIGUSR2, 2)]
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # the trainer put it back
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.slow  # planning the paper profile's XL/2 cells and their costs: about a minute on a busy CPU
def test_dry_run_warns_when_time_limit_and_requeues_cannot_cover_a_cell(tmp_path):
    """The example profile (24 h x (1 + 5 requeues) on 8 GPUs) cannot hold an XL/2 cell of the paper's
    500,000 steps: the plan the dry run prints says so with the max_num_timeout that would; a profile with
    it is quiet."""
    import math

    import yaml

    from ablations import costs, launch
    from ablations.grid import plan
    from slurm.launcher import time_limit_shortfall

    args = ["grid=text_encoder", "profile=paper", "data.path=/data/shards", "seeds=[0]", f"runs_dir={tmp_path}"]
    example = plan([*args, "slurm=example"])
    profile = load_profile("example")
    hours = max(costs.cell_costs(cell, gpus=8)["hours"] for cell in example.cells)
    runs = math.ceil(hours * 60 / profile.timeout_min)
    assert hours > profile.timeout_min * (1 + profile.max_num_timeout) / 60
    text = launch.format_plan(example)
    assert f"warning: train needs ~{hours:,.0f} h per task" in text and f"max_num_timeout to at least {runs - 1}," in text
    enough = {**yaml.safe_load((slurm.launcher.PROFILES_DIR / "example.yaml").read_text()), "max_num_timeout": runs - 1}
    (tmp_path / "enough.yaml").write_text(yaml.safe_dump(enough))
    assert time_limit_shortfall(load_profile(tmp_path / "enough.yaml"), "train", hours) is None
    assert time_limit_shortfall(validate_profile({**enough, "max_num_timeout": runs - 2}), "train", hours)
    assert launch.time_limit_lines(plan([*args, f"slurm={tmp_path / 'enough.yaml'}"])) == []
