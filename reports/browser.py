"""The results browser (Streamlit): grids -> per grid, a table of metrics with CIs per arm or cell
(arms in the grid file's order, each entry with its seeds, training steps and prompt count), the
cells with their status, verdicts (each arm against the control: a forest plot of the differences
and a table of difference, interval, p, adjusted p), plots, training curves, numeric-axis (MFG)
sweeps of the grids that have one, side-by-side samples of every arm, the paper table (with our
verdict on each comparison Table 2 makes, beside the paper's direction) and run details.

Several grids are shown side by side, never merged: each view draws one table or set of plots per
grid, so an axis of one grid never shows up as an empty ('none') column of another.

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
from reports.results import AXIS_PREFIX, CONFIG_PREFIX, FEW, MIN_PROMPTS, SEED

log = logging.getLogger(__name__)

VIEWS = ["Table", "Verdicts", "Plots", "Training curves", "Numeric axis", "Samples", "Paper table", "Run detail"]
DEFAULT_RUNS = "runs"
EXAMPLE_COMMAND = "python ablations/run.py grid=conditioning"
MAX_CURVES = 8
PROMPTS_PER_PAGE = 4
SAMPLE_WIDTH = 128  # a sample is drawn at the largest whole multiple of its own size up to this (nearest neighbour)
SLOT_WIDTH = 160  # px of one sample's box (image, label, scores); the boxes of a row wrap on a narrow screen
PIXELATED = ("<style>[data-testid='stImage'] img, [data-testid='stImageContainer'] img "
             "{image-rendering: pixelated;}</style>")
MAX_COLUMNS = 10  # more arms or cells than this: metrics become the columns
STATIC_ROWS = 30  # tables up to this long are drawn static; longer ones as the interactive grid (show_table)
COMPACT = "font-size: 0.8125rem"  # show_table(compact=True): 13 px in place of 14
SMOOTHING = 0.6  # TensorBoard's default
CURVE_HEIGHT, LEGEND_ROW = 300, 20  # a curve plot: the plot and axes, plus a line of legend per cell (below it)
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


def color(field: str, n: int, title: str | None = None, domain: list[str] | None = None,
          columns: int | None = None) -> alt.Color:
    """A categorical colour with a legend: Tableau's 10 (or 20) distinct hues, never shades of one;
    `domain` fixes the order of the hues and the legend (an arm order); `columns` lays the legend out
    in that many columns (one column by default)."""
    import altair as alt  # deferred: the table, the first page, draws no chart

    scale = alt.Scale(scheme="tableau10" if n <= 10 else "tableau20", **({"domain": domain} if domain else {}))
    layout = {"columns": columns, "direction": "horizontal"} if columns else {"direction": "vertical"}
    legend = alt.Legend(orient="bottom", labelLimit=480, symbolLimit=40, symbolOpacity=1, symbolStrokeWidth=3, **layout)
    return alt.Color(field, title=title, scale=scale, legend=legend)


# ---------------------------------------------------------------- cached loading


@st.cache_data(show_spinner="Loading runs ...", max_entries=64)
def cached_grid(path: str, stamp: tuple) -> results.GridData:
    return results.load_grid(path)


def load_grid(grid_dir: Path) -> results.GridData:
    """A grid from the page's cache, read again when a cell read as running has lost its process
    since (nothing in the folder changes when a process dies, so the file stamp alone would not tell)."""
    stamp = results.grid_stamp(grid_dir)
    grid = cached_grid(str(grid_dir), stamp)
    ended = results.ended_since_read(grid)
    return cached_grid(str(grid_dir), (*stamp, ended)) if ended else grid


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


def _no_metrics(long: pd.DataFrame) -> bool:
    if long.empty:
        st.info(f"No metrics for these cells yet: they appear once cells finish evaluation "
                f"(`{EXAMPLE_COMMAND}` resumes unfinished cells). Training curves and run details work already.")
        return True
    return False


def shown_grids(data: list[results.GridData], cells: pd.DataFrame,
                long: pd.DataFrame | None = None) -> list[tuple[results.GridData, pd.DataFrame, pd.DataFrame]]:
    """(grid, its shown cells, its shown results) for each grid with a shown cell, in the sidebar's order.
    The cells keep only their own grid's axes (another grid's axes are empty for them)."""
    out = []
    for grid in data:
        part = cells[cells["grid"] == grid.name]
        if part.empty:
            continue
        part = part.loc[:, [c for c in part.columns if not c.startswith(AXIS_PREFIX) or part[c].notna().any()]]
        rows = long[long["grid"] == grid.name] if long is not None and not long.empty else pd.DataFrame(
            columns=results.RESULT_COLUMNS)
        out.append((grid, part, rows))
    return out


def grid_heading(grid: results.GridData, cells: pd.DataFrame) -> None:
    """The grid's name, its description (grid.yaml) and its budget: arms, seeds, training steps,
    batch size and prompt sets of the shown cells."""
    st.markdown(f"#### {grid.name}")
    arms = results.arm_columns(cells)
    n_arms = len(cells[arms].apply(results.as_text).drop_duplicates()) if arms else 1
    seeds = results.ordered(cells[SEED].dropna()) if SEED in cells else []
    facts = [f"{n_arms} arm{'s' if n_arms != 1 else ''}"
             + (f" × {len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(seeds)})" if seeds else "")]
    for col, what in ((results.STEPS, "train steps"), (results.BATCH, "batch")):
        if col in cells and cells[col].notna().any():
            facts.append(f"{what} {results.count_text(cells[col])}")
    sets = CONFIG_PREFIX + "sample.prompt_sets"
    if sets in cells and cells[sets].notna().any():
        names = sorted({s for v in cells[sets].dropna() for s in results.json_list(v)})
        facts.append("prompts: " + ", ".join(names))
    text = (escape_markdown(grid.description) + ". " if grid.description else "") + " · ".join(facts) + "."
    st.caption(text)


def show_rerun(cells: pd.DataFrame, grid: results.GridData) -> None:
    """The command that plans exactly the grid's current cells again (recorded grid, profile, seeds
    and overrides) and resumes whatever is unfinished."""
    current = cells[cells["status"] != "stale"]
    planned = int((grid.cells["status"] != "stale").sum())
    st.markdown(inline_code(grid.rerun))  # not st.code: its highlighter (1.6 MB of JavaScript) costs the first page 0.25 s
    notes = [f"Plans the {planned} current cells of '{grid.name}' (the {len(current)} shown are among them); "
             "done cells are skipped, unfinished ones resume."]
    if len(current) < len(cells):
        notes.append(f"{len(cells) - len(current)} stale cells are not in this plan: each one's config.yaml "
                     "holds the settings it ran with.")
    st.caption(" ".join(notes))


# ---------------------------------------------------------------- views


def view_table(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    parts = shown_grids(data, cells, long)
    st.subheader(f"{len(cells)} cells" + (f" in {len(parts)} grids" if len(parts) > 1 else ""))
    several_seeds = any(SEED in c and results.as_text(c[SEED].dropna()).nunique() > 1 for _, c, _ in parts)
    if not long.empty:
        left, middle, right = st.columns([1, 2, 1])
        columns = left.radio("Columns", ["arms", "cells"], index=0 if several_seeds else 1, horizontal=True,
                             key="table:columns", help="arms: each arm's cells (e.g. its seeds) averaged, with a "
                                                       "t-interval over them; cells: each cell with its CI over prompts")
        options = [o for _, c, _ in parts for o in
                   results.varying_columns(c, AXIS_PREFIX) + results.varying_columns(c, CONFIG_PREFIX)]
        options = [c for c in dict.fromkeys(options) if c != SEED] + ([SEED] if SEED in options else [])
        picked = []
        if columns == "arms":
            picked = middle.multiselect("Group by (averages over the remaining cells, e.g. seeds)", options,
                                        default=[], format_func=lambda c: c.removeprefix(AXIS_PREFIX))
        widest = max(len(c) if columns == "cells" else
                     len(c[results.arm_columns(c)].apply(results.as_text).drop_duplicates()) if results.arm_columns(c)
                     else 1 for _, c, _ in parts)
        rows = right.toggle("Metrics as rows", value=widest <= MAX_COLUMNS, key="table:metric_rows")
        for grid, shown, part in parts:
            grid_heading(grid, shown)
            if part.empty:
                st.info(f"No metrics in '{grid.name}' yet: they appear once its cells finish evaluation.")
                continue
            by = None
            if columns == "arms":
                mine = [c for c in picked if c in results.varying_columns(shown, AXIS_PREFIX)
                        + results.varying_columns(shown, CONFIG_PREFIX)]
                by = mine or results.arm_columns(shown) or ["grid"]
            table = results.metric_table(part, shown, by, metrics_as_rows=rows, order=grid.order)
            show_table(results.short_metrics(table) if rows else table, style=few_prompts_colors, pinned=True,
                       compact=True)
        st.caption(f"Each entry is `mean [lo, hi] n=prompts`, a 95% CI: over prompts for one cell; a t-interval over "
                   f"the cells of an arm (its seeds). n is the fewest prompts any of its cells was scored on; {FEW} "
                   f"marks fewer than {MIN_PROMPTS}, too few to read much into. Each column names its seeds (or "
                   "cells) and training steps. Filter cells and metrics in the sidebar.")
        st.download_button("Download metrics (CSV, one row per cell and metric)", metrics_csv(long, cells),
                           "metrics.csv", "text/csv")
    else:
        _no_metrics(long)
    st.subheader("Cells")
    for grid, shown, _ in parts:
        if len(parts) > 1:
            st.markdown(f"**{grid.name}**")
        show_table(results.cells_table(shown, grid.order), style=status_colors, links={"run": "details"},
                   free_text=["why"])
        show_rerun(shown, grid)
    st.caption("Status: done · running (its process is alive) · stopped (the manifest says running but the process "
               "is gone, or no file changed for an hour on another host) · failed · pending · stale (no longer in "
               "the grid's plan).")


def metrics_csv(long: pd.DataFrame, cells: pd.DataFrame) -> bytes:
    """One row per cell and metric: its numbers with their provenance (seed, training steps, batch
    size, n prompts and whether that is fewer than MIN_PROMPTS) and the cell's own axes."""
    extra = [c for c in (*results.own_axes(cells), results.STEPS, results.BATCH) if c in cells and c not in long]
    numbers = long.merge(cells[["grid", "cell_id", *extra]], on=["grid", "cell_id"])
    numbers = numbers.rename(columns={results.STEPS: "train_steps", results.BATCH: "batch_size"})
    if "n" in numbers:
        numbers["few_prompts"] = pd.to_numeric(numbers["n"], errors="coerce") < MIN_PROMPTS
    return numbers.to_csv(index=False).encode()


def few_prompts_colors(table: pd.DataFrame) -> pd.io.formats.style.Styler:
    """Entries from fewer than MIN_PROMPTS prompts in the warning colour."""
    return table.style.map(lambda v: f"color: {STATUS_COLORS['stopped']}" if isinstance(v, str) and v.endswith(FEW)
                           else "")


def view_verdicts(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    """Per grid, a forest plot (each arm's difference to the control per metric, with its interval)
    and the table: control, arm, metric, difference [CI], p, adjusted p and verdict, from the cells'
    evaluator outputs (eval.verdicts)."""
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
        arms = verdicts.find_arms(scores[scores["metric"].isin(metrics)], grid.order)
        st.subheader(f"{grid.name}")
        if len(arms.labels) < 2:
            st.info(f"'{grid.name}' has {len(arms.labels)} arm with per-prompt scores among the shown cells: "
                    "nothing to compare (filter fewer cells, or wait for evaluation).")
            continue
        control = st.selectbox("Control", arms.labels, index=0, key=f"verdicts:control:{grid.name}",
                               help="The arm every other one is compared with; the first arm of the grid file by default")
        table = cached_verdicts(grid.path, stamp, ids, metrics, control,
                                "control" if pairs == "against the control" else "all", correction, float(level))
        chart = forest_chart(table)
        if chart is not None:
            st.altair_chart(chart, width="stretch")
        show_table(verdicts.display_table(table), style=verdict_colors, wrap=["control", "arm"])
        description = verdicts.describe(table)
        st.caption(description[:1].upper() + description[1:] + ". `better` / `worse`: the arm against the control in "
                   "the metric's direction; intervals are per comparison, the verdict uses the adjusted p. The plot: "
                   "each arm's difference to the control with its interval; ▶ better, ◀ worse, ● not separated.")
        skipped = table.attrs.get("set_level") or {}
        if skipped:
            st.caption("Set-level metrics (" + ", ".join(sorted(skipped)) + ") have no per-prompt scores and no "
                       "verdict here: `eval.verdicts.set_difference` compares their per-image features.")
        st.download_button(f"Download verdicts of {grid.name} (CSV)", table.to_csv(index=False).encode(),
                           f"verdicts_{grid.name}.csv", "text/csv", key=f"verdicts:csv:{grid.name}")


VERDICT_SHAPES = {verdicts.BETTER: "triangle-right", verdicts.WORSE: "triangle-left",
                  verdicts.NOT_SEPARATED: "circle"}


def forest_chart(table: pd.DataFrame) -> alt.Chart | None:
    """A forest plot of a verdict table: per metric (rows), each comparison's difference (arm -
    control) as a point, shaped by its verdict, with its interval, beside a line at zero."""
    import altair as alt  # deferred: the table, the first page, draws no chart

    frame = table.dropna(subset=["difference"]).copy()
    if frame.empty:
        return None
    one_control = frame["control"].nunique() == 1
    frame["comparison"] = [_values(a) if one_control else f"{_values(a)} − {_values(c)}"
                           for a, c in zip(frame["arm"], frame["control"])]
    family = results.shared_family(frame["metric"])
    frame["score"] = frame["metric"].str.removeprefix(family + "/") if family else frame["metric"]
    comparisons = list(dict.fromkeys(frame["comparison"]))
    scores = list(dict.fromkeys(frame["score"]))
    legend = f"vs {_values(frame['control'].iloc[0])}" if one_control else "arm − control"
    y = alt.Y("score:N", sort=scores, title=family, axis=alt.Axis(labelLimit=0, grid=True, labelPadding=6))
    offset = alt.YOffset("comparison:N", sort=comparisons)
    base = alt.Chart(frame).encode(y=y, yOffset=offset,
                                   color=color("comparison:N", len(comparisons), legend, domain=comparisons))
    bars = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", title="arm − control, 95% interval"), x2="ci_high:Q")
    points = base.mark_point(filled=True, size=80, opacity=1).encode(
        x="difference:Q",
        shape=alt.Shape("verdict:N", title="verdict", scale=alt.Scale(domain=list(VERDICT_SHAPES),
                                                                      range=list(VERDICT_SHAPES.values())),
                        legend=alt.Legend(orient="bottom", direction="vertical")),
        tooltip=["control", "arm", "metric", alt.Tooltip("difference:Q", format="+.4f"),
                 alt.Tooltip("ci_low:Q", format="+.4f"), alt.Tooltip("ci_high:Q", format="+.4f"),
                 alt.Tooltip("p_adjusted:Q", format=".3g", title="adjusted p"), "verdict", "n_seeds", "n_units"])
    zero = alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(color="#888", strokeDash=[4, 3]).encode(x="zero:Q")
    return alt.layer(zero, bars, points).properties(height=alt.Step(12 if len(comparisons) > 1 else 22),
                                                    title="Each arm's difference to the control")


def _values(label: str) -> str:
    """'conditioning=adaln, size=T/2' -> 'adaln, T/2': an arm's values without the axis names."""
    return ", ".join(part.split("=", 1)[-1] for part in str(label).split(", "))


def _per_metric(frame: pd.DataFrame, draw, columns: int = 2) -> None:
    """One chart per metric, `columns` side by side (they stack on a phone)."""
    metrics = sorted(frame["metric"].unique())
    for start in range(0, len(metrics), columns):
        for slot, metric in zip(st.columns(columns), metrics[start:start + columns]):
            with slot:
                st.altair_chart(draw(frame[frame["metric"] == metric], metric), width="stretch")


def _grid_arms(part: pd.DataFrame, shown: pd.DataFrame, grid: results.GridData,
               extra: list[str] = ()) -> tuple[pd.DataFrame, list[str], str]:
    """A grid's metrics averaged over seeds per arm, in the grid file's order, with `arm`: the arm's
    values ('adaln'; 'a=x, b=y' for several axes); the arm axes; and the legend's title (the axis)."""
    arms = [c for c in results.arm_columns(shown) if c not in extra]
    by = (arms or ["grid"]) + list(extra)
    grouped = results.sort_rows(results.group_over_seeds(part, shown, by), by, grid.order)
    label = results.short_labels(grouped, arms) if arms else pd.Series(grid.name, index=grouped.index)
    title = arms[0].removeprefix(AXIS_PREFIX) if len(arms) == 1 else "arm"
    return grouped.assign(arm=label), arms, title


def view_plots(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    import altair as alt  # deferred: the table, the first page, draws no chart

    if _no_metrics(long):
        return
    st.subheader("Metrics per arm (mean over seeds, 95% CI)")
    for grid, shown, part in shown_grids(data, cells, long):
        if part.empty:
            continue
        grid_heading(grid, shown)
        frame, _, title = _grid_arms(part, shown, grid)
        arms = list(dict.fromkeys(frame["arm"]))

        wrapped = any(len(a) > WRAP_AT for a in arms)

        def draw(metric_rows: pd.DataFrame, metric: str, arms=arms, title=title, wrapped=wrapped) -> alt.Chart:
            base = alt.Chart(metric_rows).encode(
                y=alt.Y("arm:N", title=title, sort=arms, axis=alt.Axis(labelLimit=0, labelExpr=WRAP)),
                color=color("arm:N", len(arms), title, domain=arms))
            bars = base.mark_rule(strokeWidth=2).encode(
                x=alt.X("ci_low:Q", title="mean, 95% CI", scale=alt.Scale(zero=False)), x2="ci_high:Q")
            points = base.mark_point(filled=True, size=90, opacity=1).encode(
                x="mean:Q", tooltip=["arm", "metric", alt.Tooltip("mean:Q", format=".4f"),
                                     alt.Tooltip("ci_low:Q", format=".4f"), alt.Tooltip("ci_high:Q", format=".4f"),
                                     alt.Tooltip("n_cells", title="seeds")])
            return alt.layer(bars, points).properties(title=metric, height=alt.Step(36 if wrapped else 24))

        _per_metric(frame, draw)


WRAP_AT = 28  # an arm label longer than this is drawn on two lines, split before its parenthesis or comma
WRAP = (f"length(datum.label) > {WRAP_AT} ? split(replace(replace(datum.label, ' (', '\\n('), ', ', ',\\n'), '\\n')"
        " : datum.label")


def view_curves(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    import altair as alt  # deferred: the table, the first page, draws no chart

    labels = dict(zip(results.cell_labels(cells), cells["path"]))
    default = _one_cell_per_arm(cells)[:MAX_CURVES]
    picked = st.multiselect(f"Cells (up to {MAX_CURVES})", list(labels), default=default,
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
            base = alt.Chart(part).encode(x=alt.X("step:Q"), color=color("cell:N", n, "cell", domain=picked))
            raw = base.mark_line(opacity=0.25, strokeWidth=1).encode(y=alt.Y("value:Q", title=quantity, scale=scale))
            smooth = base.mark_line(strokeWidth=2).encode(
                y=alt.Y("smoothed:Q", scale=scale), tooltip=["cell", "step", alt.Tooltip("value:Q", format=".4g"),
                                                             alt.Tooltip("smoothed:Q", format=".4g")])
            chart = alt.layer(raw, smooth) if smoothing > 0 else smooth.encode(y=alt.Y("value:Q", title=quantity,
                                                                                       scale=scale))
            with slot:
                chart = chart.properties(height=CURVE_HEIGHT + LEGEND_ROW * n, title=quantity)
                st.altair_chart(chart.interactive(bind_y=False), width="stretch")
    st.caption("Faint: the logged values; solid: smoothed (TensorBoard's exponential moving average, debiased). "
               "Drag to pan, scroll to zoom the steps.")


def view_numeric_axis(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    """Per grid with a numeric axis (mfg's guidance scale), each metric against it; named arms of
    that axis ("off") in a panel beside the numbers. Grids without one are named, not plotted."""
    if _no_metrics(long):
        return
    parts = [(grid, shown, part, results.numeric_axes(shown)) for grid, shown, part in shown_grids(data, cells, long)]
    with_axis = [p for p in parts if p[3] and not p[2].empty]
    without = [p[0].name for p in parts if not p[3]]
    if not with_axis:
        st.info("No axis with two or more numeric values in these grids (e.g. `mfg` of the MFG grid).")
        return
    if without:
        st.caption(f"{', '.join(without)}: no numeric axis, nothing to plot here (their arms are in Table and Plots).")
    for grid, shown, part, axes in with_axis:
        grid_heading(grid, shown)
        axis = st.selectbox(f"Numeric axis of {grid.name}", axes, key=f"numeric:{grid.name}",
                            format_func=lambda c: c.removeprefix(AXIS_PREFIX))
        _numeric_charts(grid, shown, part, axis)


def _numeric_charts(grid: results.GridData, shown: pd.DataFrame, part: pd.DataFrame, axis: str) -> None:
    import altair as alt  # deferred: the table, the first page, draws no chart

    frame, others, _ = _grid_arms(part, shown, grid, extra=[axis])
    frame = results.numeric_axis_frame(frame, axis)
    name = axis.removeprefix(AXIS_PREFIX)
    frame = frame.assign(series=frame["arm"] if others else grid.name)
    n = frame["series"].nunique()
    named = results.ordered(frame["named"].dropna(), grid.order.get(name))
    st.markdown(f"**Metrics vs {name}** (mean over seeds, 95% CI)")

    def draw(rows: pd.DataFrame, metric: str) -> alt.Chart:
        low, high = rows["ci_low"].min(), rows["ci_high"].max()
        scale = alt.Scale(zero=False, domain=[low, high], nice=True)
        tooltip = ["series", "metric", alt.Tooltip(f"{axis}:N", title=name), alt.Tooltip("mean:Q", format=".4f"),
                   alt.Tooltip("ci_low:Q", format=".4f"), alt.Tooltip("ci_high:Q", format=".4f"),
                   alt.Tooltip("n_cells", title="seeds")]
        numbers = alt.Chart(rows[rows["x"].notna()]).encode(x=alt.X("x:Q", title=name, scale=alt.Scale(zero=False)),
                                                            color=color("series:N", n, "series"))
        right = alt.layer(
            numbers.mark_rule(strokeWidth=2).encode(y=alt.Y("ci_low:Q", scale=scale, axis=None), y2="ci_high:Q"),
            numbers.mark_line(point=alt.OverlayMarkDef(filled=True, size=70)).encode(
                y=alt.Y("mean:Q", scale=scale, axis=None), tooltip=tooltip)).properties(width=260, height=220)
        words = alt.Chart(rows[rows["x"].isna()]).encode(
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
    """One cell per arm of every shown grid side by side, per prompt: each sample at a whole multiple
    of its own size (nearest neighbour), its per-image scores below. An arm without samples of the
    prompt set (or of a prompt) keeps its slot, which says why."""
    sets_of = {path: results.prompt_sets(path) for path in cells["path"]}
    sets = sorted({s for found in sets_of.values() for s in found})
    if not sets:
        st.info(f"No samples in these cells yet: generation writes `samples/<prompt_set>/` (`{EXAMPLE_COMMAND}`).")
        return
    prompt_set = st.selectbox("Prompt set", sets, key="samples:set")
    labels = dict(zip(results.cell_labels(cells), cells["path"]))
    grid_of = dict(zip(labels, cells["grid"]))
    caption_of = dict(zip(labels, results.cell_labels(cells, ids=False)))
    picked = st.multiselect("Arms side by side (one cell each; every arm by default)", list(labels),
                            default=_one_cell_per_arm(cells), key="samples:cells")
    if not picked:
        st.info("Pick cells to compare.")
        return
    frames = {p: load_samples(labels[p], prompt_set) for p in picked}
    lacking = {p: _no_samples_text(prompt_set, sets_of[labels[p]]) for p, f in frames.items() if f.empty}
    having = {p: f for p, f in frames.items() if not f.empty}
    st.html(PIXELATED)
    if lacking:
        st.markdown(f"**Without samples in {prompt_set}**")
        _slots([(p, None, lacking[p]) for p in picked if p in lacking])
    if not having:
        st.info(f"None of the picked cells has samples in {prompt_set}.")
        return
    keys = [k for k in ("prompt_id", "prompt", "seed", "index") if all(k in f for f in having.values())]
    prompts = _all_prompts(having, keys)
    categories = sorted(prompts["category"].dropna().unique()) if "category" in prompts else []
    left, middle, right = st.columns(3)
    category = left.selectbox("Category", ["all", *categories], key="samples:category")
    query = middle.text_input("Prompt contains", key="samples:query")
    disagree = right.toggle("Only where the arms disagree", value=False, key="samples:disagree",
                            help="Only prompts whose per-image judge scores differ between the shown arms.")
    if category != "all":
        prompts = prompts[prompts["category"] == category]
    if query:
        prompts = prompts[prompts["prompt"].str.contains(query, case=False, regex=False)]
    if disagree:
        spread = results.score_spread(having, keys)
        differ = spread[spread["spread"] > 1e-9][keys]
        prompts = prompts.merge(differ, on=keys)
    pages = max(1, -(-len(prompts) // PROMPTS_PER_PAGE))
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="samples:page")
    st.caption(f"{len(prompts)} prompts" + (" on which the arms' scores differ" if disagree else "")
               + f"; {len(having)} of {len(picked)} picked cells have samples in {prompt_set}. Images at a whole "
               "multiple of their own size (nearest neighbour: the pixels the model drew).")
    order = [p for p in picked if p in having]
    by_grid = {}
    for label in order:
        by_grid.setdefault(grid_of[label], []).append(label)
    for key in prompts.iloc[(page - 1) * PROMPTS_PER_PAGE: page * PROMPTS_PER_PAGE].itertuples(index=False):
        st.markdown(f"**{escape_markdown(key.prompt)}** · seed {key.seed}")
        for grid, labels_of_grid in by_grid.items():
            slots = []
            for label in labels_of_grid:
                frame = having[label]
                row = frame.merge(pd.DataFrame([key._asdict()])[keys], on=keys)
                slots.append((caption_of[label], row.iloc[0] if len(row) else None,
                              f"no sample of this prompt and seed in {prompt_set}"))
            _slots(slots, lead=grid if len(by_grid) > 1 else None)


def _no_samples_text(prompt_set: str, has: list[str]) -> str:
    return f"no samples in {prompt_set}" + (f" (it has {', '.join(has)})" if has else " (none generated yet)")


def _one_cell_per_arm(cells: pd.DataFrame) -> list[str]:
    """The label of the first cell (lowest seed) of every arm of every grid, in the cells' order."""
    labels = results.cell_labels(cells)
    picked = []
    for _, part in cells.groupby("grid", sort=False):
        arms = results.arm_columns(part)
        arm = results.arm_labels(part, arms) if arms else pd.Series("all", index=part.index)
        picked += list(labels[part.index[~arm.duplicated().to_numpy()]])
    return picked


def _all_prompts(frames: dict[str, pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """Every sample key (prompt id where known, prompt, seed, index) any of the frames has, with its
    category, in that order."""
    parts = [frame[keys + (["category"] if "category" in frame else [])] for frame in frames.values()]
    found = pd.concat(parts, ignore_index=True).drop_duplicates(keys)
    return found.sort_values(keys).reset_index(drop=True)


def _slots(slots: list[tuple[str, pd.Series | None, str]], lead: str | None = None,
           width: int = SAMPLE_WIDTH) -> None:
    """A row of samples: (label, sample row or None, why there is none); empty slots say why. The
    slots are boxes of one width that wrap onto more lines on a narrow screen (two to a phone's
    line); `lead` (the grid's name) heads the row."""
    if lead:
        st.markdown(f"**{escape_markdown(lead)}**")
    line = st.container(horizontal=True, gap="small")
    for label, row, why in slots:
        if row is None:
            line.container(width=SLOT_WIDTH).caption(f"{label}\n\n*{why}*")
            continue
        path = row["path"]
        if path.lower().endswith((".mp4", ".webm")):
            slot = line.container(width=max(SLOT_WIDTH, 2 * width))
            slot.video(path)
        else:
            shown = _display_width(path, width)
            slot = line.container(width=max(SLOT_WIDTH, shown + 8))
            slot.image(path, width=shown)
        scores = {k: v for k, v in row.items() if "/" in str(k) and pd.notna(v) and k != "path"}
        slot.caption(label + "\n\n" + ", ".join(f"{k}: {v:.3f}" for k, v in scores.items()))


def _display_width(path: str, target: int = SAMPLE_WIDTH) -> int:
    """The largest whole multiple of the image's own width up to `target` (its own width when wider)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            native = image.size[0]
    except (OSError, ValueError):
        return target
    return native * max(1, target // native)


def view_paper(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    families = paper.metric_families(long) if not long.empty else []
    st.subheader("Paper table (T2I-CompBench categories, x100)")
    if not families:
        st.info("No metric scores the Table 2 categories (color, shape, texture, spatial, non-spatial, complex) "
                f"in these cells yet. The compshapes judge writes them (`{EXAMPLE_COMMAND}`).")
        show_table(paper.PAPER_TABLE2)
        _beyond_table2(long, cells, data, set())
        return
    family = st.selectbox("Metric", families, key="paper:family")
    scored = long["metric"].str.startswith(family + "/") & long["metric"].map(paper.category_of).notna()
    grids = [d.name for d in data if d.name in set(long.loc[scored, "grid"])]
    shown = cells[cells["grid"].isin(grids)]
    arms = list(dict.fromkeys(c for grid in grids for c in results.arm_columns(shown[shown["grid"] == grid])))
    default = (["grid"] if len(grids) > 1 else []) + arms
    variant_cols = st.multiselect("Variant = these axes", list(dict.fromkeys(["grid", *arms])), default=default,
                                  format_func=lambda c: c.removeprefix(AXIS_PREFIX))
    include = st.checkbox("Show the paper's Table 2 side by side", value=True)
    ours = paper.paper_table(long, shown, variant_cols, family, order=paper.variant_order(shown, variant_cols))
    table = paper.side_by_side(ours, include)
    show_table(paper.display_table(table), style=few_prompts_colors, wrap=["source", "variant"], compact=True)
    st.caption(f"Ours ({', '.join(grids)}): mean over seeds `[lo, hi]`, the 95% CI; seeds, training steps and n (the "
               f"fewest prompts of a category in any cell of the row) beside each row; {FEW} marks an entry from "
               f"fewer than {MIN_PROMPTS} prompts. Paper numbers are from GenTron Table 2 (T2I-CompBench, real "
               "models); ours come from the grid's own judge and are not comparable in level.")
    comparisons = _paper_comparisons(long, shown, data, grids, family)
    exported = paper.with_verdicts(table, comparisons)
    left, right = st.columns(2)
    left.download_button("Download CSV", paper.to_csv(exported), "paper_table.csv", "text/csv")
    right.download_button("Download LaTeX", paper.to_latex(exported, comparisons), "paper_table.tex", "text/x-tex")
    _variant_links(ours)
    _beyond_table2(long, cells, data, set(grids))


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


def _beyond_table2(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData], in_table: set[str]) -> None:
    """The grids whose metrics have no Table 2 column (grid=mfg's motion metrics: the paper shows
    motion-free guidance in pictures), each as its own table of arms, so every ablation is on the page."""
    present = set(long["grid"]) if not long.empty else set()
    for grid in data:
        if grid.name in in_table or grid.name not in present:
            continue
        part, shown = long[long["grid"] == grid.name], cells[cells["grid"] == grid.name]
        st.markdown(f"**{grid.name}**: its metrics have no column in Table 2 (the paper shows this ablation in "
                    "pictures); `mean [lo, hi] n=prompts` per arm, seeds averaged.")
        arms = results.arm_columns(shown)
        show_table(results.short_metrics(results.metric_table(part, shown, arms or None, order=grid.order)),
                   style=few_prompts_colors)


def _variant_links(ours: pd.DataFrame) -> None:
    st.markdown("**Runs behind each row**")
    for row in ours.itertuples(index=False):
        links = " · ".join(f"[{key.split('/')[1]}](?view=Run+detail&cell={key})" for key in row.cells.split())
        st.markdown(f"- {escape_markdown(row.variant)}: {links}")


def view_run(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    labels = list(results.cell_labels(cells))
    keys = list(cells["grid"] + "/" + cells["cell_id"])
    wanted = st.query_params.get("cell")
    picked = st.selectbox("Cell", labels, index=keys.index(wanted) if wanted in keys else 0)
    if picked is None:
        st.info("No cells match the filters.")
        return
    cell = cells.iloc[labels.index(picked)]
    grid = next(d for d in data if d.name == cell["grid"])
    detail = results.cell_detail(cell["path"])
    st.subheader(f"{cell['grid']}/{cell['cell_id']} · status: {cell['status']}")
    run_card(cell, grid, long, detail)
    missing = [s for s, state in detail["stages"].items() if state != "done"]
    if cell["status"] == "stale":
        st.warning("This cell is stale: the grid's current plan no longer names its config (config.yaml below "
                   f"holds what it ran with). The grid's current cells: `{grid.rerun}`.")
    elif cell["run_status"] == "running":
        st.info(f"Running: {escape_markdown(cell['status_reason'])}. Stages left: {', '.join(missing)}; they finish "
                "without a rerun.")
    elif missing and cell["run_status"] == "pending" and (grid.cells["run_status"] == "running").any():
        st.info(f"Not started ({', '.join(missing)} to do): other cells of '{grid.name}' are running, so a grid run "
                f"is working through its cells and will start it; if none is going, `{grid.rerun}` does.")
    elif missing:
        st.warning(f"Missing: {', '.join(missing)}. Rerun `{grid.rerun}` to resume this cell.")
    st.markdown("**Raw files**")
    with st.expander("Axes and arms (cell.json)"):
        st.json(detail["cell"])
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


def run_card(cell: pd.Series, grid: results.GridData, long: pd.DataFrame, detail: dict) -> None:
    """What a cell is, in one box before the raw files: its arm, status and stages, its training
    budget, the config keys it does not share with the rest of its grid, its metrics with their
    provenance, and links to its arm's other seeds and its grid."""
    grid_cells = grid.cells[grid.cells["status"] != "stale"] if (grid.cells["status"] != "stale").any() else grid.cells
    arms = results.arm_columns(grid_cells)
    arm = ", ".join(f"{c.removeprefix(AXIS_PREFIX)}={results.as_text(pd.Series([cell.get(c)])).iloc[0]}"
                    for c in arms) or "the grid's only arm"
    seed = cell.get(SEED)
    with st.container(border=True):
        left, right = st.columns(2)
        with left:
            st.markdown(f"**Arm** {escape_markdown(arm)}" + ("" if pd.isna(seed) else f" · **seed** {seed}"))
            st.markdown(f"**Status** {cell['status']}: {escape_markdown(cell['status_reason'])}")
            st.markdown("**Stages** " + " → ".join(f"{stage} ({state})" for stage, state in detail["stages"].items()))
            st.markdown("**Budget** " + " · ".join(f"{k}: {escape_markdown(v)}"
                                                  for k, v in results.budget(cell, grid_cells).items()))
        with right:
            mine = long[(long["grid"] == cell["grid"]) & (long["cell_id"] == cell["cell_id"])]
            if mine.empty:
                st.markdown("**Metrics** none yet")
            else:
                digits = mine.groupby("metric")["mean"].transform(results.decimals)
                shown = pd.DataFrame({"metric": mine["metric"], "mean [lo, hi] n=prompts": [
                    results.format_entry(m, lo, hi, d, n) for m, lo, hi, d, n in
                    zip(mine["mean"], mine["ci_low"], mine["ci_high"], digits,
                        mine["n"] if "n" in mine else [None] * len(mine))]})
                show_table(shown, style=few_prompts_colors)
        differs = results.differing_config(cell, grid_cells)
        st.markdown("**Differs from the grid's base** (config keys that vary across the grid's cells)")
        if differs.empty:
            st.caption("Nothing: every cell of the grid has this config.")
        else:
            show_table(differs, wrap=["others in the grid"])
        st.markdown(" · ".join(_run_links(cell, grid_cells, arms)))


def _run_links(cell: pd.Series, grid_cells: pd.DataFrame, arms: list[str]) -> list[str]:
    same = grid_cells
    for col in arms:
        same = same[results.as_text(same[col]) == results.as_text(pd.Series([cell.get(col)])).iloc[0]]
    same = same[same["cell_id"] != cell["cell_id"]]
    links = [f"[seed {s}](?view=Run+detail&cell={cell['grid']}/{c})"
             for s, c in zip(same[SEED] if SEED in same else same["cell_id"], same["cell_id"])]
    out = [("Other seeds of this arm: " + ", ".join(links)) if links else "No other seed of this arm"]
    out.append(f"[the grid's table](?view=Table&grid={cell['grid']})")
    out.append(f"[its verdicts](?view=Verdicts&grid={cell['grid']})")
    out.append(f"folder `{cell['path']}`")
    return out


VIEW_FUNCTIONS = {"Table": view_table, "Verdicts": view_verdicts, "Plots": view_plots, "Training curves": view_curves,
                  "Numeric axis": view_numeric_axis, "Samples": view_samples, "Paper table": view_paper,
                  "Run detail": view_run}


def show_table(table: pd.DataFrame, style=None, links: dict[str, str] | None = None, free_text: list[str] = (),
               wrap: list[str] = (), pinned: bool = False, compact: bool = False) -> None:
    """A table of up to STATIC_ROWS rows is drawn static: every row at once, its links as Markdown, and
    none of the interactive grid's JavaScript (1.2 MB) to load and run, about 0.5 s of a cold first
    page (docs/results_browser.md). A longer one is drawn as the interactive grid: sorting, scrolling, a
    pinned first column. `links` maps a column of page addresses to the text its links show;
    `free_text` names columns of free text (drawn wide in the grid; in the static table Markdown-escaped
    and wrapped); `wrap` names label columns that may wrap in the static table. Every other static
    column keeps each entry on one line and the table scrolls sideways when it is wider than the page.
    `compact` sets a static table's text a size smaller (tables of entries with intervals: five arms'
    `mean [lo, hi] n=...` fit a 1400 px page beside the sidebar)."""
    links = links or {}
    if len(table) <= STATIC_ROWS:
        shown = table.assign(**{c: "[" + text + "](" + table[c] + ")" for c, text in links.items()},
                             **{c: table[c].map(escape_markdown) for c in free_text})
        styled = style(shown) if style else shown.style
        floats = list(shown.select_dtypes("float").columns)
        styled = styled.format(lambda v: f"{v:g}", subset=floats, na_rep="").set_table_styles(
            [{"selector": f"td.col{i} *", "props": "white-space: nowrap"}  # "46.05 [44.0, 48.1]" on one line
             for i, c in enumerate(shown.columns) if c not in [*free_text, *wrap]], overwrite=False)
        if compact:
            styled = styled.set_table_styles([{"selector": "td, th, td *, th *", "props": COMPACT}], overwrite=False)
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
                    pa.Table.from_pandas(results.metric_table(grid.results, grid.cells, by, order=grid.order))
                status_colors(results.cells_table(grid.cells, grid.order)).to_html()
            except Exception:  # a half-written folder must not stop the server: the page reports it
                log.exception("warming up grid %s failed; the page will load it itself", g)
    finally:
        context_log.setLevel(level)
    inspect.stack()
