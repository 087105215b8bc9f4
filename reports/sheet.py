"""A contact sheet of a grid as one PNG: rows are prompts, columns are arms (same prompt, same seed),
each image with the judge's score for its category. For papers, READMEs and issue threads, where
the Streamlit browser cannot go. For a video grid, `--out x.gif` writes an animated sheet: every
clip plays in its place, frame by frame.

    python -m reports.sheet runs/conditioning --prompt-set compshapes_mini --category color --n 12 --out sheet.png
    python -m reports.sheet runs/mfg --prompt-set compshapes_motion --category motion \
        --score compshapes_judge/motion_consistency --n 4 --out clips.gif
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from eval.arguments import OneLineParser, whole_number
from gentron.errors import exits_on_user_error
from gentron.io import atomic_save_gif, atomic_save_image
from reports.results import arm_columns, arm_labels, load_grid, samples_with_scores

CELL, GAP, CAPTION_WIDTH, LINE_HEIGHT, SCORE_HEIGHT = 96, 8, 240, 12, 14
LABEL_CHARS = 16  # what the default font fits over one image


def sheet_rows(grid_dir: Path, prompt_set: str, category: str, n: int, seed_axis: int = 0,
               score: str | None = None) -> tuple[list, list]:
    """(arm labels, rows of (prompt, [(image path, score) per arm])) for the cells of one seed: the
    first `n` prompts of `category`, each image with the judge's `score` (default: the category's)."""
    if not Path(grid_dir).is_dir():
        raise FileNotFoundError(f"{grid_dir} is not a grid folder; give runs/<grid> (a folder the grid runner wrote)")
    grid = load_grid(grid_dir)
    cells = grid.cells[grid.cells["status"] != "stale"]  # left over from earlier settings: not the grid's arms
    if "axis.seed" in cells:
        cells = cells[cells["axis.seed"] == seed_axis]
    if cells.empty:
        raise ValueError(f"{grid_dir}: no cells with seed {seed_axis}; run the grid first")
    arms = arm_columns(cells)
    cells = cells.sort_values(arms, key=lambda col: col.map(_arm_order), kind="stable")
    labels = list(arm_labels(cells, arms))
    per_arm = [samples_with_scores(path, prompt_set) for path in cells["path"]]
    if any(frame.empty for frame in per_arm):
        known = sorted({p.name for path in cells["path"] for p in (Path(path) / "samples").glob("*") if p.is_dir()})
        raise ValueError(f"{grid_dir}: some cells have no samples in prompt set '{prompt_set}' (their prompt sets: "
                         f"{', '.join(known) or 'none yet'}); give --prompt-set one of them or run the grid's "
                         "sample stage")
    first = per_arm[0]
    chosen = first[first["category"] == category].head(n)
    if chosen.empty:
        categories = sorted(first["category"].dropna().unique())
        raise ValueError(f"{grid_dir}: prompt set '{prompt_set}' has no category '{category}'; give --category one "
                         f"of {', '.join(categories)}")
    score = score or f"compshapes_judge/{category}"
    rows = []
    for _, sample in chosen.iterrows():
        images = []
        for frame in per_arm:
            match = frame[frame["file"] == sample["file"]]
            value = match[score].iloc[0] if score in match and len(match) else None
            images.append((match["path"].iloc[0] if len(match) else None, value))
        rows.append((sample["prompt"], images))
    return labels, rows


def clip_timing(rows: list) -> tuple[int, int]:
    """(frames, milliseconds per frame) of the longest clip; (1, 0) for still images."""
    frames, frame_ms = 1, 0
    for _, images in rows:
        for path, _ in images:
            if path is not None:
                with Image.open(path) as image:
                    if getattr(image, "n_frames", 1) > frames:
                        frames, frame_ms = image.n_frames, int(image.info.get("duration", 250))
    return frames, frame_ms


def _arm_order(value) -> tuple:
    """Named arms first (a control such as mfg's "off"), then numbers ascending, then other names."""
    try:
        return (1, float(value), "")
    except (TypeError, ValueError):
        return (0 if value in ("off", "none", None) else 2, 0.0, str(value))


def render(labels: list[str], rows: list, frame: int = 0) -> Image.Image:
    """The sheet; for clips, their frame `frame` (a shorter clip holds its last frame)."""
    # "axis=arm" labels break after the "=", and the header grows with the longest one
    wrapped = ["\n".join(textwrap.wrap(label.replace("=", "= "), LABEL_CHARS)) for label in labels]
    header = 12 + LINE_HEIGHT * max((text.count("\n") + 1 for text in wrapped), default=1)
    width = CAPTION_WIDTH + len(labels) * (CELL + GAP)
    height = header + len(rows) * (CELL + SCORE_HEIGHT + GAP)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(wrapped):
        draw.multiline_text((CAPTION_WIDTH + j * (CELL + GAP), 4), text, fill="black")
    for i, (prompt, images) in enumerate(rows):
        y = header + i * (CELL + SCORE_HEIGHT + GAP)
        draw.multiline_text((4, y + CELL // 3), "\n".join(textwrap.wrap(prompt, 36)), fill="black")
        for j, (path, value) in enumerate(images):
            x = CAPTION_WIDTH + j * (CELL + GAP)
            if path is not None:
                with Image.open(path) as image:  # nearest: show the pixels the model drew
                    image.seek(min(frame, getattr(image, "n_frames", 1) - 1))
                    sheet.paste(image.convert("RGB").resize((CELL, CELL), Image.NEAREST), (x, y))
            if value is not None and value == value:  # NaN: not scored
                draw.text((x + 2, y + CELL + 1), f"judge {value:.2f}", fill="green" if value >= 0.5 else "red")
    return sheet


@exits_on_user_error("python -m reports.sheet")
def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m reports.sheet", description=__doc__.splitlines()[0])
    parser.add_argument("grid_dir", type=Path)
    parser.add_argument("--prompt-set", default="compshapes_mini")
    parser.add_argument("--category", default="color")
    parser.add_argument("--n", type=whole_number(1), default=12)
    parser.add_argument("--score", help="the per-image score shown (default: compshapes_judge/<category>)")
    parser.add_argument("--seed-axis", type=whole_number(0), default=0, help="which seed's cells to show")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    labels, rows = sheet_rows(args.grid_dir, args.prompt_set, args.category, args.n, args.seed_axis, args.score)
    if args.out.suffix.lower() == ".gif":
        n_frames, frame_ms = clip_timing(rows)  # the samples' own frame rate
        atomic_save_gif(args.out, [render(labels, rows, i) for i in range(n_frames)], frame_ms or 250)
    else:
        atomic_save_image(args.out, render(labels, rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
