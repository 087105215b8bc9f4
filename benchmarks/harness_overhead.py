"""Harness overhead per cell: everything the grid runner does except train/sample/eval compute.

Runs the `conditioning` grid (6 cells) through `ablations.launch.main` twice in a temporary runs
folder with no-op stages (train writes a checkpoint and a log line, generate a one-image manifest,
the judge a constant score), then once more with every cell already complete (the rerun path).
Target: < 2 s per cell for both.

    python benchmarks/harness_overhead.py
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import eval.judge
import gentron.generate
import gentron.train
from ablations.grid import plan
from ablations.launch import main
from eval.common import result
from gentron.io import atomic_write_bytes, atomic_write_text

TARGET_S = 2.0
ARGS = ["grid=conditioning", "sample.prompt_sets=[compshapes_smoke]"]


def fake_train(cfg, run_dir, judge=None):
    run_dir = Path(run_dir)
    atomic_write_bytes(run_dir / "checkpoints" / "last.pt", b"no-op")
    steps = cfg.train.steps  # the CellConfig the train stage loads from config.yaml
    atomic_write_text(run_dir / "train_log.jsonl", json.dumps({"step": steps, "loss": 0.0}) + "\n")
    return gentron.train.TrainResult(run_dir / "checkpoints" / "last.pt", steps, steps, stopped=False)


def fake_generate(cfg, checkpoint, prompts, out_dir):
    record = {"file": "x.png", "prompt": prompts[0]["prompt"], "seed": 42, "prompt_id": 0, "category": "color"}
    atomic_write_text(Path(out_dir) / "samples.jsonl", json.dumps(record) + "\n")
    atomic_write_bytes(Path(out_dir) / "x.png", b"")
    return Path(out_dir)


def fake_judge(samples_dir):
    per_image = [{"file": "x.png", "prompt_id": i, "seed": 42, "category": "color", "scores": {"color": i % 2}}
                 for i in range(12)]
    return result("compshapes_judge", per_image, {}, comparable_to_paper=False)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    assert main(argv) == 0
    return time.perf_counter() - start


def run() -> int:
    with tempfile.TemporaryDirectory() as runs, \
            mock.patch.object(gentron.train, "train", fake_train), \
            mock.patch.object(gentron.generate, "generate", fake_generate), \
            mock.patch.object(eval.judge, "evaluate", fake_judge):
        argv = [*ARGS, f"runs_dir={runs}"]
        cells = len(plan(ARGS).cells)
        fresh = timed(argv) / cells
        rerun = timed(argv) / cells
    print(f"\nharness overhead per cell (6 cells, no-op compute): fresh {fresh:.3f} s, rerun {rerun:.3f} s "
          f"(target < {TARGET_S} s)")
    return 0 if max(fresh, rerun) < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(run())
