"""Real image-text and video-text data, streamed: nothing is listed or decoded before it is needed.

Sources (cell config `data.kind`, with `data.path`):
- `image_folder`: a folder tree of images, each with a caption file of the same stem
  (`cat.jpg` + `cat.txt`);
- `manifest`: a CSV (header `path,caption`) or JSONL (`{"path": ..., "caption": ...}`) file; relative
  paths are relative to the manifest's folder;
- `webdataset`: tar shards in WebDataset layout (`key.jpg`/`key.png` + `key.txt`), given as a brace
  pattern (`shards/train-{000000..000099}.tar`) or a single path;
- `video_folder`: videos (mp4, webm, mkv, mov, avi) with same-stem caption files, decoded with PyAV;
  a clip is `num_frames` frames sampled at `fps` from the start (paper: 8 frames at 4 FPS).

Each reader cuts its data into units (a shard; a chunk of files; a byte range of a manifest, one
record per line) and lists a unit's undecoded entries; gentron.data.stream shuffles and splits the
units over ranks and loader workers. A folder is listed once when training starts (use shards or a
manifest for millions of files); shards and manifests are not scanned at all.

Every image / frame is resized on its short side to `resolution` (bicubic) and centre-cropped square.
Items are dicts like CompShapes': {"image": (3, H, W) in [-1, 1], "caption"} or {"video":
(T, 3, H, W), "caption"}.

Bad samples (an unreadable image, a missing caption, a video too short for a clip): with
`on_error: skip` (default) each is skipped with a warning and counted in `dataset.skipped`, and a
summary is logged at the end of a pass, because one bad file in millions should not stop a run; with
`on_error: raise` the first one stops with an error naming the file. A path that does not exist is
always an error. A bad shard (a truncated tar, a file that is not a tar, an empty one; BadUnit) is
skipped from the point of damage on, logged with its path and counted as a skipped shard;
`check_shards(pattern)` finds them all up front from the tar headers alone.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import tarfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Short side to `resolution`, then the central square (floor offsets, as DiT/ADM's center_crop_arr;
    hand-written because torchvision v2 rounds them: tests/test_transforms.py)."""
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(127.5).sub(1)


class BadSample(ValueError):
    """One sample that cannot be used; skipped or raised according to on_error."""


class BadUnit(ValueError):
    """A whole unit (a shard) that cannot be read on: a truncated tar, a file that is not a tar, an
    empty or vanished file. The whole samples read before the damage stand; the rest of the unit is
    skipped (counted as a skipped shard) or raised according to on_error."""

    def __init__(self, path: str, kind: str, detail: str):
        super().__init__(f"{path}: {kind} ({detail})")
        self.path, self.kind, self.detail = path, kind, detail


class _Streaming(torch.utils.data.IterableDataset):
    """Shared skip/raise handling and per-worker splitting of the sample list."""

    def __init__(self, path: str | Path, resolution: int, on_error: str = "skip"):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error={on_error!r}; choose skip or raise")
        self.path, self.resolution, self.on_error = Path(path), resolution, on_error
        self.skipped = 0
        self.skipped_units = 0
        if not self.path.exists():
            raise FileNotFoundError(f"data.path {self.path} does not exist")

    def units(self, min_units: int = 1) -> list:
        """The data set cut into units (at least `min_units` where the data allows) (shards, chunks of files, byte ranges of a manifest) that
        gentron.data.stream shuffles per epoch and splits over ranks and loader workers."""
        raise NotImplementedError

    def entries(self, unit) -> Iterator:
        """The undecoded entries of one unit, in a fixed order (a path, a manifest row, a tar
        sample's raw bytes): cheap to hold in a shuffle buffer, decoded by `_load`."""
        raise NotImplementedError

    def _entries(self) -> Iterator:
        self.skipped_units = 0
        for unit in self.units():
            try:
                yield from self.entries(unit)
            except BadUnit as e:
                if self.on_error == "raise":
                    raise
                self.skipped_units += 1
                log.warning("skipping the rest of shard %s", e)

    def _load(self, entry) -> dict:
        raise NotImplementedError

    def decode(self, entry) -> dict:
        """One entry as a sample dict; raises BadSample for a sample that cannot be used."""
        return self._load(entry)

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        self.skipped = 0
        for i, entry in enumerate(self._entries()):
            if worker is not None and i % worker.num_workers != worker.id:
                continue
            try:
                yield self._load(entry)
            except BadSample as e:
                if self.on_error == "raise":
                    raise
                self.skipped += 1
                log.warning("skipping %s", e)
        if self.skipped or self.skipped_units:
            log.warning("%s: skipped %d bad sample(s) and %d bad shard(s) in this pass (data.on_error=raise "
                        "stops at the first)", self.path, self.skipped, self.skipped_units)


def _caption(path: Path) -> str:
    if not path.exists():
        raise BadSample(f"{path.with_suffix('')}*: no caption file {path.name}")
    return path.read_text(encoding="utf-8").strip()


def _open_image(path: Path, resolution: int) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            return to_tensor(center_crop_resize(image, resolution))
    except (OSError, ValueError) as e:  # PIL raises UnidentifiedImageError (an OSError) for corrupt files
        raise BadSample(f"{path}: unreadable image ({e})") from e


FILES_PER_UNIT = 256  # a folder's sorted files are split into units of this many
MANIFEST_BYTES_PER_UNIT = 1 << 20  # a manifest is split into byte ranges of this size (no scan needed)


class _Files(_Streaming):
    """A folder tree listed once (sorted), cut into units of FILES_PER_UNIT files."""

    kind, suffixes = "", ()

    def units(self, min_units: int = 1) -> list[list[str]]:
        if not self.path.is_dir():
            raise ValueError(f"data.kind={self.kind} needs a folder, got the file {self.path}")
        files = [str(p) for p in sorted(self.path.rglob("*")) if p.suffix.lower() in self.suffixes]
        size = max(1, min(FILES_PER_UNIT, len(files) // max(1, min_units)))
        return [files[i:i + size] for i in range(0, len(files), size)]

    def entries(self, unit):
        return (Path(p) for p in unit)


class ImageTextFolder(_Files):
    kind, suffixes = "image_folder", IMAGE_SUFFIXES

    def _load(self, path: Path) -> dict:
        return {"image": _open_image(path, self.resolution), "caption": _caption(path.with_suffix(".txt"))}


class Manifest(_Streaming):
    """One record per line. Units are byte ranges of the file, so nothing is scanned before the
    first step: a unit holds the lines that start inside its range."""

    def _header(self) -> tuple[list[str] | None, int]:
        if self.path.suffix == ".jsonl":
            return None, 0
        if self.path.suffix != ".csv":
            raise ValueError(f"manifest {self.path} must be .csv (path,caption) or .jsonl")
        with open(self.path, "rb") as f:
            line = f.readline()
        return next(csv.reader([line.decode("utf-8")])), len(line)

    def units(self, min_units: int = 1) -> list[tuple[int, int]]:
        _, start = self._header()
        size = self.path.stat().st_size
        step = max(1, min(MANIFEST_BYTES_PER_UNIT, (size - start) // max(1, min_units)))
        return [(b, min(b + step, size)) for b in range(start, size, step)]

    def entries(self, unit: tuple[int, int]):
        fields, data_start = self._header()
        begin, end = unit
        with open(self.path, "rb") as f:
            f.seek(begin)
            if begin > data_start:
                f.seek(begin - 1)
                if f.read(1) != b"\n":
                    f.readline()  # the line that straddles the boundary belongs to the previous unit
            while f.tell() < end:
                offset, line = f.tell(), f.readline()
                if not line:
                    break
                text = line.decode("utf-8")
                if not text.strip():
                    continue
                row = json.loads(text) if fields is None else dict(zip(fields, next(csv.reader([text]))))
                if "path" not in row or "caption" not in row:
                    raise ValueError(f"{self.path} (byte {offset}) needs the fields path and caption, got {sorted(row)}")
                yield row

    def _load(self, row: dict) -> dict:
        path = Path(row["path"])
        path = path if path.is_absolute() else self.path.parent / path
        if not path.exists():
            raise BadSample(f"{path}: listed in {self.path} but missing")
        return {"image": _open_image(path, self.resolution), "caption": str(row["caption"]).strip()}


class WebDatasetShards(_Streaming):
    """WebDataset tar shards; shard order is fixed, so a pass is reproducible."""

    def __init__(self, pattern: str, resolution: int, on_error: str = "skip"):
        import braceexpand

        self.urls = list(braceexpand.braceexpand(str(pattern)))
        missing = [u for u in self.urls if "://" not in u and not Path(u).exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) of {pattern} do not exist, e.g. {missing[0]}")
        super().__init__(self.urls[0], resolution, on_error)
        self.pattern = pattern

    def units(self, min_units: int = 1) -> list[str]:
        return list(self.urls)

    def entries(self, url: str):
        """The samples of one shard: consecutive tar members grouped by key (WebDataset's rule:
        the name up to the first dot of its base name). A shard that cannot be read on (see
        BadUnit) raises BadUnit after the samples read before the damage."""
        sample: dict = {}
        files = 0
        try:
            with _open_shard(url) as stream, tarfile.open(fileobj=stream, mode="r|*", tarinfo=_CheckedTarInfo) as tar:
                for member in tar:
                    key, suffix = _member_key(member)
                    if key is None:
                        continue
                    files += 1
                    if sample and sample["__key__"] != key:
                        yield sample
                        sample = {}
                    sample.setdefault("__key__", key)
                    sample["__url__"] = url
                    sample[suffix] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise BadUnit(url, *_tar_problem(e)) from e  # the sample being read may be cut short: dropped
        if not files:
            raise BadUnit(url, "empty", "no samples")
        if sample:
            yield sample

    def _load(self, sample: dict) -> dict:
        key = sample.get("__key__", "?")
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if image_key is None or "txt" not in sample:
            raise BadSample(f"{sample.get('__url__', self.pattern)}:{key}: needs an image and a .txt caption, "
                            f"has {sorted(k for k in sample if not k.startswith('__'))}")
        try:
            import io

            with Image.open(io.BytesIO(sample[image_key])) as image:
                tensor = to_tensor(center_crop_resize(image, self.resolution))
        except (OSError, ValueError) as e:
            raise BadSample(f"{sample.get('__url__', self.pattern)}:{key}.{image_key}: unreadable image ({e})") from e
        return {"image": tensor, "caption": sample["txt"].decode("utf-8").strip()}


class VideoFolder(_Files):
    kind, suffixes = "video_folder", VIDEO_SUFFIXES

    def __init__(self, path, resolution: int, num_frames: int, fps: float, on_error: str = "skip"):
        super().__init__(path, resolution, on_error)
        self.num_frames, self.fps = num_frames, fps

    def _load(self, path: Path) -> dict:
        caption = _caption(path.with_suffix(".txt"))
        return {"video": torch.stack([to_tensor(f) for f in self.read_clip(path)]), "caption": caption}

    def read_clip(self, path: Path) -> list[Image.Image]:
        """`num_frames` frames at `fps` from the start: the frame on screen at each time k / fps."""
        import av

        wanted = [k / self.fps for k in range(self.num_frames)]
        clip: list[Image.Image] = []
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                frame_time = 1 / float(stream.average_rate or 24)
                frames = container.decode(stream)
                shown, upcoming = None, next(frames, None)
                for time in wanted:
                    while upcoming is not None and upcoming.time <= time + 1e-6:
                        shown, upcoming = upcoming, next(frames, None)
                    if shown is None or (upcoming is None and time >= shown.time + frame_time):
                        break  # the video ended before this time
                    clip.append(center_crop_resize(shown.to_image(), self.resolution))
        except (av.error.FFmpegError, OSError) as e:
            raise BadSample(f"{path}: unreadable video ({e})") from e
        if len(clip) < self.num_frames:
            raise BadSample(f"{path}: too short for {self.num_frames} frames at {self.fps} fps "
                            f"(covers {len(clip)})")
        return clip


# --- tar shards: reading headers, telling damage apart, the pre-flight check ----------------------

class _CheckedTarInfo(tarfile.TarInfo):
    """tarfile ends an archive silently at a short, empty or garbled header after the first member
    (only a zero block is a proper end); these raise instead, so a shard truncated at a member
    boundary is not mistaken for a complete one."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            if tar.offset == 0:
                raise
            raise _Truncated(f"no end-of-archive marker: {e} at byte {tar.offset}") from None


class _Truncated(tarfile.ReadError):
    pass


def _open_shard(url: str):
    from webdataset import gopen

    return open(url, "rb") if "://" not in url and not url.startswith("pipe:") else gopen(url, "rb")


def _member_key(member: tarfile.TarInfo) -> tuple[str | None, str]:
    """(WebDataset sample key, lower-case suffix) of a tar member; (None, "") for members that are no
    sample's file (folders, names without a dot)."""
    if not member.isfile():
        return None, ""
    directory, _, base = member.name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    if not dot:
        return None, ""
    return (f"{directory}/{stem}" if directory else stem), suffix.lower()


def _tar_problem(e: BaseException) -> tuple[str, str]:
    """(kind, detail) of a tar shard that could not be read: empty, truncated, not a tar, unreadable."""
    detail = " ".join(str(e).split())[:200] or type(e).__name__
    if isinstance(e, _Truncated) or "unexpected end of data" in detail or isinstance(e, EOFError):
        return "truncated", detail
    if "empty file" in detail:
        return "empty", "0 bytes"
    if isinstance(e, (tarfile.TarError, zlib.error)):
        if "could not be opened successfully" in detail:
            detail = "no tar header (nor a compressed tar) at its start"
        return "not a tar", detail
    return "unreadable", detail


IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


@dataclass
class ShardReport:
    """What `check_shards` found: per pattern, the shards, their samples, and every bad shard as
    (path, kind, detail) with kind one of `missing`, `empty`, `truncated`, `not a tar`, `unreadable`."""
    pattern: str
    shards: int = 0
    samples: int = 0  # sample keys with an image and a .txt caption
    incomplete: int = 0  # sample keys lacking an image or a caption (skipped in training)
    bytes: int = 0
    bad: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.shards - len(self.bad)

    def summary(self) -> str:
        kinds = Counter(kind for _, kind, _ in self.bad)
        bad = f" ({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))})" if kinds else ""
        return (f"{self.shards} shards: {self.ok} ok, {len(self.bad)} bad{bad}; {self.samples:,} samples "
                f"({self.incomplete:,} without an image and a caption); {self.bytes / 1e9:.2f} GB: {self.pattern}")


def check_shards(pattern: str, workers: int = 8) -> ShardReport:
    """Check every tar shard of a WebDataset brace pattern before a long run, reading tar headers only
    (local files: each member's data is seeked over, not read; URLs and pipes are streamed through).

    A shard is bad when it is missing, empty (0 bytes or no members), truncated (a member's data or
    the end-of-archive marker cut off), not a tar, or unreadable; training skips such a shard, logs
    its path and counts it, so this check is where to find them up front. `report.summary()` is one
    line:

        "<N> shards: <ok> ok, <bad> bad (<n> <kind>, ...); <samples> samples (<m> without an image
        and a caption); <size> GB: <pattern>"

    and `report.bad` lists (path, kind, detail) per bad shard. Shards are checked `workers` at a time."""
    import braceexpand

    urls = list(braceexpand.braceexpand(str(pattern)))
    report = ShardReport(str(pattern), shards=len(urls))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for url, (samples, incomplete, size, problem) in zip(urls, pool.map(_check_shard, urls)):
            report.samples += samples
            report.incomplete += incomplete
            report.bytes += size
            if problem:
                report.bad.append((url, *problem))
    return report


def _check_shard(url: str) -> tuple[int, int, int, tuple[str, str] | None]:
    """(complete samples, incomplete samples, bytes, problem or None) of one shard."""
    local = "://" not in url and not url.startswith("pipe:")
    size = 0
    if local:
        try:
            size = os.path.getsize(url)
        except FileNotFoundError:
            return 0, 0, 0, ("missing", "no such file")
        except OSError as e:
            return 0, 0, 0, _tar_problem(e)
        if size == 0:
            return 0, 0, 0, ("empty", "0 bytes")
    suffixes: dict[str, set[str]] = {}
    try:
        # Random access for a local file: tarfile reads each header and seeks past the data (and
        # checks a byte of it is there); a stream has to be read through.
        with _open_shard(url) as stream, tarfile.open(fileobj=stream, mode="r:*" if local else "r|*",
                                                      tarinfo=_CheckedTarInfo) as tar:
            for member in tar:
                key, suffix = _member_key(member)
                if key is not None:
                    suffixes.setdefault(key, set()).add(suffix)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        return 0, 0, size, _tar_problem(e)
    if not suffixes:
        return 0, 0, size, ("empty", "no samples")
    complete = sum(1 for s in suffixes.values() if "txt" in s and any(k in s for k in IMAGE_KEYS))
    return complete, len(suffixes) - complete, size, None


def build_real_dataset(data) -> _Streaming:
    """The streaming data set a cell's `data` section (gentron.config.DataConfig) describes."""
    if data.kind == "image_folder":
        return ImageTextFolder(data.path, data.resolution, data.on_error)
    if data.kind == "manifest":
        return Manifest(data.path, data.resolution, data.on_error)
    if data.kind == "webdataset":
        return WebDatasetShards(data.path, data.resolution, data.on_error)
    if data.kind == "video_folder":
        return VideoFolder(data.path, data.resolution, data.num_frames, data.fps, data.on_error)
    raise ValueError(f"data.kind={data.kind!r} is not a real-data source; choose image_folder, manifest, "
                     "webdataset or video_folder")
