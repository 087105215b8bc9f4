"""The export of a grid to TensorBoard and W&B carries evaluation during training (validation loss
by timestep bin, judge scores by step) and sample images per held-out category, read back with
tensorboard's own event reader and from the W&B offline run's files."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gentron.validation import VALIDATION_FILE
from reports import export
from tests.support.report_fixtures import build_grid

STEPS = (100, 200, 300)
BINS = [[0, 500], [500, 1000]]


def _validation_rows(seed: int) -> list[dict]:
    return [{"kind": "validation", "step": s, "loss": 0.5 / s, "loss_bins": [1.0 / s + seed, 0.1 / s],
             "mse_bins": [1.0 / s, 0.1 / s], "t_bins": BINS, "held_out": True,
             "judge": {"color": s / 1000, "shape": 0.5}, "judge_mean": (s / 1000 + 0.5) / 2, "judge_prompts": 16}
            for s in STEPS]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    grid_dir = build_grid(root, "conditioning", {"conditioning": ["adaln", "cross_attn"], "seed": [0]}, n_prompts=12)
    for cell in sorted(p for p in grid_dir.iterdir() if (p / "cell.json").exists()):
        (cell / VALIDATION_FILE).write_text("".join(json.dumps(r) + "\n" for r in _validation_rows(0)))
    return root


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_holds_validation_by_step_and_samples_per_category(grid, tmp_path):
    written = export.export_tensorboard(grid, tmp_path / "tb")
    assert len(written) == 2
    for folder in written:
        acc = _events(folder)
        scalars = {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        assert scalars["validation/loss_t0000-0500"] == [(s, round(1.0 / s, 6)) for s in STEPS]
        assert scalars["validation/loss_t0500-1000"] == [(s, round(0.1 / s, 6)) for s in STEPS]
        assert scalars["validation/judge/color"] == [(s, round(s / 1000, 6)) for s in STEPS]
        assert [step for step, _ in scalars["validation/judge_mean"]] == list(STEPS)
        images = acc.Tags()["images"]
        # the fixture's 12 prompts: 2 per category of 6; each category's samples (up to 4) under its own tag
        categories = {t.split("/")[2] for t in images}
        assert categories == {"color", "shape", "texture", "spatial", "non_spatial", "complex"}
        assert sorted(images) == sorted(f"samples/compshapes_test/{c}/{i}" for c in categories for i in range(2))
        event = acc.Images("samples/compshapes_test/color/0")[0]
        logged = (grid / "conditioning" / folder.name / "train_log.jsonl").read_text().splitlines()
        assert event.step == json.loads(logged[-1])["step"] > max(STEPS)  # at the cell's last logged step
        decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        first = _first_sample(grid, folder.name, "color")
        assert decoded.shape == first.shape and np.array_equal(decoded, first)


def _first_sample(runs: Path, cell_id: str, category: str) -> np.ndarray:
    folder = runs / "conditioning" / cell_id / "samples" / "compshapes_test"
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["category"] == category)
    return np.asarray(Image.open(folder / row["file"]).convert("RGB"))


def test_wandb_offline_run_holds_the_sample_images(grid, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = export.export_wandb(grid, "gentron-test", tmp_path / "wb", grids=["conditioning"])
    assert len(ids) == 2
    for run_id in ids:
        (run,) = (tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}")
        media = sorted((run / "files" / "media" / "images").rglob("*.png"))
        # two prompts per category of 6, each an image file of the run
        assert len(media) == 12
        # named <category>_<step>_<hash>.png under samples/<prompt set>/
        assert {p.parent.name for p in media} == {"compshapes_test"}
        assert {p.name.rsplit("_", 2)[0] for p in media} == {"color", "shape", "texture", "spatial", "non_spatial",
                                                             "complex"}


def test_the_verdicts_against_the_control_are_exported_as_numbers_and_words(grid, tmp_path, monkeypatch):
    import shutil

    import pandas as pd

    from ablations.results import write_results

    grid = shutil.copytree(grid, tmp_path / "runs")
    write_results(grid / "conditioning")  # as the grid runner leaves it: with the verdict columns
    results = pd.read_parquet(grid / "conditioning" / "results.parquet")
    judged = results[results["verdict.verdict"].notna()]
    assert len(judged) > 0 and set(judged["verdict.control"]) == {"conditioning=adaln"}
    arm_cell = judged["cell_id"].iloc[0]
    written = {f.name: f for f in export.export_tensorboard(grid, tmp_path / "tb")}
    for cell_id, folder in written.items():
        acc = _events(folder)
        tags = set(acc.Tags()["scalars"])
        rows = judged[judged["cell_id"] == cell_id]
        assert (len(rows) > 0) == (cell_id == arm_cell)  # the control has no verdict against itself
        for row in rows.to_dict("records"):
            (event,) = acc.Scalars(f"verdict/{row['metric']}/difference")
            assert event.value == pytest.approx(row["verdict.difference"], abs=1e-6)
            (p_adj,) = acc.Scalars(f"verdict/{row['metric']}/p_adjusted")
            assert p_adj.value == pytest.approx(row["verdict.p_adjusted"], rel=1e-5)
            (text,) = acc.Tensors(f"verdict/{row['metric']}/text_summary")
            assert text.tensor_proto.string_val[0].decode().startswith(f"{row['verdict.verdict']} against conditioning=adaln")
        if cell_id != arm_cell:
            assert not any(t.startswith("verdict/") for t in tags)
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    export.export_wandb(grid, "gentron-test", tmp_path / "wb", grids=["conditioning"])
    (run,) = (tmp_path / "wb" / "wandb").glob(f"offline-run-*-conditioning-{arm_cell}")
    from tests.support import wandb_records

    summary = wandb_records.summary(run)
    row = judged[judged["cell_id"] == arm_cell].to_dict("records")[0]
    assert summary[f"verdict/{row['metric']}/difference"] == pytest.approx(row["verdict.difference"])
    assert summary[f"verdict/{row['metric']}"].startswith(row["verdict.verdict"])
