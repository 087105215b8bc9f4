"""Sampling and scoring in shards: a profile's `sample:` / `evaluate:` sections (validated, defaults from
the top level), the plan's per-stage tasks and sampling cost, and a tiny grid whose sample and evaluate
stages run in K=2 shards (launcher=local runs the shards one after another) scoring exactly as K=1."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ablations.grid import plan
from gentron.errors import ConfigError
from slurm.launcher import load_profile, validate_profile

REPO = Path(__file__).resolve().parent.parent
TINY = ["grid=conditioning", "seeds=[0]", "train.steps=20", "train.ckpt_every=5", "train.batch_size=16",
        "data.num_train=256", "sample.steps=5", "sample.prompt_sets=[compshapes_smoke]"]


def test_stage_sections_take_the_top_level_where_unset():
    profile = validate_profile({"gpus_per_node": 8, "tasks_per_node": 8, "mem_gb": 480, "partition": "gpu",
                                "sample": {"gpus_per_node": 1, "tasks_per_node": 1, "shards": 8},
                                "evaluate": {"mem_gb": 64, "shards": 2}})
    sample, evaluate, train = (profile.for_stage(s) for s in ("sample", "evaluate", "train"))
    assert (sample.gpus_per_node, sample.tasks_per_node, sample.mem_gb, sample.partition) == (1, 1, 480, "gpu")
    assert (evaluate.gpus_per_node, evaluate.tasks_per_node, evaluate.mem_gb) == (8, 8, 64)
    assert train is profile and profile.shards("train") == 1
    assert (profile.shards("sample"), profile.shards("evaluate")) == (8, 2)
    plain = validate_profile({})
    assert plain.shards("sample") == plain.shards("evaluate") == 1 and plain.for_stage("sample") == plain
    example = load_profile("example")
    assert example.shards("sample") > 1 and example.for_stage("sample").gpus_per_node == 1


@pytest.mark.parametrize("raw, message", [
    ({"sample": {"shards": 0}}, "'sample.shards' must be at least 1"),
    ({"evaluate": {"shard": 2}}, "did you mean 'evaluate.shards'"),
    ({"sample": {"gpus_per_node": -1}}, "in section 'sample': 'gpus_per_node' must be >= 0"),
    ({"sample": {"shards": "many"}}, "sample.shards='many' must be of type int"),
])
def test_stage_sections_are_validated(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_profile(raw)


def test_plan_shows_tasks_per_stage_and_sampling_gpu_hours(tmp_path, capsys):
    from ablations import costs, gpu_hours, launch
    from gentron.generate import sampling_cost

    args = [*TINY, "slurm=example", f"runs_dir={tmp_path}"]
    p = plan(args)
    cell = p.cells[0]
    c = costs.cell_costs(cell, gpus=8)
    assert c["images"] == 12  # compshapes_smoke: 12 prompts x 1 seed
    flops = sampling_cost(cell.config, 12).flops
    text = sum(gpu_hours.text_encoder_flops(spec, cell.recipe(spec)) for spec in cell.config.text_encoders)
    assert c["sample_gpu_hours"] == pytest.approx((flops + 12 * text) / gpu_hours.rate() / 3600)  # pixels: no VAE
    assert costs.stage_tasks(p) == "train 1x8, sample 8x1, evaluate 4x1"
    launch.main([*args, "dry_run=true"])
    out = capsys.readouterr().out
    assert "sample GPU-h (est.)" in out and "train 1x8, sample 8x1, evaluate 4x1" in out


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, "ablations/run.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_sharded_sampling_and_scoring_equal_the_unsharded_run(tmp_path):
    profile = tmp_path / "sharded.yaml"
    profile.write_text(yaml.safe_dump({"cluster": "local", "sample": {"shards": 2}, "evaluate": {"shards": 2}}))
    _run(*TINY, f"runs_dir={tmp_path / 'whole'}")
    _run(*TINY, f"runs_dir={tmp_path / 'shards'}", f"slurm={profile}")  # launcher=local: shards in turn
    for cell in plan(TINY).cells:
        whole, shards = (tmp_path / run / "conditioning" / cell.cell_id for run in ("whole", "shards"))
        read = lambda d, name: json.loads((d / name).read_text())  # noqa: E731
        assert read(shards, "metrics.json") == read(whole, "metrics.json")
        judged = [read(d, "eval/compshapes_judge.json") for d in (whole, shards)]
        assert judged[1]["per_image"] == judged[0]["per_image"] and judged[1]["aggregate"] == judged[0]["aggregate"]
        listing = "samples/compshapes_smoke/samples.jsonl"
        assert (shards / listing).read_text() == (whole / listing).read_text()
        assert sorted(p.name for p in (shards / "eval/parts/compshapes_judge").iterdir()) == ["0-of-2.json",
                                                                                          "1-of-2.json"]
        manifest = read(shards, "manifest.json")
        assert manifest["status"] == "done"
        assert manifest["stages"]["sample"]["shards"] == manifest["stages"]["evaluate"]["shards"] == 2
        assert manifest["stages"]["sample"]["outputs"]["samples/compshapes_smoke/*"]["files"] == 12
    _run(*TINY, f"runs_dir={tmp_path / 'shards'}", f"slurm={profile}")  # a rerun finds every stage done
