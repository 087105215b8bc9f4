"""Export a runs folder's numbers to TensorBoard or Weights & Biases.

    python -m reports.export tensorboard RUNS_DIR --out DIR [--grid NAME ...]
    python -m reports.export wandb RUNS_DIR --project P [--out DIR] [--grid NAME ...]

Per grid and cell (one run named `<grid>/<cell_id>`): the scalars of train_log.jsonl (`train/<key>`),
of validation.jsonl (`validation/loss`, `validation/loss_t<lo>-<hi>` per timestep bin,
`validation/judge/<category>`, `validation/judge_mean`; gentron.validation) and the final metrics of
metrics.json (`final/<metric>/<score>`, at the cell's last logged step), the verdict of the cell's arm
against the grid's control from results.parquet (`verdict/<metric>/difference`, `_ci_low`, `_ci_high`,
`_p_adjusted` as numbers and `verdict/<metric>` in words; eval.verdicts), with the cell's axes as
hyperparameters (final metrics and verdict numbers as the hparams' metrics), and the first SAMPLES_PER_CATEGORY samples of each category of each prompt set as
images (`samples/<prompt_set>/<category>`, a clip by its first frame), at that step.

TensorBoard: DIR/<grid>/<cell_id>/, one folder per cell with the scalars and an hparams summary;
`tensorboard --logdir DIR`. Exporting again replaces the cell's folder.
W&B: offline runs (WANDB_MODE=offline unless set otherwise) under DIR/wandb (default DIR: .), one
per cell with id `<grid>-<cell_id>`, resumed with `resume="allow"` so a re-export overwrites its
files rather than adding a run; `wandb sync DIR/wandb/offline-run-*` uploads them. Needs the `wandb`
package, an optional extra: `pip install -e .[wandb]`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ablations.runfolder import (CELL, METRICS, RESULTS, SAMPLES, TRAIN_LOG, cell_dirs, find_grids,
                                 read_json_or_empty, read_jsonl)
from eval.verdicts import p_text
from gentron.errors import exits_on_user_error
from gentron.train_log import wandb_run_id
from gentron.validation import VALIDATION_FILE
from gentron.validation import scalars as validation_scalars

log = logging.getLogger(__name__)

SKIPPED_TRAIN_KEYS = ("step",)
SAMPLES_PER_CATEGORY = 4  # sample images exported per held-out category and prompt set
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")  # a GIF: its first frame


@dataclass
class CellExport:
    """What is exported of one cell: scalars {tag: [(step, value), ...]}, its axes and final metrics."""
    grid: str
    cell_id: str
    axes: dict
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    final_step: int = 0
    images: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)  # tag: [(file, caption), ...]
    # against the grid's control (results.parquet's verdict.* columns, eval.verdicts): per metric the
    # difference, its CI and adjusted p as numbers, and the verdict in words
    verdicts: dict[str, float] = field(default_factory=dict)
    verdict_text: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.grid}/{self.cell_id}"

    def add(self, tag: str, step: int, value) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        self.scalars.setdefault(tag, []).append((int(step), float(value)))


def sample_images(cell_dir: Path, per_category: int = SAMPLES_PER_CATEGORY) -> dict[str, list[tuple[Path, str]]]:
    """The first `per_category` samples of each category of each prompt set ({"samples/<set>/<category>":
    [(image file, prompt), ...]}); a clip is shown by its first frame."""
    out: dict[str, list[tuple[Path, str]]] = {}
    for folder in sorted((cell_dir / SAMPLES).glob("*/")):
        for row in read_jsonl(folder / "samples.jsonl"):
            if not isinstance(row, dict) or "file" not in row:
                continue
            tag = f"samples/{folder.name}/{row.get('category') or 'all'}"
            path = folder / row["file"]
            if row.get("frames") and (folder / row["frames"] / "000.png").exists():
                path = folder / row["frames"] / "000.png"
            if len(out.setdefault(tag, [])) < per_category and path.suffix.lower() in IMAGE_SUFFIXES and path.exists():
                out[tag].append((path, str(row.get("prompt", ""))))
    return {tag: files for tag, files in out.items() if files}


def read_cell_export(cell_dir: Path, grid: str) -> CellExport:
    info = read_json_or_empty(cell_dir / CELL)
    cell = CellExport(grid, info.get("cell_id", cell_dir.name), dict(info.get("axes") or {}))
    steps = [0]
    for row in read_jsonl(cell_dir / TRAIN_LOG):
        if not isinstance(row, dict) or "step" not in row:
            continue
        steps.append(int(row["step"]))
        for key, value in row.items():
            if key not in SKIPPED_TRAIN_KEYS:
                cell.add(f"train/{key}", row["step"], value)
    for row in read_jsonl(cell_dir / VALIDATION_FILE):
        if not isinstance(row, dict) or "step" not in row:
            continue
        step = int(row["step"])
        steps.append(step)
        for tag, value in validation_scalars(row).items():
            cell.add(tag, step, value)
    cell.final_step = max(steps)
    cell.images = sample_images(cell_dir)
    for metric, value in read_json_or_empty(cell_dir / METRICS).items():
        mean = value.get("mean") if isinstance(value, dict) else None
        if isinstance(mean, (int, float)) and not isinstance(mean, bool) and math.isfinite(mean):
            cell.final[f"final/{metric}"] = float(mean)
    return cell


def read_runs(runs_dir: str | Path, grids: list[str] | None = None) -> list[CellExport]:
    """Every cell of every grid (or of `grids`) under runs_dir."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs folder {runs_dir} does not exist; give the folder the grid runner wrote "
                                "(default: runs)")
    found = find_grids(runs_dir)
    unknown = sorted(set(grids or []) - set(found))
    if unknown:
        raise ValueError(f"no grid {unknown} in {runs_dir}; its grids are {found}")
    cells = []
    for grid in grids or found:
        verdicts = _verdict_rows(runs_dir / grid)
        for cell_dir in cell_dirs(runs_dir / grid):
            cell = read_cell_export(cell_dir, grid)
            for row in verdicts.get(cell.cell_id, []):
                _add_verdict(cell, row)
            cells.append(cell)
    return cells


def _verdict_rows(grid_dir: Path) -> dict[str, list[dict]]:
    """results.parquet's rows that carry a verdict, by cell id ({} without the file)."""
    if not (grid_dir / RESULTS).exists():
        return {}
    import pandas as pd

    table = pd.read_parquet(grid_dir / RESULTS)
    if "verdict.verdict" not in table.columns:
        return {}
    out: dict[str, list[dict]] = {}
    for row in table[table["verdict.verdict"].notna()].to_dict("records"):
        out.setdefault(str(row["cell_id"]), []).append(row)
    return out


def _add_verdict(cell: CellExport, row: dict) -> None:
    metric = row["metric"]
    for key in ("difference", "ci_low", "ci_high", "p_adjusted"):
        value = row.get(f"verdict.{key}")
        if isinstance(value, (int, float)) and math.isfinite(value):
            cell.verdicts[f"verdict/{metric}/{key}"] = float(value)
    cell.verdict_text[f"verdict/{metric}"] = (
        f"{row['verdict.verdict']} against {row['verdict.control']}: difference {row['verdict.difference']:+.3f} "
        f"[{row['verdict.ci_low']:+.3f}, {row['verdict.ci_high']:+.3f}], adjusted p {p_text(row['verdict.p_adjusted'])} "
        f"({row['verdict.correction']}, level {row['verdict.level']}, {row['verdict.method']})")


def _pixels(path: Path):
    """An image file as an HxWx3 uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _hparam_value(value):
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def export_tensorboard(runs_dir: str | Path, out: str | Path, grids: list[str] | None = None) -> list[Path]:
    """Write each cell's TensorBoard folder out/<grid>/<cell_id>/ (replaced if present); returns them."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError("exporting to TensorBoard needs the tensorboard package: pip install tensorboard") from e
    written = []
    for cell in read_runs(runs_dir, grids):
        folder = Path(out) / cell.grid / cell.cell_id
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        writer = SummaryWriter(str(folder))
        try:
            for tag, points in sorted(cell.scalars.items()):
                for step, value in points:
                    writer.add_scalar(tag, value, step)
            for tag, value in sorted({**cell.final, **cell.verdicts}.items()):
                writer.add_scalar(tag, value, cell.final_step)
            for tag, text in sorted(cell.verdict_text.items()):
                writer.add_text(tag, text, cell.final_step)
            for tag, files in sorted(cell.images.items()):
                for i, (path, _) in enumerate(files):
                    writer.add_image(f"{tag}/{i}", _pixels(path), cell.final_step, dataformats="HWC")
            hparams = {k: _hparam_value(v) for k, v in sorted(cell.axes.items())} or {"cell_id": cell.cell_id}
            # The hparams summary's metrics are the final ones under their own tags, so the scalars above
            # are not written twice.
            writer.add_hparams(hparams, {f"hparam/{k.removeprefix('final/')}": v
                                         for k, v in {**cell.final, **cell.verdicts}.items()}, run_name=".")
        finally:
            writer.close()
        written.append(folder)
        log.info("exported %s to %s", cell.name, folder)
    return written


def export_wandb(runs_dir: str | Path, project: str, out: str | Path | None = None,
                 grids: list[str] | None = None) -> list[str]:
    """Log each cell as one W&B run (offline unless WANDB_MODE says otherwise); returns the run ids."""
    # wandb is an optional extra (pyproject [wandb]), not a dependency of the install: looked up by name.
    try:
        wandb = importlib.import_module("wandb")
    except ImportError as e:
        raise ImportError("exporting to W&B needs the wandb package, which the project does not install by "
                          "default: pip install -e .[wandb] (or export to TensorBoard)") from e
    os.environ.setdefault("WANDB_MODE", "offline")
    out = Path(out) if out is not None else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    ids = []
    for cell in read_runs(runs_dir, grids):
        run_id = wandb_run_id(cell.grid, cell.cell_id)
        for old in out.glob(f"wandb/*-run-*-{run_id}"):  # a re-export replaces the offline run
            shutil.rmtree(old)
        run = wandb.init(project=project, id=run_id, name=cell.name, group=cell.grid, dir=str(out),
                         config={"grid": cell.grid, "cell_id": cell.cell_id, **cell.axes}, reinit=True)
        try:
            by_step: dict[int, dict] = {}
            for tag, points in cell.scalars.items():
                for step, value in points:
                    by_step.setdefault(step, {})[tag] = value
            for step in sorted(by_step):
                run.log(by_step[step], step=step)
            if cell.images:
                run.log({tag: [wandb.Image(str(path), caption=prompt) for path, prompt in files]
                         for tag, files in cell.images.items()}, step=max(by_step, default=cell.final_step))
            run.summary.update({**cell.final, **cell.verdicts, **cell.verdict_text})
        finally:
            run.finish()
        ids.append(run_id)
    return ids


@exits_on_user_error("python -m reports.export")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reports.export",
                                     description="Export a runs folder's training logs, validation and final "
                                                 "metrics to TensorBoard or W&B (re-exporting replaces).")
    sub = parser.add_subparsers(dest="target", required=True)
    tb = sub.add_parser("tensorboard", help="write TensorBoard event files, one folder per cell")
    tb.add_argument("runs_dir")
    tb.add_argument("--out", required=True, help="the folder to write (tensorboard --logdir OUT)")
    tb.add_argument("--grid", action="append", help="only this grid (repeatable)")
    wb = sub.add_parser("wandb", help="log offline W&B runs, one per cell (needs `pip install wandb`)")
    wb.add_argument("runs_dir")
    wb.add_argument("--project", required=True)
    wb.add_argument("--out", help="the offline runs go to OUT/wandb (default: .)")
    wb.add_argument("--grid", action="append", help="only this grid (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.target == "tensorboard":
        written = export_tensorboard(args.runs_dir, args.out, args.grid)
        print(f"exported {len(written)} cells to {args.out}")
    else:
        ids = export_wandb(args.runs_dir, args.project, args.out, args.grid)
        print(f"logged {len(ids)} offline W&B runs")


if __name__ == "__main__":
    main()
