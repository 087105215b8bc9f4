"""Streaming batches: every sample once per epoch over ranks and workers, per-epoch shuffles, bad
samples skipped and counted, and an exact resume from a saved state mid-epoch."""
from __future__ import annotations

import pytest
import torch

from gentron.data.real import BadSample
from gentron.data.stream import IndexedSource, Readers, ResumableLoader


class Numbers(torch.utils.data.Dataset):
    """Sample i is {"image": a 1x1x1 tensor holding i, "caption": str(i)}; indices in `bad` fail."""

    def __init__(self, n: int, bad=()):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise BadSample(f"sample {i}: unreadable")
        return {"image": torch.full((1, 1, 1), float(i)), "caption": str(i)}


def _ids(batch) -> list[int]:
    return [int(c) for c in batch["caption"]]


def _loaders(source, world: int, workers: int, batch: int, buffer: int = 8, states=None):
    return [ResumableLoader(source, batch, seed=3, readers=Readers(rank, world, workers), buffer_size=buffer,
                            state=None if states is None else states[rank]) for rank in range(world)]


def test_each_sample_once_per_epoch_over_ranks_and_workers_and_epochs_differ():
    source = IndexedSource(Numbers(48), unit_size=4)
    loaders = _loaders(source, world=2, workers=2, batch=3)
    seen = [i for _ in range(8) for loader in loaders for i in _ids(loader.next())]  # 48 = one epoch
    assert sorted(seen) == list(range(48))
    assert seen != sorted(seen)  # shuffled
    fresh = _loaders(source, 2, 2, 3)
    again = [i for _ in range(8) for loader in fresh for i in _ids(loader.next())]
    assert again == seen  # deterministic given the seed
    second = [i for _ in range(8) for loader in loaders for i in _ids(loader.next())]
    assert sorted(second) == list(range(48)) and second != seen  # another order in epoch 1


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_saved_state_continues_exactly(workers):
    source = IndexedSource(Numbers(40), unit_size=4)
    straight = _loaders(source, 2, workers, batch=3, buffer=5)
    expected = [[_ids(loader.next()) for loader in straight] for _ in range(25)]  # crosses epoch ends

    first = _loaders(source, 2, workers, batch=3, buffer=5)
    got = [[_ids(loader.next()) for loader in first] for _ in range(7)]  # mid-epoch, buffers full
    states = [loader.state_dict() for loader in first]
    for loader in first:
        loader.close()
    resumed = _loaders(source, 2, workers, batch=3, buffer=5, states=states)
    got += [[_ids(loader.next()) for loader in resumed] for _ in range(18)]
    assert got == expected


def test_bad_samples_are_skipped_and_counted():
    source = IndexedSource(Numbers(20, bad={3, 11}), unit_size=5)
    (loader,) = _loaders(source, 1, 0, batch=2)
    seen = [i for _ in range(9) for i in _ids(loader.next())]  # the 18 good samples of one epoch
    assert sorted(seen) == sorted(set(range(20)) - {3, 11})
    assert loader.skipped == 2
    (loader,) = _loaders(source, 1, 2, batch=2)  # counted in the workers, summed in the loader
    seen = {i for _ in range(20) for i in _ids(loader.next())}
    assert seen == set(range(20)) - {3, 11} and loader.skipped >= 2


def test_too_few_units_for_the_readers_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"1 unit\(s\).*4 readers.*lower data.num_workers"):
        ResumableLoader(IndexedSource(Numbers(1)), 1, 0, Readers(0, 2, 2))


def test_loader_workers_ignore_sigterm_and_sigusr2_and_the_loader_keeps_yielding():
    """slurmstepd signals every process of the job step; the main process owns shutdown (it finishes
    the step and checkpoints), so a signal to a loader worker must not kill the loader under it."""
    import os
    import signal
    import time

    main_handler = signal.getsignal(signal.SIGTERM)
    loader = ResumableLoader(IndexedSource(Numbers(400), unit_size=10), 2, seed=0, readers=Readers(0, 1, 2),
                             buffer_size=4)
    seen = [i for _ in range(4) for i in _ids(loader.next())]
    workers = list(loader._iter._workers)
    assert len(workers) == 2
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGUSR2)
    time.sleep(0.5)
    assert all(worker.is_alive() for worker in workers)
    seen += [i for _ in range(60) for i in _ids(loader.next())]  # far past what was prefetched
    assert len(set(seen)) > 100 and signal.getsignal(signal.SIGTERM) == main_handler
    loader.close()
    assert not any(worker.is_alive() for worker in workers)
