"""The results browser (Streamlit): grids -> table of cells with CIs, grouping over seeds, plots,
training curves, numeric-axis (MFG) sweeps, side-by-side samples, the paper table and run details.

`streamlit run reports/app.py -- --runs runs/` calls `main()`. Loading is cached on file mtimes.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from reports import paper, results
from reports.results import AXIS_PREFIX, CONFIG_PREFIX

log = logging.getLogger(__name__)

VIEWS = ["Table", "Plots", "Training curves", "Numeric axis", "Samples", "Paper table", "Run detail"]
DEFAULT_RUNS = "runs"
EXAMPLE_COMMAND = "python ablations/run.py grid=conditioning"
MAX_CURVES = 8
PROMPTS_PER_PAGE = 4
SAMPLE_WIDTH = 256


def default_runs_dir(argv: list[str] | None = None) -> str:
    """--runs from the command line (after `--`), else $GENTRON_RUNS, else runs/."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs", default=os.environ.get("GENTRON_RUNS", DEFAULT_RUNS))
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args.runs


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
    show_problems(data)
    cells = pd.concat([d.cells for d in data], ignore_index=True)
    long = pd.concat([d.results for d in data if not d.results.empty] or [data[0].results], ignore_index=True)
    cells = filter_cells(cells)
    long = long.merge(cells[["grid", "cell_id"]], on=["grid", "cell_id"]) if not long.empty else long
    long = filter_metrics(long)
    view = st.sidebar.radio("View", VIEWS, index=VIEWS.index(st.query_params.get("view", "Table"))
                            if st.query_params.get("view") in VIEWS else 0)
    guarded(VIEW_FUNCTIONS[view], long, cells)


def _default_grids(grids: list[str]) -> list[str]:
    wanted = st.query_params.get("cell", "").split("/")[0]
    return [wanted] if wanted in grids else grids[:1]


def guarded(view, long: pd.DataFrame, cells: pd.DataFrame) -> None:
    """Draw a view; an unexpected error becomes a message on the page, never a traceback."""
    try:
        view(long, cells)
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


def filter_metrics(long: pd.DataFrame) -> pd.DataFrame:
    if long.empty:
        return long
    metrics = sorted(long["metric"].unique())
    keep = st.sidebar.multiselect("Metrics", metrics, default=metrics)
    return long[long["metric"].isin(keep)]


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


# ---------------------------------------------------------------- views


def view_table(long: pd.DataFrame, cells: pd.DataFrame) -> None:
    st.subheader(f"{len(cells)} cells")
    options = results.varying_columns(cells, AXIS_PREFIX) + results.varying_columns(cells, CONFIG_PREFIX)
    by = st.multiselect("Group by (averages over the remaining cells, e.g. seeds; 95% CI over them)",
                        list(dict.fromkeys(options)), default=[])
    if by and not long.empty:
        grouped = results.group_over_seeds(long, cells, by)
        table = _pivot_grouped(grouped, by)
    else:
        table = results.wide_table(long, cells)
        table.insert(2, "run", "?view=Run+detail&cell=" + table["grid"] + "/" + table["cell_id"])
    metric_cols = [c for c in table.columns if c not in options and table[c].dtype.kind == "f"]
    config = {c: st.column_config.NumberColumn(c, format="%.4f") for c in metric_cols}
    config["run"] = st.column_config.LinkColumn("run", display_text="details")
    st.dataframe(table, column_config=config, hide_index=True)
    st.caption("Each metric shows its mean and 95% CI bounds (lo, hi): over prompts for a cell, "
               "t-interval over cells when grouped. Click a column header to sort; filter in the sidebar.")
    st.download_button("Download table (CSV)", table.to_csv(index=False).encode(), "cells.csv", "text/csv")


def _pivot_grouped(grouped: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    wide = grouped.pivot_table(index=by, columns="metric", values=["mean", "ci_low", "ci_high", "n_cells"],
                               aggfunc="first")
    table = pd.DataFrame(index=wide.index)
    metrics = sorted(grouped["metric"].unique())
    table["cells"] = wide[("n_cells", metrics[0])].astype(int)
    for metric in metrics:
        table[metric] = wide[("mean", metric)]
        table[f"{metric} lo"] = wide[("ci_low", metric)]
        table[f"{metric} hi"] = wide[("ci_high", metric)]
    return table.reset_index()


def view_plots(long: pd.DataFrame, cells: pd.DataFrame) -> None:
    if _no_metrics(long):
        return
    frame, _ = _arm_frame(long, cells)
    st.subheader("Metrics per arm (mean over seeds, 95% CI)")
    base = alt.Chart().encode(x=alt.X("arm:N", title=None, axis=alt.Axis(labelAngle=-30, labelLimit=240)))
    points = base.mark_point(filled=True, size=70).encode(
        y=alt.Y("mean:Q", title="value", scale=alt.Scale(zero=False)), color=alt.Color("arm:N", legend=None),
        tooltip=["arm", "metric", alt.Tooltip("mean:Q", format=".4f"), alt.Tooltip("ci_low:Q", format=".4f"),
                 alt.Tooltip("ci_high:Q", format=".4f"), "n_cells"])
    bars = base.mark_errorbar(ticks=True).encode(y="ci_low:Q", y2="ci_high:Q", color=alt.Color("arm:N", legend=None))
    chart = alt.layer(bars, points, data=frame).properties(width=260, height=220).facet(
        facet=alt.Facet("metric:N", title=None), columns=3).resolve_scale(y="independent")
    st.altair_chart(chart)


def _cell_labels(cells: pd.DataFrame) -> pd.Series:
    cols = results.axis_columns(cells)
    return cells["grid"] + "/" + cells["cell_id"] + "  " + results.arm_labels(cells, cols)


def view_curves(long: pd.DataFrame, cells: pd.DataFrame) -> None:
    labels = dict(zip(_cell_labels(cells), cells["path"]))
    picked = st.multiselect(f"Cells (up to {MAX_CURVES})", list(labels), default=list(labels)[:min(4, len(labels))],
                            max_selections=MAX_CURVES)
    logs = [load_train_log(labels[p]).assign(cell=p) for p in picked]
    logs = [frame for frame in logs if {"step", "loss"} <= set(frame.columns)]
    if not logs:
        st.info("No train_log.jsonl with step and loss in these cells yet: training writes it as it goes "
                f"(`{EXAMPLE_COMMAND}`).")
        return
    frame = pd.concat(logs, ignore_index=True)
    log_scale = st.checkbox("Log-scale loss", value=True)
    chart = alt.Chart(frame).mark_line().encode(
        x=alt.X("step:Q"), y=alt.Y("loss:Q", scale=alt.Scale(type="log" if log_scale else "linear")),
        color=alt.Color("cell:N", legend=alt.Legend(orient="bottom", columns=1, labelLimit=600)),
        tooltip=["cell", "step", "loss"])
    st.altair_chart(chart.properties(height=380).interactive(), width="stretch")


def view_numeric_axis(long: pd.DataFrame, cells: pd.DataFrame) -> None:
    if _no_metrics(long):
        return
    axes = results.numeric_axes(cells)
    if not axes:
        st.info("No numeric axis with two or more values in these cells (e.g. `mfg_scale` of the MFG grid).")
        return
    axis = st.selectbox("Numeric axis", axes, format_func=lambda c: c.removeprefix(AXIS_PREFIX))
    frame, _ = _arm_frame(long, cells, extra=[axis])
    frame["x"] = pd.to_numeric(frame[axis], errors="coerce")
    missing = frame.loc[frame["x"].isna(), "arm"].nunique()
    frame = frame.dropna(subset=["x"])
    name = axis.removeprefix(AXIS_PREFIX)
    st.subheader(f"Metrics vs {name} (mean over seeds, 95% CI)")
    base = alt.Chart().encode(x=alt.X("x:Q", title=name), color=alt.Color("arm:N", legend=alt.Legend(orient="bottom")))
    line = base.mark_line(point=True).encode(y=alt.Y("mean:Q", title="value", scale=alt.Scale(zero=False)),
                                             tooltip=["arm", "metric", "x", alt.Tooltip("mean:Q", format=".4f")])
    band = base.mark_errorbar(ticks=True).encode(y="ci_low:Q", y2="ci_high:Q")
    chart = alt.layer(band, line, data=frame).properties(width=300, height=220).facet(
        facet=alt.Facet("metric:N", title=None), columns=3).resolve_scale(y="independent")
    st.altair_chart(chart)
    if missing:
        st.caption(f"{missing} arm(s) with {name} = null (off) are not on the numeric axis; see the Plots view.")


def view_samples(long: pd.DataFrame, cells: pd.DataFrame) -> None:
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


def view_paper(long: pd.DataFrame, cells: pd.DataFrame) -> None:
    families = paper.metric_families(long) if not long.empty else []
    st.subheader("Paper table (T2I-CompBench categories, x100)")
    if not families:
        st.info("No metric scores the Table 2 categories (color, shape, texture, spatial, non-spatial, complex) "
                f"in these cells yet. The compshapes judge writes them (`{EXAMPLE_COMMAND}`).")
        st.dataframe(paper.PAPER_TABLE2, hide_index=True)
        return
    family = st.selectbox("Metric", families)
    variant_cols = st.multiselect("Variant = these axes", results.arm_columns(cells) + ["grid"],
                                  default=results.arm_columns(cells))
    include = st.checkbox("Show the paper's Table 2 side by side", value=True)
    ours = paper.paper_table(long, cells, variant_cols, family)
    table = paper.side_by_side(ours, include)
    st.dataframe(table.drop(columns=["cells"], errors="ignore"), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in table.columns if c not in ("source", "variant", "cells")})
    st.caption("Ours: mean over seeds, ± = half-width of the 95% CI. Paper numbers are from GenTron Table 2 "
               "(T2I-CompBench, real models); ours come from the grid's own judge and are not comparable in level.")
    left, right = st.columns(2)
    left.download_button("Download CSV", paper.to_csv(table), "paper_table.csv", "text/csv")
    right.download_button("Download LaTeX", paper.to_latex(table), "paper_table.tex", "text/x-tex")
    _variant_links(ours)


def _variant_links(ours: pd.DataFrame) -> None:
    st.markdown("**Runs behind each row**")
    for row in ours.itertuples(index=False):
        links = " · ".join(f"[{key.split('/')[1]}](?view=Run+detail&cell={key})" for key in row.cells.split())
        st.markdown(f"- {row.variant}: {links}")


def view_run(long: pd.DataFrame, cells: pd.DataFrame) -> None:
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
    marks = {"done": "✅", "running": "⏳", "failed": "❌", "pending": "·"}
    st.write(" ".join(f"{marks.get(state, '·')} {stage} ({state})" for stage, state in detail["stages"].items()))
    missing = [s for s, state in detail["stages"].items() if state != "done"]
    if missing:
        st.warning(f"Missing: {', '.join(missing)}. Rerun `python ablations/run.py grid={cell['grid']}` to resume this cell.")
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


VIEW_FUNCTIONS = {"Table": view_table, "Plots": view_plots, "Training curves": view_curves,
                  "Numeric axis": view_numeric_axis, "Samples": view_samples, "Paper table": view_paper,
                  "Run detail": view_run}
