"""The contact-sheet PNG: one row per prompt, one column per arm, each image with its judge score."""
import pytest
from PIL import Image

from report_fixtures import PROMPT_SET, build_grid
from reports.sheet import CELL, CAPTION_WIDTH, GAP, main, sheet_rows


def test_sheet_pairs_the_same_prompt_and_seed_across_arms(tmp_path):
    grid_dir = build_grid(tmp_path, "conditioning")
    labels, rows = sheet_rows(grid_dir, PROMPT_SET, "color", n=2)
    assert sorted(labels) == ["conditioning=adaln", "conditioning=cross_attn"]
    assert len(rows) == 2
    for prompt, images in rows:
        files = {path.rsplit("/", 1)[-1] for path, _ in images}
        assert len(files) == 1  # the same sample file name (prompt and seed) in every arm
        assert all(0.0 <= score <= 1.0 for _, score in images)

    out = tmp_path / "sheet.png"
    main([str(grid_dir), "--prompt-set", PROMPT_SET, "--category", "color", "--n", "2", "--out", str(out)])
    with Image.open(out) as sheet:
        assert sheet.width == CAPTION_WIDTH + 2 * (CELL + GAP)
        # The first arm's first image is pasted at its place, not left white.
        assert sheet.getpixel((CAPTION_WIDTH + CELL // 2, 24 + CELL // 2)) != (255, 255, 255)


def test_sheet_of_a_grid_without_samples_says_what_to_run(tmp_path):
    grid_dir = build_grid(tmp_path, "conditioning", stop_after="train", parquet=False)
    with pytest.raises(ValueError, match="sample stage"):
        sheet_rows(grid_dir, PROMPT_SET, "color", n=2)
