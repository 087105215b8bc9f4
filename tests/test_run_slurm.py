"""The tiny grid through the real local SLURM (tests.support.cluster): same numbers as the local launcher,
and a training job requeued mid-run (`scontrol requeue`) resumes and ends with the same result."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablations.grid import plan
from slurm.launcher import grid_status, read_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
TINY = ["grid=conditioning", "seeds=[0]", "train.steps=20", "train.ckpt_every=5", "train.batch_size=16",
        "data.num_train=256", "sample.steps=5", "sample.prompt_sets=[compshapes_smoke]"]


def run(*args, timeout=900):
    proc = subprocess.run([sys.executable, "ablations/run.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def metrics(runs: Path, cell_id: str) -> dict:
    return json.loads((runs / "conditioning" / cell_id / "metrics.json").read_text())


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    runs = tmp_path_factory.mktemp("local")
    run(*TINY, f"runs_dir={runs}")
    return runs


def test_slurm_grid_matches_the_local_run(slurm_cluster, local_reference, tmp_path):
    out = run(*TINY, f"runs_dir={tmp_path}", "launcher=slurm", "slurm=local", "wait=true")
    assert "compshapes_judge/color" in out
    jobs = read_jobs(tmp_path / "conditioning")
    assert set(jobs) == {"train", "sample", "evaluate", "record", "results"}
    for cell in plan(TINY).cells:
        assert metrics(tmp_path, cell.cell_id) == metrics(local_reference, cell.cell_id)
    status = run(*TINY, f"runs_dir={tmp_path}", "launcher=slurm", "slurm=local", "action=status")
    assert "COMPLETED" in status and "pending" not in status


def test_requeued_training_resumes_to_the_same_result(slurm_cluster, local_reference, tmp_path):
    args = [*TINY, f"runs_dir={tmp_path}", "launcher=slurm", "slurm=local"]
    run(*args)  # fire and forget
    first = plan(TINY).cells[0]
    ckpt = tmp_path / "conditioning" / first.cell_id / "checkpoints" / "last.pt"
    deadline = time.time() + 600
    while not ckpt.exists():
        assert time.time() < deadline, "training never wrote a checkpoint"
        time.sleep(0.5)
    job = next(e["job_id"] for e in read_jobs(tmp_path / "conditioning")["train"] if e["cell"] == first.cell_id)
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, timeout=60)
    while not (tmp_path / "conditioning" / "results.parquet").exists():
        assert time.time() < deadline + 600, "the grid did not finish after the requeue"
        failed = [j for j in grid_status(tmp_path / "conditioning") if j["state"] in ("FAILED", "CANCELLED")]
        assert not failed, f"jobs failed after the requeue: {failed}"  # fail now, not at the deadline
        time.sleep(2)
    manifest = json.loads((ckpt.parent.parent / "manifest.json").read_text())
    assert manifest["stages"]["train"]["attempts"] >= 2
    for cell in plan(TINY).cells:
        assert metrics(tmp_path, cell.cell_id) == metrics(local_reference, cell.cell_id)


# sampling slow enough per image (one image per batch, many steps) that a signal lands mid-shard
SLOW_SAMPLING = [*TINY, "sample.batch_size=1", "sample.steps=1000"]


def test_sharded_sampling_and_scoring_with_a_stopped_shard_match_the_unsharded_run(slurm_cluster, tmp_path):
    """sample.shards=2 and evaluate.shards=2: arrays of cells x 2 tasks, then a merge per cell. One
    sampling task is requeued mid-shard (`scontrol requeue`: killed, then run again) and resumes at the
    image; the metrics equal the unsharded local run's."""
    import re

    import yaml

    from slurm.launcher import load_profile

    reference = tmp_path / "local"
    run(*SLOW_SAMPLING, f"runs_dir={reference}")
    profile = {**vars(load_profile("local")), "sample": {"shards": 2}, "evaluate": {"shards": 2}}
    (tmp_path / "sharded.yaml").write_text(yaml.safe_dump(profile))
    runs = tmp_path / "slurm"
    run(*SLOW_SAMPLING, f"runs_dir={runs}", "launcher=slurm", f"slurm={tmp_path / 'sharded.yaml'}")
    grid = runs / "conditioning"
    first = plan(SLOW_SAMPLING).cells[0]
    part = grid / first.cell_id / "samples" / "compshapes_smoke" / ".shards" / "part-00001-of-00002.jsonl"
    deadline = time.time() + 900
    while not (part.exists() and part.read_text().count("\n") >= 1):
        assert time.time() < deadline, "the sampling shard never drew an image"
        time.sleep(0.2)
    entry = next(e for e in read_jobs(grid)["sample-shards"] if e["cell"] == first.cell_id and e["shard"] == 1)
    drawn = part.read_text().count("\n")
    requeued = subprocess.run(["scontrol", "requeue", entry["job_id"]], capture_output=True, text=True, timeout=60)
    assert requeued.returncode == 0 and drawn < 6, (drawn, requeued.stderr)
    while not (grid / "results.parquet").exists():
        assert time.time() < deadline + 600, "the grid did not finish after the requeue"
        failed = [j for j in grid_status(grid) if j["state"] in ("FAILED", "CANCELLED")]
        assert not failed, f"jobs failed after the requeue: {failed}"
        time.sleep(2)
    jobs = read_jobs(grid)
    assert set(jobs) == {"train", "sample-shards", "sample", "evaluate-shards", "evaluate", "record", "results"}
    assert sorted((e["cell"], e["shard"]) for e in jobs["sample-shards"]) == sorted(
        (c.cell_id, k) for c in plan(SLOW_SAMPLING).cells for k in (0, 1))
    logs = "".join(p.read_text(errors="replace") for p in Path(entry["log_folder"]).glob(f"{entry['job_id']}_*.err"))
    # the killed run never finished the shard; the requeued one drew only what was missing
    wrote = [int(n) for n in re.findall(r"wrote (\d+) samples of shard 1/2 to \S+/compshapes_smoke", logs)]
    assert len(wrote) == 1 and 1 <= wrote[0] <= 6 - drawn, (drawn, wrote, logs[-2000:])
    for cell in plan(SLOW_SAMPLING).cells:
        assert metrics(runs, cell.cell_id) == metrics(reference, cell.cell_id)
        assert (grid / cell.cell_id / "eval" / "parts" / "compshapes_judge" / "1-of-2.json").exists()
