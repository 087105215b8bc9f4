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


def _flip_tensor_bytes(path, pattern: bytes, count: int = 64) -> None:
    """Flip `count` bytes inside a tensor's stored data (found by its byte pattern), as a disk or copy
    error would, leaving the file's structure readable."""
    data = bytearray(path.read_bytes())
    start = data.find(pattern * 64)
    assert start >= 0
    for i in range(start + 8, start + 8 + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_refused_naming_the_path_and_the_previous_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    weights = {"w": torch.full((4096,), 0.25)}
    save_checkpoint(folder / "step-00000004.pt", step=4, ema=weights)
    path = save_checkpoint(folder / "last.pt", step=8, ema=weights, rng={"numpy": np.random.get_state()})
    assert load_checkpoint(path)["step"] == 8
    _flip_tensor_bytes(path, np.float32(0.25).tobytes())
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "corrupt" in message
    assert str(folder / "step-00000004.pt") in message and "step 4" in message
    assert load_checkpoint(folder / "step-00000004.pt")["step"] == 4  # the earlier one is intact


def test_a_checkpoint_without_an_earlier_one_says_so(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", step=3, model={"w": torch.full((4096,), 0.5)})
    _flip_tensor_bytes(path, np.float32(0.5).tobytes())
    with pytest.raises(ValueError, match=r"corrupt.*no earlier checkpoint.*train\.keep_last"):
        load_checkpoint(path)


def test_the_checksum_covers_every_kind_of_value_and_leaves_the_payload_as_given(tmp_path):
    generator = torch.Generator().manual_seed(0)
    payload = dict(model={"w": torch.randn(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16)},
                   optimizer={"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
                   rng=capture_rng(generator), step=5, config={"train": {"lr": 0.1}}, data={"images": 40})
    path = save_checkpoint(tmp_path / "c.pt", **payload)
    loaded = load_checkpoint(path)
    assert "checksum" not in loaded and loaded.keys() == payload.keys()
    assert torch.equal(loaded["model"]["w"], payload["model"]["w"])


def test_a_checkpoint_written_before_checksums_loads_with_a_warning(tmp_path, caplog):
    torch.save({"step": 2}, tmp_path / "old.pt")
    with caplog.at_level("WARNING"):
        assert load_checkpoint(tmp_path / "old.pt")["step"] == 2
    assert "no checksum" in caplog.text


def test_save_keeps_the_previous_checkpoints_and_prunes_older_ones(tmp_path):
    from gentron.checkpoint import LAST, kept_checkpoints, save_rotating

    folder = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        save_rotating(folder, dict(step=step), keep_last=3, previous_step=None if step == 2 else step - 2)
    assert sorted(p.name for p in folder.iterdir()) == [LAST, "step-00000004.pt", "step-00000006.pt"]
    assert [load_checkpoint(p)["step"] for p in kept_checkpoints(folder)] == [8, 6, 4]
    save_rotating(folder, dict(step=10), keep_last=1, previous_step=8)
    assert [p.name for p in folder.iterdir()] == [LAST]


def test_stale_temporaries_of_killed_saves_are_removed(tmp_path):
    from gentron.io import atomic_write_text, remove_stale_temporaries

    (tmp_path / ".last.pt.k2j3h4.tmp").write_bytes(b"x" * 1000)
    (tmp_path / ".other.json.abcd.tmp").write_bytes(b"x")
    atomic_write_text(tmp_path / "keep.txt", "kept")
    assert [p.name for p in remove_stale_temporaries(tmp_path, ["last.pt"])] == [".last.pt.k2j3h4.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.abcd.tmp", "keep.txt"]
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
