"""A run's training log: `run_dir/train_log.jsonl`, one JSON row per log step (DESIGN.md 'A run
folder'). A resumed run first drops the rows past the step it resumes from, so no step is logged twice.

Live, while the run trains, the same rows (`train/<key>`) and the evaluations during training
(`validation/...`, gentron.validation.scalars) go to
- TensorBoard with `train.tensorboard=true`: run_dir/tensorboard/, purged past the resumed step;
- Weights & Biases with `train.wandb=true`: one run per run folder, id `<grid>-<cell>` from the folder
  and its parent (the id `python -m reports.export wandb` gives the same cell, so a later export
  continues that run instead of adding one), project `train.wandb_project`, the cell config as its
  config. Offline under run_dir/wandb/ unless WANDB_MODE says otherwise (compute nodes seldom reach
  the internet; `wandb sync run_dir/wandb/offline-run-*` uploads). A resumed run reopens the same id;
  W&B keeps the first value of a step it already has.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path

from gentron.errors import ConfigError
from gentron.io import atomic_write_text

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"


class MetricsLog:
    """run_dir/train_log.jsonl, one line per log step; on resume, lines past the step are dropped, and
    so is a line torn by a kill mid-write (with a warning)."""

    def __init__(self, path: Path, resume_step: int, enabled: bool, tensorboard_dir: Path | None,
                 wandb: dict | None = None):
        """wandb: wandb.init's project and config for a live W&B run (None: none)."""
        self.path, self.enabled, self.writer, self.wandb = path, enabled, None, None
        if not enabled:
            return
        if path.exists():
            kept = []
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    step = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    log.warning("%s line %d is torn or not a log row (%r); dropped it", path, number, line[:60])
                    continue
                if step <= resume_step:
                    kept.append(line)
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1)
            except ImportError:
                log.warning("train.tensorboard=true but tensorboard is not installed; logging JSONL only")
        if wandb is not None:
            self.wandb = open_wandb(path.parent, **wandb)

    def write(self, row: dict) -> None:
        """A training row: to train_log.jsonl and, live, as train/<key> scalars."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self._live({f"train/{k}": v for k, v in row.items() if k != "step" and v is not None}, row["step"])

    def write_validation(self, row: dict) -> None:
        """An evaluation during training (its row is in validation.jsonl already): live scalars only."""
        if self.enabled:
            from gentron.validation import scalars

            self._live(scalars(row), row["step"])

    def _live(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def wandb_run_id(grid: str, cell: str) -> str:
    """The W&B run id of a grid's cell, shared by live logging and reports.export."""
    return f"{grid}-{cell}"


def open_wandb(run_dir: Path, project: str, config: dict):
    """A live W&B run for run_dir (runs/<grid>/<cell>): offline unless WANDB_MODE is set."""
    try:
        wandb = importlib.import_module("wandb")  # an optional extra, looked up by name
    except ImportError:
        raise ConfigError("train.wandb=true needs the wandb package, which is not installed by default: "
                          "pip install -e .[wandb] (or train.wandb=false)") from None
    run_dir = Path(run_dir).resolve()
    return wandb.init(project=project, id=wandb_run_id(run_dir.parent.name, run_dir.name),
                      name=f"{run_dir.parent.name}/{run_dir.name}", group=run_dir.parent.name,
                      dir=str(run_dir), config=config, resume="allow",
                      mode=os.environ.get("WANDB_MODE", "offline"), reinit=True)
