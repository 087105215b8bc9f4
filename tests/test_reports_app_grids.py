"""The results browser's verdicts and several grids side by side under Streamlit's AppTest (the
rest of the page: tests/test_reports_app.py)."""
from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from reports import paper, results
from tests.support.report_app import (CI_CELL, app, assert_clean, build_runs, chart_data, charts, dead_pid,
                                      latex_problems, set_stage, statuses, view)
from tests.support.report_fixtures import REPO, build_grid, build_planned_grid


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return build_runs(tmp_path_factory.mktemp("runs"))


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
    set_stage(live, host=here, pid=os.getpid(), start=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    at = app(tmp_path, monkeypatch)
    assert_clean(at)
    assert not [w.value for w in at.warning if "Rerun" in w.value]
    assert any(live.name in i.value and "process is alive" in i.value for i in at.info)
    at = app(tmp_path, monkeypatch, view="Run detail", cell=f"g/{live.name}")
    assert_clean(at)
    assert not any("Missing" in w.value for w in at.warning)
    assert any(i.value.startswith("Running: record: process") for i in at.info)
    set_stage(dead, host=here, pid=dead_pid())
    at = app(tmp_path, monkeypatch)
    warnings = [w.value for w in at.warning if "Rerun" in w.value]
    assert len(warnings) == 1 and dead.name in warnings[0] and live.name not in warnings[0]


def test_a_cell_whose_process_dies_reads_as_stopped_without_a_file_changing(tmp_path, monkeypatch):
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln"], "seed": [0]}, n_prompts=6, images=False)
    cell = next(p for p in grid_dir.iterdir() if p.is_dir())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        set_stage(cell, host=socket.gethostname(), pid=child.pid,
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
