"""A stage's outputs in a cell folder: what each stage leaves, recorded when written (size and a
BLAKE2b digest, in the stage's manifest entry) and checked when read (`verify_outputs`: a missing or
changed output is a `Damage`). ablations.runfolder reads a cell's state through it; the stages record
with it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT = Path("checkpoints") / "last.pt"
METRICS = "metrics.json"
SAMPLES, EVAL = "samples", "eval"


@dataclass(frozen=True)
class Damage:
    """A stage output that is missing or no longer what its manifest entry recorded."""
    stage: str
    path: str  # relative to the cell folder
    why: str

    def line(self) -> str:
        return f"{self.path} {self.why}"



OUTPUTS = "outputs"  # the manifest entry's record of its stage's outputs: relative path -> record
IMAGES = "*"  # `samples/<set>/*`: the images samples.jsonl lists, as a count and a total size
# Files up to this size are checked by content (a digest, read at every status), larger ones by size
# only: a large checkpoint's own checksum covers its contents whenever it is loaded.
DIGEST_LIMIT = 16 << 20


def stage_output_paths(cell_dir: Path, stage: str, config: dict) -> list[str]:
    """What a finished stage leaves in the cell folder (relative paths), per the cell's config."""
    if stage == "train":
        return [CHECKPOINT.as_posix()]
    if stage == "sample":
        return [p for name in config.get("sample", {}).get("prompt_sets") or []
                for p in (f"{SAMPLES}/{name}/samples.jsonl", f"{SAMPLES}/{name}/{IMAGES}")]
    if stage == "evaluate":
        return [f"{EVAL}/{name}.json" for name in config.get("eval", {}).get("metrics") or []]
    return [METRICS]


def record_outputs(cell_dir: str | Path, stage: str, config: dict) -> dict[str, dict]:
    """{relative path: {size, blake2b}} of a stage's outputs as they are now (no digest beyond
    DIGEST_LIMIT), for its manifest entry; `samples/<set>/*` records the images that set's
    samples.jsonl lists as {files, bytes}."""
    cell_dir = Path(cell_dir)
    record = {}
    for rel in stage_output_paths(cell_dir, stage, config):
        if rel.endswith("/" + IMAGES):
            folder = cell_dir / rel[:-2]
            listed = listed_images(folder)
            total = sum(size for _, size in listed if size is not None)
            record[rel] = {"files": len(listed), "bytes": total}
            if total <= DIGEST_LIMIT:
                record[rel]["blake2b"] = _images_digest(folder, listed)
            continue
        path = cell_dir / rel
        if not path.is_file():
            raise FileNotFoundError(f"stage {stage} of cell {cell_dir.name} ended without writing {rel}")
        size = path.stat().st_size
        entry = {"size": size}
        if size <= DIGEST_LIMIT:
            entry["blake2b"] = file_digest(path)
        record[rel] = entry
    return record


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _images_digest(folder: Path, listed: list[tuple[str, int | None]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, _ in listed:
        h.update(name.encode() + b"\0")
        try:
            h.update(bytes.fromhex(file_digest(folder / name)))
        except OSError:
            h.update(b"missing")
    return h.hexdigest()


def listed_images(folder: Path) -> list[tuple[str, int | None]]:
    """(file, size or None when missing) of every image a sample folder's samples.jsonl lists."""
    out = []
    for row in read_jsonl(folder / "samples.jsonl"):
        name = row.get("file") if isinstance(row, dict) else None
        if isinstance(name, str):
            try:
                out.append((name, (folder / name).stat().st_size))
            except OSError:
                out.append((name, None))
    return out


def verify_outputs(cell_dir: str | Path, stage: str, entry: dict) -> list[Damage]:
    """The outputs of a done stage that are missing or differ from what its manifest entry recorded.
    An entry that records nothing (a folder from before outputs were recorded) is checked for what
    it must hold: the checkpoint, and the evaluator outputs and metrics.json as JSON objects."""
    cell_dir = Path(cell_dir)
    recorded = entry.get(OUTPUTS)
    if not isinstance(recorded, dict):
        return _verify_unrecorded(cell_dir, stage, entry)
    problems, unlisted = [], set()
    for rel, expected in sorted(recorded.items(), key=lambda item: item[0].endswith("/" + IMAGES)):
        expected = expected if isinstance(expected, dict) else {}
        if rel.endswith("/" + IMAGES):
            if rel[:-2] in unlisted:
                continue  # its samples.jsonl is damaged: what it lists says nothing
            found = _check_images(cell_dir / rel[:-2], expected)
            if found is not None:
                problems.append(Damage(stage, *found))
        elif (why := _check_file(cell_dir / rel, expected)) is not None:
            problems.append(Damage(stage, rel, why))
            unlisted.add(rel.rsplit("/", 1)[0])
    return problems


def _check_file(path: Path, expected: dict) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not path.is_file():
        return "is not a file"
    if expected.get("size") is not None and size != expected["size"]:
        return f"is {size} bytes, {expected['size']} when it was written"
    if expected.get("blake2b") is not None:
        try:
            digest = file_digest(path)
        except OSError as e:
            return f"cannot be read ({e.strerror})"
        if digest != expected["blake2b"]:
            return "changed since it was written (its BLAKE2b digest differs)"
    return None


def _check_images(folder: Path, expected: dict) -> tuple[str, str] | None:
    listed = listed_images(folder)
    rel = lambda name: f"{SAMPLES}/{folder.name}/{name}"  # noqa: E731
    missing = [name for name, size in listed if size is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return rel(missing[0]), f"is missing{more}"
    if expected.get("files") is not None and len(listed) != expected["files"]:
        return rel("samples.jsonl"), f"lists {len(listed)} images, {expected['files']} when written"
    total = sum(size for _, size in listed)
    if expected.get("bytes") is not None and total != expected["bytes"]:
        return rel(""), f"images total {total} bytes, {expected['bytes']} when they were written (an image changed)"
    if expected.get("blake2b") is not None and _images_digest(folder, listed) != expected["blake2b"]:
        return rel(""), "images changed since they were written (their BLAKE2b digest differs)"
    return None


def _verify_unrecorded(cell_dir: Path, stage: str, entry: dict) -> list[Damage]:
    if stage == "train":
        paths = [(CHECKPOINT.as_posix(), False)]
    elif stage == "evaluate":
        paths = [(f"{EVAL}/{name}.json", True) for name in entry.get("metrics") or []]
    elif stage == "record":
        paths = [(METRICS, True)]
    else:
        return []
    problems = []
    for rel, is_json in paths:
        path = cell_dir / rel
        if not path.is_file():
            problems.append(Damage(stage, rel, "is missing"))
        elif is_json:
            why = json_problem(path)
            if why:
                problems.append(Damage(stage, rel, why))
    return problems


def json_problem(path: Path) -> str | None:
    """Why `path` is not a readable JSON object, or None."""
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "is missing"
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    except json.JSONDecodeError as e:
        return f"is not valid JSON ({e.msg} at line {e.lineno})"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return None if isinstance(loaded, dict) else "is not a JSON object"


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a torn line (a job killed mid-write) is skipped."""
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
