"""preset=smoke: the grid's arms and seeds, every cell small, in its own folder, marked as not a result."""
from __future__ import annotations

import pytest

from ablations.grid import plan
from gentron.errors import ConfigError


def test_smoke_keeps_the_arms_and_makes_every_cell_small_apart_from_the_results(tmp_path):
    full = plan(["grid=text_encoder", f"runs_dir={tmp_path}"])
    smoke = plan(["grid=text_encoder", "preset=smoke", "encoders.t5.steps=7", f"runs_dir={tmp_path}"])
    assert [c.axes for c in smoke.cells] == [c.axes for c in full.cells]
    assert smoke.grid_dir == tmp_path / "text_encoder-smoke" and smoke.args[-2:] == ["preset=smoke", "encoders.t5.steps=7"]
    assert smoke.grid.note.startswith("smoke: not a result") and smoke.grid.description.startswith("smoke: not a result")
    assert smoke.grid.record()["description"].startswith("smoke: not a result")  # grid.yaml, read by the browser
    for cell in smoke.cells:
        assert cell.config.train.steps == 100 and cell.config.data.num_train == 256
        assert all(name.endswith("_smoke") for name in cell.config.sample.prompt_sets)
        steps = {recipe["objective"]: recipe["steps"] for recipe in cell.encoders.values()}
        assert steps.get("clip_contrastive", 50) == 50 and steps.get("t5_span", 7) == 7  # the command line wins
    assert not {c.cell_id for c in smoke.cells} & {c.cell_id for c in full.cells}


def test_smoke_mfg_starts_from_the_smoke_conditioning_cell_and_a_typo_is_named(tmp_path):
    mfg = plan(["grid=mfg", "preset=smoke", f"runs_dir={tmp_path}"])
    conditioning = plan(["grid=conditioning", "preset=smoke", f"runs_dir={tmp_path}"])
    cross = next(c for c in conditioning.cells if c.arms["conditioning"] == "cross_attn")
    assert {c.config.train.init_from for c in mfg.cells} == {
        str(tmp_path / "conditioning-smoke" / cross.cell_id / "checkpoints" / "last.pt")}
    with pytest.raises(ConfigError, match="unknown preset 'smok'; did you mean 'smoke'"):
        plan(["grid=conditioning", "preset=smok", f"runs_dir={tmp_path}"])
