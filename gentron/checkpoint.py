"""Training checkpoints: what one holds, how it is written (atomically) and read back.

A checkpoint is one torch file with everything an exact resume needs:
  model, ema, optimizer           state dicts (full, unsharded: rank 0 gathers them)
  step                            optimizer steps taken
  rng                             torch / numpy / python global states and the trainer's generator
  data                            the data position (samples consumed)
  config, model_config            the resolved cell config and the GenTronConfig, so generation can
                                  rebuild the model without re-deriving it
"""
from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gentron.io import atomic_torch_save

log = logging.getLogger(__name__)

LAST = "last.pt"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def last_checkpoint(run_dir: str | Path) -> Path | None:
    path = checkpoint_dir(run_dir) / LAST
    return path if path.exists() else None


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, **payload: Any) -> Path:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    path = atomic_torch_save(path, payload)
    log.info("saved checkpoint %s (step %s)", path, payload.get("step"))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first (python -m gentron.train ...)")
    try:
        # Our own files only: they hold numpy RNG state and plain dicts, which weights_only rejects.
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise ValueError(f"checkpoint {path} is unreadable ({e}); delete it and resume from an earlier one") from e
