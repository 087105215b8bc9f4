"""Checkpoint files: RNG round trip, atomic replacement, clear errors."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gentron.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint


def _draw(generator):
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            torch.rand(3, generator=generator).tolist())


def test_rng_states_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(5)
    save_checkpoint(tmp_path / "c.pt", rng=capture_rng(generator), step=1)
    expected = _draw(generator)
    _draw(generator)  # move every stream on
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"], generator)
    assert _draw(generator) == expected


def test_a_failed_save_leaves_the_old_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", step=1)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, step=2, bad=Unpicklable())
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_missing_and_corrupt_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        load_checkpoint(tmp_path / "bad.pt")
