"""A grid runner that dies (kill -9 included) takes its worker processes with it, and a second run of
the same grid while the first holds a cell refuses that cell, with one clear line, instead of
training it twice. Real processes: the grid runner with two workers on a tiny grid."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablations import stages
from ablations.grid import plan

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
# Two cells, each training long enough to still be training when the checks below run.
LONG = ["grid=conditioning", "seeds=[0]", "train.steps=100000", "train.ckpt_every=50", "train.batch_size=16",
        "data.num_train=256", "sample.steps=5", "sample.prompt_sets=[compshapes_smoke]", "local.workers=2"]
DEADLINE = 600  # seconds allowed for each wait on a loaded machine; no assertion is about time


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


def _workers(parent: int) -> list[int]:
    """The parent's process-pool workers (spawned Python processes, not the resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _wait(condition, what: str, proc: subprocess.Popen | None = None, limit: float = DEADLINE) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the grid runner ended ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """The grid runner, both cells training in its two workers."""
    runs = tmp_path_factory.mktemp("runs")
    cells = [runs / "conditioning" / c.cell_id for c in plan(LONG).cells]
    log = (runs / "first.log").open("w")
    proc = subprocess.Popen([sys.executable, "ablations/run.py", *LONG, f"runs_dir={runs}"], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: all((c / "train_log.jsonl").exists() for c in cells), "both cells log training steps", proc)
        workers = _workers(proc.pid)
        assert len(workers) == 2, workers
        yield {"proc": proc, "runs": runs, "cells": cells, "workers": workers}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the runner's session, whatever is left of it
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        for pid in _workers(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_second_run_refuses_the_cells_the_first_holds(running):
    second = subprocess.Popen([sys.executable, "ablations/run.py", *LONG, f"runs_dir={running['runs']}"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = second.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:  # it is training the cells a second time
        os.killpg(second.pid, signal.SIGKILL)
        out, err = second.communicate()
        raise AssertionError(f"the second run trained the held cells: {err[-2000:]}")
    assert second.returncode != 0
    assert "Traceback" not in err
    for cell in running["cells"]:
        line = next((line for line in err.splitlines() if f"cell {cell.name} is being run by another process" in line),
                    None)
        assert line is not None and "pid " in line, err[-3000:]
    assert all(_alive(pid) for pid in running["workers"])  # the first run goes on
    assert running["proc"].poll() is None


def test_kill_9_of_the_grid_runner_ends_its_workers_and_frees_its_cells(running):
    proc, workers = running["proc"], running["workers"]
    os.kill(proc.pid, signal.SIGKILL)  # the runner only, not its process group: as `kill -9 <pid>` does
    proc.wait()
    # a worker in training writes a checkpoint at its next step, then ends: seconds, not minutes
    _wait(lambda: not any(_alive(pid) for pid in workers), f"workers {workers} to end after their parent", limit=180)
    for cell in running["cells"]:  # the kernel released the dead workers' locks: a new run may take the cells
        with stages.cell_lock(cell):
            pass


def test_workers_of_a_dead_runner_start_no_queued_cell(tmp_path):
    """Four cells on two workers: when the runner dies, the two cells in training stop at a
    checkpoint and the two still queued are never started (no worker takes them up as an orphan)."""
    argv = [a for a in LONG if not a.startswith("seeds=")] + ["seeds=[0,1]"]
    cells = [tmp_path / "conditioning" / c.cell_id for c in plan(argv).cells]
    proc = subprocess.Popen([sys.executable, "ablations/run.py", *argv, f"runs_dir={tmp_path}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: list[int] = []
    try:
        _wait(lambda: sum((c / "train_log.jsonl").exists() for c in cells) == 2, "two cells log training steps", proc)
        workers = _workers(proc.pid)
        assert len(workers) == 2, workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait(lambda: not any(_alive(pid) for pid in workers), f"workers {workers} to end after their parent", limit=180)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    started = [c for c in cells if (c / "train_log.jsonl").exists() or (c / stages.LOCK).exists()]
    assert len(started) == 2, f"cells started after the runner died: {[c.name for c in started]}"
