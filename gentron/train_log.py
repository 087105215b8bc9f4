"""A run's training log: `run_dir/train_log.jsonl`, one JSON row per log step (DESIGN.md 'A run
folder'), mirrored to TensorBoard when `train.tensorboard` is on. A resumed run first drops the rows
past the step it resumes from, so no step is logged twice.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from gentron.io import atomic_write_text

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"


class MetricsLog:
    """run_dir/train_log.jsonl, one line per log step; on resume, lines past the step are dropped, and
    so is a line torn by a kill mid-write (with a warning)."""

    def __init__(self, path: Path, resume_step: int, enabled: bool, tensorboard_dir: Path | None):
        self.path, self.enabled, self.writer = path, enabled, None
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

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    self.writer.add_scalar(f"train/{k}", v, row["step"])

    def close(self):
        if self.writer is not None:
            self.writer.close()
