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
