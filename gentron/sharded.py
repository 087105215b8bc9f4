"""Sharded checkpoints of FSDP runs (torch.distributed.checkpoint, "DCP"): each rank writes and reads
its own shards of the model, EMA and optimizer state; no rank gathers the full weights to save.

    checkpoints/sharded-<step>/
        __<rank>_<n>.distcp   rank <rank>'s shards (DCP's files)
        .metadata             DCP's index of every shard (written by rank 0)
        meta.pt               everything else a resume needs (step, RNG states with every rank's noise
                              stream, data position, configs, text-encoder fingerprints) and `shards`:
                              a BLAKE2b digest of each file above; checksummed itself like a checkpoint file

A save writes `.sharded-<step>.partial/` and renames it once every rank's files and meta.pt are on disk:
a save killed midway leaves no sharded folder (the next save removes its temporary). The newest
`train.keep_last` sharded folders are kept.

Reading: `load_into` loads a sharded checkpoint into an FSDP model and its optimizer and EMA, DCP
resharding to whatever number of ranks runs now; `read_full` assembles the full state dicts in one
process (generation, `python -m gentron.checkpoint consolidate`, a run resumed without FSDP);
`verify` and `scan` check the digests and the finiteness, each rank its share of the files and tensors.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from gentron import distributed as D
from gentron.checkpoint_payload import non_finite, save_checkpoint

log = logging.getLogger(__name__)

META = "meta.pt"
SHARDS = "shards"  # meta.pt's key: {file name: digest}
PARTIAL = ".partial"  # a save in progress (or killed): .sharded-<step>.partial/
_SHARDED = re.compile(r"sharded-(\d+)")
_SCAN_BYTES = 256 << 20  # tensors read per batch when scanning for non-finite values


def sharded_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"sharded-{step:08d}"


def sharded_step(path: str | Path) -> int | None:
    """The step of a sharded checkpoint folder, from its name (None: not one)."""
    m = _SHARDED.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def sharded_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """A checkpoint folder's sharded checkpoints as (step, path), newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(step, p) for p in folder.iterdir() if p.is_dir() and (step := sharded_step(p)) is not None]
    return sorted(found, reverse=True)


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return "blake2b:" + h.hexdigest()


# --- writing ------------------------------------------------------------------------------------

def save(folder: str | Path, step: int, model, ema: dict, optimizer, meta: dict[str, Any], info: D.DistInfo,
         keep_last: int) -> Path:
    """Write `folder/sharded-<step>/` (collective: every rank calls it) and keep the newest `keep_last`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    folder = Path(folder)
    final = sharded_path(folder, step)
    tmp = folder / f".{final.name}{PARTIAL}"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    D.barrier(info)
    state = {"model": get_model_state_dict(model), "ema": ema, "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp), no_dist=not info.enabled)
    own = {p.name: file_digest(p) for p in tmp.glob(f"__{info.rank}_*.distcp")}
    shards = {name: digest for part in D.all_gather_object(own, info) for name, digest in part.items()}
    if info.is_main:
        shards[".metadata"] = file_digest(tmp / ".metadata")
        save_checkpoint(tmp / META, **meta, **{SHARDS: shards})
        if final.exists():  # the same step written again (a rerun after a crash past the save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
        log.info("saved sharded checkpoint %s (step %d, %d shard files)", final, step, len(shards) - 1)
        prune(folder, keep_last)
    D.barrier(info)
    return final


def prune(folder: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` sharded checkpoints; remove older ones and killed saves' temporaries."""
    for _, path in sharded_checkpoints(folder)[keep_last:]:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s (train.keep_last=%d)", path, keep_last)
    for stale in folder.glob(f".sharded-*{PARTIAL}"):
        shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- checking -----------------------------------------------------------------------------------

def verify(path: Path, shards: dict[str, str], info: D.DistInfo | None) -> str | None:
    """The first shard file that is missing or whose bytes no longer match its digest, or None. With
    `info` the ranks share the files (collective); every rank gets the same answer."""
    names = sorted(shards)
    mine = names if info is None else names[info.rank::info.world_size]
    bad = [n for n in mine if not (path / n).is_file() or file_digest(path / n) != shards[n]]
    if info is not None:
        bad = sorted({n for part in D.all_gather_object(bad, info) for n in part})
    if not bad:
        return None
    return f"shard {bad[0]} is missing" if not (path / bad[0]).is_file() else f"shard {bad[0]}"


def scan(path: Path, info: D.DistInfo) -> str | None:
    """The first NaN/inf tensor of a sharded checkpoint's model, EMA or optimizer state (as
    gentron.checkpoint.non_finite names it), each rank reading its share of the tensors in batches
    (collective); every rank gets the same answer."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = _reader(path).read_metadata().state_dict_metadata
    keys = sorted(k for k, m in metadata.items() if isinstance(m, TensorStorageMetadata))
    problem, batch, size = None, [], 0
    for key in keys[info.rank::info.world_size] + [None]:
        if key is not None:
            m = metadata[key]
            batch.append(key)
            size += m.size.numel() * m.properties.dtype.itemsize
        if batch and (key is None or size >= _SCAN_BYTES):
            problem = non_finite(_read_keys(path, set(batch)))
            batch, size = [], 0
            if problem:
                break
    found = [p for p in D.all_gather_object(problem, info) if p]
    return found[0] if found else None


# --- reading ------------------------------------------------------------------------------------

def read_full(path: Path) -> dict[str, Any]:
    """{model, ema, optimizer} as full (unsharded) CPU state dicts, in this process."""
    state = _read_keys(path, None)
    return {key: state[key] for key in ("model", "ema", "optimizer")}


def load_into(path: Path, model, ema: dict, optimizer) -> None:
    """Load a sharded checkpoint into an FSDP model, its EMA (laid out like the weights) and its
    optimizer, in place (collective); DCP reshards when the number of ranks changed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    model_state = get_model_state_dict(model)
    optimizer_state = get_optimizer_state_dict(model, optimizer)
    state = {"model": model_state, "ema": ema, "optimizer": optimizer_state}
    dcp.load(state, storage_reader=_reader(path))
    set_model_state_dict(model, model_state)
    set_optimizer_state_dict(model, optimizer, optimizer_state)


def _reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(path))


def _read_keys(path: Path, keys: set[str] | None) -> dict[str, Any]:
    """The checkpoint's entries `keys` (flattened names, e.g. ema.blocks.0.attn.qkv.weight; None: all),
    nested again and full, read in this process alone."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=_reader(path), planner=_EmptyStateDictLoadPlanner(keys=keys),
                     no_dist=True)
    return state
