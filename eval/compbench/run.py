"""Score a sample folder on T2I-CompBench and write both our evaluator output and the official layout:
per category `annotation_blip/`, `labels/annotation_obj_detection_2d/`, `annotation_clip/`,
`annotation_3_in_1/` each with `vqa_result.json` = [{"question_id", "answer"}] and a score file,
plus `averages.json` ({category: mean over images}). Images are ordered by (prompt id, index), so with
prompt ids = prompt-file lines a question_id is the official file counter 10 * line + index, and the
official 3_in_1.py reads the complex folder as it reads its own."""
from __future__ import annotations

import logging
from pathlib import Path


from eval import weights
from eval.clip_score import ClipEmbedder
from eval.common import generation_protocol, image_row, load_image, merged_per_image, merged_protocol, read_partials, refuse_damaged_images, resolve_device, result, shard_partial
from eval.compbench import complex as complex_
from eval.compbench import nonspatial, questions
from eval.compbench.prompts import ATTRIBUTE, complex_parts, compbench_samples
from eval.compbench.spatial import CONFIDENCE, Detector
from eval.compbench.vqa import IMAGE_SIZE, BlipVqa
from gentron.io import atomic_write_json, atomic_write_text
from gentron.partition import shard_range
from gentron.progress import progress

log = logging.getLogger(__name__)

OFFICIAL_FOLDERS = {"vqa": "annotation_blip", "spatial": "labels/annotation_obj_detection_2d",
                    "clip": "annotation_clip", "complex": "annotation_3_in_1"}


class Models:
    """The three scorers, each loaded on first use (a colour-only run never loads the detector)."""

    def __init__(self, blip: str, detector: str, clip: str, clip_pretrained: str | None, device: str,
                 detector_confidence: float, vqa_image_size: int, allow_random_clip: bool = False):
        self._specs = {"vqa": lambda: BlipVqa(blip, device, vqa_image_size),
                       "spatial": lambda: Detector(detector, device, detector_confidence),
                       "clip": lambda: ClipEmbedder(clip, clip_pretrained, device, allow_random_clip)}
        self._loaded: dict = {}

    def __getitem__(self, name: str):
        if name not in self._loaded:
            self._loaded[name] = self._specs[name]()
        return self._loaded[name]

    def protocol(self) -> dict:
        out = {}
        for name, model in self._loaded.items():
            out.update({f"clip_{k}": v for k, v in model.protocol().items()} if name == "clip" else model.protocol())
        return out


def official_vqa(value: float) -> float:
    """BLIP-VQA scores as the official result file stores them ('%.4f'), which its averages and 3-in-1 read."""
    return float(f"{value:.4f}")


def _score_batch(category: str, models: Models, images, prompts, parts=None) -> list[dict[str, float]]:
    """Scores of a batch of one category's images: {category: value} plus complex's components."""
    if category in ATTRIBUTE:
        return [{category: official_vqa(s)} for s in models["vqa"].score(images, prompts)]
    if category == "spatial":
        return [{category: models["spatial"].score(im, p)} for im, p in zip(images, prompts)]
    if category == "non_spatial":
        return [{category: s} for s in nonspatial.score(models["clip"], images, prompts)]
    vqa = [official_vqa(s) for s in models["vqa"].score(images, prompts)]
    clip = nonspatial.score(models["clip"], images, prompts, complex_=True)
    rows = []
    for im, p, v, c in zip(images, prompts, vqa, clip):
        # The official detector pass scores every complex image (0 where the rule finds no two objects).
        spatial = models["spatial"].score(im, p, around_relation=True)
        rows.append({"complex": complex_.combine(parts(p), v, spatial, c), "complex_vqa": v, "complex_clip": c,
                     "complex_spatial": spatial})
    return rows


def _write_official(out_dir: Path, category: str, rows: list[dict]) -> None:
    """The reference code's result files for one category (rows in question_id order)."""
    parts = {"complex": "complex", "complex_vqa": "vqa", "complex_clip": "clip", "complex_spatial": "spatial",
             "spatial": "spatial", "non_spatial": "clip", **{c: "vqa" for c in ATTRIBUTE}}
    for key, part in parts.items():
        scored = [(row["question_id"], row["scores"][key]) for row in rows if key in row["scores"]]
        if not scored:
            continue
        folder = out_dir / category / OFFICIAL_FOLDERS[part]
        answers = [{"question_id": q, "answer": f"{v:.4f}" if part == "vqa" else v} for q, v in scored]
        atomic_write_json(folder / "vqa_result.json", answers)
        mean = sum(v for _, v in scored) / len(scored)
        atomic_write_text(folder / "score.txt", f"{key} score: {mean}\n")


def evaluate(samples_dir, category: str | None = None, blip: str = weights.BLIP_VQA, detector: str = weights.OWLVIT,
             clip: str = weights.CLIP_B32, clip_pretrained: str | None = None, checkout: str | None = None,
             official_dir: str | None = None, device: str | None = None, batch_size: int = 8,
             detector_confidence: float = CONFIDENCE, vqa_image_size: int = IMAGE_SIZE,
             allow_random_clip: bool = False, shard=None, out=None) -> dict:
    """T2I-CompBench scores of a sample folder (every category present, or --category). With
    `shard=(k, K)`: shard k of K only (whole batches of a category), returned and written to `out` as a
    partial result; `merge` combines the K partials and writes the official files."""
    samples, excluded = compbench_samples(samples_dir, category, checkout)
    categories = sorted({s.category for s in samples})
    units = _units(samples, categories, batch_size)
    span = shard_range(len(units), 1, shard)
    refuse_damaged_images([Path(samples_dir) / s.file for _, _, batch in units[span.start:span.stop] for s in batch],
                          "sample", fix="regenerate them")
    parts = None
    if "complex" in categories:
        if checkout is None:
            raise ValueError("the complex category needs the T2I-CompBench checkout for its sub-split files "
                             "(complex_val_spatial.txt, complex_val_action.txt): pass --checkout")
        parts = complex_parts(checkout)
    language_model = questions.language_model()  # fails early, with the install command, without a model
    _check_models(categories, blip, detector, clip, clip_pretrained)
    if official_dir and Path(official_dir).exists() and not Path(official_dir).is_dir():
        raise NotADirectoryError(f"--official-dir {official_dir} is a file; give a folder for the official result files")
    models = Models(blip, detector, clip, clip_pretrained, resolve_device(device), detector_confidence,
                    vqa_image_size, allow_random_clip)  # each loads on first use
    if shard is not None:
        options = {"category": category, "blip": blip, "detector": detector, "clip": clip,
                   "clip_pretrained": clip_pretrained, "checkout": checkout, "official_dir": official_dir,
                   "batch_size": batch_size, "detector_confidence": detector_confidence,
                   "vqa_image_size": vqa_image_size, "allow_random_clip": allow_random_clip}

        def score() -> dict:
            per_image = _score_units(samples_dir, units[span.start:span.stop], models, parts)
            return {"protocol": {**models.protocol(), "language_model": language_model},
                    "per_image": per_image, "excluded_categories": excluded}
        return shard_partial("t2i_compbench", samples_dir, shard, out, options, score)
    per_image = _score_units(samples_dir, units, models, parts)
    return _finish(samples_dir, per_image, {**models.protocol(), "language_model": language_model}, excluded,
                   checkout, official_dir, blip, clip, clip_pretrained)


def merge(partials, official_dir: str | None = None) -> dict:
    """The result of a folder from the partial results of its K shards (the same as one unsharded run),
    with the official result files written (to `official_dir`, else where the shards were told)."""
    parts = read_partials(partials, "t2i_compbench")
    header, options = parts[0]["partial"], parts[0]["partial"]["options"]
    return _finish(header["samples_dir"], merged_per_image(parts), merged_protocol(parts),
                   parts[0]["excluded_categories"], options["checkout"], official_dir or options["official_dir"],
                   options["blip"], options["clip"], options["clip_pretrained"])


def _units(samples, categories: list[str], batch_size: int) -> list[tuple[str, int, list]]:
    """(category, question id of its first image, samples) per batch: each category's images ordered by
    (prompt id, index), so with prompt ids = prompt-file lines a question_id is the official counter."""
    units = []
    for cat in categories:
        ordered = sorted((s for s in samples if s.category == cat), key=lambda s: (s.prompt_id, s.index, s.file))
        units += [(cat, start, ordered[start:start + batch_size]) for start in range(0, len(ordered), batch_size)]
    return units


def _score_units(samples_dir, units, models: Models, parts) -> list[dict]:
    per_image = []
    for cat, start, batch in progress(units, desc="compbench", unit="batch"):
        images = [load_image(samples_dir, s) for s in batch]
        scored = _score_batch(cat, models, images, [s.prompt for s in batch], parts)
        per_image += [{**image_row(s, scores), "question_id": start + i} for i, (s, scores) in enumerate(zip(batch, scored))]
    return per_image


def _finish(samples_dir, per_image: list[dict], model_protocol: dict, excluded: dict, checkout, official_dir,
            blip: str, clip: str, clip_pretrained: str | None) -> dict:
    """The official files per category, their averages, and the evaluator's result."""
    official = Path(official_dir) if official_dir else Path(samples_dir) / "eval" / "compbench_official"
    averages = {}
    for cat in sorted({row["category"] for row in per_image}):
        rows = [row for row in per_image if row["category"] == cat]
        _write_official(official, cat, rows)
        averages[cat] = sum(r["scores"][cat] for r in rows) / len(rows)
        log.info("%s: %.4f over %d images", cat, averages[cat], len(rows))
    atomic_write_json(official / "averages.json", averages)
    comparable = _comparable(set(averages), blip, clip, clip_pretrained)
    protocol = {**model_protocol, "images_per_prompt": "as generated (official: 10, seeds 42..51)",
                "checkout": None if checkout is None else str(checkout),
                "complex_subsplits": "official sub-split files" if "complex" in averages else None,
                "excluded_categories": excluded, "official_dir": str(official), "comparable_by_category": comparable,
                **generation_protocol(samples_dir)}
    return result("t2i_compbench", per_image, protocol, all(comparable.values()),
                  {"official_averages": averages})


def _check_models(categories: list[str], blip: str, detector: str, clip: str, clip_pretrained: str | None) -> None:
    """Name a model that is neither a local folder nor cached before any image is scored (they load lazily)."""
    from eval.clip_score import _is_open_clip_name

    if set(categories) & {*ATTRIBUTE, "complex"}:
        weights.hf_model_path(blip, "BLIP-VQA model (--blip)")
    if set(categories) & {"spatial", "complex"}:
        weights.hf_model_path(detector, "zero-shot object detector (--detector)")
    if set(categories) & {"non_spatial", "complex"} and clip_pretrained is None and not _is_open_clip_name(clip):
        weights.hf_model_path(clip, "CLIP model (--clip)")


def _comparable(categories: set[str], blip: str, clip: str, clip_pretrained: str | None) -> dict[str, bool]:
    """Whether each category's number can sit next to the paper's: the official models; the detector is
    never UniDet here, so spatial and complex never are."""
    official_clip = (clip, clip_pretrained) in (("ViT-B-32", "openai"), (weights.CLIP_B32, None))
    rules = {"spatial": False, "complex": False, "non_spatial": official_clip,
             **{c: blip == weights.BLIP_VQA for c in ATTRIBUTE}}
    return {c: rules[c] for c in sorted(categories)}
