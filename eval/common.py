"""The sample-folder format every generator writes and every evaluator reads, and the shared shape
of an evaluator's output (see DESIGN.md)."""
from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from PIL import Image, UnidentifiedImageError

from eval.stats import bootstrap_ci
from gentron.errors import USER_ERRORS, fail
from gentron.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

MANIFEST = "samples.jsonl"
_REQUIRED = ("file", "prompt", "seed")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# T2I-CompBench's official layout: `{prompt}_{counter:06}.png`, counter = 10 * line + index, seeds 42..51.
OFFICIAL_NAME = re.compile(r"^(?P<prompt>.*)_(?P<index>\d{6})$")
OFFICIAL_BASE_SEED = 42
OFFICIAL_IMAGES_PER_PROMPT = 10


@dataclass
class Sample:
    file: str
    prompt: str
    seed: int
    index: int = 0
    category: str = ""
    prompt_id: int = -1
    frames: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_samples(folder: str | Path) -> list[Sample]:
    """Read and validate `folder/samples.jsonl`: every line a JSON object with fields of the right
    types, every listed file inside the folder (no `..`, absolute paths or links out) and present."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if problem := _folder_problem(folder):
        raise FileNotFoundError(problem)
    if not manifest.exists():
        raise FileNotFoundError(
            f"{manifest} not found: a sample folder needs a {MANIFEST} with one JSON line per image "
            f"(keys {', '.join(_REQUIRED)}); see DESIGN.md 'A sample folder', or build one with "
            f"`python -m eval.common make-manifest {folder}` for a folder of images named after prompts"
        )
    samples = []
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{manifest}:{lineno} is not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{manifest}:{lineno} is not a JSON object; every line is one, with keys {list(_REQUIRED)}")
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise ValueError(f"{manifest}:{lineno} lacks {missing}; every line needs {list(_REQUIRED)}")
        known = {k: row.pop(k) for k in list(row) if k in Sample.__dataclass_fields__ and k != "extra"}
        for key, value in known.items():
            if not _FIELD_TYPES[key](value):
                raise ValueError(f"{manifest}:{lineno}: {key}={value!r} must be {_FIELD_NAMES[key]}")
        sample = Sample(**known, extra=row)
        for key in ("file", "frames"):
            name = getattr(sample, key)
            if name is not None and not _inside(folder, name):
                raise ValueError(f"{manifest}:{lineno}: {key} {name!r} is outside the sample folder {folder}; "
                                 "paths are relative to it and stay in it, e.g. color/000012_42.png")
        if not (folder / sample.file).exists():
            raise FileNotFoundError(f"{manifest}:{lineno} names {sample.file}, which is not in {folder}")
        samples.append(sample)
    if not samples:
        raise ValueError(f"{manifest} lists no samples")
    return samples


def _folder_problem(folder: Path) -> str | None:
    """Why `folder` cannot be a sample folder (missing, or a file), or None."""
    if folder.is_dir():
        return None
    if not folder.exists():
        return f"sample folder {folder} does not exist"
    return f"{folder} is a file; give a sample folder (its {MANIFEST} and images)"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FIELD_TYPES = {"file": lambda v: isinstance(v, str) and bool(v), "prompt": lambda v: isinstance(v, str),
                "seed": _is_int, "index": _is_int, "prompt_id": _is_int, "category": lambda v: isinstance(v, str),
                "frames": lambda v: v is None or (isinstance(v, str) and bool(v))}
_FIELD_NAMES = {"file": "a non-empty path string", "prompt": "a string", "seed": "an integer", "index": "an integer",
                "prompt_id": "an integer", "category": "a string", "frames": "a folder path string or null"}


def _inside(folder: Path, name: str) -> bool:
    """Whether folder/name, links resolved, lies in the folder."""
    if Path(name).is_absolute():
        return False
    root = folder.resolve()
    return (root / name).resolve().is_relative_to(root)


def load_image(folder: str | Path, sample: Sample) -> Image.Image:
    path = Path(folder) / sample.file
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image ({e}); regenerate it or drop it from {MANIFEST}") from e


def write_samples(folder: str | Path, samples: list[Sample]) -> Path:
    lines = []
    for s in samples:
        row = {k: v for k, v in asdict(s).items() if k != "extra" and v is not None}
        lines.append(json.dumps({**row, **s.extra}, sort_keys=True))
    return atomic_write_text(Path(folder) / MANIFEST, "\n".join(lines) + "\n")


def per_prompt_means(per_image: list[dict]) -> list[dict]:
    """Average each image score over the images (seeds) of a prompt (a prompt = category + prompt_id)."""
    by_prompt: dict[Any, dict] = {}
    for row in per_image:
        key = (row.get("category", ""), row["prompt_id"])
        entry = by_prompt.setdefault(key, {"prompt_id": row["prompt_id"], "category": row.get("category", ""),
                                           "prompt": row.get("prompt", ""), "values": {}})
        for name, value in row["scores"].items():
            entry["values"].setdefault(name, []).append(value)
    out = []
    for entry in by_prompt.values():
        values = entry.pop("values")
        out.append({**entry, "scores": {k: sum(v) / len(v) for k, v in values.items()}})
    return out


def aggregate(per_prompt: list[dict], seed: int = 0) -> dict[str, dict]:
    """Mean and bootstrap 95% CI over prompts, for every score name present."""
    names = sorted({name for row in per_prompt for name in row["scores"]})
    return {name: bootstrap_ci([row["scores"][name] for row in per_prompt if name in row["scores"]], seed=seed)
            for name in names}


def aggregate_by_seed(per_image: list[dict]) -> dict[str, dict[str, dict]]:
    """The same aggregates computed on the images of one seed at a time ({seed: {score: ci}})."""
    seeds = sorted({row["seed"] for row in per_image if row.get("seed") is not None})
    return {str(seed): aggregate(per_prompt_means([r for r in per_image if r.get("seed") == seed]))
            for seed in seeds}


def result(metric: str, per_image: list[dict], protocol: dict, comparable_to_paper: bool,
           extra: dict | None = None) -> dict:
    """An evaluator's output (DESIGN.md): per-image scores, per-prompt means over seeds, aggregates
    with bootstrap CIs over prompts, and the same aggregates per seed."""
    per_prompt = per_prompt_means(per_image)
    return {"metric": metric, "protocol": protocol, "comparable_to_paper": comparable_to_paper,
            "per_image": per_image, "per_prompt": per_prompt, "aggregate": aggregate(per_prompt),
            "aggregate_by_seed": aggregate_by_seed(per_image), **(extra or {})}


def set_result(metric: str, aggregate_: dict, protocol: dict, comparable_to_paper: bool,
               by_seed: dict | None = None, extra: dict | None = None) -> dict:
    """Output of a set-level metric (FID, KID): no per-image scores; its CIs come from the metric."""
    return {"metric": metric, "protocol": protocol, "comparable_to_paper": comparable_to_paper,
            "per_image": [], "per_prompt": [], "aggregate": aggregate_,
            "aggregate_by_seed": by_seed or {}, **(extra or {})}


def write_result(path: str | Path, result_dict: dict) -> Path:
    log.info("writing %s", path)
    return atomic_write_json(path, result_dict)


def image_files(folder: str | Path) -> list[Path]:
    """Every image under `folder` (recursive), sorted, hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def samples_from_images(folder: str | Path, base_seed: int = OFFICIAL_BASE_SEED,
                        images_per_prompt: int = OFFICIAL_IMAGES_PER_PROMPT) -> list[Sample]:
    """Samples for a folder without a manifest. Files named `{prompt}_{counter:06}.png` (the
    T2I-CompBench layout) give their prompt; the official generator's counter runs across the prompt
    file, so counter = images_per_prompt * line + index gives prompt_id = line and seed = base_seed + index.
    A folder whose numbers restart at 0 for each prompt (0..images_per_prompt-1 under every prompt) is read
    as index = number, prompt ids in order of first appearance. Any other file gets an empty prompt."""
    folder = Path(folder)
    files = image_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no {MANIFEST}")
    parsed = []
    for path in files:
        match = OFFICIAL_NAME.match(path.stem)
        parsed.append((path, match["prompt"], int(match["index"])) if match else (path, None, 0))
    numbers = [n for _, prompt, n in parsed if prompt is not None]
    running = bool(numbers) and max(numbers) >= images_per_prompt
    if running:
        line_of: dict[str, int] = {}
        for path, prompt, n in parsed:
            if prompt is not None and line_of.setdefault(prompt, n // images_per_prompt) != n // images_per_prompt:
                raise ValueError(f"{path.name}: numbers of '{prompt}' span several blocks of {images_per_prompt}; "
                                 f"official names count 10 * line + index across the prompt file (or restart at 0 "
                                 f"for each prompt); write a {MANIFEST} for any other layout")
    ids: dict[str, int] = {}
    samples = []
    for path, prompt, n in parsed:
        if prompt is None:
            prompt_id, index, prompt = ids.setdefault(path.stem, len(ids)), 0, ""
        elif running:
            prompt_id, index = n // images_per_prompt, n % images_per_prompt
        else:
            prompt_id, index = ids.setdefault(prompt, len(ids)), n
        samples.append(Sample(file=path.relative_to(folder).as_posix(), prompt=prompt, seed=base_seed + index,
                              index=index, prompt_id=prompt_id))
    return samples


def load_samples(folder: str | Path) -> list[Sample]:
    """`read_samples` where the folder has a manifest, else `samples_from_images`."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        return read_samples(folder)
    log.info("%s has no %s: taking prompts and seeds from the file names", folder, MANIFEST)
    return samples_from_images(folder)


def image_row(sample: Sample, scores: dict[str, float]) -> dict:
    """One `per_image` entry of an evaluator's output."""
    return {"file": sample.file, "prompt_id": sample.prompt_id, "seed": sample.seed,
            "category": sample.category, "prompt": sample.prompt, "scores": scores}


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def resolve_device(device: str | None = None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def run_cli(metric: str, evaluate: Callable[..., dict], add_arguments: Callable[[argparse.ArgumentParser], None],
            argv: list[str] | None = None) -> dict:
    """The command line every evaluator shares: `python -m eval.<metric> SAMPLES_DIR [options] --out X.json`."""
    parser = argparse.ArgumentParser(prog=f"python -m eval.{metric}", description=evaluate.__doc__)
    parser.add_argument("samples_dir", help=f"a sample folder ({MANIFEST}) or any folder of images")
    parser.add_argument("--out", help="where to write the JSON result (default: SAMPLES_DIR/eval/<metric>.json)")
    parser.add_argument("--log-level", default="INFO")
    add_arguments(parser)
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=args.pop("log_level"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    samples_dir, out = args.pop("samples_dir"), args.pop("out")
    if problem := _folder_problem(Path(samples_dir)):  # before any model loads
        fail(parser.prog, problem)
    try:
        res = evaluate(samples_dir, **args)
        write_result(out or Path(samples_dir) / "eval" / f"{metric}.json", res)
    except USER_ERRORS as e:  # problems the user can fix: the message says how
        fail(parser.prog, e)
    for name, agg in res["aggregate"].items():
        ci = "" if agg["ci_low"] is None else f" [{agg['ci_low']:.4f}, {agg['ci_high']:.4f}]"
        print(f"{metric}/{name}: {agg['mean']:.4f}{ci} n={agg['n']}")
    return res


def _make_manifest(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.common make-manifest",
                                     description="Write samples.jsonl for a folder of images named {prompt}_{index:06}.png")
    parser.add_argument("folder")
    parser.add_argument("--base-seed", type=int, default=OFFICIAL_BASE_SEED)
    args = parser.parse_args(argv)
    path = write_samples(args.folder, samples_from_images(args.folder, args.base_seed))
    print(f"wrote {path}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["make-manifest"]:
        sys.exit("usage: python -m eval.common make-manifest FOLDER [--base-seed 42]")
    _make_manifest(sys.argv[2:])
