"""PromptCache: every unique prompt is encoded once per encoder, kept in memory and on disk.

Training gathers a batch of embeddings from memory instead of running the encoders each step.
In memory, one encoder's embeddings live in a single zero-padded tensor (rows = prompts) plus
their lengths and a prompt -> row dict, so a batch is one index_select, not a Python loop over
tensors. On disk, each encoding call writes a new shard file (atomic write-then-rename, unique
name), never appending to an existing one, so processes that share a cache folder cannot corrupt
each other; each reads the others' shards when it misses a prompt.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import time
import uuid
from pathlib import Path
from collections.abc import Iterable, Sequence

import torch

from gentron.io import atomic_torch_save, atomic_write_json, remove_stale_temporaries
from gentron.progress import progress as progress_bar
from gentron.text.base import TextEmbedding
from gentron.text.encoder import TextEncoder

logger = logging.getLogger(__name__)


class EmbeddingTable:
    """One encoder's embeddings for a growing set of prompts, stored unpadded-in-effect: rows are
    zero-padded to the longest prompt seen, and a gathered batch is cut to its own longest."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.tokens: torch.Tensor | None = None  # (capacity, max_len, D), zero beyond each length
        self.lengths: torch.Tensor | None = None  # (capacity,)
        self.pooled: torch.Tensor | None = None  # (capacity, P)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.index

    def add(self, prompts: Sequence[str], tokens: torch.Tensor, lengths: torch.Tensor, pooled: torch.Tensor) -> None:
        """Add rows (tokens zero-padded beyond `lengths`); prompts already present are skipped."""
        keep, seen = [], set()
        for i, prompt in enumerate(prompts):
            if prompt not in self.index and prompt not in seen:
                seen.add(prompt)
                keep.append(i)
        if not keep:
            return
        rows = torch.tensor(keep)
        tokens, lengths, pooled = tokens[rows], lengths[rows], pooled[rows]
        start = len(self.index)
        self._reserve(start + len(keep), tokens.shape[1], tokens, pooled)
        self.tokens[start:start + len(keep), : tokens.shape[1]] = tokens
        self.lengths[start:start + len(keep)] = lengths
        self.pooled[start:start + len(keep)] = pooled
        for offset, i in enumerate(keep):
            self.index[prompts[i]] = start + offset

    def _reserve(self, rows: int, length: int, tokens: torch.Tensor, pooled: torch.Tensor) -> None:
        # Grow geometrically so adding prompts one batch at a time stays linear overall.
        if self.tokens is None:
            self.tokens = tokens.new_zeros(max(rows, 64), length, tokens.shape[2])
            self.lengths = torch.zeros(max(rows, 64), dtype=torch.long)
            self.pooled = pooled.new_zeros(max(rows, 64), pooled.shape[1])
            return
        capacity, old_length = self.tokens.shape[:2]
        new_capacity = max(rows, 2 * capacity) if rows > capacity else capacity
        new_length = max(length, old_length)
        if (new_capacity, new_length) != (capacity, old_length):
            grown = self.tokens.new_zeros(new_capacity, new_length, self.tokens.shape[2])
            grown[:capacity, :old_length] = self.tokens
            self.tokens = grown
            self.lengths = torch.cat([self.lengths, self.lengths.new_zeros(new_capacity - capacity)])
            self.pooled = torch.cat([self.pooled, self.pooled.new_zeros(new_capacity - capacity, self.pooled.shape[1])])

    def gather(self, prompts: Sequence[str]) -> TextEmbedding:
        rows = torch.tensor([self.index[p] for p in prompts])
        lengths = self.lengths[rows]
        length = int(lengths.max())
        tokens = self.tokens[:, :length][rows]
        mask = torch.arange(length)[None] < lengths[:, None]
        return TextEmbedding(tokens, mask, self.pooled[rows])


class PromptCache:
    """Embeddings of prompts for several encoders, memoised in memory and in `cache_dir`.

    `encode(prompts)` returns one TextEmbedding per encoder (CPU tensors, each batch padded to its
    own longest prompt); missing prompts are encoded in batches of `batch_size`.
    """

    def __init__(self, encoders: Sequence[TextEncoder], cache_dir: str | os.PathLike | None = None, batch_size: int = 64):
        self.encoders = list(encoders)
        self.batch_size = batch_size
        self.tables = [EmbeddingTable() for _ in self.encoders]
        self.dirs = [None if cache_dir is None else Path(cache_dir) / folder_name(e.name) for e in self.encoders]
        self._loaded_shards: list[set[str]] = [set() for _ in self.encoders]
        self._swept: set[int] = set()

    def encode(self, prompts: Sequence[str]) -> list[TextEmbedding]:
        if isinstance(prompts, str):
            raise ValueError("encode() takes a list of prompts, not a single string")
        for i in range(len(self.encoders)):
            missing = self._missing(i, prompts)
            if missing:
                self._load_disk(i)
                self._encode_missing(i, self._missing(i, prompts))
        return [table.gather(prompts) for table in self.tables]

    def precompute(self, prompts: Iterable[str], batch_size: int | None = None) -> None:
        """Encode every prompt not cached yet (e.g. a whole data set's captions before training)."""
        prompts = list(prompts)
        for i, encoder in enumerate(self.encoders):
            self._load_disk(i)
            missing = self._missing(i, prompts)
            logger.info("%s: %d of %d unique prompts to encode", encoder.name, len(missing), len(set(prompts)))
            self._encode_missing(i, missing, batch_size, progress=True)

    def _missing(self, i: int, prompts: Iterable[str]) -> list[str]:
        table = self.tables[i]
        return [p for p in dict.fromkeys(prompts) if p not in table]

    def _encode_missing(self, i: int, missing: list[str], batch_size: int | None = None, progress: bool = False) -> None:
        if not missing:
            return
        batch_size = batch_size or self.batch_size
        # Similar lengths in a batch waste less compute on padding.
        missing = sorted(missing, key=len)
        chunks = [missing[s:s + batch_size] for s in range(0, len(missing), batch_size)]
        for chunk in progress_bar(chunks, desc=f"encoding prompts ({self.encoders[i].name})", unit="batch",
                                  disable=not progress):
            emb = self.encoders[i].encode(chunk).to("cpu")
            shard = dict(prompts=chunk, tokens=emb.tokens, lengths=emb.mask.sum(1), pooled=emb.pooled)
            self.tables[i].add(chunk, shard["tokens"], shard["lengths"], shard["pooled"])
            self._write_shard(i, shard)

    def _write_shard(self, i: int, shard: dict) -> None:
        directory = self.dirs[i]
        if directory is None:
            return
        if not (directory / "encoder.json").exists():
            atomic_write_json(directory / "encoder.json", {"name": self.encoders[i].name})
        # A unique name per write: concurrent writers never touch the same file.
        name = f"shard-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.pt"
        atomic_torch_save(directory / name, shard)
        self._loaded_shards[i].add(name)

    def _load_disk(self, i: int) -> None:
        """Read shards this process has not seen (its own earlier runs', or another process's)."""
        directory = self.dirs[i]
        if directory is None or not directory.is_dir():
            return
        if i not in self._swept:  # temporaries of writers that died (the folder is shared: live ones stay)
            remove_stale_temporaries(directory, shared=True)
            self._swept.add(i)
        for path in sorted(directory.glob("shard-*.pt")):
            if path.name in self._loaded_shards[i]:
                continue
            shard = _read_shard(path)
            if shard is not None:
                self.tables[i].add(shard["prompts"], shard["tokens"], shard["lengths"], shard["pooled"])
            self._loaded_shards[i].add(path.name)


def _read_shard(path: Path) -> dict | None:
    """A shard's contents, or None when it is unreadable (truncated by a full disk or a copy): it is
    removed, with a warning, and its prompts are encoded again when asked for. Shards are written
    atomically, so an unreadable one is damaged, never one being written."""
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(shard, dict) and {"prompts", "tokens", "lengths", "pooled"} <= shard.keys():
            return shard
        problem = "it lacks the embeddings"
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        problem = " ".join(str(e).split()).split(". ")[0][:160]
    logger.warning("prompt cache shard %s is unreadable (%s); removed it, its prompts are encoded again", path, problem)
    path.unlink(missing_ok=True)
    return None


def folder_name(encoder_name: str) -> str:
    """A readable, filesystem-safe folder per encoder fingerprint (hash suffix keeps it unique)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_name)[:80]
    return f"{slug}-{hashlib.sha1(encoder_name.encode()).hexdigest()[:10]}"
