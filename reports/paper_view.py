"""The results browser's Paper table view: our numbers beside GenTron's Table 2, with our verdict
on each comparison Table 2 makes, and the grids whose metrics have no Table 2 column."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from eval import verdicts
from reports import paper, results
from reports.loading import cached_paper_verdicts, scores_stamp
from reports.results import AXIS_PREFIX, FEW, MIN_PROMPTS
from reports.widgets import EXAMPLE_COMMAND, escape_markdown, few_prompts_colors, show_table, verdict_colors


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
