"""Streaming training batches: DataLoader workers over any source, split, shuffled, resumable.

A source (gentron.data.real's readers, CompShapes, feature shards) cuts its data into units
(shards, chunks of files, byte ranges of a manifest, ranges of indices) and lists each unit's
undecoded entries in a fixed order. Every process and every loader worker reads its own part:

- each epoch the units are shuffled by (seed, epoch) and reader g of G (G = ranks x workers,
  g = rank x workers + worker) takes units g, g + G, ...; each reader runs through its epochs on its
  own, so nobody waits for an epoch boundary;
- entries pass through a bounded shuffle buffer (`buffer_size` entries, drained at the end of the
  reader's epoch) driven by a generator seeded by (seed, epoch, g), and are decoded only when they
  leave it; a sample that cannot be decoded (BadSample) is skipped and counted, and so is a unit that
  cannot be read on (BadUnit: a truncated or non-tar shard), with its path in the log;
- a worker collates its samples into local batches and sends each with its state after that batch:
  (epoch, unit, offset in it, the (unit, offset) of every buffered entry, the generator's state,
  samples and units skipped). DataLoader hands batches out round-robin over the workers, so the loader's
  state is each worker's last consumed state plus whose turn is next. A resumed loader re-reads
  the buffered entries and the current unit up to its offset (bounded by the buffer, never the
  epoch) and continues exactly where the consumed batches ended.

Memory per worker is the buffer plus the batches in flight, whatever the size of the data set.

Loader workers ignore SIGINT, SIGTERM and SIGUSR2 (`ignore_stop_signals`): the main process owns
shutdown (it finishes the step and checkpoints), and a signal sent to the whole job step (slurmstepd's
SIGTERM, a pre-timeout SIGUSR2) must not kill the workers under it mid-step.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterator

import numpy as np
import torch

from gentron.data.real import BadSample, BadUnit

log = logging.getLogger(__name__)

MEDIA_KEYS = ("image", "video", "latent")


@dataclass(frozen=True)
class Readers:
    """Who reads: this process's rank among `world_size`, with `num_workers` loader workers each."""
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0

    @property
    def per_rank(self) -> int:
        return max(1, self.num_workers)

    @property
    def total(self) -> int:
        return self.world_size * self.per_rank


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: the worker ignores the signals the main process stops on, which
    then shuts the workers down itself (see the module docstring)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def collate(samples: list[dict]) -> dict:
    """{media key: stacked tensor, "caption": [str, ...]} of a list of sample dicts; samples with
    stored text features ("text": per encoder (tokens (L_i, D), pooled (P,))) also give "text": per
    encoder {"tokens": (B, L, D) zero-padded to the batch's longest, "lengths": (B,), "pooled": (B, P)}."""
    key = next(k for k in MEDIA_KEYS if k in samples[0])
    batch = {key: torch.stack([s[key] for s in samples]), "caption": [s["caption"] for s in samples]}
    if "text" in samples[0]:
        batch["text"] = [pad_tokens([s["text"][i] for s in samples]) for i in range(len(samples[0]["text"]))]
    return batch


def pad_tokens(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Rows of (tokens (L_i, D), pooled (P,)) as one zero-padded batch (see `collate`)."""
    lengths = torch.tensor([t.shape[0] for t, _ in rows], dtype=torch.long)
    first = rows[0][0]
    tokens = first.new_zeros(len(rows), max(int(lengths.max()), 1), first.shape[-1])
    for i, (t, _) in enumerate(rows):
        tokens[i, :t.shape[0]] = t
    return {"tokens": tokens, "lengths": lengths, "pooled": torch.stack([p for _, p in rows])}


def unit_order(num_units: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_units)


class ShuffledStream(torch.utils.data.IterableDataset):
    """Endless local batches of one reader group (see the module docstring); yields
    (batch, logical worker, that worker's state after the batch)."""

    def __init__(self, source, batch_size: int, seed: int, readers: Readers, buffer_size: int,
                 start: dict[int, dict] | None = None, first_worker: int = 0):
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.readers, self.buffer_size = readers, max(1, buffer_size)
        self.start, self.first_worker = dict(start or {}), first_worker
        self.units = source.units(min_units=readers.total)
        if not self.units:
            raise ValueError(f"{_describe(source)} holds no data; check data.path")
        if len(self.units) < readers.total:
            raise ValueError(f"{_describe(source)} has {len(self.units)} unit(s) (shards or files) for "
                             f"{readers.total} readers ({readers.world_size} rank(s) x {readers.per_rank} loader "
                             f"worker(s)); every reader needs one: write more shards or lower data.num_workers")

    def __iter__(self) -> Iterator[tuple[dict, int, dict]]:
        info = torch.utils.data.get_worker_info()
        worker = (info.id if info is not None else 0)
        logical = (worker + self.first_worker) % self.readers.per_rank
        reader = self.readers.rank * self.readers.per_rank + logical
        batch: list[dict] = []
        for sample, state in self._samples(reader, self.start.get(logical)):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate(batch), logical, state()
                batch = []

    def _mine(self, reader: int, epoch: int) -> list:
        order = unit_order(len(self.units), self.seed, epoch)
        return [self.units[i] for i in order[reader::self.readers.total]]

    def _samples(self, reader: int, state: dict | None):
        state = dict(state) if state else {"epoch": 0, "unit": 0, "offset": 0, "buffer": [], "rng": None,
                                          "skipped": 0, "skipped_units": 0}
        skipped, skipped_units = state["skipped"], state.get("skipped_units", 0)
        epoch = state["epoch"]
        empty_epochs = 0
        while True:
            mine = self._mine(reader, epoch)
            rng = np.random.default_rng([self.seed, epoch, reader])
            if state["rng"] is not None:
                rng.bit_generator.state = state["rng"]
            buffer = self._rebuild(mine, state["buffer"])  # [(unit, offset, entry)]
            position = [state["unit"], state["offset"]]
            delivered = False

            def snapshot():
                return {"epoch": epoch, "unit": position[0], "offset": position[1],
                        "buffer": [(u, o) for u, o, _ in buffer], "rng": rng.bit_generator.state,
                        "skipped": skipped, "skipped_units": skipped_units}

            def pop():
                j = int(rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                return buffer.pop()[2]

            def drain(keep: int):
                """Deliver random buffer entries until `keep` are left; undecodable ones are counted."""
                nonlocal skipped, delivered
                while len(buffer) > keep:
                    sample = self._decode(pop())
                    if sample is None:
                        skipped += 1
                        continue
                    delivered = True
                    yield sample, snapshot

            for u in range(state["unit"], len(mine)):
                start = state["offset"] if u == state["unit"] else 0
                try:
                    for offset, entry in enumerate(self.source.entries(mine[u])):
                        if offset < start:
                            continue  # read before the resumed checkpoint: already in the buffer or delivered
                        buffer.append((u, offset, entry))
                        position[:] = [u, offset + 1]
                        yield from drain(self.buffer_size - 1)
                except BadUnit as e:  # the entries read before the damage stay in the buffer
                    if getattr(self.source, "on_error", "skip") == "raise":
                        raise
                    skipped_units += 1
                    log.warning("skipping the rest of shard %s (reader %d, epoch %d)", e, reader, epoch)
                position[:] = [u + 1, 0]
            yield from drain(0)
            empty_epochs = 0 if delivered else empty_epochs + 1
            if empty_epochs >= 2:
                raise ValueError(f"{_describe(self.source)}: reader {reader} of {self.readers.total} found no usable "
                                 f"sample in two epochs ({skipped} samples and {skipped_units} shards skipped): give "
                                 "it more data, use fewer data.num_workers, or find the bad files with "
                                 "data.on_error=raise (shards: gentron.data.real.check_shards)")
            epoch += 1
            state = {"epoch": epoch, "unit": 0, "offset": 0, "buffer": [], "rng": None, "skipped": skipped,
                     "skipped_units": skipped_units}

    def _rebuild(self, mine: list, keys: list) -> list:
        """The buffered entries of a resumed reader, read again from their units."""
        wanted: dict[int, set[int]] = {}
        for u, o in keys:
            wanted.setdefault(u, set()).add(o)
        found = {}
        for u, offsets in wanted.items():
            last = max(offsets)
            for offset, entry in enumerate(self.source.entries(mine[u])):
                if offset in offsets:
                    found[u, offset] = entry
                if offset >= last:
                    break
        return [(u, o, found[u, o]) for u, o in keys]

    def _decode(self, entry) -> dict | None:
        try:
            return self.source.decode(entry)
        except BadSample as e:
            if getattr(self.source, "on_error", "skip") == "raise":
                raise
            log.warning("skipping %s", e)
            return None


def _describe(source) -> str:
    return str(getattr(source, "pattern", None) or getattr(source, "path", None) or type(source).__name__)


class ResumableLoader:
    """Endless local batches from `source` through a DataLoader with `readers.num_workers` workers;
    `state_dict()` after any number of `next()` calls resumes at the following batch exactly.
    `pin_memory` (for a CUDA device) has batches arrive in page-locked memory."""

    def __init__(self, source, batch_size: int, seed: int, readers: Readers, buffer_size: int = 1000,
                 state: dict | None = None, prefetch_factor: int = 2, pin_memory: bool = False):
        self.readers = readers
        self.workers: dict[int, dict] = {}
        self.next_worker = 0
        if state:
            if tuple(state["readers"]) != (readers.world_size, readers.per_rank):
                log.warning("the data stream was saved with %s (ranks, workers) and resumes with %s: it restarts "
                            "from the beginning of its epoch order, so some samples repeat",
                            tuple(state["readers"]), (readers.world_size, readers.per_rank))
            else:
                self.workers = {int(k): v for k, v in state["workers"].items()}
                self.next_worker = state["next"]
        dataset = ShuffledStream(source, batch_size, seed, readers, buffer_size, self.workers, self.next_worker)
        kwargs = dict(prefetch_factor=prefetch_factor, persistent_workers=False,
                      worker_init_fn=ignore_stop_signals) if readers.num_workers else {}
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=readers.num_workers,
                                                  pin_memory=pin_memory, **kwargs)
        self._iter = None

    def next(self) -> dict:
        if self._iter is None:
            self._iter = iter(self.loader)
        batch, worker, state = next(self._iter)
        if worker != self.next_worker:  # DataLoader's round-robin is the bookkeeping's premise
            raise RuntimeError(f"data worker {worker} delivered out of turn (expected {self.next_worker})")
        self.workers[worker] = state
        self.next_worker = (worker + 1) % self.readers.per_rank
        return batch

    @property
    def skipped(self) -> int:
        """Bad samples this process's workers skipped (as of the batches consumed)."""
        return sum(s["skipped"] for s in self.workers.values())

    @property
    def skipped_units(self) -> int:
        """Bad units (shards) this process's workers skipped (as of the batches consumed)."""
        return sum(s.get("skipped_units", 0) for s in self.workers.values())

    def state_dict(self) -> dict[str, Any]:
        return {"readers": [self.readers.world_size, self.readers.per_rank], "next": self.next_worker,
                "workers": {k: dict(v) for k, v in self.workers.items()}}

    def close(self) -> None:
        """Shut the workers down. They ignore SIGTERM, DataLoader's last resort for a worker that does
        not join in time, so one still alive after that is killed."""
        iterator, self._iter = self._iter, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is None:
            return
        shutdown()
        for worker in getattr(iterator, "_workers", []):
            worker.join(timeout=5)
            if worker.is_alive():
                log.warning("data loader worker %s did not stop; killing it", worker.pid)
                worker.kill()


class IndexedSource:
    """A map-style data set (CompShapes) as a streaming source: units are ranges of indices."""

    def __init__(self, dataset, unit_size: int = 256, on_error: str = "skip"):
        self.dataset, self.unit_size, self.on_error = dataset, unit_size, on_error

    def units(self, min_units: int = 1) -> list[tuple[int, int]]:
        n = len(self.dataset)
        size = max(1, min(self.unit_size, n // max(1, min_units)))
        return [(i, min(i + size, n)) for i in range(0, n, size)]

    def entries(self, unit: tuple[int, int]):
        return iter(range(*unit))

    def decode(self, index: int) -> dict:
        return self.dataset[index]
