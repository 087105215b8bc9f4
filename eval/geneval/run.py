"""Score a sample folder on GenEval: detect objects, classify the colours the prompts ask for, apply the
rules, and write both the official `results.jsonl` (one line per image: filename, tag, prompt, correct,
reason, metadata, details, which the official summary_scores.py reads) and gentron's evaluator output:
per image {tag: 0 or 1}, per prompt the mean over its images, per task the mean over prompts with a
bootstrap CI, and `overall` = the mean of the six task means (the number papers report) with a CI from a
bootstrap that resamples prompts within each task."""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy import stats

from eval.common import image_row, per_prompt_means, refuse_damaged_images, resolve_device, result
from eval.geneval import colors, detector as detector_, prompts
from eval.geneval.rules import TAGS, Settings, judge, select_objects
from gentron.io import atomic_write_text
from gentron.progress import progress

log = logging.getLogger(__name__)

METRIC = "geneval"
OVERALL = "overall"


def load_image(path: Path) -> Image.Image:
    """The image as both models see it: EXIF orientation applied, RGB."""
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except OSError as e:
        raise ValueError(f"{path} is not a readable image ({e}); regenerate it") from e


def official_row(filename: str, meta: dict, correct: bool, reason: str, detected: dict) -> dict:
    """One line of the official results.jsonl."""
    return {"filename": filename, "tag": meta["tag"], "prompt": meta["prompt"], "correct": bool(correct),
            "reason": reason, "metadata": json.dumps(meta),
            "details": json.dumps({name: [box.tolist() for box, _ in found] for name, found in detected.items()})}


def overall_ci(per_prompt: list[dict], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Mean over tasks of each task's mean over its prompts, with a percentile-bootstrap CI resampling
    prompts within each task (scipy.stats.bootstrap over the tasks as independent samples, default_rng(seed));
    a task with one prompt enters as a constant."""
    groups = [np.array([row["scores"][tag] for row in per_prompt if tag in row["scores"]], dtype=np.float64)
              for tag in TAGS]
    groups = [g for g in groups if g.size]
    if not groups:
        raise ValueError("no GenEval task was scored")
    point = float(np.mean([g.mean() for g in groups]))
    n = int(sum(g.size for g in groups))
    varied = tuple(g for g in groups if g.size > 1)
    fixed = sum(float(g.mean()) for g in groups if g.size == 1)
    if not varied:
        return {"mean": point, "ci_low": point, "ci_high": point, "n": n}

    def statistic(*samples, axis=-1):
        return (sum(s.mean(axis=axis) for s in samples) + fixed) / len(groups)

    ci = stats.bootstrap(varied, statistic, n_resamples=n_boot, method="percentile", confidence_level=1 - alpha,
                         vectorized=True, paired=False, rng=np.random.default_rng(seed)).confidence_interval
    return {"mean": point, "ci_low": float(ci.low), "ci_high": float(ci.high), "n": n}


def official_summary(rows: list[dict]) -> dict:
    """What the official summary_scores.py prints, computed from the same rows: image and prompt counts,
    the fractions of correct images and of prompts with a correct image, each task's fraction of correct
    images, and their mean."""
    by_prompt: dict[str, list[bool]] = {}
    by_tag: dict[str, list[bool]] = {}
    for row in rows:
        by_prompt.setdefault(row["metadata"], []).append(row["correct"])
        by_tag.setdefault(row["tag"], []).append(row["correct"])
    tasks = {tag: float(np.mean(values)) for tag, values in by_tag.items()}
    return {"images": len(rows), "prompts": len(by_prompt),
            "correct_images": float(np.mean([r["correct"] for r in rows])),
            "correct_prompts": float(np.mean([any(v) for v in by_prompt.values()])),
            "tasks": tasks, "overall": float(np.mean(list(tasks.values())))}


def weight_problems(detector: str | None = None, clip_model: str = colors.DEFAULT_MODEL,
                    clip_pretrained: str | None = None) -> list[str]:
    """One line per model that is not on this machine, naming the fix (nothing is downloaded or loaded)."""
    problems = []
    for check in (lambda: detector_.detector_folder(detector_.detector_name(detector)),
                  lambda: colors.check_weights(clip_model, colors.clip_pretrained(clip_model, clip_pretrained))):
        try:
            check()
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))
    return problems


def evaluate(samples_dir, metadata: str | None = None, detector: str | None = None,
             clip_model: str = colors.DEFAULT_MODEL, clip_pretrained: str | None = None,
             device: str | None = None, threshold: float = 0.3, counting_threshold: float = 0.9,
             max_objects: int = 16, max_overlap: float = 1.0, position_threshold: float = 0.1,
             background: str = colors.BACKGROUND, crop: bool = True,
             images_per_prompt: int | None = prompts.IMAGES_PER_PROMPT, official_results: str | None = None) -> dict:
    """GenEval scores of a sample folder (gentron's, with the official metadata file, or the official layout)."""
    settings = Settings(threshold, counting_threshold, max_objects, max_overlap, position_threshold).check()
    items = prompts.geneval_samples(samples_dir, metadata, images_per_prompt or None)
    folder = Path(samples_dir)
    refuse_damaged_images([folder / s.file for s, _ in items], "sample", fix="regenerate them")
    device = resolve_device(device)
    needs_colour = any("color" in clause for _, meta in items for clause in meta["include"])
    detector_.detector_folder(detector_.detector_name(detector))  # a missing model is named before any loads
    classifier = colors.ColourClassifier(clip_model, clip_pretrained, device, background, crop) if needs_colour else None
    model = detector_.Detector(detector, device, min_score=min(settings.threshold, settings.counting_threshold))
    per_image, official = [], []
    for sample, meta in progress(items, desc="geneval", unit="img"):
        image = load_image(folder / sample.file)
        detected = select_objects(model.detect(image), meta["tag"], settings)
        correct, reason = judge(meta, detected, lambda name, found: classifier.classify(image, found, name),
                                settings.position_threshold)
        official.append(official_row(str(folder / sample.file), meta, correct, reason, detected))
        per_image.append({**image_row(sample, {meta["tag"]: float(correct)}), "correct": bool(correct),
                          "reason": reason})
    results_path = Path(official_results) if official_results else folder / "eval" / "geneval_results.jsonl"
    atomic_write_text(results_path, "".join(json.dumps(row) + "\n" for row in official))
    prompt_ids = {s.prompt_id for s, _ in items}
    counts = Counter(Counter(s.prompt_id for s, _ in items).values())
    all_prompts = len(prompt_ids) == prompts.NUM_PROMPTS and counts == Counter({prompts.IMAGES_PER_PROMPT:
                                                                                  prompts.NUM_PROMPTS})
    protocol = {**settings.as_dict(), **model.protocol(), **(classifier.protocol() if classifier else {}),
                "device": device, "prompts": len(prompt_ids), "prompts_by_image_count": dict(sorted(counts.items())),
                "layout": "gentron" if (folder / "samples.jsonl").exists() else "official",
                "metadata": None if metadata is None else str(metadata), "official_results": str(results_path),
                "full_benchmark": all_prompts,
                "seeds": "gentron: as sampled; official layout: every prompt seeded with 42, images drawn in turn",
                "not_comparable_because": ["detector weights are the transformers port of Meta's Mask2Former, not "
                                           "mmdetection's checkpoint (docs/evaluators.md 'GenEval')"]
                + ([] if all_prompts else ["not the 553 prompts x 4 images of the benchmark"])}
    out = result(METRIC, per_image, protocol, False, {"official_summary": official_summary(official)})
    out["aggregate"][OVERALL] = overall_ci(out["per_prompt"])
    for seed, aggregate in out["aggregate_by_seed"].items():
        aggregate[OVERALL] = overall_ci(per_prompt_means([row for row in per_image if row["seed"] == int(seed)]))
    log.info("geneval overall %.4f over %d prompts (%s)", out["aggregate"][OVERALL]["mean"], len(prompt_ids),
             results_path)
    return out
