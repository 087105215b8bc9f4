"""The results browser's Run detail view: one cell's summary card (arm, status, stages, budget,
metrics, what differs from its grid, links), then its raw files."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from reports import results
from reports.loading import load_train_log
from reports.results import AXIS_PREFIX, SEED
from reports.widgets import escape_markdown, few_prompts_colors, show_table


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
