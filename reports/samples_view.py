"""The results browser's Samples view: one cell per arm side by side, per prompt, each image at a
whole multiple of its own size with its per-image scores."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from reports import results
from reports.loading import load_samples
from reports.widgets import EXAMPLE_COMMAND, escape_markdown, one_cell_per_arm

PROMPTS_PER_PAGE = 4
SAMPLE_WIDTH = 128  # a sample is drawn at the largest whole multiple of its own size up to this (nearest neighbour)
SLOT_WIDTH = 160  # px of one sample's box (image, label, scores); the boxes of a row wrap on a narrow screen
PIXELATED = ("<style>[data-testid='stImage'] img, [data-testid='stImageContainer'] img "
             "{image-rendering: pixelated;}</style>")


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
                            default=one_cell_per_arm(cells), key="samples:cells")
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
