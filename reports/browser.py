"""The results browser (Streamlit): grids -> per grid, a table of metrics with CIs per arm or cell
(arms in the grid file's order, each entry with its seeds, training steps and prompt count), the
cells with their status, verdicts (each arm against the control: a forest plot of the differences
and a table of difference, interval, p, adjusted p), plots, training curves with evaluation during
training (validation loss and judge scores against the step per arm, the validation loss by
timestep), numeric-axis (MFG) sweeps of the grids that have one, side-by-side samples of every arm,
the paper table (with our verdict on each comparison Table 2 makes, beside the paper's direction)
and run details.

Several grids are shown side by side, never merged: each view draws one table or set of plots per
grid, so an axis of one grid never shows up as an empty ('none') column of another.

`streamlit run reports/app.py -- --runs runs/` calls `main()`. Loading is cached on file mtimes
(reports/loading.py). This module draws the page around the views: the sidebar (runs folder, grids,
view, filters, metrics) and what is missing; each view lives in its own module: Table and Verdicts
in reports/tables.py; Plots, Training curves (with evaluation during training: reports/progress.py)
and Numeric axis in reports/plots.py; Samples in reports/samples_view.py; Paper table in
reports/paper_view.py; Run detail in reports/run_view.py; what they share in reports/widgets.py.

A cell's status (ablations.runfolder.cell_status): done, failed, running (its process is alive),
stopped (its manifest says running but the process is gone, or, for another host, none of its
files changed for an hour), pending, or stale (the grid's plan in grid.yaml no longer names it;
hidden unless "Show stale cells" is on).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from reports import results
from reports.loading import cached_grid, load_grid
from reports.paper_view import view_paper
from reports.plots import view_curves, view_numeric_axis, view_plots
from reports.results import AXIS_PREFIX
from reports.run_view import view_run
from reports.samples_view import view_samples
from reports.tables import view_table, view_verdicts
from reports.widgets import EXAMPLE_COMMAND, status_colors

log = logging.getLogger(__name__)

VIEWS = ["Table", "Verdicts", "Plots", "Training curves", "Numeric axis", "Samples", "Paper table", "Run detail"]
VIEW_FUNCTIONS = {"Table": view_table, "Verdicts": view_verdicts, "Plots": view_plots, "Training curves": view_curves,
                  "Numeric axis": view_numeric_axis, "Samples": view_samples, "Paper table": view_paper,
                  "Run detail": view_run}
DEFAULT_RUNS = "runs"


def default_runs_dir(argv: list[str] | None = None) -> str:
    """--runs from the command line (after `--`), else $GENTRON_RUNS, else runs/."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs", default=os.environ.get("GENTRON_RUNS", DEFAULT_RUNS))
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args.runs


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
    data = [load_grid(runs_dir / g) for g in chosen]
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
    cells = filter_cells(cells, data)
    cells = results.sort_cells(cells, [d.name for d in data], {d.name: d.order for d in data})
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
    """What needs a rerun (failed, stopped or unstarted cells) as warnings; what is under way (cells
    whose process is alive) as notes, with no call to rerun anything."""
    problems = [p for d in data for p in d.problems]
    notes = [n for d in data for n in d.notes]
    if problems:
        with st.expander(f"⚠ {len(problems)} things are missing or incomplete", expanded=True):
            for problem in problems:
                st.warning(problem)
    for note in notes:
        st.info(note)


def filter_cells(cells: pd.DataFrame, data: list[results.GridData]) -> pd.DataFrame:
    """A filter per axis, offering the values of the grids that have the axis (in their grid files'
    order); a grid without the axis is not filtered by it."""
    st.sidebar.markdown("**Filter cells**")
    owners = {d.name: set(results.own_axes(d.cells)) if not d.cells.empty else set() for d in data}
    orders: dict[str, list[str]] = {}
    for d in data:
        for axis, values in d.order.items():
            orders.setdefault(axis, []).extend(v for v in values if v not in orders.get(axis, []))
    for col in results.axis_columns(cells):
        has = cells["grid"].map(lambda g, c=col: c in owners.get(g, set())).astype(bool)
        text = results.as_text(cells[col])
        values = results.ordered(text[has], orders.get(col.removeprefix(AXIS_PREFIX)))
        if len(values) > 1:
            grids = [d.name for d in data if col in owners[d.name]]
            keep = st.sidebar.multiselect(col.removeprefix(AXIS_PREFIX), values, default=values, key="filter:" + col,
                                          help=f"An axis of {', '.join(grids)}; other grids' cells are not filtered "
                                               "by it.")
            cells = cells[~has | text.isin(keep)]
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
                    pa.Table.from_pandas(results.metric_table(grid.results, grid.cells, by, order=grid.order))
                status_colors(results.cells_table(grid.cells, grid.order)).to_html()
            except Exception:  # a half-written folder must not stop the server: the page reports it
                log.exception("warming up grid %s failed; the page will load it itself", g)
    finally:
        context_log.setLevel(level)
    inspect.stack()
