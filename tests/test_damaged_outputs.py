"""A finished cell whose outputs are damaged after the fact (truncated, overwritten with garbage,
deleted) is not taken as done: its status names the file and why, the results table and
results.parquet keep the cell (as failed, with the reason) instead of dropping its arm, and a rerun
recomputes that stage and the stages after it, with one log line naming the file, to the same
results as before. A tiny grid of two cells, finished once, then copied for each damage."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ablations import results, runfolder
from ablations.grid import plan
from ablations.launch import main

pytestmark = pytest.mark.slow
TINY = ["grid=conditioning", "seeds=[0]", "train.steps=2", "train.ckpt_every=1", "train.batch_size=2",
        "data.num_train=4", "sample.steps=2", "sample.prompt_sets=[compshapes_smoke]", "local.workers=1"]
SAMPLES = "samples/compshapes_smoke"
# (output, the file damaged, the stage that must run again)
OUTPUTS = [
    ("checkpoint", "checkpoints/last.pt", "train"),
    ("samples.jsonl", f"{SAMPLES}/samples.jsonl", "sample"),
    ("image", f"{SAMPLES}/color/000000_42.png", "sample"),
    ("evaluator output", "eval/compshapes_judge.json", "evaluate"),
    ("metrics.json", "metrics.json", "record"),
]
DAMAGES = ["truncate", "garbage", "delete"]


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":  # the same size, other bytes: only the recorded digest tells
        path.write_bytes(bytes((b + 1) % 256 for b in data))
    else:
        path.unlink()


def fingerprint(grid_dir: Path, cell_id: str) -> dict:
    """What the cell computed: its metrics and every sample image's bytes."""
    cell = grid_dir / cell_id
    images = {p.relative_to(cell).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
              for p in sorted((cell / SAMPLES).rglob("*.png"))}
    return {"metrics": json.loads((cell / "metrics.json").read_text()), "images": images}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    runs = tmp_path_factory.mktemp("finished")
    assert main([*TINY, f"runs_dir={runs}"]) == 0
    cells = [c.cell_id for c in plan([*TINY, f"runs_dir={runs}"]).cells]
    grid_dir = runs / "conditioning"
    return runs, cells, {c: fingerprint(grid_dir, c) for c in cells}


def copy_of(finished, tmp_path) -> tuple[Path, Path]:
    runs, _, _ = finished
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    return copy, copy / "conditioning"


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind, rel, stage", OUTPUTS, ids=[o[0] for o in OUTPUTS])
def test_a_damaged_output_is_named_and_recomputed(kind, rel, stage, how, finished, tmp_path, caplog, capsys):
    runs, grid_dir = copy_of(finished, tmp_path)
    _, cells, reference = finished
    victim, other = cells[1], cells[0]
    cell_dir = grid_dir / victim
    others_before = {p: p.stat().st_mtime_ns for p in (grid_dir / other).rglob("*") if p.is_file()}
    damage(cell_dir / rel, how)

    state = runfolder.status(cell_dir)
    assert state.status == "failed" and not state.complete
    assert state.stages[stage] == "damaged"
    assert rel in state.reason or (kind == "image" and SAMPLES in state.reason), state.reason
    later = runfolder.STAGES[runfolder.STAGES.index(stage) + 1:]
    assert all(state.stages[s] == "pending" for s in later), state.stages

    caplog.set_level(logging.WARNING, logger="ablations.stages")
    assert main([*TINY, f"runs_dir={runs}"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "ablations.stages" and victim in r.getMessage()]
    assert len(lines) == 1 and f"{stage} runs again" in lines[0], lines
    assert runfolder.status(cell_dir).status == "done"
    assert fingerprint(grid_dir, victim) == reference[victim]
    # the other cell was not touched, and the table is whole
    assert {p: p.stat().st_mtime_ns for p in (grid_dir / other).rglob("*") if p.is_file()} == others_before
    table = pd.read_parquet(grid_dir / "results.parquet")
    assert set(table["cell_id"]) == set(cells) and table["mean"].notna().all()
    out = capsys.readouterr().out
    assert "adaln" in out and "cross_attn" in out and "no readable metrics" not in out


@pytest.mark.parametrize("how", DAMAGES)
def test_the_table_keeps_a_cell_whose_metrics_are_unreadable(how, finished, tmp_path):
    """Before any rerun: results.parquet and the printed table show the cell as failed with its reason."""
    runs, grid_dir = copy_of(finished, tmp_path)
    _, cells, _ = finished
    damage(grid_dir / cells[1] / "metrics.json", how)
    results.write_results(grid_dir)
    table = pd.read_parquet(grid_dir / "results.parquet")
    assert set(table["cell_id"]) == set(cells)
    broken = table[table["cell_id"] == cells[1]]
    assert broken["mean"].isna().all() and set(broken["status"]) == {"failed"}
    assert broken["status_reason"].str.contains("metrics.json").all()
    assert set(broken["metric"]) == set(table.loc[table["cell_id"] == cells[0], "metric"])
    text = results.format_results(grid_dir, cells)
    assert "no result" in text and f"{cells[1]} (conditioning=cross_attn, seed=0): failed: record output metrics.json" in text
    pooled = results.arm_table(table)  # the other arm keeps its numbers, pooled over its one cell
    assert pooled.loc["seeds (cells pooled)"].tolist() == ["1", "0"]


def test_a_damaged_manifest_redoes_the_cell(finished, tmp_path, caplog):
    """Nothing vouches for the outputs of a cell whose manifest is unreadable: every stage runs again
    (training resumes at its last step), to the same results."""
    runs, grid_dir = copy_of(finished, tmp_path)
    _, cells, reference = finished
    (grid_dir / cells[0] / "manifest.json").write_bytes(b"\x00garbage")
    caplog.set_level(logging.WARNING, logger="ablations.manifest")
    assert main([*TINY, f"runs_dir={runs}"]) == 0
    assert any("manifest.json" in r.getMessage() and "every stage" in r.getMessage() for r in caplog.records)
    assert fingerprint(grid_dir, cells[0]) == reference[cells[0]]


def test_a_redone_stage_keeps_the_stages_before_it(finished, tmp_path):
    """A stage that starts again resets the stages after it (their outputs came from what it replaces);
    the stages before it are kept."""
    runs, grid_dir = copy_of(finished, tmp_path)
    _, cells, _ = finished
    cell = grid_dir / cells[0]
    checkpoint = (cell / "checkpoints/last.pt").stat().st_mtime_ns
    images = {p: p.stat().st_mtime_ns for p in (cell / SAMPLES).rglob("*.png")}
    (cell / "metrics.json").unlink()
    (cell / "eval/compshapes_judge.json").unlink()
    assert runfolder.status(cell).stages == {"train": "done", "sample": "done", "evaluate": "damaged",
                                             "record": "damaged"}
    assert main([*TINY, f"runs_dir={runs}"]) == 0
    assert (cell / "checkpoints/last.pt").stat().st_mtime_ns == checkpoint
    assert {p: p.stat().st_mtime_ns for p in (cell / SAMPLES).rglob("*.png")} == images
    assert runfolder.status(cell).status == "done"


def test_a_checkpoint_too_big_to_digest_is_caught_by_its_checksum_when_sampled(finished, tmp_path, caplog):
    """A checkpoint beyond ablations.outputs.DIGEST_LIMIT is checked by size only at each status; overwritten
    in place with other bytes of the same size, it is caught when sampling loads it (its own checksum):
    it is moved aside, training runs again from the checkpoint before it, and sampling follows."""
    runs, grid_dir = copy_of(finished, tmp_path)
    _, cells, reference = finished
    cell = grid_dir / cells[1]
    found = json.loads((cell / "manifest.json").read_text())
    del found["stages"]["train"]["outputs"]["checkpoints/last.pt"]["blake2b"]  # as for a big checkpoint
    (cell / "manifest.json").write_text(json.dumps(found))
    damage(cell / "checkpoints/last.pt", "garbage")
    assert runfolder.status(cell).stages["train"] == "done"  # the size still matches
    shutil.rmtree(cell / SAMPLES)  # something makes sampling run again
    caplog.set_level(logging.WARNING, logger="ablations.stages")
    assert main([*TINY, f"runs_dir={runs}"]) == 0
    assert any("last.pt" in r.getMessage() and "train runs again" in r.getMessage() for r in caplog.records)
    assert (cell / "checkpoints/last.pt.corrupt").exists()
    assert runfolder.status(cell).status == "done"
    assert fingerprint(grid_dir, cells[1]) == reference[cells[1]]
