"""A tiny grid end to end on the local launcher: layout, metrics, results, table, rerun, resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ablations.grid import plan
from ablations.launch import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
# 2 cells (adaLN vs cross-attention, one seed), a few seconds of training each, 12 prompts
TINY = ["grid=conditioning", "seeds=[0]", "train.steps=20", "train.ckpt_every=5", "train.batch_size=16",
        "data.num_train=256", "sample.steps=5", "sample.prompt_sets=[compshapes_smoke]"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    proc = subprocess.run([sys.executable, "ablations/run.py", *TINY, f"runs_dir={runs}"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs, proc.stdout


def test_layout_metrics_results_and_table(tiny_run):
    runs, out = tiny_run
    grid_dir = runs / "conditioning"
    cells = plan(TINY).cells
    assert (grid_dir / "grid.yaml").exists()
    for cell in cells:
        d = grid_dir / cell.cell_id
        for name in ("config.yaml", "cell.json", "manifest.json", "checkpoints/last.pt", "train_log.jsonl",
                     "samples/compshapes_smoke/samples.jsonl", "eval/compshapes_judge.json", "metrics.json"):
            assert (d / name).exists(), name
        info = json.loads((d / "cell.json").read_text())
        assert info["axes"] == cell.axes and info["cell_id"] == cell.cell_id
        manifest = json.loads((d / "manifest.json").read_text())
        assert manifest["status"] == "done" and manifest["git"]["commit"] and "torch" in manifest["versions"]
        import torch  # the manifest names the float kernels that produced the numbers
        assert manifest["hardware"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert manifest["hardware"]["cpu"] and manifest["stages"]["train"]["interop_threads"] >= 1
        assert "cpu_simd" in manifest["hardware"]  # AVX2 / AVX-512 / AMX pick different float kernels
        assert all(manifest["stages"][s]["status"] == "done" for s in ("train", "sample", "evaluate", "record"))
        # what each stage wrote, as the status checks it later (size, and a digest of the small files)
        outputs = {s: manifest["stages"][s]["outputs"] for s in ("train", "sample", "evaluate", "record")}
        assert set(outputs["train"]) == {"checkpoints/last.pt"} and set(outputs["record"]) == {"metrics.json"}
        assert outputs["sample"]["samples/compshapes_smoke/*"]["files"] == 12
        assert outputs["evaluate"]["eval/compshapes_judge.json"]["blake2b"]
        assert "compshapes_judge/color" in json.loads((d / "metrics.json").read_text())
    table = pd.read_parquet(grid_dir / "results.parquet")
    assert {"grid", "cell_id", "metric", "mean", "ci_low", "ci_high", "n", "axis.conditioning", "axis.seed"} <= set(table)
    assert set(table["cell_id"]) == {c.cell_id for c in cells} and set(table["status"]) == {"done"}
    assert "adaln" in out and "cross_attn" in out and "compshapes_judge/color" in out
    assert "streamlit run reports/app.py" in out


def test_parallel_workers_split_the_cores_and_give_the_same_grid(tiny_run, tmp_path):
    runs, _ = tiny_run  # the sequential run of the same grid
    assert main([*TINY, f"runs_dir={tmp_path}", "local.workers=2"]) == 0
    threads = max(1, torch.get_num_threads() // 2)
    losses = lambda cell_dir: [json.loads(line)["loss"] for line in (cell_dir / "train_log.jsonl").read_text().splitlines()]  # noqa: E731
    for cell in plan(TINY).cells:
        parallel, sequential = tmp_path / "conditioning" / cell.cell_id, runs / "conditioning" / cell.cell_id
        manifest = json.loads((parallel / "manifest.json").read_text())
        assert manifest["status"] == "done"
        assert {manifest["stages"][s]["threads"] for s in ("train", "sample", "evaluate")} == {threads}
        # the same training (up to float summation order when the thread counts differ)
        assert losses(parallel) == pytest.approx(losses(sequential), rel=1e-3)
    table = pd.read_parquet(tmp_path / "conditioning" / "results.parquet")
    assert set(table["cell_id"]) == {c.cell_id for c in plan(TINY).cells} and table["mean"].notna().all()


def test_rerun_skips_everything(tiny_run, capsys):
    runs, _ = tiny_run
    grid_dir = runs / "conditioning"
    before = {p: p.stat().st_mtime_ns for p in grid_dir.glob("*/checkpoints/last.pt")}
    assert main([*TINY, f"runs_dir={runs}"]) == 0
    assert {p: p.stat().st_mtime_ns for p in grid_dir.glob("*/checkpoints/last.pt")} == before
    assert "compshapes_judge/color" in capsys.readouterr().out
    assert main([*TINY, f"runs_dir={runs}", "dry_run=true"]) == 0
    assert "pending" not in capsys.readouterr().out


def test_interrupted_training_resumes_to_the_same_result(tiny_run, tmp_path):
    runs, _ = tiny_run
    first = plan(TINY).cells[0]
    cell_dir = tmp_path / "conditioning" / first.cell_id
    cmd = [sys.executable, "ablations/run.py", *TINY, f"runs_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (cell_dir / "checkpoints" / "last.pt").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to save: resume from the periodic checkpoint
        proc.wait()
    manifest = json.loads((cell_dir / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "running"
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr
    manifest = json.loads((cell_dir / "manifest.json").read_text())
    assert manifest["stages"]["train"]["attempts"] == 2 and manifest["status"] == "done"
    reference = json.loads((runs / "conditioning" / first.cell_id / "metrics.json").read_text())
    assert json.loads((cell_dir / "metrics.json").read_text()) == reference
