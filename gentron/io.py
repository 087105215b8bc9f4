"""Atomic file writes. Every file the project writes goes through here, so a killed process leaves
either the old file or the new one, never half of one (runs live on shared filesystems).

A write in progress is a temporary file next to its target, `.<name>.<host>-<pid>-<random>.tmp`
(host: a short hash of the writer's host name), so whoever finds one later can tell whether its
writer is still alive (`remove_stale_temporaries`).

A write the disk refuses (full, over quota, read-only, no permission, a file where a folder is
needed) raises `StorageError`, one line naming the path, the problem and the fix, instead of the
errno or torch's `[enforce fail at inline_container.cc]`. It is a ValueError too, so every command
line ends it as a user error (gentron.errors.USER_ERRORS): one line, exit 2.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Iterator

TEMP_SUFFIX = ".tmp"  # a write in progress is `.<name>.<host>-<pid>-<random>.tmp` next to its target
HOST_TAG = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()
# The writer of a temporary file, when its name says: host tag and pid.
_TEMP_WRITER = re.compile(r"\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[^.]*" + re.escape(TEMP_SUFFIX) + "$")
# A temporary file whose writer cannot be checked (another host, or an older name without one) is
# taken for dead once it is this old: no single write takes a day.
STALE_AFTER_S = 24 * 3600
# Below this much free space, a write that failed without an errno (torch's writer) failed for space.
LOW_SPACE_BYTES = 64 << 20

log = logging.getLogger(__name__)
_in_flight: set[str] = set()  # temporaries this process is writing now (never removed as stale)


class StorageError(OSError, ValueError):
    """The disk refused a write: the message names the path, the problem and the fix (errno kept)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


# --- disk problems in words ---------------------------------------------------------------------

POINT = "point runs_dir= (or the command's output option)"


def storage_error(error: BaseException, path: str | os.PathLike, doing: str = "writing") -> StorageError | None:
    """`error`, raised while `doing` `path`, as a StorageError naming the problem and the fix; None
    when it is not a problem of the disk or the folder (a program fault keeps its own error)."""
    if isinstance(error, StorageError):
        return error
    path = Path(path)
    code = getattr(error, "errno", None)
    if isinstance(error, RuntimeError) and _torch_write_failure(error):
        code = errno.ENOSPC if _free_bytes(path) < LOW_SPACE_BYTES else errno.EIO
    if code == errno.ENOSPC:
        message = f"disk full {doing} {path}: free space on that disk, or {POINT} at another disk"
    elif code == errno.EDQUOT:
        message = f"disk quota exceeded {doing} {path}: free space within your quota, or {POINT} at another disk"
    elif code == errno.EROFS:
        message = f"cannot write {path}: its file system is read-only; {POINT} at a writable folder"
    elif code in (errno.EACCES, errno.EPERM):
        message = (f"cannot write {path}: permission denied on {_first_existing(path.parent)}; make it writable "
                   f"for this user, or {POINT} at a folder you can write")
    elif code in (errno.EEXIST, errno.ENOTDIR) and (blocker := _file_in_the_way(path)) is not None:
        message = (f"cannot write {path}: {blocker} is a file where a folder is needed; move that file away, "
                   f"or {POINT} elsewhere")
    elif code == errno.EIO:
        detail = " ".join(str(error).split())[:200]
        message = f"{doing} {path} failed ({detail}): the disk or network file system failed; check it and rerun"
    else:
        return None
    return StorageError(code, message, str(path))


def _torch_write_failure(error: RuntimeError) -> bool:
    text = str(error)
    return "file write failed" in text or "PytorchStreamWriter failed" in text or "inline_container" in text


def _free_bytes(path: Path) -> int:
    try:
        stat = os.statvfs(_first_existing(path.parent))
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def _file_in_the_way(path: Path) -> Path | None:
    """The file that stands where a folder on the way to `path` is needed (or `path` itself when a
    folder is to be made there), or None."""
    for candidate in reversed((path, *path.parents)):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike, doing: str = "writing") -> Iterator[None]:
    """Turn a disk or folder problem raised inside the block into a StorageError about `path`."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        problem = storage_error(e, path, doing)
        if problem is None or problem is e:
            raise
        raise problem from e


def make_folder(path: str | os.PathLike) -> Path:
    """mkdir -p, with a clear error when a file stands where a folder is needed or the disk refuses."""
    path = Path(path)
    with writing(path, "creating"):
        path.mkdir(parents=True, exist_ok=True)
    return path


# --- atomic writes ------------------------------------------------------------------------------

def _atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    make_folder(path.parent)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{HOST_TAG}-{os.getpid()}-", suffix=TEMP_SUFFIX,
                                   dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _in_flight.add(tmp)
    try:
        with writing(path):
            write(tmp_path)
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
    finally:
        _in_flight.discard(tmp)
        tmp_path.unlink(missing_ok=True)
    return path


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


def atomic_link_or_copy(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path` becomes the same file as `source`: a hard link where the filesystem has them, else a
    copy; atomically either way."""
    source = Path(source)

    def link(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    return _atomic(path, link)


# --- what killed writes leave -------------------------------------------------------------------

def remove_stale_temporaries(directory: str | os.PathLike, names: Iterable[str] | None = None, *,
                             recursive: bool = False, shared: bool = False) -> list[Path]:
    """Delete the temporary files that killed writes left in `directory` (`.<name>.<...>.tmp`), for
    the given target names or all of them, in its subfolders too when `recursive`.

    A temporary whose writer is alive on this host (or is this process's write in progress) is kept.
    Otherwise: where the caller owns the folder (`shared=False`: a run's own folder, or under the lock
    its writers hold) every other one is stale. In a folder that processes of other hosts may write
    at the same time (`shared=True`: a cache of a grid), only one whose writer is known dead (this
    host, its process gone) or that is older than STALE_AFTER_S is."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    glob = directory.rglob if recursive else directory.glob
    patterns = [f".{name}.*{TEMP_SUFFIX}" for name in names] if names is not None else [f".*{TEMP_SUFFIX}"]
    removed = []
    for pattern in patterns:
        for path in sorted(glob(pattern)):
            try:
                stat = path.stat()
                writer = _writer(path, stat.st_mtime)
                if writer == "alive" or (shared and writer == "unknown" and time.time() - stat.st_mtime < STALE_AFTER_S):
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:  # a folder that cannot be cleaned is not a reason to stop
                log.warning("could not remove %s, left by a write that was killed: %s", path, e)
                continue
            log.warning("removed %s (%.1f MB), left by a write that was killed", path, stat.st_size / 1e6)
            removed.append(path)
    return removed


def _writer(path: Path, mtime: float) -> str:
    """alive | dead | unknown: the state of the process that wrote a temporary file."""
    match = _TEMP_WRITER.search(path.name)
    if match is None or match.group("host") != HOST_TAG:
        return "unknown"
    pid = int(match.group("pid"))
    if pid == os.getpid():
        return "alive" if str(path) in _in_flight else "dead"
    return "alive" if process_alive(pid, mtime) else "dead"


def process_alive(pid: int, since: float | None = None) -> bool:
    """Whether process `pid` of this host is alive and not a newer process that reused the pid (one
    started after `since`, epoch seconds: e.g. when the file it wrote last changed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc: os.kill's answer is all there is
    if fields[0] in ("Z", "X"):
        return False  # a zombie: finished, not yet reaped
    if since is None:
        return True
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return True
    return started <= since + 5  # the clock-tick rounding of /proc


# --- reading ------------------------------------------------------------------------------------

def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to have it rebuilt") from e
