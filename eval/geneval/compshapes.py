"""GenEval on CompShapes, exact: GenEval's six tasks over CompShapes prompts (gentron.data.compshapes_geneval),
scored by GenEval's own rules (eval.geneval.rules: the code the conformance test holds to the official
scorer) with the CompShapes judge in place of the detector and the colour classifier. Every object the
judge finds (eval.judge.detect_with_masks: its box, mask, palette colour and shape) is a detection of its
shape's class with confidence 1, and its colour is the judge's palette colour.

Each prompt's GenEval metadata is built from the parsed prompt, as the official metadata is written:
- single_object "a circle":                              include circle >= 1
- two_object    "a red circle and a red triangle":       include circle >= 1, triangle >= 1
- counting      "three circles", "three blue circles":   include circle >= 3, exclude circle >= 4
- colors        "a green circle":                        include circle >= 1, green
- position      "a red circle on the left of a blue square": include square >= 1, circle >= 1 left of it
- color_attr    "a red circle and a blue square":        include circle >= 1 red, square >= 1 blue
Colours the official metadata of a task does not check (two_object, counting, position) are not checked.

`python -m eval.geneval.compshapes SAMPLES_DIR` scores a sample folder of the compshapes_geneval prompt set.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from eval.common import (generation_protocol, merged_per_image, merged_protocol, per_prompt_means, read_partials,
                         read_samples, result, run_cli, shard_partial)
from eval.geneval.rules import TAGS, Settings, judge, select_objects
from eval.geneval.run import official_row, official_summary, overall_ci
from eval.judge import detect_with_masks, open_image
from gentron.data.compshapes import parse_prompt
from gentron.data.compshapes_geneval import RELATIONS, task_of
from gentron.errors import exits_on_user_error
from gentron.io import atomic_write_text
from gentron.partition import shard_range

log = logging.getLogger(__name__)

METRIC = "geneval_compshapes"
OVERALL = "overall"
DETECTOR = ("exact: eval.judge's objects (box, mask, shape as the class, palette colour), confidence 1, "
            "in place of Mask2Former and the CLIP colour classifier")


def _clause(phrase, with_color: bool) -> dict:
    return {"class": phrase.shape, "count": 1, **({"color": phrase.color} if with_color else {})}


def metadata(prompt: str) -> dict:
    """The GenEval metadata of a CompShapes prompt (tag, include and exclude clauses, prompt)."""
    spec = parse_prompt(prompt)
    tag = task_of(spec)
    if tag is None:
        raise ValueError(f"{prompt!r} is in none of GenEval's tasks over CompShapes ({', '.join(TAGS)}); sample "
                         f"the geneval_compshapes prompt set (gentron.data.compshapes_geneval)")
    first, meta = spec.phrases[0], {"tag": tag}
    if tag == "counting":
        count = len(spec.phrases)
        meta.update(include=[{"class": first.shape, "count": count}],
                    exclude=[{"class": first.shape, "count": count + 1}])
    elif tag == "position":  # "A <relation> B": B is the target, clause 0
        a, b = spec.phrases
        meta["include"] = [_clause(b, False), {**_clause(a, False), "position": [RELATIONS[spec.relation], 0]}]
    else:
        meta["include"] = [_clause(p, tag in ("colors", "color_attr")) for p in spec.phrases]
    return {**meta, "prompt": spec.caption}


def detections(image: Image.Image) -> tuple[dict, dict]:
    """The judge's objects as the detector's output, {shape: (boxes (n, 5) float32 [x1, y1, x2, y2, 1] in
    pixels of the image, masks)}, and each box's colour {(x1, y1, x2, y2): colour}."""
    width, height = image.size
    raw, colours = {}, {}
    for found, mask in detect_with_masks(image):
        x1, y1, x2, y2 = found.box
        box = np.array([x1 * width, y1 * height, x2 * width, y2 * height, 1.0], dtype=np.float32)
        boxes, masks = raw.setdefault(found.shape, ([], []))
        boxes.append(box)
        masks.append(mask)
        colours[tuple(box[:4].tolist())] = found.color
    return {name: (np.stack(boxes), masks) for name, (boxes, masks) in raw.items()}, colours


def score(prompt_or_meta: str | dict, image, settings: Settings | None = None) -> tuple[bool, str, dict]:
    """(correct, reason, the detections that counted) for one image under GenEval's rules (official settings
    by default)."""
    settings = settings or Settings()
    meta = metadata(prompt_or_meta) if isinstance(prompt_or_meta, str) else prompt_or_meta
    image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    raw, colours = detections(image)
    detected = select_objects(raw, meta["tag"], settings)
    correct, reason = judge(meta, detected, lambda name, found: [colours[tuple(b[:4].tolist())] for b, _ in found],
                            settings.position_threshold)
    return correct, reason, detected


def _scored(folder: Path, samples, settings: Settings) -> tuple[list[dict], list[dict]]:
    per_image, official = [], []
    for sample in samples:
        try:
            meta = metadata(sample.prompt)
        except ValueError as e:
            raise ValueError(f"{folder / sample.file}: {e}") from None
        correct, reason, detected = score(meta, open_image(folder / sample.file), settings)
        official.append(official_row(sample.file, meta, correct, reason, detected))
        per_image.append({"file": sample.file, "prompt_id": sample.prompt_id, "seed": sample.seed,
                          "category": meta["tag"], "prompt": sample.prompt, "scores": {meta["tag"]: float(correct)},
                          "correct": bool(correct), "reason": reason})
    log.info("scored %d samples of %s on GenEval-CompShapes", len(per_image), folder)
    return per_image, official


def _protocol(folder: Path, settings: Settings) -> dict:
    return {**settings.as_dict(), "detector": DETECTOR, "colours": "eval.judge palette chromaticity",
            "rules": "eval.geneval.rules (GenEval's evaluate_images.py rules)",
            "prompts": "gentron.data.compshapes_geneval (held-out CompShapes combinations where the task allows)",
            **generation_protocol(folder)}


def _result(per_image: list[dict], protocol: dict, official: list[dict]) -> dict:
    out = result(METRIC, per_image, protocol, comparable_to_paper=False,
                 extra={"official_summary": official_summary(official)} if official else None)
    out["aggregate"][OVERALL] = overall_ci(out["per_prompt"])
    for seed, aggregate in out["aggregate_by_seed"].items():
        aggregate[OVERALL] = overall_ci(per_prompt_means([row for row in per_image if row["seed"] == int(seed)]))
    return out


def evaluate(samples_dir, shard=None, out=None, threshold: float = 0.3, counting_threshold: float = 0.9,
             max_objects: int = 16, max_overlap: float = 1.0, position_threshold: float = 0.1,
             official_results: str | None = None) -> dict:
    """GenEval-CompShapes scores of a sample folder: per image {task: 0 or 1}, per task the mean over prompts
    with a bootstrap CI, `overall` the mean of the task means (eval.geneval.run.overall_ci). Unsharded, also
    the official results.jsonl (default SAMPLES_DIR/eval/geneval_compshapes_results.jsonl). With
    `shard=(k, K)`: shard k of K only, its partial result returned (and written to `out`) for `merge`."""
    settings = Settings(threshold, counting_threshold, max_objects, max_overlap, position_threshold).check()
    folder = Path(samples_dir)
    samples = read_samples(folder)
    if shard is not None:
        span = shard_range(len(samples), 1, shard)

        def partial() -> dict:
            per_image, _ = _scored(folder, samples[span.start:span.stop], settings)
            return {"protocol": _protocol(folder, settings), "per_image": per_image}
        return shard_partial(METRIC, folder, shard, out, settings.as_dict(), partial)
    per_image, official = _scored(folder, samples, settings)
    path = Path(official_results) if official_results else folder / "eval" / f"{METRIC}_results.jsonl"
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in official))
    return _result(per_image, {**_protocol(folder, settings), "official_results": str(path)}, official)


def merge(partials) -> dict:
    """The result of a folder from its K shards' partial results: the unsharded run's scores."""
    parts = read_partials(partials, METRIC)
    return _result(merged_per_image(parts), merged_protocol(parts), [])


@exits_on_user_error("python -m eval.geneval.compshapes")
def main(argv: list[str] | None = None) -> None:
    run_cli("geneval.compshapes", evaluate, lambda parser: None, argv, merge=merge)


if __name__ == "__main__":
    main()
