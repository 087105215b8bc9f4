"""Every embedded ablation grid runs end to end at a tiny budget: trained text encoders first, then
train -> sample -> evaluate -> record for every cell, a results table, and a dry run that prints its
estimated time from measured step costs."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from ablations import costs as cost_model
from ablations import launch
from ablations.grid import plan
from gentron.specs import ClipSpec, T5Spec
from gentron.errors import ConfigError

TINY_ENCODERS = [f"encoders.{name}.{key}={value}" for name in ("clip", "t5")
                 for key, value in (("steps", 3), ("width", 16), ("heads", 2), ("layers", 1), ("batch_size", 8),
                                    ("num_pairs", 16), ("warmup_steps", 1))]
TINY = ["train.steps=2", "train.batch_size=4", "data.num_train=12", "sample.steps=2", "sample.batch_size=16",
        "local.workers=1"]


def run_grid(tmp_path, grid: str, *extra: str) -> pd.DataFrame:
    argv = [f"grid={grid}", f"runs_dir={tmp_path}", *TINY, *extra]
    assert launch.main(argv) == 0
    results = pd.read_parquet(tmp_path / grid / "results.parquet")
    cells = plan(argv).cells
    assert set(results["cell_id"]) == {c.cell_id for c in cells}
    return results


def test_text_encoder_grid_trains_its_encoders_once_and_runs(tmp_path):
    results = run_grid(tmp_path, "text_encoder", *TINY_ENCODERS, "sample.prompt_sets=[compshapes_smoke]")
    store = tmp_path / "encoders"
    folders = sorted(p.name for p in store.iterdir() if p.is_dir())
    assert [f.split("-")[0] for f in folders] == ["clip_contrastive", "t5_span"], folders
    assert {"axis.text_encoder", "mean", "ci_low", "ci_high"} <= set(results.columns)
    assert results["axis.text_encoder"].nunique() == 3
    # each arm loads the trained encoders as real weights: an open_clip folder, a transformers folder
    configs = {c.arms["text_encoder"]: c.config.text_encoders for c in plan(
        ["grid=text_encoder", f"runs_dir={tmp_path}", *TINY, *TINY_ENCODERS]).cells}
    assert configs["clip"] == [ClipSpec(model=f"local-dir:{store / folders[0]}", pretrained=None)]
    assert configs["t5"] == [T5Spec(path=str(store / folders[1]))]
    assert [s.kind for s in configs["clip+t5"]] == ["clip", "t5"]
    # the scale grid names the same recipes: it reuses these folders
    scale = plan(["grid=scale", f"runs_dir={tmp_path}", *TINY, *TINY_ENCODERS]).cells
    assert {f for c in scale for f in c.encoders} == {str(store / f) for f in folders}


def test_scale_grid_runs(tmp_path):
    results = run_grid(tmp_path, "scale", *TINY_ENCODERS, "sample.prompt_sets=[compshapes_smoke]")
    assert results["axis.scale"].nunique() == 2
    cells = plan(["grid=scale", f"runs_dir={tmp_path}", *TINY, *TINY_ENCODERS]).cells
    shapes = {c.arms["scale"]: c.model() for c in cells}
    small, large = shapes["XL/2"], shapes["G/2"]
    # the paper's rule: depth, width and MLP grow together, MLP = 4 x width, same heads
    assert large.depth > small.depth and large.hidden_size > small.hidden_size
    assert small.mlp_hidden_size == 4 * small.hidden_size and large.mlp_hidden_size == 4 * large.hidden_size
    assert large.num_heads == small.num_heads
    assert {c.config.train.steps for c in cells} == {2}, "both sizes train the same number of steps"


@pytest.mark.slow  # trains the conditioning grid, then the video grid from it
def test_mfg_grid_starts_from_the_t2i_model_and_runs(tmp_path):
    run_grid(tmp_path, "conditioning")
    cells = plan(["grid=mfg", f"runs_dir={tmp_path}", *TINY]).cells
    source = next(c for c in plan(["grid=conditioning", f"runs_dir={tmp_path}", *TINY]).cells
                  if c.arms["conditioning"] == "cross_attn")
    assert {c.config.train.init_from for c in cells} == {
        str(tmp_path / "conditioning" / source.cell_id / "checkpoints" / "last.pt")}
    results = run_grid(tmp_path, "mfg")
    assert results["axis.mfg"].nunique() == 5
    motion = results[results["metric"].str.contains("motion")]
    assert not motion.empty and motion["mean"].notna().all()
    # cells that differ only in lambda_M train one model
    keys = {c.arms["mfg"]: c.config.train.p_motion_free for c in cells}
    assert keys["off"] == 0.0 and {keys[a] for a in ("1.0", "1.1", "1.2", "1.3")} == {0.5}


def test_mfg_without_its_t2i_grid_fails_with_the_fix(tmp_path):
    with pytest.raises(Exception, match="conditioning"):
        from ablations import stages

        p = plan(["grid=mfg", f"runs_dir={tmp_path}", *TINY])
        launch.prepare(p)
        stages.train_stage(str(p.grid_dir / p.cells[0].cell_id))


def test_dry_run_prints_an_estimate_from_measured_costs(tmp_path, capsys):
    costs = cost_model.load_costs()
    assert costs, f"{cost_model.COSTS_FILE} holds the measured step costs (benchmarks/step_costs.py)"
    for grid in ("conditioning", "text_encoder", "scale", "mfg"):
        p = plan([f"grid={grid}", f"runs_dir={tmp_path}"])
        e = cost_model.estimate(p, costs)
        assert not e["missing"], f"grid {grid}: unmeasured step costs {e['missing']}"
        assert e["total_s"] > 0
        assert launch.main([f"grid={grid}", f"runs_dir={tmp_path}", "dry_run=true"]) == 0
        assert "estimated time on" in capsys.readouterr().out


def test_estimate_packs_groups_onto_workers(tmp_path):
    p = plan(["grid=conditioning", f"runs_dir={tmp_path}"])
    (cell_a, cell_b) = p.cells
    costs = {"train": {cost_model.train_cost_key(c): 0.01 for c in p.cells},
             "sample": {cost_model.sample_cost_key(c): 0.0 for c in p.cells},
             "data": {cost_model.data_key(p.cells[0].config): 0.0}}
    one = cost_model.estimate(p, costs, workers=1)["total_s"]
    two = cost_model.estimate(p, costs, workers=2)["total_s"]
    steps = p.cells[0].config.train.steps
    assert one == pytest.approx(2 * 0.01 * steps) and two == pytest.approx(0.01 * steps)
    del costs["train"][cost_model.train_cost_key(cell_a)]
    assert cost_model.estimate(p, costs, workers=2)["missing"]


def test_encoder_recipe_overrides_and_errors(tmp_path):
    base = plan(["grid=text_encoder", f"runs_dir={tmp_path}"]).cells
    changed = plan(["grid=text_encoder", f"runs_dir={tmp_path}", "encoders.clip.steps=10"]).cells
    clip = lambda cells: next(c for c in cells if c.arms["text_encoder"] == "clip")  # noqa: E731
    assert clip(base).cell_id != clip(changed).cell_id, "another recipe is another encoder folder"
    t5 = lambda cells: next(c for c in cells if c.arms["text_encoder"] == "t5")  # noqa: E731
    assert t5(base).cell_id == t5(changed).cell_id
    with pytest.raises(ConfigError, match="encoders.clip"):
        plan(["grid=text_encoder", f"runs_dir={tmp_path}", "encoders.bert.steps=10"])
    with pytest.raises(ConfigError, match="did you mean 'encoders.clip.steps'"):
        plan(["grid=text_encoder", f"runs_dir={tmp_path}", "encoders.clip.stpes=10"])


def test_grid_files_are_valid_yaml_with_embedded_profiles():
    from ablations.grid import GRIDS_DIR

    for name in ("conditioning", "text_encoder", "scale", "mfg"):
        raw = yaml.safe_load((GRIDS_DIR / f"{name}.yaml").read_text())
        assert "embedded" in raw["profiles"]
