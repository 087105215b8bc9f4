"""The official prompt files and the generation plan: 10 images per prompt, seeds 42..51, one folder per
category, files named as the official generator names them: `{prompt}_{counter:06}.png` with a counter
running across the prompt file (image n of line i is number 10 * i + n), which is also the image's
`question_id` in the official result files."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from eval.common import OFFICIAL_BASE_SEED, Sample, load_samples
from gentron.io import atomic_write_text

log = logging.getLogger(__name__)

CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
ATTRIBUTE = ("color", "shape", "texture")
# T2I-CompBench++ adds these; their scorers (3D detector with depth, counting) are not part of this evaluator.
EXTENDED = ("3d_spatial", "numeracy")
IMAGES_PER_PROMPT = 10
# The complex prompts' sub-split files: which scores the official 3-in-1 averages for a prompt.
SUBSPLIT_FILES = {"spatial": "complex_val_spatial.txt", "action": "complex_val_action.txt"}
SUBSPLIT_PARTS = {"spatial": ("vqa", "spatial"), "action": ("vqa", "clip"), None: ("vqa", "spatial", "clip")}


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line; CRLF or LF endings, a final newline or not, a UTF-8 BOM or not."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    text = path.read_bytes().decode("utf-8-sig")
    return [line.strip() for line in text.splitlines() if line.strip()]


def dataset_dir(checkout: str | Path, name: str) -> Path:
    """The folder of a T2I-CompBench checkout holding `name`: examples/dataset/ upstream, or the folder itself."""
    checkout = Path(checkout)
    for folder in (checkout / "examples" / "dataset", checkout):
        if (folder / name).exists():
            return folder
    raise FileNotFoundError(f"no {name} under {checkout} (looked in examples/dataset/ and the folder itself); "
                            f"clone https://github.com/Karine-Huang/T2I-CompBench and pass its path")


def prompt_file(checkout: str | Path, category: str) -> Path:
    """`{category}_val.txt` in a T2I-CompBench checkout (examples/dataset/ upstream) or in the folder itself."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown T2I-CompBench category '{category}': use one of {CATEGORIES}")
    return dataset_dir(checkout, f"{category}_val.txt") / f"{category}_val.txt"


def official_name(prompt: str, counter: int) -> str:
    return f"{prompt}_{counter:06}.png"


def generation_plan(checkout: str | Path, categories=CATEGORIES, images_per_prompt: int = IMAGES_PER_PROMPT,
                    base_seed: int = OFFICIAL_BASE_SEED) -> list[dict]:
    """Rows in the sample-manifest format: file `{category}/samples/{prompt}_{counter:06}.png` with the
    official running counter (images_per_prompt * line + index), seed 42 + index, prompt_id = the line."""
    rows = []
    for category in categories:
        for prompt_id, prompt in enumerate(read_prompt_file(prompt_file(checkout, category))):
            if "/" in prompt or "_" in prompt:
                raise ValueError(f"prompt {prompt!r} has a '/' or '_', which its official file name cannot hold")
            rows += [{"file": f"{category}/samples/{official_name(prompt, images_per_prompt * prompt_id + index)}",
                      "prompt": prompt, "seed": base_seed + index, "index": index, "category": category,
                      "prompt_id": prompt_id} for index in range(images_per_prompt)]
    return rows


def write_plan(rows: list[dict], out: str | Path) -> Path:
    return atomic_write_text(Path(out) / "plan.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _subsplit_key(line: str) -> str:
    """How the official 3-in-1 compares prompts across its files: the text before the first '.', lowercased."""
    return line.split(".")[0].lower()


def complex_parts(checkout: str | Path) -> Callable[[str], tuple[str, ...]]:
    """prompt -> the scores the official 3-in-1 averages for it: ("vqa", "spatial") for a prompt of
    complex_val_spatial.txt, ("vqa", "clip") for complex_val_action.txt, all three otherwise."""
    keys = {}
    for split, name in SUBSPLIT_FILES.items():
        path = dataset_dir(checkout, name) / name
        with open(path, encoding="utf-8") as f:  # text mode: CRLF read as LF, as the official script reads it
            keys[split] = {_subsplit_key(line.rstrip("\n")) for line in f}

    def parts(prompt: str) -> tuple[str, ...]:
        key = _subsplit_key(prompt)
        split = "spatial" if key in keys["spatial"] else "action" if key in keys["action"] else None
        return SUBSPLIT_PARTS[split]

    return parts


def compbench_samples(samples_dir: str | Path, category: str | None = None, checkout: str | Path | None = None
                      ) -> tuple[list[Sample], dict[str, int]]:
    """(samples with a category each, {extended category: images left out}): from samples.jsonl, or from
    the official layout (`category` given; images in SAMPLES_DIR or SAMPLES_DIR/samples). With a checkout,
    prompt ids are prompt-file line numbers."""
    samples = load_samples(samples_dir)
    if category is not None:
        samples = [s for s in samples if s.category in ("", category)]
        for s in samples:
            s.category = category
    excluded: dict[str, int] = {}
    for s in samples:
        if s.category in EXTENDED:
            excluded[s.category] = excluded.get(s.category, 0) + 1
    if excluded:
        log.warning("not scoring T2I-CompBench++'s extended categories %s (%d images): this evaluator scores the "
                    "six categories %s", ", ".join(sorted(excluded)), sum(excluded.values()), ", ".join(CATEGORIES))
        samples = [s for s in samples if s.category not in EXTENDED]
    unknown = sorted({s.file for s in samples if s.category not in CATEGORIES})
    if unknown:
        raise ValueError(f"{len(unknown)} samples have no T2I-CompBench category (e.g. {unknown[0]}); "
                         f"pass --category or set 'category' in samples.jsonl to one of {', '.join(CATEGORIES)}")
    if checkout is not None:
        for cat in sorted({s.category for s in samples}):
            try:
                path = prompt_file(checkout, cat)
            except FileNotFoundError:
                log.warning("no %s_val.txt in %s: %s keeps the prompt ids of the sample folder", cat, checkout, cat)
                continue
            line_of = {p: i for i, p in enumerate(read_prompt_file(path))}
            for s in samples:
                if s.category == cat and s.prompt in line_of:
                    s.prompt_id = line_of[s.prompt]
    if not samples:
        what = f"category {category}" if category else f"the six categories ({', '.join(CATEGORIES)})"
        raise ValueError(f"{samples_dir}: no samples of {what}")
    return samples, excluded
