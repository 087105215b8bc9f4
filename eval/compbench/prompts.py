"""The official prompt files and the generation plan: 10 images per prompt, seeds 42..51, files named
`{prompt}_{index:06}.png` (one folder per category, as the official scripts expect)."""
from __future__ import annotations

import json
from pathlib import Path

from eval.common import OFFICIAL_BASE_SEED, Sample, load_samples
from gentron.io import atomic_write_text

CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
ATTRIBUTE = ("color", "shape", "texture")
IMAGES_PER_PROMPT = 10


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line; CRLF or LF endings, a final newline or not, a UTF-8 BOM or not."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    text = path.read_bytes().decode("utf-8-sig")
    return [line.strip() for line in text.splitlines() if line.strip()]


def prompt_file(checkout: str | Path, category: str) -> Path:
    """`{category}_val.txt` in a T2I-CompBench checkout (examples/dataset/ upstream) or in the folder itself."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown T2I-CompBench category '{category}': use one of {CATEGORIES}")
    checkout = Path(checkout)
    for candidate in (checkout / "examples" / "dataset" / f"{category}_val.txt", checkout / f"{category}_val.txt"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no {category}_val.txt under {checkout} (looked in examples/dataset/ and the folder "
                            f"itself); clone https://github.com/Karine-Huang/T2I-CompBench and pass its path")


def official_name(prompt: str, index: int) -> str:
    return f"{prompt}_{index:06}.png"


def generation_plan(checkout: str | Path, categories=CATEGORIES, images_per_prompt: int = IMAGES_PER_PROMPT,
                    base_seed: int = OFFICIAL_BASE_SEED) -> list[dict]:
    """Rows in the sample-manifest format: file `{category}/samples/{prompt}_{index:06}.png`, seed 42 + index,
    prompt_id = the prompt's line number in its `_val.txt`."""
    rows = []
    for category in categories:
        for prompt_id, prompt in enumerate(read_prompt_file(prompt_file(checkout, category))):
            if "/" in prompt:
                raise ValueError(f"prompt {prompt!r} has a '/', which cannot be part of its official file name")
            rows += [{"file": f"{category}/samples/{official_name(prompt, index)}", "prompt": prompt,
                      "seed": base_seed + index, "index": index, "category": category, "prompt_id": prompt_id}
                     for index in range(images_per_prompt)]
    return rows


def write_plan(rows: list[dict], out: str | Path) -> Path:
    return atomic_write_text(Path(out) / "plan.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def compbench_samples(samples_dir: str | Path, category: str | None = None, checkout: str | Path | None = None
                      ) -> list[Sample]:
    """Samples with a category each: from samples.jsonl, or from the official layout (`category` given;
    images in SAMPLES_DIR or SAMPLES_DIR/samples). With a checkout, prompt ids are prompt-file line numbers."""
    samples = load_samples(samples_dir)
    if category is not None:
        samples = [s for s in samples if s.category in ("", category)]
        for s in samples:
            s.category = category
    missing = sorted({s.file for s in samples if s.category not in CATEGORIES})
    if missing:
        raise ValueError(f"{len(missing)} samples have no T2I-CompBench category (e.g. {missing[0]}); "
                         f"pass --category or set 'category' in samples.jsonl")
    if checkout is not None:
        for cat in {s.category for s in samples}:
            line_of = {p: i for i, p in enumerate(read_prompt_file(prompt_file(checkout, cat)))}
            for s in samples:
                if s.category == cat and s.prompt in line_of:
                    s.prompt_id = line_of[s.prompt]
    if not samples:
        raise ValueError(f"{samples_dir}: no samples for category {category}")
    return samples
