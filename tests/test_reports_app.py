"""The results browser under Streamlit's AppTest, on run folders built to DESIGN.md's contract."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from report_fixtures import build_grid
from reports import paper, results

APP = str(Path(__file__).resolve().parents[1] / "reports" / "app.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    build_grid(root, "conditioning")
    build_grid(root, "mfg", {"conditioning": ["cross_attn"], "mfg_scale": [None, 1.0, 2.0, 4.0], "seed": [0, 1]},
               video=True, n_prompts=6)
    build_grid(root, "half", stop_after="train", parquet=False)
    return root


def app(runs_dir: Path, monkeypatch, **query) -> AppTest:
    monkeypatch.setenv("GENTRON_RUNS", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query)
    return at.run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def view(at: AppTest, name: str) -> AppTest:
    return at.sidebar.radio[0].set_value(name).run()


def test_empty_runs_folder_says_how_to_produce_runs(tmp_path, monkeypatch):
    at = app(tmp_path / "nothing", monkeypatch)
    assert_clean(at)
    assert "does not exist" in at.warning[0].value
    assert "python ablations/run.py grid=conditioning" in at.code[0].value


def test_table_lists_every_cell_with_cis(runs, monkeypatch):
    at = app(runs, monkeypatch)
    assert_clean(at)
    table = at.dataframe[0].value
    assert len(table) == 4
    assert {"axis.conditioning", "axis.seed", "compshapes_judge/color", "compshapes_judge/color lo",
            "compshapes_judge/color hi", "run"} <= set(table.columns)
    assert (table["compshapes_judge/color lo"] <= table["compshapes_judge/color"]).all()
    assert table["run"].str.startswith("?view=Run+detail&cell=conditioning/").all()


def test_group_by_averages_over_seeds(runs, monkeypatch):
    at = app(runs, monkeypatch)
    group = next(m for m in at.main.multiselect if m.label.startswith("Group by"))
    at = group.set_value(["axis.conditioning"]).run()
    assert_clean(at)
    table = at.dataframe[0].value.set_index("axis.conditioning")
    assert list(table["cells"]) == [2, 2]
    assert table.loc["cross_attn", "compshapes_judge/color"] > table.loc["adaln", "compshapes_judge/color"]


def test_filter_keeps_only_the_chosen_axis_values(runs, monkeypatch):
    at = app(runs, monkeypatch)
    at = at.sidebar.multiselect(key="filter:axis.conditioning").set_value(["adaln"]).run()
    assert set(at.dataframe[0].value["axis.conditioning"]) == {"adaln"}


@pytest.mark.parametrize("grid", ["conditioning", "mfg"])
def test_every_view_renders(runs, monkeypatch, grid):
    at = app(runs, monkeypatch)
    at = at.sidebar.multiselect[0].set_value([grid]).run()
    for name in ["Table", "Plots", "Training curves", "Numeric axis", "Samples", "Paper table", "Run detail"]:
        at = view(at, name)
        assert_clean(at)
    assert at.get("vega_lite_chart") or at.get("json"), "run detail shows something"


def test_numeric_axis_detects_mfg_scale(runs, monkeypatch):
    at = app(runs, monkeypatch)
    at = view(at.sidebar.multiselect[0].set_value(["mfg"]).run(), "Numeric axis")
    assert_clean(at)
    assert at.selectbox[0].value == "axis.mfg_scale"
    assert "mfg_scale = null" in at.caption[-1].value
    assert len(at.get("vega_lite_chart")) == 1


def test_samples_side_by_side_with_judge_scores(runs, monkeypatch):
    at = view(app(runs, monkeypatch), "Samples")
    assert_clean(at)
    images = at.get("image")
    assert len(images) == 2 * 4, "two arms x four prompts per page"
    captions = [c.value for c in at.caption]
    assert any("compshapes_judge/" in c for c in captions)
    assert sum(m.value.endswith("** · seed 42") for m in at.markdown) == 4


def test_video_samples_play_as_gifs(runs, monkeypatch):
    at = view(app(runs, monkeypatch).sidebar.multiselect[0].set_value(["mfg"]).run(), "Samples")
    assert_clean(at)
    assert len(at.get("image")) == 4 * 4


def test_half_finished_grid_names_what_is_missing(runs, monkeypatch):
    at = app(runs, monkeypatch).sidebar.multiselect[0].set_value(["half"]).run()
    assert_clean(at)
    warnings = " ".join(w.value for w in at.warning)
    assert "lack metrics.json" in warnings and "python ablations/run.py grid=half" in warnings
    for name in ["Plots", "Paper table", "Samples", "Run detail"]:
        at = view(at, name)
        assert_clean(at)
    assert any("Missing: sample, evaluate, record" in w.value for w in at.warning)


def test_a_periodic_checkpoint_is_not_a_trained_cell(tmp_path):
    """Stage states come from the manifest: checkpoints/last.pt exists from the first periodic save,
    so a cell whose training is still running must not read as trained."""
    grid_dir = build_grid(tmp_path, "half", stop_after="train")
    cells = results.load_grid(grid_dir).cells
    assert (Path(cells["path"].iloc[0]) / "checkpoints" / "last.pt").exists()
    assert set(cells["stage.train"]) == {"done"}
    manifest_path = Path(cells["path"].iloc[0]) / "manifest.json"
    found = json.loads(manifest_path.read_text())
    found["stages"]["train"]["status"] = "running"
    manifest_path.write_text(json.dumps(found))
    grid = results.load_grid(grid_dir)
    assert grid.cells.set_index("cell_id").loc[cells["cell_id"].iloc[0], "stage.train"] == "running"
    assert any("lack a finished training stage" in p for p in grid.problems)


def test_paper_table_has_paper_rows_and_exports(runs, monkeypatch):
    at = view(app(runs, monkeypatch), "Paper table")
    assert_clean(at)
    table = at.dataframe[0].value
    assert list(table["source"]).count("ours") == 2 and paper.PAPER_SOURCE in set(table["source"])
    assert list(table.columns[:8]) == ["source", "variant", *paper.CATEGORIES]
    assert len(at.get("download_button")) == 2
    assert any("?view=Run+detail&cell=conditioning/" in m.value for m in at.markdown)


def test_paper_table_csv_and_latex(runs):
    grid = results.load_grid(runs / "conditioning")
    ours = paper.paper_table(grid.results, grid.cells, ["axis.conditioning"], "compshapes_judge")
    table = paper.side_by_side(ours, include_paper=True)
    csv = paper.to_csv(table).decode()
    assert csv.splitlines()[0].startswith("source,variant,color,shape,texture,spatial,non-spatial,complex")
    assert "73.91" in csv
    latex = paper.to_latex(table)
    assert latex.startswith(r"\begin{tabular}{llrrrrrr}") and r"cross\_attn" in latex and r"\pm" in latex


def test_run_detail_opens_from_its_link(runs, monkeypatch):
    cell = results.load_grid(runs / "conditioning").cells["cell_id"].iloc[1]
    at = app(runs, monkeypatch, view="Run detail", cell=f"conditioning/{cell}")
    assert_clean(at)
    assert cell in at.subheader[0].value
    assert "model:" in at.code[0].value and len(at.expander) >= 4


def test_cache_follows_file_changes(tmp_path, monkeypatch):
    build_grid(tmp_path, "g", {"conditioning": ["adaln"], "seed": [0]}, n_prompts=6, parquet=False)
    at = app(tmp_path, monkeypatch)
    cell_dir = next(p for p in (tmp_path / "g").iterdir() if p.is_dir())
    metrics = json.loads((cell_dir / "metrics.json").read_text())
    metrics["compshapes_judge/color"] = {"mean": 0.123456, "ci_low": 0.1, "ci_high": 0.2, "n": 6}
    (cell_dir / "metrics.json").write_text(json.dumps(metrics))
    at = at.run()
    assert at.dataframe[0].value["compshapes_judge/color"].iloc[0] == pytest.approx(0.123456)


def test_group_over_seeds_uses_a_t_interval(runs):
    grid = results.load_grid(runs / "conditioning")
    grouped = results.group_over_seeds(grid.results, grid.cells, ["axis.conditioning"])
    row = grouped[(grouped["axis.conditioning"] == "adaln") & (grouped["metric"] == "compshapes_judge/color")].iloc[0]
    values = grid.results[(grid.results["axis.conditioning"] == "adaln") &
                          (grid.results["metric"] == "compshapes_judge/color")]["mean"].to_numpy()
    half = 12.706 * values.std(ddof=1) / np.sqrt(2)
    assert row["mean"] == pytest.approx(values.mean())
    assert row["ci_high"] - row["mean"] == pytest.approx(half, rel=1e-3)
