"""Evaluation during training in the results browser (reports.progress and the Training curves
view): the validation metrics against the step per arm with their bands, and the validation loss
by timestep bin, on run folders with a fabricated validation.jsonl per cell."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import binomtest, t as student_t
from streamlit.testing.v1 import AppTest

from gentron.validation import VALIDATION_FILE
from reports import progress, results
from tests.support.report_fixtures import build_grid

APP = str(Path(__file__).resolve().parents[1] / "reports" / "page.py")
STEPS = (100, 200, 300)
BINS = [[0, 250], [250, 500], [500, 750], [750, 1000]]
ARM_RATE = {"adaln": 0.1, "cross_attn": 0.3}  # the judge's colour score rises by this per 100 steps


def rows(arm: str, seed: int, steps=STEPS) -> list[dict]:
    """A cell's validation rows: the loss falls with the step, colour binding rises (faster for cross_attn)."""
    out = []
    for s in steps:
        color = min(1.0, ARM_RATE[arm] * s / 100 + 0.125 * seed)
        out.append({"kind": "validation", "step": s, "loss": 1.0 / s + 0.01 * seed,
                    "loss_bins": [(b + 1) / s + 0.01 * seed for b in range(len(BINS))], "mse_bins": [0.0] * len(BINS),
                    "t_bins": BINS, "held_out": True, "judge": {"color": color, "shape": 0.5},
                    "judge_mean": (color + 0.5) / 2, "judge_prompts": 16})
    return out


def write_validation(grid_dir: Path, steps_of=None) -> None:
    for cell in sorted(p for p in grid_dir.iterdir() if (p / "cell.json").exists()):
        axes = json.loads((cell / "cell.json").read_text())["axes"]
        steps = (steps_of or {}).get(axes["conditioning"], STEPS)
        (cell / VALIDATION_FILE).write_text("".join(json.dumps(r) + "\n"
                                                    for r in rows(axes["conditioning"], int(axes["seed"]), steps)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_validation(build_grid(root, "conditioning", images=False))  # 2 arms x seeds 0, 1
    return root


def grid_frames(root: Path, name: str = "conditioning"):
    grid = results.load_grid(root / name)
    rows_of = {c: progress.read_validation(p) for c, p in zip(grid.cells["cell_id"], grid.cells["path"])}
    return grid, rows_of


def test_arm_curves_average_seeds_with_a_t_interval(runs):
    grid, rows_of = grid_frames(runs)
    curves = progress.arm_curves(rows_of, grid.cells, grid.order)
    assert list(dict.fromkeys(curves["arm"])) == ["adaln", "cross_attn"]  # the grid file's order
    assert set(curves["metric"]) == {progress.LOSS, progress.JUDGE_MEAN, "judge color", "judge shape"}
    color = curves[(curves["metric"] == "judge color") & (curves["arm"] == "cross_attn")]
    assert list(color["step"]) == list(STEPS) and (color["n_cells"] == 2).all()
    seeds = [0.3 * 2 + 0.0, 0.3 * 2 + 0.125]  # step 200, seeds 0 and 1
    row = color[color["step"] == 200].iloc[0]
    half = student_t.ppf(0.975, 1) * pd.Series(seeds).std() / math.sqrt(2)
    assert row["mean"] == pytest.approx(sum(seeds) / 2)
    # t with 1 degree of freedom is wide: the band is cut to what a rate can be
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(max(0.0, row["mean"] - half)),
                                               pytest.approx(min(1.0, row["mean"] + half)))
    assert row["mean"] + half > 1.0
    shape = curves[(curves["metric"] == "judge shape")]  # the same in every cell: no spread, no band width
    assert (shape["ci_low"] == 0.5).all() and (shape["ci_high"] == 0.5).all()
    loss = curves[(curves["metric"] == progress.LOSS) & (curves["arm"] == "adaln") & (curves["step"] == 100)].iloc[0]
    spread = [1.0 / 100, 1.0 / 100 + 0.01]
    loss_half = student_t.ppf(0.975, 1) * pd.Series(spread).std() / math.sqrt(2)
    assert loss["ci_low"] == 0.0 and loss["ci_high"] == pytest.approx(sum(spread) / 2 + loss_half)


def test_one_seed_gets_a_wilson_band_for_the_judge_and_none_for_the_loss(tmp_path):
    write_validation(build_grid(tmp_path, "conditioning", {"conditioning": ["adaln", "cross_attn"], "seed": [0]},
                                images=False))
    grid, rows_of = grid_frames(tmp_path)
    curves = progress.arm_curves(rows_of, grid.cells, grid.order)
    color = curves[(curves["metric"] == "judge color") & (curves["arm"] == "adaln") & (curves["step"] == 300)].iloc[0]
    wilson = binomtest(round(0.3 * 8), 8).proportion_ci(method="wilson")  # 16 prompts over 2 categories
    assert (color["ci_low"], color["ci_high"]) == (pytest.approx(wilson.low), pytest.approx(wilson.high))
    loss = curves[curves["metric"] == progress.LOSS]
    assert loss["ci_low"].isna().all() and loss["ci_high"].isna().all()


def test_timestep_curves_per_bin_and_the_latest_step_every_arm_has(tmp_path):
    write_validation(build_grid(tmp_path, "conditioning", {"conditioning": ["adaln", "cross_attn"], "seed": [0]},
                                images=False), steps_of={"adaln": (100, 200, 300), "cross_attn": (100, 200)})
    grid, rows_of = grid_frames(tmp_path)
    bins = progress.timestep_curves(rows_of, grid.cells, grid.order)
    assert progress.latest_common_step(bins) == 200  # cross_attn has not evaluated step 300 yet
    at = bins[(bins["step"] == 200) & (bins["arm"] == "adaln")]
    assert list(at["t_low"]) == [0, 250, 500, 750]
    assert list(at["mean"]) == pytest.approx([(b + 1) / 200 for b in range(4)])


def app(runs_dir: Path, monkeypatch, **query) -> AppTest:
    monkeypatch.setenv("GENTRON_RUNS", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query)
    return at.run()


def chart_frames(at: AppTest) -> list[tuple[dict, pd.DataFrame]]:
    """Each chart's spec and its data (every dataset it was sent, as Arrow)."""
    import pyarrow as pa

    out = []
    for chart in at.get("vega_lite_chart"):
        data = [pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets]
        out.append((json.loads(chart.proto.spec), pd.concat(data, ignore_index=True) if data else pd.DataFrame()))
    return out


def test_training_curves_view_draws_validation_per_arm_and_by_timestep(runs, monkeypatch):
    at = app(runs, monkeypatch, view="Training curves")
    assert not at.exception, [e.message for e in at.exception]
    assert "Evaluation during training" in [s.value for s in at.subheader]
    frames = {spec.get("title"): frame for spec, frame in chart_frames(at)}
    for metric in (progress.LOSS, progress.JUDGE_MEAN, "judge color", "judge shape"):
        frame = frames[metric]
        assert set(frame["metric"]) == {metric}
        assert sorted(frame["arm"].unique()) == ["adaln", "cross_attn"]
        assert sorted(frame["step"].unique()) == list(STEPS)
    color = frames["judge color"].set_index(["arm", "step"])["mean"]
    assert color[("cross_attn", 300)] > color[("cross_attn", 100)] > color[("adaln", 100)]
    timestep = frames["validation loss by timestep at step 300"]
    assert set(timestep["step"]) == {300} and sorted(timestep["arm"].unique()) == ["adaln", "cross_attn"]
    assert sorted(timestep["t"].unique()) == [125, 375, 625, 875]
    slider = at.get("select_slider")[0]
    slider.set_value(100).run()
    titles = [spec.get("title") for spec, _ in chart_frames(at)]
    assert "validation loss by timestep at step 100" in titles and not at.exception


def test_training_curves_view_says_how_to_evaluate_when_no_cell_did(tmp_path, monkeypatch):
    build_grid(tmp_path, "conditioning", images=False)
    at = app(tmp_path, monkeypatch, view="Training curves")
    assert not at.exception
    assert any("train.eval_every" in i.value for i in at.info)
