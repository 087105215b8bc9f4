"""GenEval's prompts and the two sample-folder layouts the evaluator reads.

- gentron's sample folder (DESIGN.md): `samples.jsonl` with a `prompt_id` per image, the line of the
  official `prompts/evaluation_metadata.jsonl` (the `geneval` prompt set samples the official
  `prompts/generation_prompts.txt`, whose lines are those prompts in the same order); the metadata file
  gives each prompt's tag and clauses.
- the official generator's layout: `<index:05d>/metadata.jsonl` (that prompt's metadata as one JSON
  object) and `<index:05d>/samples/<n:04d>.png`; no metadata file is needed.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

from eval.common import MANIFEST, Sample, read_samples
from eval.geneval.rules import COLORS, RELATIONS, TAGS

log = logging.getLogger(__name__)

IMAGES_PER_PROMPT = 4
NUM_PROMPTS = 553
OFFICIAL_SEED = 42  # the official generator seeds every prompt with --seed (default 42) and draws its images in turn
# The 80 COCO classes in the detector's label order, named as GenEval's prompts name them.
CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
METADATA_HINT = ("the official prompts/evaluation_metadata.jsonl (git clone https://github.com/djghosh13/geneval; "
                 "GENEVAL_PROMPTS names its prompts/ folder for the grids)")
_IMAGE_NAME = re.compile(r"\d+\.png")


def check_metadata(meta, where: str) -> dict:
    """One prompt's metadata, validated: a known tag, include clauses of a COCO class and a count >= 1 with an
    optional colour and position (relation, index of an earlier include clause), exclude clauses of a class
    and a count."""
    if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str) or meta.get("tag") not in TAGS:
        raise ValueError(f"{where}: not GenEval metadata (a JSON object with 'prompt', 'tag' in {', '.join(TAGS)} "
                         f"and 'include'); use {METADATA_HINT}")
    include = meta.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError(f"{where}: 'include' must be a non-empty list of clauses")
    for kind in ("include", "exclude"):
        for n, clause in enumerate(meta.get(kind, [])):
            if not isinstance(clause, dict) or clause.get("class") not in CLASSES:
                raise ValueError(f"{where}: {kind} clause {n} names no COCO class: {clause!r}")
            count = clause.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"{where}: {kind} clause {n} needs a count >= 1: {clause!r}")
            if kind == "include" and "color" in clause and clause["color"] not in COLORS:
                raise ValueError(f"{where}: colour {clause['color']!r} is not one of {', '.join(COLORS)}")
            if kind == "include" and "position" in clause:
                position = clause["position"]
                if (not isinstance(position, list) or len(position) != 2 or position[0] not in RELATIONS
                        or not isinstance(position[1], int) or not 0 <= position[1] < n):
                    raise ValueError(f"{where}: position {position!r} must be [relation, index of an earlier "
                                     f"include clause] with a relation in {', '.join(RELATIONS)}")
    return meta


def read_metadata(path: str | Path) -> list[dict]:
    """The official evaluation_metadata.jsonl: one prompt's metadata per line (line = prompt id)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata {path}: no such file; give {METADATA_HINT}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(check_metadata(json.loads(line), f"{path}:{number}"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number} is not valid JSON ({e.msg}); use {METADATA_HINT}") from e
    if not rows:
        raise ValueError(f"{path} holds no prompts; use {METADATA_HINT}")
    return rows


def is_official_layout(folder: Path) -> bool:
    return any(p.is_dir() and p.name.isdigit() and (p / "metadata.jsonl").is_file() for p in folder.iterdir())


def official_samples(folder: Path) -> list[tuple[Sample, dict]]:
    """The official generator's layout: numbered prompt folders with metadata.jsonl and samples/<n>.png."""
    items = []
    for sub in sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        meta_file = sub / "metadata.jsonl"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{sub} has no metadata.jsonl; every prompt folder of the official layout has one")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_file} is not valid JSON ({e.msg}); the official generator writes the prompt's "
                             f"metadata there as one object") from e
        check_metadata(meta, str(meta_file))
        images = sorted((p for p in (sub / "samples").glob("*.png") if _IMAGE_NAME.fullmatch(p.name)),
                        key=lambda p: int(p.stem)) if (sub / "samples").is_dir() else []
        for image in images:
            items.append((Sample(file=image.relative_to(folder).as_posix(), prompt=meta["prompt"], seed=OFFICIAL_SEED,
                                 index=int(image.stem), category=meta["tag"], prompt_id=int(sub.name)), meta))
    return items


def gentron_samples(folder: Path, metadata: str | Path | None) -> list[tuple[Sample, dict]]:
    """A gentron sample folder: each sample's prompt_id is its line of the metadata file (its prompt must be
    that line's prompt); a sample without one is matched by its prompt text."""
    samples = read_samples(folder)
    if metadata is None:
        raise ValueError(f"{folder} is a gentron sample folder ({MANIFEST}): pass --metadata with {METADATA_HINT}")
    rows = read_metadata(metadata)
    by_prompt = {row["prompt"]: i for i, row in enumerate(rows)}
    items = []
    for s in samples:
        if not (0 <= s.prompt_id < len(rows) and rows[s.prompt_id]["prompt"] == s.prompt):
            if s.prompt not in by_prompt:
                raise ValueError(f"{folder / MANIFEST}: {s.file} has prompt {s.prompt!r}, which is not a prompt of "
                                 f"{metadata}; sample the geneval prompt set (its prompt ids are the metadata lines)")
            s.prompt_id = by_prompt[s.prompt]
        meta = rows[s.prompt_id]
        s.category = meta["tag"]
        items.append((s, meta))
    return items


def geneval_samples(samples_dir: str | Path, metadata: str | Path | None = None,
                    images_per_prompt: int | None = IMAGES_PER_PROMPT) -> list[tuple[Sample, dict]]:
    """(sample, its prompt's metadata) for every image, ordered by prompt id and image index, with every
    prompt holding `images_per_prompt` images (None: any number)."""
    folder = Path(samples_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"sample folder {folder} does not exist" if not folder.exists()
                                else f"{folder} is a file; give a sample folder")
    if (folder / MANIFEST).exists():
        items = gentron_samples(folder, metadata)
    elif is_official_layout(folder):
        items = official_samples(folder)
    else:
        raise FileNotFoundError(f"{folder} is neither a gentron sample folder ({MANIFEST}) nor the official GenEval "
                                f"layout (<index:05d>/metadata.jsonl and <index:05d>/samples/<n:04d>.png)")
    if not items:
        raise ValueError(f"{folder}: no images (the official layout keeps them in <index:05d>/samples/<n:04d>.png)")
    items.sort(key=lambda item: (item[0].prompt_id, item[0].index, item[0].file))
    counts = Counter(s.prompt_id for s, _ in items)
    if images_per_prompt and (wrong := {p: n for p, n in counts.items() if n != images_per_prompt}):
        prompt, n = next(iter(sorted(wrong.items())))
        raise ValueError(f"{folder}: {len(wrong)} of {len(counts)} prompts do not have {images_per_prompt} images "
                         f"(e.g. prompt {prompt} has {n}); generate {images_per_prompt} per prompt as the official "
                         f"protocol does, or pass --images-per-prompt {n} (0: any number)")
    return items
