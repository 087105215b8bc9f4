"""Atomic file writes. Every file the project writes goes through here, so a killed process leaves
either the old file or the new one, never half of one (runs live on shared filesystems)."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

TEMP_SUFFIX = ".tmp"  # a write in progress is `.<name>.<random>.tmp` next to its target

log = logging.getLogger(__name__)


def _atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def remove_stale_temporaries(directory: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files that killed writes left in `directory` (`.<name>.<random>.tmp`), for
    the given target names or all of them. Call it only where no other process writes those targets at
    the same time (a run's own folder, or under the lock its writers hold)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    patterns = [f".{name}.*{TEMP_SUFFIX}" for name in names] if names is not None else [f".*{TEMP_SUFFIX}"]
    removed = []
    for pattern in patterns:
        for path in sorted(directory.glob(pattern)):
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            log.warning("removed %s (%.1f MB), left by a write that was killed", path, size / 1e6)
            removed.append(path)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return _atomic(path, lambda p: torch.save(obj, p))


def atomic_save_image(path: str | os.PathLike, image) -> Path:
    """Save a PIL image; the format comes from the final suffix, not the temporary name."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG")
    return _atomic(path, lambda p: image.save(p, format=fmt))


def atomic_save_gif(path: str | os.PathLike, frames: list, frame_ms: int) -> Path:
    """Save PIL images as a looping animated GIF, `frame_ms` milliseconds per frame."""
    return _atomic(path, lambda p: frames[0].save(p, format="GIF", save_all=True, append_images=frames[1:],
                                                  duration=frame_ms, loop=0))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to have it rebuilt") from e
