"""The contact-sheet PNG: one row per prompt, one column per arm, each image with its judge score."""
import numpy as np
import pytest
from PIL import Image

from reports.sheet import CELL, CAPTION_WIDTH, GAP, main, sheet_rows
from tests.support.report_fixtures import PROMPT_SET, build_grid


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


def test_sheet_of_a_video_grid_is_an_animated_gif(tmp_path):
    """--out x.gif: every clip plays in its place, at the samples' own frame rate."""
    grid_dir = build_grid(tmp_path, "mfg", {"conditioning": ["cross_attn"], "mfg_scale": [None, 1.0], "seed": [0]},
                          video=True, n_prompts=4)
    labels, rows = sheet_rows(grid_dir, PROMPT_SET, "color", n=1)
    clip_path = rows[0][1][0][0]
    with Image.open(clip_path) as clip:
        n_frames, frame_ms = clip.n_frames, clip.info["duration"]
        first = clip.convert("RGB").resize((CELL, CELL), Image.NEAREST)
        clip.seek(n_frames - 1)
        last = clip.convert("RGB").resize((CELL, CELL), Image.NEAREST)
    assert n_frames > 1
    out = tmp_path / "clips.gif"
    main([str(grid_dir), "--prompt-set", PROMPT_SET, "--category", "color", "--n", "1", "--out", str(out)])
    with Image.open(out) as sheet:
        assert sheet.n_frames == n_frames and sheet.info["duration"] == frame_ms
        sheet.seek(n_frames - 1)
        y = sheet.height - CELL - 14 - GAP  # the one row's image
        pasted = sheet.convert("RGB").crop((CAPTION_WIDTH, y, CAPTION_WIDTH + CELL, y + CELL))
    distance = lambda a, b: np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean()  # noqa: E731
    assert distance(first, last) > 1.0  # the clip moves
    assert distance(pasted, last) < 0.25 * distance(pasted, first)  # its last frame (GIF palettes round a little)


def test_sheet_leaves_out_stale_cells(tmp_path):
    """A cell the grid's plan no longer names (an earlier setting, samples or not) is not an arm."""
    import yaml

    from tests.support.report_fixtures import build_cell

    grid_dir = build_grid(tmp_path, "conditioning")
    record = yaml.safe_load((grid_dir / "grid.yaml").read_text())  # the plan names the grid's cells
    record["cell_ids"] = sorted(p.name for p in grid_dir.iterdir() if (p / "cell.json").exists())
    (grid_dir / "grid.yaml").write_text(yaml.safe_dump(record))
    build_cell(grid_dir, "conditioning", {"conditioning": "adaln", "seed": 0, "lr": 0.5}, stop_after="train")
    labels, rows = sheet_rows(grid_dir, PROMPT_SET, "color", n=2)
    assert sorted(labels) == ["conditioning=adaln", "conditioning=cross_attn"] and len(rows[0][1]) == 2


def test_sheet_bad_inputs_give_one_line_and_write_nothing(tmp_path, capsys):
    """An unknown category, prompt set or folder, or a bad count: one line naming the fix, exit 2, no file."""
    grid_dir = build_grid(tmp_path, "conditioning")
    out = tmp_path / "sheet.png"
    cases = [(["--category", "colour"], ["no category 'colour'", "color"]),
             (["--prompt-set", "compshapes_nope"], ["compshapes_nope", PROMPT_SET]),
             (["--n", "0"], ["--n", "at least 1"]),
             (["--seed-axis", "-1"], ["--seed-axis"])]
    for argv, words in cases:
        with pytest.raises(SystemExit) as exit_:
            main([str(grid_dir), "--out", str(out), "--prompt-set", PROMPT_SET, *argv])
        assert exit_.value.code == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "Traceback" not in err[0], err
        assert all(word in err[0] for word in words), (words, err[0])
        assert not out.exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "no-such-grid"), "--out", str(out)])
    assert "not a grid folder" in capsys.readouterr().err
