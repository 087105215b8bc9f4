"""What a checkpoint file holds and how its contents are verified: the BLAKE2b checksum written with it
and the check that every weight is finite. Shared by single-file checkpoints (gentron.checkpoint)
and sharded ones (gentron.sharded)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gentron.io import atomic_torch_save

log = logging.getLogger(__name__)

CHECKSUM = "checksum"


# --- checksum -----------------------------------------------------------------------------------

def checksum(payload: dict[str, Any]) -> str:
    """A digest of a checkpoint's contents (every tensor's bytes, dtype and shape, every other value),
    the same before saving and after loading. Reads only: no tensor is changed or copied to hash it."""
    h = hashlib.blake2b(digest_size=32)
    _feed(h, {k: v for k, v in payload.items() if k != CHECKSUM})
    return "blake2b:" + h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, np.ndarray):
        h.update(f"N{obj.dtype.str}{obj.shape}:".encode())
        h.update(np.ascontiguousarray(obj).view(np.uint8).reshape(-1))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}:".encode())
        for value in obj:
            _feed(h, value)
    else:  # str, int, float (repr round-trips), bool, None, dtypes and other small values
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())


# --- writing ------------------------------------------------------------------------------------

def save_checkpoint(path: str | Path, **payload: Any) -> Path:
    """Write atomically, with a checksum: a crash mid-save leaves the previous checkpoint intact."""
    payload[CHECKSUM] = checksum(payload)
    path = atomic_torch_save(path, payload)
    log.info("saved checkpoint %s (step %s)", path, payload.get("step"))
    return path



# --- values -------------------------------------------------------------------------------------

def non_finite(payload: dict[str, Any]) -> str | None:
    """The first NaN/inf tensor of a checkpoint's model, EMA or optimizer state, as `ema[blocks.0.attn...]`
    with its count, or None."""
    groups = {"model": payload.get("model") or {}, "ema": payload.get("ema") or {},
              "optimizer": dict(_tensors((payload.get("optimizer") or {}).get("state", {}), ""))}
    for group, tensors in groups.items():
        for name, t in tensors.items():
            if torch.is_tensor(t) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                return f"{group}[{name}] has {bad} of {t.numel()} values NaN or inf"
    return None


def _tensors(tree: Any, prefix: str):
    if torch.is_tensor(tree):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
