"""Checkpoint files: RNG round trip, atomic replacement, clear errors."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gentron.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from gentron.distributed import DistInfo


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


# --- sharded checkpoints (FSDP runs; here written by one process) ------------------------------

def _sharded_run(folder, steps, poison_at=None, keep_last=2, cfg=None):
    """Sharded checkpoints of a small model at `steps`, as an FSDP run's writer saves them (meta:
    step, rng, data, config); at step `poison_at` one EMA value is NaN."""
    from gentron.config import default_config, to_dict
    from gentron.sharded import save

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = {n: p.detach().clone() for n, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    for step in range(1, max(steps) + 1):
        model(torch.randn(4, 64)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if step in steps:
            saved = {n: v.clone() for n, v in ema.items()}
            if step == poison_at:
                saved["0.weight"].view(-1)[3] = float("nan")
            meta = dict(step=step, data={"images": 4 * step}, rng=capture_rng(generator),
                        config=to_dict(cfg or default_config()))
            save(folder, step, model, saved, optimizer, meta, DistInfo(), keep_last)
    return model, optimizer


def test_sharded_checkpoints_round_trip_rotate_and_consolidate(tmp_path, capsys):
    from gentron.checkpoint import LAST, consolidate, kept_checkpoints, main
    from gentron.sharded import META, sharded_checkpoints

    folder = tmp_path / "run" / "checkpoints"
    (folder / ".sharded-00000001.partial").mkdir(parents=True)  # a save killed midway
    model, optimizer = _sharded_run(folder, steps=(2, 4, 6))
    assert [s for s, _ in sharded_checkpoints(folder)] == [6, 4]  # keep_last=2
    assert sorted(p.name for p in folder.iterdir()) == ["sharded-00000004", "sharded-00000006"]
    newest = folder / "sharded-00000006"
    assert sorted(p.name for p in newest.iterdir()) == [".metadata", "__0_0.distcp", META]
    meta = torch.load(newest / META, weights_only=False)
    assert sorted(meta["shards"]) == [".metadata", "__0_0.distcp"] and all(
        d.startswith("blake2b:") for d in meta["shards"].values())

    state = load_checkpoint(newest)  # one process: the shards assembled into full state dicts
    assert state["step"] == 6 and state["data"] == {"images": 24} and "shards" not in state
    for name, p in model.state_dict().items():
        assert torch.equal(state["model"][name], p)
    assert torch.equal(state["optimizer"]["state"]["1.bias"]["exp_avg"], optimizer.state[model[1].bias]["exp_avg"])
    with_ranks = load_checkpoint(newest, DistInfo())  # an FSDP run: checked, weights left to load in place
    assert with_ranks["sharded"] == str(newest) and "model" not in with_ranks

    last = consolidate(tmp_path / "run")
    assert last == folder / LAST
    assert state_equal_payload(load_checkpoint(last), state)
    # Same step: an FSDP run resumes from the shards, any other run from the full file.
    assert kept_checkpoints(folder, prefer_sharded=True)[:2] == [newest, last]
    assert kept_checkpoints(folder)[:2] == [last, newest]
    last.unlink()
    main(["consolidate", str(newest)])
    assert capsys.readouterr().out.strip() == str(last)


def state_equal_payload(a, b) -> bool:
    from tests.support.train_fixtures import state_equal

    return all(state_equal(a[k], b[k]) for k in ("model", "ema", "optimizer", "step", "data"))


def test_a_newer_full_file_resumes_before_older_shards(tmp_path):
    """A run folder written by FSDP, then continued without it (one process, DDP): last.pt is newer
    than the sharded folders and is what resumes, whatever the run prefers."""
    from gentron.checkpoint import resume_checkpoint

    folder = tmp_path / "checkpoints"
    _sharded_run(folder, steps=(2,))
    save_checkpoint(folder / "last.pt", step=3)
    assert resume_checkpoint(folder, prefer_sharded=True) == folder / "last.pt"
    (folder / "last.pt").unlink()
    assert resume_checkpoint(folder) == folder / "sharded-00000002"


def test_a_flipped_shard_is_refused_naming_the_shard_and_the_previous_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    _sharded_run(folder, steps=(2, 4))
    shard = folder / "sharded-00000004" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    for ranks in (None, DistInfo()):
        with pytest.raises(ValueError) as error:
            load_checkpoint(folder / "sharded-00000004", ranks)
        message = str(error.value)
        assert "corrupt: shard __0_0.distcp" in message and "sharded-00000002 (step 2)" in message
    assert load_checkpoint(folder / "sharded-00000002")["step"] == 2


def test_a_nan_in_sharded_weights_is_refused_and_last_good_goes_back(tmp_path):
    """A sharded checkpoint whose digests hold but whose EMA has a NaN: refused by the full load and by
    the ranks' scan alike, naming the tensor; train.resume=last_good resumes from the one before."""
    from gentron.checkpoint import PoisonedCheckpoint, resume_state
    from tests.support.train_fixtures import tiny_config, with_changes

    cfg = tiny_config(tmp_path)
    run = tmp_path / "run"
    _sharded_run(run / "checkpoints", steps=(2, 4), poison_at=4, cfg=cfg)
    expected = r"non-finite weights \(ema\[0\.weight\] has 1 of 4096 values NaN or inf\).*sharded-00000002.*last_good"
    for ranks in (None, DistInfo()):
        with pytest.raises(PoisonedCheckpoint, match=expected):
            load_checkpoint(run / "checkpoints" / "sharded-00000004", ranks)
        with pytest.raises(PoisonedCheckpoint, match=expected):
            resume_state(cfg, run, ranks)
    state = resume_state(with_changes(cfg, train={"resume": "last_good"}), run, DistInfo())
    assert state["step"] == 2 and state["sharded"].endswith("sharded-00000002")


def test_keeping_a_checkpoint_already_linked_under_its_step_name_leaves_no_temporary(tmp_path):
    """A save killed after linking last.pt to its step name, then rerun: the step file and last.pt are
    one file already, rename() between them does nothing, and the temporary link must not stay."""
    import os

    from gentron.checkpoint import _keep_as

    last = save_checkpoint(tmp_path / "last.pt", step=2)
    step = tmp_path / "step-00000002.pt"
    os.link(last, step)
    _keep_as(last, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step-00000002.pt"]
