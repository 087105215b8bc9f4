"""The sample-folder format every generator writes and every evaluator reads, and the shared shape
of an evaluator's output (see DESIGN.md)."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from eval.stats import bootstrap_ci
from gentron.io import atomic_write_json

log = logging.getLogger(__name__)

MANIFEST = "samples.jsonl"
_REQUIRED = ("file", "prompt", "seed")


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
    """Read and validate `folder/samples.jsonl`; every listed image must exist."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.exists():
        raise FileNotFoundError(
            f"{manifest} not found: a sample folder needs a {MANIFEST} with one JSON line per image "
            f"(keys {', '.join(_REQUIRED)}); see DESIGN.md 'A sample folder', or build one with "
            f"`python -m eval.common make-manifest {folder}` for a folder of images named after prompts"
        )
    samples = []
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{manifest}:{lineno} is not valid JSON ({e})") from e
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise ValueError(f"{manifest}:{lineno} lacks {missing}; every line needs {list(_REQUIRED)}")
        known = {k: row.pop(k) for k in list(row) if k in Sample.__dataclass_fields__ and k != "extra"}
        sample = Sample(**known, extra=row)
        if not (folder / sample.file).exists():
            raise FileNotFoundError(f"{manifest}:{lineno} names {sample.file}, which is not in {folder}")
        samples.append(sample)
    if not samples:
        raise ValueError(f"{manifest} lists no samples")
    return samples


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
    from gentron.io import atomic_write_text

    return atomic_write_text(Path(folder) / MANIFEST, "\n".join(lines) + "\n")


def per_prompt_means(per_image: list[dict]) -> list[dict]:
    """Average each image score over the images (seeds) of a prompt."""
    by_prompt: dict[Any, dict] = {}
    for row in per_image:
        entry = by_prompt.setdefault(row["prompt_id"], {"prompt_id": row["prompt_id"],
                                                         "category": row.get("category", ""),
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


def result(metric: str, per_image: list[dict], protocol: dict, comparable_to_paper: bool) -> dict:
    per_prompt = per_prompt_means(per_image)
    return {"metric": metric, "protocol": protocol, "comparable_to_paper": comparable_to_paper,
            "per_image": per_image, "per_prompt": per_prompt, "aggregate": aggregate(per_prompt)}


def write_result(path: str | Path, result_dict: dict) -> Path:
    log.info("writing %s", path)
    return atomic_write_json(path, result_dict)
