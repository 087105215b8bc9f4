"""A run killed in the middle of any file write leaves a temporary file (`.<name>.<...>.tmp`) and
nothing else half-written; the next run removes every such temporary (in the cell folders, the grid
folder, its caches) and ends with the results of a run that was never interrupted.

The kill is simulated in this process, at the k-th write through gentron.io for every k of a tiny
one-cell grid: the write leaves its temporary file, and from then on every write fails as a dead
process's would (nothing more reaches the disk), unwinding the run."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import gentron.io as gio
from ablations.launch import main

pytestmark = pytest.mark.slow
ONE_CELL = """description: one tiny cell
axes:
  conditioning:
    cross_attn: {model.conditioning: cross_attn}
profiles:
  embedded: {}
"""
TINY = ["seeds=[0]", "train.steps=2", "train.ckpt_every=1", "train.batch_size=2", "data.num_train=4",
        "sample.steps=1", "sample.prompt_sets=[compshapes_smoke]", "local.workers=1"]


class Killed(BaseException):
    """The process died here (a BaseException: nothing on the way out treats it as a failed cell)."""


def killing_at(k: int, real):
    """An _atomic that counts writes; the k-th leaves its temporary file and kills the run."""
    state = {"writes": 0, "dead": False, "where": None}

    def atomic(path, write):
        if state["dead"]:
            raise Killed("dead processes write nothing")
        state["writes"] += 1
        if state["writes"] < k:
            return real(path, write)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{gio.HOST_TAG}-{os.getpid()}-killed{gio.TEMP_SUFFIX}"
        write(tmp)
        state["dead"], state["where"] = True, path
        raise Killed(f"killed while writing {path}")

    return atomic, state


def temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(f"*{gio.TEMP_SUFFIX}"))


def results_of(runs: Path) -> dict:
    """What the grid computed: each cell's metrics and sample images, and results.parquet's numbers."""
    import pandas as pd

    grid_dir = runs / "one_cell"
    out = {}
    for metrics in sorted(grid_dir.glob("*/metrics.json")):
        cell = metrics.parent
        out[cell.name] = {"metrics": json.loads(metrics.read_text()),
                          "images": {p.relative_to(cell).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
                                     for p in sorted(cell.glob("samples/*/*/*.png"))}}
    table = pd.read_parquet(grid_dir / "results.parquet").sort_values(["cell_id", "metric"])
    out["parquet"] = table[["cell_id", "metric", "mean", "ci_low", "ci_high", "n"]].to_dict("records")
    return out


def test_a_run_killed_at_any_write_leaves_nothing_behind_after_the_next(tmp_path, monkeypatch):
    grid_file = tmp_path / "one_cell.yaml"
    grid_file.write_text(ONE_CELL)
    argv = [f"grid={grid_file}", *TINY]
    real = gio._atomic

    counting, counted = killing_at(10 ** 9, real)
    monkeypatch.setattr(gio, "_atomic", counting)
    assert main([*argv, f"runs_dir={tmp_path / 'reference'}"]) == 0
    writes = counted["writes"]
    reference = results_of(tmp_path / "reference")
    assert writes >= 30 and reference  # grid.yaml ... results.parquet: every kind of file of a cell's run

    problems = []
    for k in range(1, writes + 1):
        runs = tmp_path / f"killed-at-{k}"
        atomic, state = killing_at(k, real)
        monkeypatch.setattr(gio, "_atomic", atomic)
        with pytest.raises(Killed):
            main([*argv, f"runs_dir={runs}"])
        left = temporaries(runs)
        monkeypatch.setattr(gio, "_atomic", real)
        assert left, f"write {k} ({state['where']}) left no temporary: the simulated kill did not happen"
        code = main([*argv, f"runs_dir={runs}"])
        stale = temporaries(runs)
        if code != 0 or stale or results_of(runs) != reference:
            problems.append(f"killed at write {k} ({state['where'].relative_to(runs)}): rerun exit {code}, "
                            f"temporaries left {stale}, same results: {code == 0 and results_of(runs) == reference}")
        shutil.rmtree(runs)
    assert not problems, "\n".join(problems)


KILLER = """
import os, sys
from pathlib import Path
import gentron.io as gio
from ablations.launch import main

target, real = sys.argv[1], gio._atomic

def atomic(path, write):
    if Path(path).name == target:  # a real death in the middle of this write: its temporary stays
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).parent / f".{Path(path).name}.{gio.HOST_TAG}-{os.getpid()}-dying{gio.TEMP_SUFFIX}"
        write(tmp)
        os._exit(9)
    return real(path, write)

gio._atomic = atomic
main(sys.argv[2:])
"""


@pytest.mark.parametrize("target", ["last.pt", "000000_42.png", "compshapes_judge.json"])
def test_a_process_that_dies_mid_write_leaves_nothing_after_the_next_run(target, tmp_path):
    """The same with a real process that dies (os._exit) while writing: its temporaries are named
    after it, so the next run, another process, knows their writer is gone."""
    import subprocess
    import sys

    grid_file = tmp_path / "one_cell.yaml"
    grid_file.write_text(ONE_CELL)
    runs = tmp_path / "runs"
    argv = [f"grid={grid_file}", *TINY, f"runs_dir={runs}"]
    repo = Path(__file__).resolve().parent.parent
    died = subprocess.run([sys.executable, "-c", KILLER, target, *argv], cwd=repo, capture_output=True, timeout=600)
    assert died.returncode == 9, died.stderr[-2000:]
    assert [p.name for p in runs.rglob(f"*{gio.TEMP_SUFFIX}")], "the dying write left no temporary"
    assert main(argv) == 0
    assert temporaries(runs) == []
