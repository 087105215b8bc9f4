"""What the results browser's views share: colours, tables (static or interactive), Markdown
escaping, a grid's heading and rerun command, and the per-arm grouping the plots draw."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

if TYPE_CHECKING:
    import altair as alt

from eval import paired
from reports import paper, results
from reports.results import AXIS_PREFIX, CONFIG_PREFIX, FEW, SEED

EXAMPLE_COMMAND = "python ablations/run.py grid=conditioning"
STATIC_ROWS = 30  # tables up to this long are drawn static; longer ones as the interactive grid (show_table)
COMPACT = "font-size: 0.8125rem"  # show_table(compact=True): 13 px in place of 14
STATUS_COLORS = {"done": "#2e7d32", "running": "#1565c0", "stopped": "#e65100", "failed": "#c62828",
                 "pending": "#6d6d6d", "stale": "#8d6e63"}
VERDICT_COLORS = {paired.BETTER: "#2e7d32", paired.WORSE: "#c62828", paper.AGREES: "#2e7d32",
                  paper.DISAGREES: "#c62828", paired.NOT_SEPARATED: "#6d6d6d"}


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


def no_metrics(long: pd.DataFrame) -> bool:
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


def few_prompts_colors(table: pd.DataFrame) -> pd.io.formats.style.Styler:
    """Entries from fewer than MIN_PROMPTS prompts in the warning colour."""
    return table.style.map(lambda v: f"color: {STATUS_COLORS['stopped']}" if isinstance(v, str) and v.endswith(FEW)
                           else "")


def per_metric(frame: pd.DataFrame, draw, columns: int = 2) -> None:
    """One chart per metric, `columns` side by side (they stack on a phone)."""
    metrics = sorted(frame["metric"].unique())
    for start in range(0, len(metrics), columns):
        for slot, metric in zip(st.columns(columns), metrics[start:start + columns]):
            with slot:
                st.altair_chart(draw(frame[frame["metric"] == metric], metric), width="stretch")


def grid_arms(part: pd.DataFrame, shown: pd.DataFrame, grid: results.GridData,
               extra: list[str] = ()) -> tuple[pd.DataFrame, list[str], str]:
    """A grid's metrics averaged over seeds per arm, in the grid file's order, with `arm`: the arm's
    values ('adaln'; 'a=x, b=y' for several axes); the arm axes; and the legend's title (the axis)."""
    arms = [c for c in results.arm_columns(shown) if c not in extra]
    by = (arms or ["grid"]) + list(extra)
    grouped = results.sort_rows(results.group_over_seeds(part, shown, by), by, grid.order)
    label = results.short_labels(grouped, arms) if arms else pd.Series(grid.name, index=grouped.index)
    title = arms[0].removeprefix(AXIS_PREFIX) if len(arms) == 1 else "arm"
    return grouped.assign(arm=label), arms, title


def one_cell_per_arm(cells: pd.DataFrame) -> list[str]:
    """The label of the first cell (lowest seed) of every arm of every grid, in the cells' order."""
    labels = results.cell_labels(cells)
    picked = []
    for _, part in cells.groupby("grid", sort=False):
        arms = results.arm_columns(part)
        arm = results.arm_labels(part, arms) if arms else pd.Series("all", index=part.index)
        picked += list(labels[part.index[~arm.duplicated().to_numpy()]])
    return picked


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
