"""The results browser's Table view (metrics per arm or cell with their CIs, the cells with their
status) and Verdicts view (each arm against the control: a forest plot and the table)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

if TYPE_CHECKING:
    import altair as alt

from eval import paired, verdicts
from reports import results
from reports.loading import cached_scores, cached_verdicts, scores_stamp
from reports.results import AXIS_PREFIX, CONFIG_PREFIX, FEW, MIN_PROMPTS, SEED
from reports.widgets import (color, few_prompts_colors, grid_heading, no_metrics, show_rerun,
                             show_table, shown_grids, status_colors, verdict_colors)

MAX_COLUMNS = 10  # more arms or cells than this: metrics become the columns


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
        no_metrics(long)
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


def view_verdicts(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    """Per grid, a forest plot (each arm's difference to the control per metric, with its interval)
    and the table: control, arm, metric, difference [CI], p, adjusted p and verdict, from the cells'
    evaluator outputs (eval.verdicts)."""
    if no_metrics(long):
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


VERDICT_SHAPES = {paired.BETTER: "triangle-right", paired.WORSE: "triangle-left",
                  paired.NOT_SEPARATED: "circle"}


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
