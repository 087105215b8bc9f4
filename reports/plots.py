"""The results browser's Plots (metrics per arm with CIs), Training curves (logged quantities per
cell, then evaluation during training per arm: reports.progress) and Numeric axis views."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from reports import progress, results
from reports.loading import load_train_log, load_validation
from reports.results import AXIS_PREFIX
from reports.widgets import (EXAMPLE_COMMAND, color, grid_arms, grid_heading, no_metrics,
                             one_cell_per_arm, per_metric, shown_grids)

MAX_CURVES = 8
SMOOTHING = 0.6  # TensorBoard's default
CURVE_HEIGHT, LEGEND_ROW = 300, 20  # a curve plot: the plot and axes, plus a line of legend per cell (below it)


WRAP_AT = 28  # an arm label longer than this is drawn on two lines, split before its parenthesis or comma
WRAP = (f"length(datum.label) > {WRAP_AT} ? split(replace(replace(datum.label, ' (', '\\n('), ', ', ',\\n'), '\\n')"
        " : datum.label")


def view_plots(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    import altair as alt  # deferred: the table, the first page, draws no chart

    if no_metrics(long):
        return
    st.subheader("Metrics per arm (mean over seeds, 95% CI)")
    for grid, shown, part in shown_grids(data, cells, long):
        if part.empty:
            continue
        grid_heading(grid, shown)
        frame, _, title = grid_arms(part, shown, grid)
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

        per_metric(frame, draw)


def view_curves(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    """The logged training quantities of picked cells, then evaluation during training per arm."""
    train_curves(cells)
    show_validation(cells, data)


def train_curves(cells: pd.DataFrame) -> None:
    import altair as alt  # deferred: the table, the first page, draws no chart

    st.subheader("Training curves")

    labels = dict(zip(results.cell_labels(cells), cells["path"]))
    default = one_cell_per_arm(cells)[:MAX_CURVES]
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


def show_validation(cells: pd.DataFrame, data: list[results.GridData]) -> None:
    """Per grid whose cells evaluated during training (`train.eval_every`, validation.jsonl): each
    validation metric against the step, a line per arm with its band, then the validation loss by
    timestep bin at the latest (or a chosen) evaluated step."""
    st.subheader("Evaluation during training")
    shown = 0
    for grid, part, _ in shown_grids(data, cells):
        rows_of = {c: load_validation(p) for c, p in zip(part["cell_id"], part["path"])}
        if not any(rows_of.values()):
            continue
        shown += 1
        grid_heading(grid, part)
        curves = progress.arm_curves(rows_of, part, grid.order)
        arms = list(dict.fromkeys(curves["arm"]))
        title = progress.title_of(arms, part)
        metrics = progress.metrics_in_order(curves)
        height = CURVE_HEIGHT + LEGEND_ROW * (len(arms) + 1)  # the plot, then the legend's title and arms
        for start in range(0, len(metrics), 2):
            for slot, metric in zip(st.columns(2), metrics[start:start + 2]):
                with slot:
                    st.altair_chart(progress.step_chart(curves, metric, arms, title, color, height),
                                    width="stretch")
        bins = progress.timestep_curves(rows_of, part, grid.order)
        if not bins.empty:
            steps = sorted(int(s) for s in bins["step"].unique())
            latest = progress.latest_common_step(bins)
            step = st.select_slider(f"Step of the validation loss by timestep ({grid.name})", steps, value=latest,
                                    key=f"validation:step:{grid.name}")
            st.altair_chart(progress.timestep_chart(bins, step, arms, title, color, height), width="stretch")
    if not shown:
        st.info("No cell here evaluated during training: `train.eval_every=K` evaluates the EMA weights at every "
                "K-th step that writes a checkpoint (train.ckpt_every) and writes validation.jsonl "
                f"(`{EXAMPLE_COMMAND} train.eval_every=500`).")
        return
    st.caption("Progress numbers on a small fixed sample, not the cells' final metrics (those are in Table): the "
               "EMA weights' loss on a fixed held-out batch with fixed noise, and the CompShapes judge on fixed "
               "held-out prompts per category. Lines: mean over an arm's seeds; band: a 95% t-interval over its "
               "seeds (within [0, 1] for a judge score), or for one seed a judge score's Wilson 95% interval over "
               "its prompts (a loss of one seed has none).")


def view_numeric_axis(long: pd.DataFrame, cells: pd.DataFrame, data: list[results.GridData]) -> None:
    """Per grid with a numeric axis (mfg's guidance scale), each metric against it; named arms of
    that axis ("off") in a panel beside the numbers. Grids without one are named, not plotted."""
    if no_metrics(long):
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

    frame, others, _ = grid_arms(part, shown, grid, extra=[axis])
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
