"""The results browser under Streamlit's AppTest, on run folders built to DESIGN.md's contract."""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit
from streamlit.testing.v1 import AppTest

from ablations import runfolder
from reports import paper, results
from tests.support.report_fixtures import REPO, build_cell, build_grid, build_planned_grid

APP = str(Path(__file__).resolve().parents[1] / "reports" / "page.py")  # the page that reports/app.py serves


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


def statuses(at: AppTest) -> list[str]:
    """The cells table's status column."""
    return list(at.table[1].value["status"])


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def chart_data(at: AppTest) -> list[dict[str, pd.DataFrame]]:
    """Each chart's named datasets (sent to the page as Arrow)."""
    import pyarrow as pa

    return [{d.name: pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets}
            for chart in at.get("vega_lite_chart")]


def color_encodings(spec) -> list[dict]:
    """Every `color` encoding anywhere in a Vega-Lite spec (layers, facets, concatenations)."""
    found = []
    if isinstance(spec, dict):
        encoding = spec.get("encoding")
        if isinstance(encoding, dict) and "color" in encoding:
            found.append(encoding["color"])
        for value in spec.values():
            found += color_encodings(value)
    elif isinstance(spec, list):
        for value in spec:
            found += color_encodings(value)
    return found


def latex_problems(text: str) -> list[str]:
    """What would stop a LaTeX tabular from compiling, found without LaTeX: environments that do not
    pair up, unbalanced braces, a `$` left open on a line, math inside \textbf (its `$` makes
    \textbf{$x$} fragile and a bold number is `$\mathbf{x}$`), characters that only work in math mode
    (`_`, `^`) or not at all (`%`, `#`, non-ASCII such as ± or †) outside it, and rows whose `&`s do
    not match the column specification."""
    problems = []
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", text):
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            problems.append(f"\\end{{{env}}} without its \\begin")
    problems += [f"\\begin{{{env}}} never ended" for env in stack]
    if re.search(r"\\textbf\{[^}]*\$", text):
        problems.append("math inside \\textbf{...}")
    columns = 0
    for number, line in enumerate(text.splitlines(), 1):
        spec = re.match(r"\\begin\{tabular\}\{([lrc|]+)\}", line)
        if spec:
            columns = sum(c in "lrc" for c in spec.group(1))
            continue
        plain = re.sub(r"\\[\\$&%_#{}]", "", line)  # escaped characters (and the row end \\) are text
        depth, math = 0, False
        for char in plain:
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth < 0:
                problems.append(f"line {number}: '}}' closes nothing")
                depth = 0
            if char == "$":
                math = not math
            elif char in "_^" and not math:
                problems.append(f"line {number}: '{char}' outside math mode")
            elif char in "%#":
                problems.append(f"line {number}: unescaped '{char}'")
            elif ord(char) > 127:
                problems.append(f"line {number}: non-ASCII {char!r}")
        if depth:
            problems.append(f"line {number}: unbalanced braces")
        if math:
            problems.append(f"line {number}: '$' left open")
        if line.rstrip().endswith("\\\\") and "\\multicolumn" not in line and plain.count("&") != columns - 1:
            problems.append(f"line {number}: {plain.count('&') + 1} cells in a {columns}-column tabular")
    return problems


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


CI_CELL = re.compile(r"^-?\d[\d.e+-]* \[-?\d[\d.e+-]*, -?\d[\d.e+-]*\] n=\d+( †)?$")


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


def _set_stage(cell_dir: Path, **entry) -> None:
    found = json.loads((cell_dir / "manifest.json").read_text())
    found["status"] = "running"
    found["stages"]["record"] = {"status": "running", "start": "2025-01-01T00:00:00+00:00", **entry}
    (cell_dir / "manifest.json").write_text(json.dumps(found))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_from_manifest_and_process(tmp_path, monkeypatch):
    """A stage killed by a timeout leaves `running` in the manifest: the browser checks the process
    (this host: its pid) or, where it cannot, how long the cell's files have been still."""
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln", "cross_attn"], "seed": [0, 1]},
                          n_prompts=6, images=False)
    dead, alive, quiet, busy = sorted(p for p in grid_dir.iterdir() if p.is_dir())
    here = socket.gethostname()
    _set_stage(dead, host=here, pid=_dead_pid())
    _set_stage(alive, host=here, pid=os.getpid(), start=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    _set_stage(quiet, host="another-node", pid=1)
    old = time.time() - 2 * runfolder.STALL_SECONDS
    for path in [quiet, *quiet.rglob("*")]:
        os.utime(path, (old, old))
    _set_stage(busy, host="another-node", pid=1)
    status = results.load_grid(grid_dir).cells.set_index("path")["status"]
    assert [status[str(d)] for d in (dead, alive, quiet, busy)] == ["stopped", "running", "stopped", "running"]
    assert runfolder.cell_status(dead)[1].startswith("record says running, but its process")
    at = app(tmp_path, monkeypatch)
    assert_clean(at)
    assert sorted(statuses(at)) == ["running", "running", "stopped", "stopped"]


def test_a_reused_pid_is_not_the_stage_process(tmp_path):
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln"], "seed": [0]}, n_prompts=6, images=False)
    cell = next(p for p in grid_dir.iterdir() if p.is_dir())
    _set_stage(cell, host=socket.gethostname(), pid=os.getpid(), start="2000-01-01T00:00:00+00:00")
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


# ---------------------------------------------------------------- verdicts


VERDICT_COLUMNS = ["control", "arm", "metric", "difference [CI]", "p", "adjusted p", "verdict"]
SIGNED_CI = re.compile(r"^[+-]\d+\.\d{3} \[[+-]\d+\.\d{3}, [+-]\d+\.\d{3}\]$")


def test_verdicts_view_compares_every_arm_with_the_control(runs, monkeypatch):
    """Per grid: control, arm, metric, difference [CI], p, adjusted p and verdict, the numbers
    eval.verdicts computes from the shown cells' evaluator outputs (Holm over the grid by default)."""
    from eval import verdicts

    at = view(app(runs, monkeypatch), "Verdicts")
    assert_clean(at)
    assert at.subheader[0].value == "conditioning"
    table = at.table[0].value
    assert list(table.columns) == VERDICT_COLUMNS and len(table) == 6
    assert set(table["control"]) == {"conditioning=adaln"} and set(table["arm"]) == {"conditioning=cross_attn"}
    assert table["difference [CI]"].map(lambda v: bool(SIGNED_CI.match(v))).all()
    assert set(table["verdict"]) <= {"better", "worse", "not separated"}
    expected = verdicts.display_table(verdicts.grid_verdicts(runs / "conditioning"))
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected, check_dtype=False)
    captions = " ".join(c.value for c in at.caption)
    assert "Holm over 6 comparisons" in captions and "2 training seed(s)" in captions
    assert any(b.label == "Download verdicts of conditioning (CSV)" for b in at.get("download_button"))


def test_verdicts_view_takes_another_control_every_pair_and_bh(runs, monkeypatch):
    at = view(app(runs, monkeypatch).sidebar.multiselect[0].set_value(["mfg"]).run(), "Verdicts")
    assert_clean(at)
    control = at.selectbox(key="verdicts:control:mfg")
    assert control.options[0] == "mfg_scale=none" and control.value == "mfg_scale=none"  # grid.yaml's first arm
    assert len(at.table[0].value) == 3 * 6
    at = control.set_value("mfg_scale=2.0").run()
    assert_clean(at)
    assert set(at.table[0].value["control"]) == {"mfg_scale=2.0"}
    at = at.radio(key="verdicts:pairs").set_value("every pair").run()
    assert_clean(at)
    assert len(at.dataframe[0].value) == 6 * 6  # four arms: six pairs, more rows than a static table holds
    at = at.radio(key="verdicts:correction").set_value("bh").run()
    assert_clean(at)
    assert any("Benjamini-Hochberg over 36 comparisons" in c.value for c in at.caption)


def test_verdicts_follow_the_metric_and_cell_filters(runs, monkeypatch):
    at = app(runs, monkeypatch)
    at = at.sidebar.multiselect(key="metrics:conditioning").set_value(["compshapes_judge/color"]).run()
    at = view(at, "Verdicts")
    assert_clean(at)
    assert at.table[0].value["metric"].tolist() == ["compshapes_judge/color"]
    assert any("Holm over 1 comparisons" in c.value for c in at.caption)
    at = at.sidebar.multiselect(key="filter:axis.conditioning").set_value(["adaln"]).run()
    assert_clean(at)
    assert not at.table and any("nothing to compare" in i.value for i in at.info)


def test_verdicts_follow_a_changed_evaluation(tmp_path, monkeypatch):
    """Verdicts are cached on the cells' evaluator outputs: rewriting one changes the view."""
    from gentron.io import atomic_write_json

    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln", "cross_attn"], "seed": [0]}, n_prompts=24,
                          images=False)
    at = view(app(tmp_path, monkeypatch), "Verdicts")
    before = at.table[0].value.set_index("metric").loc["compshapes_judge/color", "difference [CI]"]
    cells = results.load_grid(grid_dir).cells
    path = Path(cells.loc[cells["axis.conditioning"] == "adaln", "path"].iloc[0]) / "eval" / "compshapes_judge.json"
    found = json.loads(path.read_text())
    for row in found["per_prompt"]:
        row["scores"] = {k: 0.0 for k in row["scores"]}
    atomic_write_json(path, found)
    at = at.run()
    assert_clean(at)
    after = at.table[0].value.set_index("metric").loc["compshapes_judge/color", "difference [CI]"]
    assert after != before


def test_paper_table_sets_our_verdicts_beside_table2_directions(tmp_path, monkeypatch):
    """cross-attention vs adaLN, the comparison Table 2 makes: our verdict per category beside the
    paper's difference; agrees / disagrees / not separated; the exports carry the verdicts."""
    build_grid(tmp_path, "conditioning", {"conditioning": ["adaln", "cross_attn"], "seed": [0]}, n_prompts=120,
               images=False)
    at = view(app(tmp_path, monkeypatch), "Paper table")
    assert_clean(at)
    comparisons = at.table[1].value
    assert list(comparisons.columns) == paper.COMPARISON_COLUMNS
    assert comparisons["category"].tolist() == paper.CATEGORIES
    assert set(comparisons["comparison"]) == {"cross_attn vs adaln"} and set(comparisons["grid"]) == {"conditioning"}
    assert comparisons.set_index("category").loc["color", "paper"] == "+36.97"  # 73.91 - 36.94
    assert set(comparisons["verdict"]) == {"better"} and set(comparisons["vs paper"]) == {"agrees"}
    assert any("Holm" in c.value and "about that training run" in c.value for c in at.caption)
    assert len(at.get("download_button")) == 2


def test_paper_comparisons_cover_every_pair_table2_makes():
    """text_encoder: T5 vs CLIP, both vs CLIP, both vs T5; scale: G/2 vs XL/2; an arm the paper has
    no row for (an embedded label) is matched by its grid-file name."""
    from eval.verdicts import Arms

    arms = Arms(axes=["text_encoder"], labels=["text_encoder=tiny CLIP", "text_encoder=tiny T5", "text_encoder=both"],
                keys={"text_encoder=tiny CLIP": {"text_encoder": "clip"}, "text_encoder=tiny T5": {"text_encoder": "t5"},
                      "text_encoder=both": {"text_encoder": "clip+t5"}})
    assert [(a.split("=")[1], r.split("=")[1]) for a, r, _, _ in paper.paper_pairs(arms)] == [
        ("tiny T5", "tiny CLIP"), ("both", "tiny CLIP"), ("both", "tiny T5")]
    scale = Arms(axes=["scale"], labels=["scale=XL", "scale=G"], keys={"scale=XL": {"scale": "XL/2"},
                                                                      "scale=G": {"scale": "G/2"}})
    assert [(a, r, ra, rr) for a, r, ra, rr in paper.paper_pairs(scale)] == [("scale=G", "scale=XL", 4, 3)]
    assert paper.paper_difference(4, 3, "color") == pytest.approx(76.74 - 75.65)
    assert paper.agreement("better", 1.09) == "agrees" and paper.agreement("worse", 1.09) == "disagrees"
    assert paper.agreement("not separated", 1.09) == "not separated" and paper.agreement("better", 0.0) == "disagrees"


def test_paper_exports_carry_the_verdicts(tmp_path):
    from eval import verdicts

    grid_dir = build_grid(tmp_path, "conditioning", {"conditioning": ["adaln", "cross_attn"], "seed": [0]},
                          n_prompts=60, images=False)
    grid = results.load_grid(grid_dir)
    comparisons = paper.paper_verdicts(verdicts.read_scores(grid_dir), "compshapes_judge", "conditioning",
                                       verdicts.grid_layout(grid_dir)["order"])
    table = paper.with_verdicts(paper.side_by_side(
        paper.paper_table(grid.results, grid.cells, ["axis.conditioning"], "compshapes_judge"), True), comparisons)
    csv = pd.read_csv(io.BytesIO(paper.to_csv(table)))
    assert {f"{c} verdict" for c in paper.CATEGORIES} <= set(csv.columns)
    row = csv[csv["variant"] == "cross_attn"].iloc[0]
    assert row["color verdict"] in {"better than adaln, agrees", "not separated from adaln",
                                    "worse than adaln, disagrees"}
    assert csv.loc[csv["variant"] == "adaln", "color verdict"].isna().all()
    latex = paper.to_latex(table, comparisons)
    assert latex.startswith(r"\begin{tabular}{llrrrrrrrrr}") and latex.count(r"\begin{tabular}") == 2
    assert latex_problems(latex) == []
    assert r"cross\_attn vs adaln" in latex


# ---------------------------------------------------------------- several grids side by side


FOUR = ["conditioning", "text_encoder", "scale", "mfg"]
MFG_ORDER = ["off", "1.0", "1.1", "1.2", "1.3"]


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    """All four ablation grids as the runner lays them out, two seeds each (mfg's prompts are its own
    compshapes_motion set, the others' compshapes_mini)."""
    root = tmp_path_factory.mktemp("four")
    for grid in FOUR:
        build_planned_grid(root, [f"grid={grid}", "seeds=[0,1]", "train.steps=20"], n_prompts=12, log_steps=20)
    return root


def four_grids(four: Path, monkeypatch, view_name: str | None = None) -> AppTest:
    at = app(four, monkeypatch, **({"view": view_name} if view_name else {}))
    at = at.sidebar.multiselect[0].set_value(FOUR).run()
    assert_clean(at)
    return at


NONE_OR_NAN = re.compile(r"(^|[=\s,(])(none|nan|None|NaN)($|[\s,)])")


def test_four_grids_get_a_table_each_with_only_their_own_axes(four, monkeypatch):
    """One metric table and one cells table per grid: every column and arm label is the grid's own
    (no 'text_encoder=none, mfg=none' on conditioning's arms), the sidebar filters offer no 'none'."""
    at = four_grids(four, monkeypatch)
    assert [m.value for m in at.markdown if m.value.startswith("#### ")] == [f"#### {g}" for g in FOUR]
    metric_tables, cells_tables = at.table[:4], at.table[4:]
    assert len(at.table) == 8
    own_axes = {"conditioning": "conditioning", "text_encoder": "text_encoder", "scale": "scale", "mfg": "mfg"}
    for grid, table in zip(FOUR, metric_tables):
        labels = list(table.value.columns[1:])
        assert labels and all(label.startswith(own_axes[grid] + "=") for label in labels), (grid, labels)
        assert not any(NONE_OR_NAN.search(str(v)) for v in [*table.value.columns, *table.value.to_numpy().ravel()])
    for grid, table in zip(FOUR, cells_tables):
        columns = set(table.value.columns)
        assert own_axes[grid] in columns and not (set(own_axes.values()) - {own_axes[grid]}) & columns, grid
        assert not any(NONE_OR_NAN.search(str(v)) for v in table.value[own_axes[grid]])
    for box in at.sidebar.multiselect:
        if box.key and box.key.startswith("filter:"):
            assert "none" not in box.options and "nan" not in box.options, box.key
    captions = " ".join(c.value for c in at.caption)
    assert "2 arms × 2 seeds (0, 1) · train steps 20" in captions and "5 arms × 2 seeds" in captions


def test_arms_come_in_the_grid_files_order(four, monkeypatch):
    """mfg's arms are off, 1.0 ... 1.3 in its grid file: its columns, cells, plots and curves keep
    that order (not the cells' hash order, nor the sorted one that puts 'off' last)."""
    at = four_grids(four, monkeypatch)
    mfg = at.table[3].value
    assert [c.rsplit(" (", 1)[0] for c in mfg.columns[1:]] == [f"mfg={v}" for v in MFG_ORDER]
    assert list(dict.fromkeys(at.table[7].value["mfg"])) == MFG_ORDER
    text = [c.rsplit(" (", 1)[0] for c in at.table[1].value.columns[1:]]
    assert text == ["text_encoder=tiny CLIP (contrastive)", "text_encoder=tiny T5 (span corruption)",
                    "text_encoder=tiny CLIP+T5"]
    at = view(at, "Plots")
    assert_clean(at)
    mfg_specs = [s for s in charts(at) if "mfg" in json.dumps(s.get("encoding", s.get("layer", "")))]
    assert mfg_specs
    for spec in mfg_specs:
        encoding = spec["layer"][0]["encoding"]
        assert encoding["y"]["sort"] == MFG_ORDER and encoding["color"]["scale"]["domain"] == MFG_ORDER


def test_plots_are_per_grid_with_labels_that_are_not_cut(four, monkeypatch):
    at = view(four_grids(four, monkeypatch), "Plots")
    specs = charts(at)
    assert len(specs) == 4 * 6, "each grid's six metrics"
    for spec in specs:
        y = spec["layer"][0]["encoding"]["y"]
        assert y["axis"]["labelLimit"] == 0, "an arm's label is drawn whole (wrapped when long), never cut"
        assert not any(NONE_OR_NAN.search(str(v)) for v in y["sort"])
        assert "grid=" not in json.dumps(y["sort"])


def test_numeric_axis_only_for_the_grid_that_has_one(four, monkeypatch):
    """Only mfg has a numeric axis: its guidance scales on the axis, 'off' beside them; the other
    grids are named, not plotted at an 'mfg=none' point."""
    at = view(four_grids(four, monkeypatch), "Numeric axis")
    assert [s.key for s in at.selectbox] == ["numeric:mfg"] and at.selectbox[0].value == "axis.mfg"
    assert any("conditioning, text_encoder, scale: no numeric axis" in c.value for c in at.caption)
    assert len(charts(at)) == 6
    for datasets in chart_data(at):
        rows = pd.concat(datasets.values(), ignore_index=True)
        assert set(rows["series"]) == {"mfg"} and set(rows["axis.mfg"]) == set(MFG_ORDER)


def test_samples_show_every_arm_and_say_why_a_slot_is_empty(four, monkeypatch):
    """Every arm of every grid is picked; mfg's arms have no compshapes_mini samples (theirs are
    compshapes_motion), and their slots say so."""
    at = view(four_grids(four, monkeypatch), "Samples")
    picked = at.multiselect(key="samples:cells").value
    assert len(picked) == 2 + 3 + 2 + 5 and all("seed 0" in p for p in picked)
    assert at.selectbox(key="samples:set").value == "compshapes_mini"
    assert len(at.get("image")) == (2 + 3 + 2) * 4, "seven arms with samples x four prompts"
    empty = [c.value for c in at.caption if "no samples in compshapes_mini" in c.value]
    assert len(empty) == 5 and all("it has compshapes_motion" in c for c in empty)
    assert any("image-rendering: pixelated" in h.proto.body for h in at.get("html"))
    at = at.selectbox(key="samples:set").set_value("compshapes_motion").run()
    assert_clean(at)
    assert len(at.get("image")) == 5 * 4
    assert sum("no samples in compshapes_motion" in c.value for c in at.caption) == 2 + 3 + 2


def test_samples_are_shown_at_a_whole_multiple_of_their_size(tmp_path):
    from PIL import Image

    from reports.samples_view import SAMPLE_WIDTH, _display_width

    for size, expected in [(20, 120), (64, 128), (32, 128), (256, 256), (100, 100)]:
        Image.new("RGB", (size, size)).save(tmp_path / f"{size}.png")
        assert _display_width(str(tmp_path / f"{size}.png")) == expected
        assert expected % size == 0 and (expected <= SAMPLE_WIDTH or expected == size)


def test_arms_disagree_filter_keeps_the_prompts_whose_scores_differ(tmp_path, monkeypatch):
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln", "cross_attn"], "seed": [0]}, n_prompts=12)
    cells = results.load_grid(grid_dir).cells.set_index("axis.conditioning")
    paths = {arm: Path(cells.loc[arm, "path"]) / "eval" / "compshapes_judge.json" for arm in ("adaln", "cross_attn")}
    base, other = (json.loads(p.read_text()) for p in paths.values())
    for i, row in enumerate(other["per_image"]):  # the same score as adaln everywhere but prompts 0 and 7
        if row["prompt_id"] not in (0, 7):
            row["scores"] = dict(base["per_image"][i]["scores"])
    paths["cross_attn"].write_text(json.dumps(other))
    at = view(app(tmp_path, monkeypatch), "Samples")
    assert any(c.value.startswith("12 prompts;") for c in at.caption)
    at = at.toggle(key="samples:disagree").set_value(True).run()
    assert_clean(at)
    assert any(c.value.startswith("2 prompts on which the arms' scores differ") for c in at.caption)
    assert len(at.get("image")) == 2 * 2


def test_forest_plot_per_grid_from_the_verdicts(four, monkeypatch):
    """The verdicts view draws, per grid, each arm's difference to the control per metric with its
    interval (eval.verdicts' numbers), a line at zero and the verdict as the mark's shape."""
    from eval import verdicts

    at = view(four_grids(four, monkeypatch), "Verdicts")
    assert [s.value for s in at.subheader] == FOUR
    specs = charts(at)
    assert len(specs) == 4
    for grid, spec, datasets in zip(FOUR, specs, chart_data(at)):
        points = spec["layer"][2]
        assert points["encoding"]["x"]["field"] == "difference" and points["encoding"]["shape"]["field"] == "verdict"
        assert spec["layer"][1]["encoding"]["x2"]["field"] == "ci_high"
        assert spec["layer"][0]["mark"]["type"] == "rule"  # zero
        rows = datasets[points["data"]["name"]]
        expected = verdicts.grid_verdicts(four / grid)
        assert len(rows) == len(expected)
        assert sorted(rows["difference"]) == pytest.approx(sorted(expected["difference"]))
        assert sorted(rows["ci_low"]) == pytest.approx(sorted(expected["ci_low"]))
    mfg = specs[3]["layer"][1]["encoding"]
    assert mfg["yOffset"]["sort"] == MFG_ORDER[1:], "mfg's arms against 'off', in the grid's order"


def test_run_detail_has_a_summary_card_before_the_raw_files(four, monkeypatch):
    cells = results.load_grid(four / "conditioning").cells
    cell = cells[(cells["axis.conditioning"] == "cross_attn") & (cells["axis.seed"] == 1)].iloc[0]
    at = app(four, monkeypatch, view="Run detail", cell=f"conditioning/{cell['cell_id']}")
    assert_clean(at)
    text = " ".join(m.value for m in at.markdown)
    assert "**Arm** conditioning=cross\\_attn · **seed** 1" in text
    assert "train steps: 20" in text and "batch size: 32" in text and "seeds of this arm: 0, 1" in text
    differs = next(t.value for t in at.table if "key" in t.value.columns)
    row = differs.set_index("key").loc["model.conditioning"]
    assert row["this cell"] == "cross_attn" and row["others in the grid"] == "adaln"
    assert "train.seed" in differs["key"].tolist() and len(differs) <= 4, "only what varies in the grid"
    metrics = next(t.value for t in at.table if "mean [lo, hi] n=prompts" in t.value.columns)
    assert len(metrics) == 6 and metrics.iloc[:, 1].map(lambda v: bool(CI_CELL.match(v))).all()
    other = cells[(cells["axis.conditioning"] == "cross_attn") & (cells["axis.seed"] == 0)]["cell_id"].iloc[0]
    assert f"[seed 0](?view=Run+detail&cell=conditioning/{other})" in text
    labels = [m.value for m in at.markdown]
    assert labels.index("**Raw files**") > max(i for i, m in enumerate(labels) if m.startswith("**Budget**"))


def test_no_resume_warning_for_cells_whose_process_is_alive(tmp_path, monkeypatch):
    """While a grid trains, its running cells (their process alive) are under way: a note, not a
    'Rerun ... to resume them' warning; a cell whose process is gone gets the warning."""
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln", "cross_attn"], "seed": [0]}, n_prompts=6,
                          images=False)
    live, dead = sorted(p for p in grid_dir.iterdir() if p.is_dir())
    here = socket.gethostname()
    _set_stage(live, host=here, pid=os.getpid(), start=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    at = app(tmp_path, monkeypatch)
    assert_clean(at)
    assert not [w.value for w in at.warning if "Rerun" in w.value]
    assert any(live.name in i.value and "process is alive" in i.value for i in at.info)
    at = app(tmp_path, monkeypatch, view="Run detail", cell=f"g/{live.name}")
    assert_clean(at)
    assert not any("Missing" in w.value for w in at.warning)
    assert any(i.value.startswith("Running: record: process") for i in at.info)
    _set_stage(dead, host=here, pid=_dead_pid())
    at = app(tmp_path, monkeypatch)
    warnings = [w.value for w in at.warning if "Rerun" in w.value]
    assert len(warnings) == 1 and dead.name in warnings[0] and live.name not in warnings[0]


def test_a_cell_whose_process_dies_reads_as_stopped_without_a_file_changing(tmp_path, monkeypatch):
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln"], "seed": [0]}, n_prompts=6, images=False)
    cell = next(p for p in grid_dir.iterdir() if p.is_dir())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _set_stage(cell, host=socket.gethostname(), pid=child.pid,
                   start=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
        at = app(tmp_path, monkeypatch)
        assert statuses(at) == ["running"] and not [w for w in at.warning if "Rerun" in w.value]
    finally:
        child.kill()
        child.wait()
    at = at.run()
    assert statuses(at) == ["stopped"] and any("Rerun" in w.value for w in at.warning)


def test_every_entry_carries_its_seeds_steps_and_prompts(four, monkeypatch):
    """Columns name their seeds and training steps, entries their n; fewer than MIN_PROMPTS prompts
    is marked; the CSV export carries the same provenance."""
    at = four_grids(four, monkeypatch)
    for table in at.table[:4]:
        assert all(re.search(r" \(2 seeds · 20 steps\)$", c) for c in table.value.columns[1:])
        assert table.value.iloc[:, 1:].map(lambda v: bool(CI_CELL.match(v)) and v.endswith("n=2 †")).all().all()
    assert any(f"marks fewer than {results.MIN_PROMPTS}" in c.value for c in at.caption)
    assert any(b.label.startswith("Download metrics") for b in at.get("download_button"))
    from reports.tables import metrics_csv

    grid = results.load_grid(four / "mfg")
    exported = pd.read_csv(io.BytesIO(metrics_csv(grid.results, grid.cells)))
    assert {"train_steps", "batch_size", "n", "few_prompts", "axis.seed", "axis.mfg"} <= set(exported.columns)
    assert set(exported["train_steps"]) == {20} and exported["few_prompts"].all()
    assert not [c for c in exported.columns if c.startswith("axis.") and c not in ("axis.seed", "axis.mfg")]


def test_provenance_formats(four):
    """[lo, hi], never ±; seeds, steps and n beside each paper-table row; '†' below MIN_PROMPTS."""
    assert results.format_entry(0.5, 0.4, 0.55, 3, 120) == "0.500 [0.400, 0.550] n=120"
    assert results.format_entry(0.5, 0.4, 0.55, 3, 12) == "0.500 [0.400, 0.550] n=12 †"
    assert results.format_entry(0.5, 0.4, 0.55, 3, None) == "0.500 [0.400, 0.550]"
    long = pd.concat([results.load_grid(four / g).results for g in FOUR], ignore_index=True)
    cells = pd.concat([results.load_grid(four / g).cells for g in FOUR], ignore_index=True)
    cells = results.sort_cells(cells, FOUR, {g: results.load_grid(four / g).order for g in FOUR})
    ours = paper.paper_table(long, cells, ["grid", *results.arm_columns(cells)], "compshapes_judge",
                             order=paper.variant_order(cells, ["grid", *results.arm_columns(cells)]))
    assert [v.split(", ")[0] for v in ours["variant"]] == ["conditioning"] * 2 + ["text_encoder"] * 3 + ["scale"] * 2 \
        + ["mfg"] * 5
    assert [v.split(", ")[1] for v in ours["variant"][-5:]] == MFG_ORDER
    shown = paper.display_table(paper.side_by_side(ours, True))
    assert list(shown.columns[:5]) == ["source", "variant", "seeds", "steps", "n"]
    assert set(shown.loc[shown["source"] == "ours", "seeds"]) == {"2"} and set(shown["steps"]) <= {"20", ""}
    assert shown.loc[shown["source"] == "ours", "color"].str.fullmatch(r"-?\d+\.\d\d \[-?\d+\.\d, -?\d+\.\d\] †").all()
    latex = paper.to_latex(shown.pipe(lambda _: paper.side_by_side(ours, True)))
    assert latex_problems(latex) == [] and latex.count(r"\textsuperscript{\dag}") >= 12 * 6


def test_no_plus_minus_anywhere_in_the_reports():
    """Intervals over prompts are not symmetric: every number is shown with `[lo, hi]`."""
    offenders = [f"{path.name}:{i}" for path in sorted((REPO / "reports").glob("*.py"))
                 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if "±" in line or "\\pm" in line]
    assert offenders == []
