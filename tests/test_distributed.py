"""Two CPU processes (gloo) reproduce the single-process run with the same global batch, with DDP
and with FSDP2 sharding."""
from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp

from gentron.checkpoint import load_checkpoint
from gentron.distributed import DistInfo, local_slice
from gentron.train import train
from tests.support.train_fixtures import state_equal, tiny_config, with_changes

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, cfg, run_dir, port: int, world: int = WORLD, per_rank_noise: bool | None = None,
               sharded_only: bool = False) -> None:
    """One rank of a `world`-process run. per_rank_noise: the GPU's noise scheme (gentron.train_step);
    sharded_only: gathering the full model or optimizer state fails (a sharded save must not)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import gentron.distributed
    import gentron.train_step

    gentron.train_step.PER_RANK_NOISE = per_rank_noise
    if sharded_only:
        def gathered(*args, **kwargs):
            raise AssertionError("a sharded save gathered the full state")

        gentron.distributed.full_model_state = gentron.distributed.full_optimizer_state = gathered
    train(cfg, run_dir)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_local_slices_cover_the_global_batch():
    parts = [local_slice(8, DistInfo(rank, 2)) for rank in range(2)]
    assert [(p.start, p.stop) for p in parts] == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match="divisible"):
        local_slice(7, DistInfo(0, 2))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, strategy):
    cfg = tiny_config(tmp_path, train={"steps": 3, "strategy": strategy, "warmup_steps": 0, "lr": 1e-3})
    single = load_checkpoint(train(cfg, tmp_path / "single").checkpoint)
    mp.spawn(_rank_main, args=(cfg, tmp_path / strategy, _free_port()), nprocs=WORLD, join=True)
    multi = load_checkpoint(tmp_path / strategy / "checkpoints/last.pt")

    assert _losses(tmp_path / "single") == pytest.approx(_losses(tmp_path / strategy), rel=1e-5)
    for key in ("model", "ema"):
        for name, value in single[key].items():
            torch.testing.assert_close(multi[key][name], value, atol=1e-5, rtol=1e-4, msg=f"{key}.{name}")
    assert multi["data"] == single["data"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_with_two_loader_workers_each_resume_exactly_mid_epoch(tmp_path):
    """Streamed data (encode=per_batch): 2 gloo ranks x 2 loader workers; a run stopped at step 2
    (a quarter of the epoch) and resumed ends bit-identical to the uninterrupted run."""
    cfg = tiny_config(tmp_path, data={"encode": "per_batch", "num_workers": 2, "shuffle_buffer": 8},
                      train={"steps": 4, "ckpt_every": 100})
    mp.spawn(_rank_main, args=(cfg, tmp_path / "straight", _free_port()), nprocs=WORLD, join=True)
    mp.spawn(_rank_main, args=(with_changes(cfg, train={"steps": 2}), tmp_path / "resumed", _free_port()),
             nprocs=WORLD, join=True)
    mp.spawn(_rank_main, args=(cfg, tmp_path / "resumed", _free_port()), nprocs=WORLD, join=True)
    straight = load_checkpoint(tmp_path / "straight/checkpoints/last.pt")
    resumed = load_checkpoint(tmp_path / "resumed/checkpoints/last.pt")
    for key in ("model", "ema", "optimizer", "step", "data"):
        assert state_equal(straight[key], resumed[key]), key
    streams = straight["data"]["streams"]["images"]
    assert len(streams) == WORLD and all(len(s["workers"]) == 2 for s in streams)
    assert straight["data"]["images"] == 32  # of 64: mid-epoch


def _spawn(cfg, run_dir, world: int = WORLD, per_rank_noise: bool | None = None, sharded_only: bool = False):
    mp.spawn(_rank_main, args=(cfg, run_dir, _free_port(), world, per_rank_noise, sharded_only), nprocs=world,
             join=True)


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    """2 gloo ranks, FSDP2, the GPU's per-rank noise, batch 12: a straight run to step 4 and a run
    stopped at step 2 (checkpoints every 2 steps; gathering the full state would fail)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    cfg = tiny_config(tmp, train={"steps": 4, "ckpt_every": 2, "strategy": "fsdp", "batch_size": 12,
                                  "warmup_steps": 0, "lr": 1e-3})
    _spawn(cfg, tmp / "straight", per_rank_noise=True, sharded_only=True)
    _spawn(with_changes(cfg, train={"steps": 2}), tmp / "half", per_rank_noise=True, sharded_only=True)
    return cfg, tmp


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp_checkpoints_are_sharded_per_rank_and_resume_bit_exactly(fsdp_runs):
    """Each rank writes its own shard file (with a digest each, no full gather); the end of training
    consolidates last.pt; a run stopped at step 2 and resumed on 2 ranks ends bit-identical, noise
    streams included."""
    from gentron.sharded import META, sharded_checkpoints

    cfg, tmp = fsdp_runs
    folder = tmp / "straight" / "checkpoints"
    assert [s for s, _ in sharded_checkpoints(folder)] == [4, 2]
    newest = folder / "sharded-00000004"
    assert sorted(p.name for p in newest.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", META]
    assert sorted(torch.load(newest / META, weights_only=False)["shards"]) == [".metadata", "__0_0.distcp",
                                                                                "__1_0.distcp"]
    straight = load_checkpoint(folder / "last.pt")  # consolidated at the end
    assert state_equal(straight["model"], load_checkpoint(newest)["model"]) and len(straight["rng"]["noise"]) == 2

    resumed_dir = tmp / "resumed"
    shutil.copytree(tmp / "half", resumed_dir)
    _spawn(cfg, resumed_dir, per_rank_noise=True, sharded_only=True)
    resumed = load_checkpoint(resumed_dir / "checkpoints" / "last.pt")
    for key in ("model", "ema", "optimizer", "step", "data"):
        assert state_equal(straight[key], resumed[key]), key
    assert state_equal(straight["rng"]["noise"], resumed["rng"]["noise"])
    assert _losses(resumed_dir) == _losses(tmp / "straight")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sharded_checkpoints_resume_on_other_world_sizes_and_last_good_goes_back(fsdp_runs):
    """The step-2 sharded checkpoint of 2 ranks continues on 3 ranks (DCP reshards into them; each
    rank's 4 samples in 2 accumulated micro-batches, gradients reduced once) and in one process (the
    full state assembled): both continuations train the same weights. A NaN in the newest shards is
    found by the ranks' scan; train.resume=last_good goes back to step 2 and ends as the straight run
    did."""
    cfg, tmp = fsdp_runs
    for name in ("three", "one"):
        shutil.copytree(tmp / "half", tmp / name)
    _spawn(with_changes(cfg, train={"grad_accum": 2}), tmp / "three", world=3)
    three = load_checkpoint(tmp / "three" / "checkpoints" / "last.pt")
    one = load_checkpoint(train(cfg, tmp / "one").checkpoint)
    for key in ("model", "ema"):
        for name, value in one[key].items():
            torch.testing.assert_close(three[key][name], value, atol=1e-5, rtol=1e-4, msg=f"{key}.{name}")
    assert three["step"] == one["step"] == 4 and three["data"] == one["data"]

    poisoned = tmp / "poisoned"
    shutil.copytree(tmp / "straight", poisoned)
    (poisoned / "checkpoints" / "last.pt").unlink()
    newest = poisoned / "checkpoints" / "sharded-00000004"
    state = load_checkpoint(newest)
    state["ema"][next(iter(state["ema"]))].view(-1)[0] = float("nan")
    shutil.rmtree(newest)
    _write_as_shards(newest.parent, state)  # digests valid: only the value check finds it
    with pytest.raises(ValueError, match="non-finite weights"):
        load_checkpoint(newest)
    _spawn(with_changes(cfg, train={"resume": "last_good"}), poisoned, per_rank_noise=True)
    healed = load_checkpoint(poisoned / "checkpoints" / "last.pt")
    straight = load_checkpoint(tmp / "straight" / "checkpoints" / "last.pt")
    for key in ("model", "ema", "optimizer", "step", "data"):
        assert state_equal(straight[key], healed[key]), key


def _write_as_shards(folder, state: dict) -> None:
    """A full checkpoint payload written as one process's sharded checkpoint, digests and all."""
    import torch.distributed.checkpoint as dcp

    from gentron.checkpoint import save_checkpoint
    from gentron.sharded import META, SHARDS, file_digest, sharded_path

    path = sharded_path(folder, state["step"])
    weights = {key: state[key] for key in ("model", "ema", "optimizer")}
    dcp.save(weights, storage_writer=dcp.FileSystemWriter(path), no_dist=True)
    meta = {key: value for key, value in state.items() if key not in weights}
    save_checkpoint(path / META, **meta, **{SHARDS: {p.name: file_digest(p) for p in path.iterdir()}})
