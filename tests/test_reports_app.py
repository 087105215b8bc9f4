"""The results browser under Streamlit's AppTest, on run folders built to DESIGN.md's contract (the
verdicts and several grids side by side: tests/test_reports_app_grids.py)."""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit

from ablations import runfolder
from reports import paper, results
from tests.support.report_app import (CI_CELL, app, assert_clean, build_runs, charts, color_encodings, dead_pid,
                                      latex_problems, set_stage, statuses, view)
from tests.support.report_fixtures import REPO, build_cell, build_grid, build_planned_grid


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return build_runs(tmp_path_factory.mktemp("runs"))


def test_the_latex_check_finds_what_would_not_compile():
    good = "\\begin{tabular}{lr}\nA & $\\mathbf{1.00}$ {\\scriptsize $[0.50, 1.50]$} \\\\\n\\end{tabular}\n"
    assert latex_problems(good) == []
    assert latex_problems(good.replace("$\\mathbf{1.00}$", "\\textbf{$1.00$}")) == ["math inside \\textbf{...}"]
    assert latex_problems(good.replace("$[0.50", "[0.50")) == ["line 2: '$' left open"]
    assert latex_problems(good.replace("A &", "A_1 &")) == ["line 2: '_' outside math mode"]
    assert latex_problems(good.replace("1.00}$", "1.00 ± 0.5}$")) == ["line 2: non-ASCII '±'"]
    assert latex_problems(good.replace("A &", "A & B &")) == ["line 2: 3 cells in a 2-column tabular"]
    assert latex_problems(good.replace("\\end{tabular}", "")) == ["\\begin{tabular} never ended"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    """The mfg grid as the runner lays it out for `grid=mfg seeds=[0,1] train.steps=20`, plus a cell
    left over from an earlier configuration."""
    root = tmp_path_factory.mktemp("planned")
    grid_dir = build_planned_grid(root, ["grid=mfg", "seeds=[0,1]", "train.steps=20"], n_prompts=6)
    build_cell(grid_dir, "mfg", {"mfg": "1.0", "seed": 0}, n_prompts=6, images=False)
    return root


def test_empty_runs_folder_says_how_to_produce_runs(tmp_path, monkeypatch):
    at = app(tmp_path / "nothing", monkeypatch)
    assert_clean(at)
    assert "does not exist" in at.warning[0].value
    assert "python ablations/run.py grid=conditioning" in at.code[0].value



def test_table_has_metrics_as_rows_and_mean_with_ci_in_one_cell(runs, monkeypatch):
    """One row per metric, one column per arm (seeds averaged, the column naming its seeds and training
    steps), `mean [lo, hi] n=prompts` in each cell: six metrics over two arms fit a 1400 px page (each
    metric's mean, lo and hi as separate columns did not)."""
    at = app(runs, monkeypatch)
    assert_clean(at)
    table = at.table[0].value
    # the metrics share a family: it names the first column, the scores alone below it
    assert list(table["compshapes_judge"]) == [c for c in sorted(paper.CATEGORIES + ["non_spatial"])
                                               if c != "non-spatial"]
    assert list(table.columns) == ["compshapes_judge", "conditioning=adaln (2 seeds · 1500 steps)",
                                   "conditioning=cross_attn (2 seeds · 1500 steps)"]
    assert table.iloc[:, 1:].map(lambda v: bool(CI_CELL.match(v))).all().all()
    grid = results.load_grid(runs / "conditioning")
    grouped = results.group_over_seeds(grid.results, grid.cells, ["axis.conditioning"]).set_index(
        ["axis.conditioning", "metric"])
    mean, low, high = grouped.loc[("adaln", "compshapes_judge/color"), ["mean", "ci_low", "ci_high"]]
    shown = table.set_index("compshapes_judge").loc["color", "conditioning=adaln (2 seeds · 1500 steps)"]
    assert shown == f"{mean:.3f} [{low:.3f}, {high:.3f}] n=2 †"  # values below 1: three decimals; 2 colour prompts


def test_table_per_cell_and_transposed(runs, monkeypatch):
    at = app(runs, monkeypatch)
    at = at.radio(key="table:columns").set_value("cells").run()
    assert_clean(at)
    table = at.table[0].value
    assert len(table.columns) == 1 + 4 and all("seed=" in c for c in table.columns[1:])
    at = at.toggle(key="table:metric_rows").set_value(False).run()
    table = at.table[0].value
    assert len(table) == 4 and "compshapes_judge/color" in table.columns


def test_cells_table_links_every_cell_with_its_status(runs, monkeypatch):
    at = app(runs, monkeypatch)
    cells = at.table[1].value
    assert len(cells) == 4 and set(statuses(at)) == {"done"}
    assert (cells["run"] == "[details](?view=Run+detail&cell=conditioning/" + cells["cell_id"] + ")").all()


def test_short_tables_are_static_so_the_first_page_loads_no_grid_code(runs, monkeypatch):
    """Tables up to STATIC_ROWS rows are drawn with st.table: the interactive grid's JavaScript (1.2 MB,
    about a second of a cold first page) is never loaded for the make-run folder."""
    at = app(runs, monkeypatch)
    assert_clean(at)
    assert len(at.table) == 2 and not at.dataframe
    at = view(at, "Paper table")
    assert_clean(at)
    assert at.table and not at.dataframe


def test_long_tables_are_interactive_grids_with_link_columns(monkeypatch, tmp_path):
    """More cells than STATIC_ROWS: the cells table becomes the sortable, scrolling grid, its links a
    LinkColumn; the metric table, one row per metric, stays static."""
    from reports.widgets import STATIC_ROWS

    seeds = list(range(STATIC_ROWS // 2 + 1))
    build_grid(tmp_path, "many", {"conditioning": ["adaln", "cross_attn"], "seed": seeds}, n_prompts=6, images=False)
    at = app(tmp_path, monkeypatch)
    assert_clean(at)
    cells = at.dataframe[0].value
    assert len(cells) == 2 * len(seeds) > STATIC_ROWS
    assert cells["run"].str.fullmatch(r"\?view=Run\+detail&cell=many/\S+").all()
    config = json.loads(at.dataframe[0].proto.columns)
    assert config["run"]["type_config"]["type"] == "link" and config["run"]["type_config"]["display_text"] == "details"
    assert len(at.table) == 1 and len(at.table[0].value) == 6  # metrics as rows


@pytest.mark.parametrize("text", ["python ablations/run.py grid=mfg 'seeds=[0,1]'", "echo `x` ``y``"])
def test_inline_code_shows_a_command_as_typed(text):
    from markdown_it import MarkdownIt

    from reports.widgets import inline_code

    html = MarkdownIt("commonmark").renderInline(inline_code(text))
    assert html == "<code>" + text.replace("&", "&amp;") + "</code>"


def test_free_text_in_a_static_table_shows_as_typed():
    """A failure's message is Markdown-escaped in the static cells table: `__init__`, `*x*`, a link
    or a tag render as the characters they are."""
    from markdown_it import MarkdownIt

    from reports.widgets import escape_markdown

    text = "KeyError in __init__: *x* [a](b) <b>#1</b> `code` ~~s~~ 1. 2\\3 | a_b"
    html = MarkdownIt("commonmark").enable("strikethrough").enable("table").renderInline(escape_markdown(text))
    assert html == text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert escape_markdown(float("nan")) == ""


def test_group_by_averages_over_seeds(runs, monkeypatch):
    at = app(runs, monkeypatch)
    group = next(m for m in at.main.multiselect if m.label.startswith("Group by"))
    at = group.set_value(["axis.seed"]).run()
    assert_clean(at)
    table = at.table[0].value
    assert list(table.columns) == ["compshapes_judge", "seed=0 (2 cells · 1500 steps)", "seed=1 (2 cells · 1500 steps)"]


def test_metric_selection_is_per_grid(runs, monkeypatch, tmp_path):
    """A second grid brings its own metrics (all selected), and the first grid's choice stays its own."""
    for grid in ("conditioning",):
        (tmp_path / grid).symlink_to(runs / grid)
    build_grid(tmp_path, "other", {"conditioning": ["adaln"], "seed": [0]}, n_prompts=6, images=False, metric="judge_b")
    at = app(tmp_path, monkeypatch)
    at = at.sidebar.multiselect(key="metrics:conditioning").set_value(["compshapes_judge/color"]).run()
    at = at.sidebar.multiselect[0].set_value(["conditioning", "other"]).run()
    assert_clean(at)
    assert set(at.table[0].value["compshapes_judge"]) == {"color"}  # one table per grid
    assert set(at.table[1].value["judge_b"]) == {"color", "complex", "non_spatial", "shape", "spatial", "texture"}
    at = view(at, "Paper table")
    assert_clean(at)
    assert at.selectbox(key="paper:family").options == ["compshapes_judge", "judge_b"]
    at = at.selectbox(key="paper:family").set_value("judge_b").run()
    table = at.table[0].value
    assert (table["source"] == "ours").sum() == 1 and table.loc[table["source"] == "ours", "color"].str.len().all()


def test_filter_keeps_only_the_chosen_axis_values(runs, monkeypatch):
    at = app(runs, monkeypatch)
    at = at.sidebar.multiselect(key="filter:axis.conditioning").set_value(["adaln"]).run()
    assert set(at.table[1].value["conditioning"]) == {"adaln"}


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
    specs = charts(at)
    assert len(specs) == 6 and all("hconcat" in spec for spec in specs)


def test_numeric_axis_places_a_named_control_arm_beside_the_numbers(planned, monkeypatch):
    """mfg's arms are "off", "1.0" ... "1.3": the numbers go on a numeric axis, "off" in a panel beside it."""
    at = view(app(planned, monkeypatch), "Numeric axis")
    assert_clean(at)
    assert at.selectbox[0].value == "axis.mfg"
    frame = results.numeric_axis_frame(results.group_over_seeds(
        results.load_grid(planned / "mfg").results, results.load_grid(planned / "mfg").cells, ["axis.mfg"]), "axis.mfg")
    assert sorted(frame.loc[frame["x"].notna(), "axis.mfg"].unique()) == ["1.0", "1.1", "1.2", "1.3"]
    assert list(frame.loc[frame["x"].isna(), "axis.mfg"].unique()) == ["off"]
    specs = charts(at)
    assert len(specs) == 6
    for spec in specs:
        named, numeric = spec["hconcat"]
        assert numeric["encoding"]["x"]["type"] == "quantitative" if "encoding" in numeric else \
            numeric["layer"][0]["encoding"]["x"]["type"] == "quantitative"
        assert (named.get("encoding") or named["layer"][0]["encoding"])["x"]["type"] == "nominal"


def test_every_plot_has_a_legend_and_distinct_colours(planned, monkeypatch):
    at = app(planned, monkeypatch)
    seen = 0
    for name in ["Plots", "Training curves", "Numeric axis"]:
        at = view(at, name)
        assert_clean(at)
        for spec in charts(at):
            encodings = color_encodings(spec)
            assert encodings, f"{name}: a plot without colours"
            for color in encodings:
                assert color.get("legend", {}) is not None, f"{name}: a plot without legend"
                assert color["scale"]["scheme"] in ("tableau10", "tableau20"), name
            seen += 1
    assert seen >= 6 + 4 + 6


def test_training_curves_show_every_logged_quantity_smoothed(planned, monkeypatch):
    at = view(app(planned, monkeypatch), "Training curves")
    assert_clean(at)
    titles = [spec.get("title") for spec in charts(at)]
    for quantity in ("loss", "lr", "grad_norm", "steps_per_s", "images_per_s", "mse"):
        assert quantity in titles
    assert "vb" not in titles, "a quantity that is never logged (null) gets no plot"
    picked = at.multiselect(key="curves:cells")
    assert [v.split(" · ")[0] for v in picked.value] == ["off, seed 0", "1.0, seed 0", "1.1, seed 0", "1.2, seed 0",
                                                         "1.3, seed 0"], "one cell of each arm, in the grid's order"
    assert at.slider(key="curves:smoothing").value == pytest.approx(0.6)
    at = at.slider(key="curves:smoothing").set_value(0.9).run()
    assert_clean(at)


def test_curve_smoothing_is_a_debiased_ema_per_cell():
    frame = pd.DataFrame({"cell": ["a"] * 3 + ["b"] * 2, "step": [0, 10, 20, 0, 10],
                          "loss": [1.0, 0.0, 0.0, 5.0, 5.0], "lr": [0.1] * 5, "vb": [None] * 5})
    long = results.curve_frame(frame, 0.5)
    assert set(long["quantity"]) == {"loss", "lr"}
    loss_a = long[(long["cell"] == "a") & (long["quantity"] == "loss")]["smoothed"].tolist()
    assert loss_a == pytest.approx([1.0, 1 / 3, 1 / 7])  # TensorBoard's EMA, debiased: 0.5 / 1.5, 0.25 / 1.75
    assert long[(long["cell"] == "b") & (long["quantity"] == "loss")]["smoothed"].tolist() == [5.0, 5.0]
    assert long[long["quantity"] == "loss"]["smoothed"].tolist() != long[long["quantity"] == "loss"]["value"].tolist()
    assert results.curve_frame(frame, 0.0)["smoothed"].tolist() == results.curve_frame(frame, 0.0)["value"].tolist()


def test_status_from_manifest_and_process(tmp_path, monkeypatch):
    """A stage killed by a timeout leaves `running` in the manifest: the browser checks the process
    (this host: its pid) or, where it cannot, how long the cell's files have been still."""
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln", "cross_attn"], "seed": [0, 1]},
                          n_prompts=6, images=False)
    dead, alive, quiet, busy = sorted(p for p in grid_dir.iterdir() if p.is_dir())
    here = socket.gethostname()
    set_stage(dead, host=here, pid=dead_pid())
    set_stage(alive, host=here, pid=os.getpid(), start=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    set_stage(quiet, host="another-node", pid=1)
    old = time.time() - 2 * runfolder.STALL_SECONDS
    for path in [quiet, *quiet.rglob("*")]:
        os.utime(path, (old, old))
    set_stage(busy, host="another-node", pid=1)
    status = results.load_grid(grid_dir).cells.set_index("path")["status"]
    assert [status[str(d)] for d in (dead, alive, quiet, busy)] == ["stopped", "running", "stopped", "running"]
    assert runfolder.cell_status(dead)[1].startswith("record says running, but its process")
    at = app(tmp_path, monkeypatch)
    assert_clean(at)
    assert sorted(statuses(at)) == ["running", "running", "stopped", "stopped"]


def test_a_reused_pid_is_not_the_stage_process(tmp_path):
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln"], "seed": [0]}, n_prompts=6, images=False)
    cell = next(p for p in grid_dir.iterdir() if p.is_dir())
    set_stage(cell, host=socket.gethostname(), pid=os.getpid(), start="2000-01-01T00:00:00+00:00")
    assert runfolder.cell_status(cell)[0] == "stopped", "this process started long after the stage did"


def test_stale_cells_are_hidden_until_asked_for(planned, monkeypatch):
    at = app(planned, monkeypatch)
    assert_clean(at)
    grid = results.load_grid(planned / "mfg")
    assert (grid.cells["status"] == "stale").sum() == 1
    assert len(at.table[1].value) == 10 and "stale" not in statuses(at)
    at = at.sidebar.toggle(key="show_stale").set_value(True).run()
    assert_clean(at)
    assert len(at.table[1].value) == 11 and statuses(at).count("stale") == 1


def test_rerun_hint_reproduces_exactly_the_cells_shown(planned, monkeypatch):
    from ablations.grid import plan

    at = app(planned, monkeypatch)
    command = next(m.value.strip("` ") for m in at.markdown if m.value.startswith("` python ablations/run.py"))
    assert command == (f"python ablations/run.py grid=mfg profile=embedded 'seeds=[0,1]' train.steps=20 "
                       f"runs_dir={planned}")
    args = shlex.split(command)[2:]
    replanned = {cell.cell_id for cell in plan(args).cells}
    shown = set(at.table[1].value["cell_id"])
    assert replanned == shown and len(shown) == 10


def test_page_has_no_deploy_menu(runs, monkeypatch):
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] == "viewer"
    app(runs, monkeypatch)
    assert streamlit.get_option("client.toolbarMode") == "viewer"


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
    # its files changed a moment ago and no host is recorded: it reads as running, not as needing a rerun
    assert any(cells["cell_id"].iloc[0] in note and "running" in note for note in grid.notes)
    assert not any(cells["cell_id"].iloc[0] in p for p in grid.problems)


def test_paper_table_has_paper_rows_and_exports(runs, monkeypatch):
    at = view(app(runs, monkeypatch), "Paper table")
    assert_clean(at)
    table = at.table[0].value
    assert list(table["source"]).count("ours") == 2 and paper.PAPER_SOURCE in set(table["source"])
    assert list(table.columns) == ["source", "variant", "seeds", "steps", "n", *paper.CATEGORIES]
    ours = table[table["source"] == "ours"]
    assert re.fullmatch(r"-?\d+\.\d\d \[-?\d+\.\d, -?\d+\.\d\] †", ours["color"].iloc[0])  # 2 colour prompts
    assert list(ours["seeds"]) == ["2", "2"] and list(ours["steps"]) == ["1500", "1500"] and list(ours["n"]) == ["2"] * 2
    assert table.loc[table["source"] == paper.PAPER_SOURCE, "color"].iloc[1] == "73.91"
    assert len(at.get("download_button")) == 2
    assert any("?view=Run+detail&cell=conditioning/" in m.value for m in at.markdown)


def test_paper_table_csv_and_latex(runs):
    grid = results.load_grid(runs / "conditioning")
    ours = paper.paper_table(grid.results, grid.cells, ["axis.conditioning"], "compshapes_judge")
    table = paper.side_by_side(ours, include_paper=True)
    csv = paper.to_csv(table).decode()
    header = csv.splitlines()[0].split(",")
    assert header[:8] == ["source", "variant", *paper.CATEGORIES]
    assert {"color lo", "color hi", "color n", "seeds", "steps", "cells"} <= set(header)
    assert "73.91" in csv
    latex = paper.to_latex(table)
    assert latex.startswith(r"\begin{tabular}{llrrrrrrrrr}") and r"cross\_attn" in latex
    assert latex_problems(latex) == []
    assert r"\pm" not in latex and "±" not in latex, "an interval over prompts is not symmetric: [lo, hi]"
    assert re.search(r"\$\\mathbf\{\d+\.\d\d\}\$ \{\\scriptsize \$\[-?\d+\.\d, -?\d+\.\d\]\$\}", latex)
    assert r"\textsuperscript{\dag}" in latex  # 2 prompts per category: fewer than MIN_PROMPTS


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
    assert at.table[0].value.set_index("compshapes_judge").iloc[:, 0]["color"] == "0.123 [0.100, 0.200] n=6 †"


def test_group_over_seeds_uses_a_t_interval(runs):
    grid = results.load_grid(runs / "conditioning")
    grouped = results.group_over_seeds(grid.results, grid.cells, ["axis.conditioning"])
    row = grouped[(grouped["axis.conditioning"] == "adaln") & (grouped["metric"] == "compshapes_judge/color")].iloc[0]
    values = grid.results[(grid.results["axis.conditioning"] == "adaln") &
                          (grid.results["metric"] == "compshapes_judge/color")]["mean"].to_numpy()
    half = 12.706 * values.std(ddof=1) / np.sqrt(2)
    assert row["mean"] == pytest.approx(values.mean())
    assert row["ci_high"] - row["mean"] == pytest.approx(half, rel=1e-3)


def test_the_server_start_reads_every_grid_before_the_first_visitor(runs, monkeypatch):
    """reports/app.py serves the page as a Streamlit App whose start-up (warm_up) reads every grid
    of the runs folder into the page's cache: the first visitor's page loads no grid itself."""
    import ast

    from reports import browser

    tree = ast.parse((REPO / "reports" / "app.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "st.App"]
    assert len(calls) == 1 and ast.unparse(calls[0].args[0]) == "'page.py'"
    assert any(ast.unparse(n.func) == "browser.warm_up" for n in ast.walk(tree) if isinstance(n, ast.Call))

    monkeypatch.setenv("GENTRON_RUNS", str(runs))
    browser.cached_grid.clear()
    loaded = []
    real = results.load_grid
    monkeypatch.setattr(results, "load_grid", lambda path: loaded.append(Path(path).name) or real(path))
    browser.warm_up()
    assert sorted(loaded) == sorted(results.find_grids(runs))
    for name in results.find_grids(runs):  # what the first page asks for is cached
        browser.cached_grid(str(runs / name), results.grid_stamp(runs / name))
    assert len(loaded) == len(results.find_grids(runs))


def test_the_paper_table_also_shows_grids_without_table2_columns(tmp_path, monkeypatch):
    """grid=mfg scores motion (no Table 2 column): the paper-table view lists it below Table 2 with
    its own arms, so all the ablations of a runs folder are on one page."""
    build_grid(tmp_path, "conditioning", n_prompts=6, images=False)
    mfg = build_grid(tmp_path, "mfg", {"conditioning": ["cross_attn"], "mfg_scale": [None, 1.0], "seed": [0]},
                     n_prompts=6, images=False, parquet=False)
    for path in mfg.glob("*/metrics.json"):  # the judge's motion metrics in place of the image categories
        found = json.loads(path.read_text())
        path.write_text(json.dumps({k.rsplit("/", 1)[0] + "/motion_consistency": v for k, v in found.items()
                                    if k.endswith("/color")}))
    at = app(tmp_path, monkeypatch)
    at = view(at.sidebar.multiselect[0].set_value(["conditioning", "mfg"]).run(), "Paper table")
    assert_clean(at)
    assert set(at.table[0].value["source"]) == {"ours", paper.PAPER_SOURCE}
    assert list(at.table[1].value.columns) == paper.COMPARISON_COLUMNS  # our verdicts beside Table 2's
    motion = at.table[2].value
    assert list(motion.columns[:1]) == ["compshapes_judge"] and motion.iloc[:, 0].tolist() == ["motion_consistency"]
    assert motion.shape[1] == 3
    assert any(m.value.startswith("**mfg**") for m in at.markdown)


def test_the_paper_table_holds_several_grids_at_once(tmp_path, monkeypatch):
    """Two grids that both score Table 2's categories: one row per grid and arm (the grid is part of
    each row's name), as the paper table of all the ablations needs."""
    build_grid(tmp_path, "conditioning", n_prompts=6, images=False)
    build_grid(tmp_path, "scale", {"conditioning": ["cross_attn"], "size": ["S/2", "B/2"], "seed": [0]},
               n_prompts=6, images=False)
    at = app(tmp_path, monkeypatch)
    at = view(at.sidebar.multiselect[0].set_value(["conditioning", "scale"]).run(), "Paper table")
    assert_clean(at)
    ours = at.table[0].value.query("source == 'ours'")
    assert len(ours) == 4 and {v.split(",")[0] for v in ours["variant"]} == {"conditioning", "scale"}
    assert not any("none" in v for v in ours["variant"]), "an axis of the other grid is not part of a row's name"


def test_results_parquet_marks_the_cells_the_plan_no_longer_names(planned):
    """results.parquet holds every cell with metrics; `current` tells a reader which ones the grid's
    plan names now (the stale cell's rows are False), as the browser and the printed table filter."""
    from ablations import results as grid_results

    grid_dir = planned / "mfg"
    grid_results.write_results(grid_dir)
    table = pd.read_parquet(grid_dir / "results.parquet")
    stale = results.load_grid(grid_dir).cells.query("status == 'stale'")["cell_id"].tolist()
    assert len(stale) == 1
    assert not table.loc[table["cell_id"].isin(stale), "current"].any()
    assert table.loc[~table["cell_id"].isin(stale), "current"].all() and len(table) > len(stale)


def test_the_warm_up_survives_a_broken_grid_and_a_grid_without_arms(tmp_path, monkeypatch):
    """The server's start must not fail on what the page itself reports: a grid whose only axis is
    the seed, and a grid folder that cannot be read."""
    from reports import browser

    build_grid(tmp_path, "seeds_only", {"seed": [0, 1]}, n_prompts=6, images=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.parquet").write_bytes(b"not parquet")
    monkeypatch.setenv("GENTRON_RUNS", str(tmp_path))
    browser.cached_grid.clear()
    browser.warm_up()
