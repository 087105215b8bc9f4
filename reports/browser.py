"""The results browser (Streamlit): grids -> a table of metrics with CIs per arm or cell, the cells
with their status, verdicts (each arm against the control: difference, interval, p, adjusted p),
plots, training curves, numeric-axis (MFG) sweeps, side-by-side samples, the paper table (with our
verdict on each comparison Table 2 makes, beside the paper's direction) and run details.

`streamlit run reports/app.py -- --runs runs/` calls `main()`. Loading is cached on file mtimes.

A cell's status (ablations.runfolder.cell_status): done, failed, running (its process is alive),
stopped (its manifest says running but the process is gone, or, for another host, none of its
files changed for an hour), pending, or stale (the grid's plan in grid.yaml no longer names it;
hidden unless "Show stale cells" is on).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

if TYPE_CHECKING:
    import altair as alt

from ablations.registries import CONF_DIR
from eval import verdicts
from reports import paper, results
from reports.results import AXIS_PREFIX, CONFIG_PREFIX

log = logging.getLogger(__name__)

VIEWS = ["Table", "Verdicts", "Plots", "Training curves", "Numeric axis", "Samples", "Paper table", "Run detail"]
DEFAULT_RUNS = "runs"
EXAMPLE_COMMAND = "python ablations/run.py grid=conditioning"
MAX_CURVES = 8
PROMPTS_PER_PAGE = 4
SAMPLE_WIDTH = 256
MAX_COLUMNS = 10  # more arms or cells than this: metrics become the columns
STATIC_ROWS = 30  # tables up to this long are drawn static; longer ones as the interactive grid (show_table)
SMOOTHING = 0.6  # TensorBoard's default
STATUS_COLORS = {"done": "#2e7d32", "running": "#1565c0", "stopped": "#e65100", "failed": "#c62828",
                 "pending": "#6d6d6d", "stale": "#8d6e63"}
VERDICT_COLORS = {verdicts.BETTER: "#2e7d32", verdicts.WORSE: "#c62828", paper.AGREES: "#2e7d32",
                  paper.DISAGREES: "#c62828", verdicts.NOT_SEPARATED: "#6d6d6d"}
METRIC_REGISTRY = CONF_DIR / "metrics.yaml"  # an evaluator's `higher_is_better`, where it records one


def default_runs_dir(argv: list[str] | None = None) -> str:
    """--runs from the command line (after `--`), else $GENTRON_RUNS, else runs/."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs", default=os.environ.get("GENTRON_RUNS", DEFAULT_RUNS))
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args.runs


# ---------------------------------------------------------------- colours


def color(field: str, n: int, title: str | None = None) -> alt.Color:
    """A categorical colour with a legend: Tableau's 10 (or 20) distinct hues, never shades of one."""
    import altair as alt  # deferred: the table, the first page, draws no chart

    return alt.Color(field, title=title, scale=alt.Scale(scheme="tableau10" if n <= 10 else "tableau20"),
                     legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=480, symbolLimit=40,
                                       symbolOpacity=1, symbolStrokeWidth=3))


# ---------------------------------------------------------------- cached loading


@st.cache_data(show_spinner="Loading runs ...", max_entries=64)
def cached_grid(path: str, stamp: tuple) -> results.GridData:
    return results.load_grid(path)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_train_log(cell_dir: str, mtime: float) -> pd.DataFrame:
    return results.train_log(cell_dir)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_samples(cell_dir: str, prompt_set: str, stamp: tuple) -> pd.DataFrame:
    return results.samples_with_scores(cell_dir, prompt_set)


@st.cache_data(show_spinner="Reading the cells' scores ...", max_entries=32)
def cached_scores(grid_dir: str, stamp: tuple, cell_ids: tuple[str, ...]) -> pd.DataFrame:
    return verdicts.read_scores(grid_dir, cell_ids=list(cell_ids))


@st.cache_data(show_spinner="Computing verdicts ...", max_entries=64)
def cached_verdicts(grid_dir: str, stamp: tuple, cell_ids: tuple[str, ...], metrics: tuple[str, ...],
                    control: str | None, pairs: str, correction: str, level: float) -> pd.DataFrame:
    scores = cached_scores(grid_dir, stamp, cell_ids)
    table = verdicts.compare(scores[scores["metric"].isin(metrics)], control=control, pairs=pairs,
                             order=verdicts.grid_layout(grid_dir)["order"], higher_is_better=metric_directions(),
                             correction=correction, level=level)
    table.attrs["grid"] = Path(grid_dir).name
    return table


@st.cache_data(show_spinner="Computing verdicts ...", max_entries=64)
def cached_paper_verdicts(grid_dir: str, stamp: tuple, cell_ids: tuple[str, ...], metrics: tuple[str, ...],
                          family: str, correction: str, level: float) -> pd.DataFrame:
    scores = cached_scores(grid_dir, stamp, cell_ids)
    return paper.paper_verdicts(scores[scores["metric"].isin(metrics)], family, Path(grid_dir).name,
                                verdicts.grid_layout(grid_dir)["order"], correction=correction, level=level)


def metric_directions() -> dict[str, bool]:
    """Which way each metric is better: the evaluator registry's `higher_is_better` entries over
    eval.verdicts' defaults (FID, KID lower; the judges and CLIP score higher)."""
    return verdicts.directions_from_registry(METRIC_REGISTRY)


def scores_stamp(grid_dir: str | Path, cell_ids) -> tuple:
    """Changes whenever a cell's evaluator output does (written by rename: its eval folder's mtime)."""
    grid_dir = Path(grid_dir)
    return (results.grid_stamp(grid_dir), *(_mtime(grid_dir / c / "eval") for c in cell_ids))


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def load_train_log(cell_dir: str) -> pd.DataFrame:
    return cached_train_log(cell_dir, _mtime(Path(cell_dir) / "train_log.jsonl"))


def load_samples(cell_dir: str, prompt_set: str) -> pd.DataFrame:
    folder = Path(cell_dir)
    stamp = (_mtime(folder / "samples" / prompt_set / "samples.jsonl"), _mtime(folder / "eval"),
             *(_mtime(p) for p in sorted((folder / "eval").glob("*.json"))))
    return cached_samples(cell_dir, prompt_set, stamp)


# ---------------------------------------------------------------- page


def main() -> None:
    # also in .streamlit/config.toml; set here too so the page has no developer menu from any folder
    st.set_option("client.toolbarMode", "viewer")
    st.set_page_config(page_title="GenTron results", layout="wide")
    st.title("GenTron results")
    try:
        show_page()
    except Exception as e:  # the page must survive any half-written run folder
        log.exception("results page failed")
        st.error(f"The results could not be loaded: {type(e).__name__}: {e}. The run folders may be half-written; "
                 f"rerun the grid (`{EXAMPLE_COMMAND}`) or pick other grids.")


def show_page() -> None:
    runs_dir = Path(st.sidebar.text_input("Runs folder", default_runs_dir()))
    grids = results.find_grids(runs_dir)
    if not grids:
        show_no_runs(runs_dir)
        return
    chosen = st.sidebar.multiselect("Grids", grids, default=_default_grids(grids))
    if not chosen:
        st.info("Pick one or more grids in the sidebar.")
        return
    data = [cached_grid(str(runs_dir / g), results.grid_stamp(runs_dir / g)) for g in chosen]
    view = st.sidebar.radio("View", VIEWS, index=VIEWS.index(st.query_params.get("view", "Table"))
                            if st.query_params.get("view") in VIEWS else 0)
    show_stale = st.sidebar.toggle("Show stale cells", value=False, key="show_stale",
                                   help="Cells whose config the grid's current plan (grid.yaml) no longer names: "
                                        "left over from earlier settings or code versions.")
    show_problems(data)
    cells = pd.concat([d.cells for d in data], ignore_index=True)
    stale = int((cells["status"] == "stale").sum())
    if not show_stale:
        cells = cells[cells["status"] != "stale"]
    if stale:
        st.caption(f"{stale} stale cell{'s' if stale > 1 else ''} "
                   f"{'shown' if show_stale else 'hidden (turn on “Show stale cells”)'}: the grid's current plan no "
                   "longer names their configs.")
    cells = filter_cells(cells)
    long = filter_metrics(data, cells)
    guarded(VIEW_FUNCTIONS[view], long, cells, data)


def _default_grids(grids: list[str]) -> list[str]:
    """?grid=a&grid=b, else the grid of ?cell=grid/id, else the first grid."""
    wanted = [g for g in st.query_params.get_all("grid") if g in grids]
    cell_grid = st.query_params.get("cell", "").split("/")[0]
    return wanted or ([cell_grid] if cell_grid in grids else grids[:1])


def guarded(view, long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    """Draw a view; an unexpected error becomes a message on the page, never a traceback."""
    try:
        view(long, cells, data)
    except Exception as e:  # the page must survive any half-written run folder
        log.exception("view %s failed", view.__name__)
        st.error(f"This view could not be drawn: {type(e).__name__}: {e}. The run folders may be half-written; "
                 f"rerun the grid (`{EXAMPLE_COMMAND}`) or pick other grids.")


def show_no_runs(runs_dir: Path) -> None:
    where = "does not exist" if not runs_dir.exists() else "holds no grids yet"
    st.warning(f"The runs folder `{runs_dir}` {where}. Run a grid to produce results, for example:")
    st.code(EXAMPLE_COMMAND, language="bash")
    st.markdown("Each grid writes `runs/<grid>/` with one folder per cell (config, checkpoints, samples, "
                "eval, metrics.json) and `results.parquet`; see DESIGN.md 'A run folder'. "
                "Point this page elsewhere with `streamlit run reports/app.py -- --runs <folder>`.")


def show_problems(data: list[results.GridData]) -> None:
    problems = [p for d in data for p in d.problems]
    if problems:
        with st.expander(f"⚠ {len(problems)} things are missing or incomplete", expanded=True):
            for problem in problems:
                st.warning(problem)


def filter_cells(cells: pd.DataFrame) -> pd.DataFrame:
    st.sidebar.markdown("**Filter cells**")
    for col in results.axis_columns(cells):
        text = results.as_text(cells[col])
        values = sorted(text.unique())
        if len(values) > 1:
            keep = st.sidebar.multiselect(col.removeprefix(AXIS_PREFIX), values, default=values, key="filter:" + col)
            cells = cells[text.isin(keep)]
    return cells


def filter_metrics(data: list[results.GridData], cells: pd.DataFrame) -> pd.DataFrame:
    """The results of the shown cells, with a metric choice per grid (a newly added grid shows all of its own)."""
    parts = []
    box = st.sidebar.expander("Metrics", expanded=False)
    for grid in data:
        if grid.results.empty:
            continue
        metrics = sorted(grid.results["metric"].unique())
        keep = box.multiselect(f"of {grid.name}", metrics, default=metrics, key=f"metrics:{grid.name}")
        parts.append(grid.results[grid.results["metric"].isin(keep)])
    if not parts:
        return pd.DataFrame(columns=results.RESULT_COLUMNS)
    long = pd.concat(parts, ignore_index=True)
    return long.merge(cells[["grid", "cell_id"]], on=["grid", "cell_id"])


def _no_metrics(long: pd.DataFrame) -> bool:
    if long.empty:
        st.info(f"No metrics for these cells yet: they appear once cells finish evaluation "
                f"(`{EXAMPLE_COMMAND}` resumes unfinished cells). Training curves and run details work already.")
        return True
    return False


def _arm_frame(long: pd.DataFrame, cells: pd.DataFrame, extra: list[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """Metrics averaged over seeds per arm, with an 'arm' label column."""
    arms = [c for c in results.arm_columns(cells) if c not in extra]
    by = (["grid"] if cells["grid"].nunique() > 1 else []) + arms + list(extra)
    grouped = results.group_over_seeds(long, cells, by)
    label_cols = (["grid"] if "grid" in by else []) + arms
    return grouped.assign(arm=results.arm_labels(grouped, label_cols)), arms


def show_rerun(cells: pd.DataFrame, data: list[results.GridData]) -> None:
    """The command per grid that plans exactly its current cells again (recorded grid, profile, seeds
    and overrides) and resumes whatever is unfinished."""
    for grid in data:
        shown = cells[cells["grid"] == grid.name]
        if shown.empty:
            continue
        current = shown[shown["status"] != "stale"]
        planned = int((grid.cells["status"] != "stale").sum())
        st.markdown(inline_code(grid.rerun))  # not st.code: its highlighter (1.6 MB of JavaScript) costs the first page 0.25 s
        notes = [f"Plans the {planned} current cells of '{grid.name}' (the {len(current)} shown are among them); "
                 "done cells are skipped, unfinished ones resume."]
        if len(current) < len(shown):
            notes.append(f"{len(shown) - len(current)} stale cells are not in this plan: each one's config.yaml "
                         "holds the settings it ran with.")
        st.caption(" ".join(notes))


# ---------------------------------------------------------------- views


def view_table(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    st.subheader(f"{len(cells)} cells")
    seeds = AXIS_PREFIX + "seed"
    several_seeds = seeds in cells and results.as_text(cells[seeds]).nunique() > 1
    if not long.empty:
        left, middle, right = st.columns([1, 2, 1])
        columns = left.radio("Columns", ["arms", "cells"], index=0 if several_seeds else 1, horizontal=True,
                             key="table:columns", help="arms: each arm's cells (e.g. its seeds) averaged, with a "
                                                       "t-interval over them; cells: each cell with its CI over prompts")
        options = results.varying_columns(cells, AXIS_PREFIX) + results.varying_columns(cells, CONFIG_PREFIX)
        options = [c for c in dict.fromkeys(options) if c != seeds] + ([seeds] if seeds in options else [])
        by = None
        if columns == "arms":
            arms = (["grid"] if cells["grid"].nunique() > 1 else []) + results.arm_columns(cells)
            picked = middle.multiselect("Group by (averages over the remaining cells, e.g. seeds)", options,
                                        default=[], format_func=lambda c: c.removeprefix(AXIS_PREFIX))
            by = picked or arms or ["grid"]
        n_columns = len(cells) if by is None else len(cells[by].apply(results.as_text).drop_duplicates())
        rows = right.toggle("Metrics as rows", value=n_columns <= MAX_COLUMNS, key="table:metric_rows")
        table = results.metric_table(long, cells, by, metrics_as_rows=rows)
        show_table(table, pinned=True)
        st.caption("Each entry is `mean [lo, hi]`, a 95% CI: over prompts for one cell; a t-interval over the "
                   "cells of an arm (its seeds). Filter cells and metrics in the sidebar.")
        numbers = long.merge(cells[["grid", "cell_id", *results.axis_columns(cells)]], on=["grid", "cell_id"],
                             suffixes=("", "_cell"))
        st.download_button("Download metrics (CSV, one row per cell and metric)", numbers.to_csv(index=False).encode(),
                           "metrics.csv", "text/csv")
    else:
        _no_metrics(long)
    st.subheader("Cells")
    table = results.cells_table(cells)
    show_table(table, style=status_colors, links={"run": "details"}, free_text=["why"])
    st.caption("Status: done · running (its process is alive) · stopped (the manifest says running but the process "
               "is gone, or no file changed for an hour on another host) · failed · pending · stale (no longer in "
               "the grid's plan).")
    st.markdown("**Reproduce these cells**")
    show_rerun(cells, data)


def view_verdicts(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    """Per grid, every arm against its control (or every pair): control, arm, metric, difference
    [CI], p, adjusted p and verdict, from the cells' evaluator outputs (eval.verdicts)."""
    if _no_metrics(long):
        return
    left, middle, right = st.columns([2, 2, 1])
    pairs = left.radio("Compare", ["against the control", "every pair"], horizontal=True, key="verdicts:pairs")
    correction = middle.radio("Correction", list(verdicts.CORRECTIONS), horizontal=True, key="verdicts:correction",
                              format_func=verdicts.CORRECTION_NAMES.get,
                              help="Holm: family-wise error over the grid's comparisons (arms x metrics); "
                                   "Benjamini-Hochberg: false discovery rate")
    level = right.number_input("Level", 0.001, 0.5, verdicts.LEVEL, 0.01, format="%.3f", key="verdicts:level")
    for grid in data:
        shown = cells[(cells["grid"] == grid.name) & (cells["status"] != "stale")]
        metrics = tuple(sorted(long.loc[long["grid"] == grid.name, "metric"].unique()))
        if shown.empty or not metrics:
            continue
        ids = tuple(sorted(shown["cell_id"]))
        stamp = scores_stamp(grid.path, ids)
        scores = cached_scores(grid.path, stamp, ids)
        arms = verdicts.find_arms(scores[scores["metric"].isin(metrics)], verdicts.grid_layout(grid.path)["order"])
        st.subheader(f"{grid.name}")
        if len(arms.labels) < 2:
            st.info(f"'{grid.name}' has {len(arms.labels)} arm with per-prompt scores among the shown cells: "
                    "nothing to compare (filter fewer cells, or wait for evaluation).")
            continue
        control = st.selectbox("Control", arms.labels, index=0, key=f"verdicts:control:{grid.name}",
                               help="The arm every other one is compared with; the first arm of the grid file by default")
        table = cached_verdicts(grid.path, stamp, ids, metrics, control,
                                "control" if pairs == "against the control" else "all", correction, float(level))
        show_table(verdicts.display_table(table), style=verdict_colors, wrap=["control", "arm"])
        description = verdicts.describe(table)
        st.caption(description[:1].upper() + description[1:] + ". `better` / `worse`: the arm against the control in "
                   "the metric's direction; intervals are per comparison, the verdict uses the adjusted p.")
        skipped = table.attrs.get("set_level") or {}
        if skipped:
            st.caption("Set-level metrics (" + ", ".join(sorted(skipped)) + ") have no per-prompt scores and no "
                       "verdict here: `eval.verdicts.set_difference` compares their per-image features.")
        st.download_button(f"Download verdicts of {grid.name} (CSV)", table.to_csv(index=False).encode(),
                           f"verdicts_{grid.name}.csv", "text/csv", key=f"verdicts:csv:{grid.name}")


def _per_metric(frame: pd.DataFrame, draw, columns: int = 3) -> None:
    """One chart per metric, `columns` side by side (they stack on a phone)."""
    metrics = sorted(frame["metric"].unique())
    for start in range(0, len(metrics), columns):
        for slot, metric in zip(st.columns(columns), metrics[start:start + columns]):
            with slot:
                st.altair_chart(draw(frame[frame["metric"] == metric], metric), width="stretch")


def view_plots(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    import altair as alt  # deferred: the table, the first page, draws no chart

    if _no_metrics(long):
        return
    frame, _ = _arm_frame(long, cells)
    arms = list(dict.fromkeys(frame["arm"]))
    st.subheader("Metrics per arm (mean over seeds, 95% CI)")

    def draw(part: pd.DataFrame, metric: str) -> alt.Chart:
        base = alt.Chart(part).encode(y=alt.Y("arm:N", title=None, sort=arms, axis=alt.Axis(labelLimit=220)),
                                      color=color("arm:N", len(arms), "arm"))
        bars = base.mark_rule(strokeWidth=2).encode(
            x=alt.X("ci_low:Q", title="mean, 95% CI", scale=alt.Scale(zero=False)), x2="ci_high:Q")
        points = base.mark_point(filled=True, size=90, opacity=1).encode(
            x="mean:Q", tooltip=["arm", "metric", alt.Tooltip("mean:Q", format=".4f"),
                                 alt.Tooltip("ci_low:Q", format=".4f"), alt.Tooltip("ci_high:Q", format=".4f"),
                                 "n_cells"])
        return alt.layer(bars, points).properties(title=metric, height=alt.Step(24))

    _per_metric(frame, draw)


def _cell_labels(cells: pd.DataFrame) -> pd.Series:
    cols = results.axis_columns(cells)
    grid = (cells["grid"] + ": ") if cells["grid"].nunique() > 1 else ""
    return grid + results.arm_labels(cells, cols) + " · " + cells["cell_id"].str[:6]


def view_curves(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    import altair as alt  # deferred: the table, the first page, draws no chart

    labels = dict(zip(_cell_labels(cells), cells["path"]))
    picked = st.multiselect(f"Cells (up to {MAX_CURVES})", list(labels), default=list(labels)[:min(4, len(labels))],
                            max_selections=MAX_CURVES, key="curves:cells")
    logs = [load_train_log(labels[p]).assign(cell=p) for p in picked]
    logs = [frame for frame in logs if "step" in frame.columns and len(frame)]
    if not logs:
        st.info("No train_log.jsonl in these cells yet: training writes it as it goes "
                f"(`{EXAMPLE_COMMAND}`).")
        return
    frame = pd.concat(logs, ignore_index=True)
    available = results.logged_quantities(frame)
    left, middle, right = st.columns([3, 2, 1])
    quantities = left.multiselect("Quantities", available, default=available, key="curves:quantities")
    smoothing = middle.slider("Smoothing (EMA weight on the past)", 0.0, 0.99, SMOOTHING, 0.01, key="curves:smoothing")
    log_y = right.toggle("Log y", value=False, key="curves:log")
    curves = results.curve_frame(frame, smoothing, quantities)
    n = len(picked)
    for start in range(0, len(quantities), 2):
        for slot, quantity in zip(st.columns(2), quantities[start:start + 2]):
            part = curves[curves["quantity"] == quantity]
            positive = bool((part["value"] > 0).all())
            scale = alt.Scale(type="log" if log_y and positive else "linear", zero=False)
            base = alt.Chart(part).encode(x=alt.X("step:Q"), color=color("cell:N", n, "cell"))
            raw = base.mark_line(opacity=0.25, strokeWidth=1).encode(y=alt.Y("value:Q", title=quantity, scale=scale))
            smooth = base.mark_line(strokeWidth=2).encode(
                y=alt.Y("smoothed:Q", scale=scale), tooltip=["cell", "step", alt.Tooltip("value:Q", format=".4g"),
                                                             alt.Tooltip("smoothed:Q", format=".4g")])
            chart = alt.layer(raw, smooth) if smoothing > 0 else smooth.encode(y=alt.Y("value:Q", title=quantity,
                                                                                       scale=scale))
            with slot:
                st.altair_chart(chart.properties(height=260, title=quantity).interactive(bind_y=False),
                                width="stretch")
    st.caption("Faint: the logged values; solid: smoothed (TensorBoard's exponential moving average, debiased). "
               "Drag to pan, scroll to zoom the steps.")


def view_numeric_axis(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    import altair as alt  # deferred: the table, the first page, draws no chart

    if _no_metrics(long):
        return
    axes = results.numeric_axes(cells)
    if not axes:
        st.info("No axis with two or more numeric values in these cells (e.g. `mfg` of the MFG grid).")
        return
    axis = st.selectbox("Numeric axis", axes, format_func=lambda c: c.removeprefix(AXIS_PREFIX))
    frame, _ = _arm_frame(long, cells, extra=[axis])
    frame = results.numeric_axis_frame(frame, axis)
    name = axis.removeprefix(AXIS_PREFIX)
    series = frame["arm"].where(frame["arm"] != "all", ", ".join(sorted(cells["grid"].unique())))
    frame = frame.assign(series=series)
    n = frame["series"].nunique()
    named = sorted(frame["named"].dropna().unique())
    st.subheader(f"Metrics vs {name} (mean over seeds, 95% CI)")

    def draw(part: pd.DataFrame, metric: str) -> alt.Chart:
        low, high = part["ci_low"].min(), part["ci_high"].max()
        scale = alt.Scale(zero=False, domain=[low, high], nice=True)
        tooltip = ["series", "metric", alt.Tooltip(f"{axis}:N", title=name), alt.Tooltip("mean:Q", format=".4f"),
                   alt.Tooltip("ci_low:Q", format=".4f"), alt.Tooltip("ci_high:Q", format=".4f"), "n_cells"]
        numbers = alt.Chart(part[part["x"].notna()]).encode(x=alt.X("x:Q", title=name, scale=alt.Scale(zero=False)),
                                                             color=color("series:N", n, "series"))
        right = alt.layer(
            numbers.mark_rule(strokeWidth=2).encode(y=alt.Y("ci_low:Q", scale=scale, axis=None), y2="ci_high:Q"),
            numbers.mark_line(point=alt.OverlayMarkDef(filled=True, size=70)).encode(
                y=alt.Y("mean:Q", scale=scale, axis=None), tooltip=tooltip)).properties(width=280, height=220)
        words = alt.Chart(part[part["x"].isna()]).encode(
            x=alt.X("named:N", title=None, sort=named, axis=alt.Axis(labelAngle=0)),
            color=color("series:N", n, "series"))
        left = alt.layer(
            words.mark_rule(strokeWidth=2).encode(y=alt.Y("ci_low:Q", scale=scale, title="mean, 95% CI"),
                                                  y2="ci_high:Q"),
            words.mark_point(filled=True, size=70, opacity=1).encode(y=alt.Y("mean:Q", scale=scale),
                                                                     tooltip=tooltip)).properties(
            width=40 * max(1, len(named)), height=220)
        return alt.hconcat(left, right, title=metric, spacing=4).resolve_scale(y="shared")

    metrics = sorted(frame["metric"].unique())
    for start in range(0, len(metrics), 2):
        for slot, metric in zip(st.columns(2), metrics[start:start + 2]):
            with slot:
                st.altair_chart(draw(frame[frame["metric"] == metric], metric))
    if named:
        st.caption(f"Named arms ({', '.join(named)}) sit in the left panel beside the numeric {name} axis, "
                   "on the same y scale.")


def view_samples(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    sets = sorted({s for path in cells["path"] for s in results.prompt_sets(path)})
    if not sets:
        st.info(f"No samples in these cells yet: generation writes `samples/<prompt_set>/` (`{EXAMPLE_COMMAND}`).")
        return
    prompt_set = st.selectbox("Prompt set", sets)
    labels = dict(zip(_cell_labels(cells), cells["path"]))
    picked = st.multiselect("Arms side by side", list(labels), default=_one_cell_per_arm(cells, labels))
    frames = {p: load_samples(labels[p], prompt_set) for p in picked}
    frames = {p: f for p, f in frames.items() if not f.empty}
    if not frames:
        st.info("The picked cells have no samples for this prompt set.")
        return
    shared = _shared_prompts(frames)
    categories = sorted(shared["category"].dropna().unique()) if "category" in shared else []
    left, middle, right = st.columns(3)
    category = left.selectbox("Category", ["all", *categories])
    query = middle.text_input("Prompt contains")
    if category != "all":
        shared = shared[shared["category"] == category]
    if query:
        shared = shared[shared["prompt"].str.contains(query, case=False, regex=False)]
    pages = max(1, -(-len(shared) // PROMPTS_PER_PAGE))
    page = right.number_input(f"Page (of {pages})", 1, pages, 1)
    st.caption(f"{len(shared)} prompts with the same seed in every picked cell.")
    for key in shared.iloc[(page - 1) * PROMPTS_PER_PAGE: page * PROMPTS_PER_PAGE].itertuples(index=False):
        _sample_row(key, frames)


def _one_cell_per_arm(cells: pd.DataFrame, labels: dict) -> list[str]:
    arm = results.arm_labels(cells, ["grid", *results.arm_columns(cells)])
    first = ~arm.duplicated()
    return [label for label, keep in zip(labels, first) if keep][:4]


def _shared_prompts(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    keys = ["prompt", "seed", "index"]
    shared = None
    for frame in frames.values():
        part = frame[keys + (["category"] if "category" in frame else [])].drop_duplicates(keys)
        shared = part if shared is None else shared.merge(part[keys], on=keys)
    return shared.sort_values(keys).reset_index(drop=True)


def _sample_row(key, frames: dict[str, pd.DataFrame]) -> None:
    st.markdown(f"**{key.prompt}** · seed {key.seed}")
    columns = st.columns(len(frames))
    for column, (label, frame) in zip(columns, frames.items()):
        row = frame[(frame["prompt"] == key.prompt) & (frame["seed"] == key.seed) & (frame["index"] == key.index)].iloc[0]
        with column:
            if row["path"].lower().endswith(".mp4") or row["path"].lower().endswith(".webm"):
                st.video(row["path"])
            else:
                st.image(row["path"], width=SAMPLE_WIDTH)
            scores = {k: v for k, v in row.items() if "/" in str(k) and pd.notna(v) and k != "path"}
            st.caption(label + "\n\n" + ", ".join(f"{k}: {v:.3f}" for k, v in scores.items()))


def view_paper(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    families = paper.metric_families(long) if not long.empty else []
    st.subheader("Paper table (T2I-CompBench categories, x100)")
    if not families:
        st.info("No metric scores the Table 2 categories (color, shape, texture, spatial, non-spatial, complex) "
                f"in these cells yet. The compshapes judge writes them (`{EXAMPLE_COMMAND}`).")
        show_table(paper.PAPER_TABLE2)
        _beyond_table2(long, cells, set())
        return
    family = st.selectbox("Metric", families, key="paper:family")
    scored = long["metric"].str.startswith(family + "/") & long["metric"].map(paper.category_of).notna()
    grids = sorted(long.loc[scored, "grid"].unique())
    shown = cells[cells["grid"].isin(grids)]
    arms = results.arm_columns(shown)
    default = (["grid"] if len(grids) > 1 else []) + arms
    variant_cols = st.multiselect("Variant = these axes", list(dict.fromkeys(["grid", *arms])), default=default,
                                  format_func=lambda c: c.removeprefix(AXIS_PREFIX))
    include = st.checkbox("Show the paper's Table 2 side by side", value=True)
    ours = paper.paper_table(long, cells, variant_cols, family)
    table = paper.side_by_side(ours, include)
    show_table(paper.display_table(table), wrap=["source", "variant"])
    st.caption(f"Ours ({', '.join(grids)}): mean over seeds, ± = half-width of the 95% CI. Paper numbers are from "
               "GenTron Table 2 (T2I-CompBench, real models); ours come from the grid's own judge and are not "
               "comparable in level.")
    comparisons = _paper_comparisons(long, shown, data, grids, family)
    exported = paper.with_verdicts(table, comparisons)
    left, right = st.columns(2)
    left.download_button("Download CSV", paper.to_csv(exported), "paper_table.csv", "text/csv")
    right.download_button("Download LaTeX", paper.to_latex(exported, comparisons), "paper_table.tex", "text/x-tex")
    _variant_links(ours)
    _beyond_table2(long, cells, set(grids))


def _paper_comparisons(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData], grids: list[str],
                       family: str) -> pd.DataFrame:
    """Each comparison Table 2 makes that a shown grid holds (cross-attention vs adaLN, T5 vs CLIP,
    both vs either, G/2 vs XL/2), our verdict beside the paper's direction, Holm over each grid's
    comparisons in this table."""
    parts = []
    for grid in data:
        shown = cells[(cells["grid"] == grid.name) & (cells["status"] != "stale")]
        if grid.name not in grids or shown.empty:
            continue
        ids = tuple(sorted(shown["cell_id"]))
        metrics = tuple(sorted(long.loc[long["grid"] == grid.name, "metric"].unique()))
        part = cached_paper_verdicts(grid.path, scores_stamp(grid.path, ids), ids, metrics, family, "holm",
                                     verdicts.LEVEL)
        if not part.empty:
            parts.append(part)
    if not parts:
        st.caption("No grid here holds two arms that are rows of Table 2 (adaLN / cross-attention; CLIP / T5 / "
                   "both; XL/2 / G/2): no comparison to set beside the paper's.")
        return pd.DataFrame(columns=paper.COMPARISON_COLUMNS)
    comparisons = pd.concat(parts, ignore_index=True)
    st.markdown("**Our verdicts beside Table 2's directions**")
    show_table(paper.comparison_display(comparisons), style=verdict_colors, wrap=["comparison"])
    seeds = sorted({int(n) for n in comparisons["n_seeds"]})
    st.caption("ours: arm - reference (x100) [95% interval] of the metric's category; paper: the same difference in "
               "Table 2. Verdict at level "
               f"0.05 after Holm over each grid's comparisons in this table; {'/'.join(map(str, seeds))} training "
               "seed(s)" + (": one seed's verdict is about that training run." if seeds == [1] else ".")
               + " vs paper: agrees (separated, the paper's sign), disagrees (separated, the other sign), "
                 "not separated.")
    return comparisons


def _beyond_table2(long: pd.DataFrame, cells: pd.DataFrame, in_table: set[str]) -> None:
    """The grids whose metrics have no Table 2 column (grid=mfg's motion metrics: the paper shows
    motion-free guidance in pictures), each as its own table of arms, so every ablation is on the page."""
    for name in sorted(set(long["grid"]) - in_table) if not long.empty else []:
        part, shown = long[long["grid"] == name], cells[cells["grid"] == name]
        st.markdown(f"**{name}**: its metrics have no column in Table 2 (the paper shows this ablation in "
                    "pictures); `mean [lo, hi]` per arm, seeds averaged.")
        arms = results.arm_columns(shown)
        show_table(results.metric_table(part, shown, arms or None))


def _variant_links(ours: pd.DataFrame) -> None:
    st.markdown("**Runs behind each row**")
    for row in ours.itertuples(index=False):
        links = " · ".join(f"[{key.split('/')[1]}](?view=Run+detail&cell={key})" for key in row.cells.split())
        st.markdown(f"- {row.variant}: {links}")


def view_run(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    labels = list(_cell_labels(cells))
    keys = list(cells["grid"] + "/" + cells["cell_id"])
    wanted = st.query_params.get("cell")
    picked = st.selectbox("Cell", labels, index=keys.index(wanted) if wanted in keys else 0)
    if picked is None:
        st.info("No cells match the filters.")
        return
    cell = cells.iloc[labels.index(picked)]
    detail = results.cell_detail(cell["path"])
    st.subheader(f"{cell['grid']}/{cell['cell_id']} · status: {cell['status']}")
    st.caption(f"{cell['run_status']}: {escape_markdown(cell['status_reason'])}")
    st.write(" → ".join(f"{stage} ({state})" for stage, state in detail["stages"].items()))
    missing = [s for s, state in detail["stages"].items() if state != "done"]
    rerun = next(d.rerun for d in data if d.name == cell["grid"])
    if cell["status"] == "stale":
        st.warning("This cell is stale: the grid's current plan no longer names its config (config.yaml below "
                   f"holds what it ran with). The grid's current cells: `{rerun}`.")
    elif missing:
        st.warning(f"Missing: {', '.join(missing)}. Rerun `{rerun}` to resume this cell.")
    st.json(detail["cell"].get("axes", {}))
    with st.expander("Resolved config (config.yaml)"):
        st.code(detail["config"] or "(no config.yaml)", language="yaml")
    with st.expander("Manifest"):
        st.json(detail["manifest"])
    with st.expander("Metrics"):
        st.json(detail["metrics"])
    with st.expander("Evaluation protocols"):
        st.json(detail["protocols"])
    with st.expander("Training log"):
        frame = load_train_log(cell["path"])
        if {"step", "loss"} <= set(frame.columns):
            st.line_chart(frame, x="step", y="loss")
        st.code("\n".join(detail["log_tail"]) or "(no train_log.jsonl)")


VIEW_FUNCTIONS = {"Table": view_table, "Verdicts": view_verdicts, "Plots": view_plots, "Training curves": view_curves,
                  "Numeric axis": view_numeric_axis, "Samples": view_samples, "Paper table": view_paper,
                  "Run detail": view_run}


def show_table(table: pd.DataFrame, style=None, links: dict[str, str] | None = None, free_text: list[str] = (),
               wrap: list[str] = (), pinned: bool = False) -> None:
    """A table of up to STATIC_ROWS rows is drawn static: every row at once, its links as Markdown, and
    none of the interactive grid's JavaScript (1.2 MB) to load and run, about 0.5 s of a cold first
    page (docs/results_browser.md). A longer one is drawn as the interactive grid: sorting, scrolling, a
    pinned first column. `links` maps a column of page addresses to the text its links show;
    `free_text` names columns of free text (drawn wide in the grid; in the static table Markdown-escaped
    and wrapped); `wrap` names label columns that may wrap in the static table. Every other static
    column keeps each entry on one line and the table scrolls sideways when it is wider than the page."""
    links = links or {}
    if len(table) <= STATIC_ROWS:
        shown = table.assign(**{c: "[" + text + "](" + table[c] + ")" for c, text in links.items()},
                             **{c: table[c].map(escape_markdown) for c in free_text})
        styled = style(shown) if style else shown.style
        floats = list(shown.select_dtypes("float").columns)
        styled = styled.format(lambda v: f"{v:g}", subset=floats, na_rep="").set_table_styles(
            [{"selector": f"td.col{i} *", "props": "white-space: nowrap"}  # "46.05 ± 2.10" on one line
             for i, c in enumerate(shown.columns) if c not in [*free_text, *wrap]], overwrite=False)
        st.table(styled, hide_index=True)
        return
    config = {c: st.column_config.LinkColumn(c, display_text=text) for c, text in links.items()}
    config |= {c: st.column_config.TextColumn(c, width="large") for c in free_text}
    if pinned:
        config[table.columns[0]] = st.column_config.TextColumn(pinned=True)
    st.dataframe(style(table) if style else table, hide_index=True, column_config=config)


def inline_code(text: str) -> str:
    """`text` as Markdown inline code (a fence longer than any run of backticks in it): shown and copied as typed."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def escape_markdown(text) -> str:
    """Text read from a run folder (a status reason names the manifest's host) shown literally where
    Streamlit renders Markdown: `__init__`, `*`, `<x>` as typed."""
    return "" if pd.isna(text) else re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", str(text))


def status_colors(table: pd.DataFrame) -> pd.io.formats.style.Styler:
    return table.style.map(lambda s: f"color: {STATUS_COLORS.get(s, 'inherit')}; font-weight: 600", subset=["status"])


def verdict_colors(table: pd.DataFrame) -> pd.io.formats.style.Styler:
    columns = [c for c in ("verdict", "vs paper") if c in table.columns]
    return table.style.map(lambda s: f"color: {VERDICT_COLORS.get(s, 'inherit')}; font-weight: 600", subset=columns)


def warm_up() -> None:
    """At server start (reports/app.py), what the first visitor would otherwise wait for: every grid
    of the runs folder read into the page's cache, its first tables built once (pandas' Styler
    compiles its templates, pandas and pyarrow load their code paths), and inspect's map of modules
    to files (Streamlit's first element walks the stack once). About halves the first page (README)."""
    import inspect

    import pyarrow as pa

    # cached_grid outside a script run warns that it is one; here that is the point
    context_log = logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context")
    level = context_log.level
    context_log.setLevel(logging.ERROR)
    try:
        runs_dir = Path(default_runs_dir())
        for g in results.find_grids(runs_dir):
            try:
                grid = cached_grid(str(runs_dir / g), results.grid_stamp(runs_dir / g))
                if not grid.results.empty:
                    by = results.arm_columns(grid.cells) or ["grid"]
                    pa.Table.from_pandas(results.metric_table(grid.results, grid.cells, by))
                status_colors(results.cells_table(grid.cells)).to_html()
            except Exception:  # a half-written folder must not stop the server: the page reports it
                log.exception("warming up grid %s failed; the page will load it itself", g)
    finally:
        context_log.setLevel(level)
    inspect.stack()
