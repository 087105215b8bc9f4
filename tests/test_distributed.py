"""Two CPU processes (gloo) reproduce the single-process run with the same global batch, with DDP
and with FSDP2 sharding."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from gentron.checkpoint import load_checkpoint
from gentron.distributed import DistInfo, local_slice
from gentron.train import train
from tests.support.train_fixtures import tiny_config

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, cfg, run_dir, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
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
    from tests.support.train_fixtures import state_equal, with_changes

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
