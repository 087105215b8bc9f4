"""eval.geneval's rules against the official GenEval scorer: the official evaluation/evaluate_images.py is
imported with its heavy imports (torch, mmdet, open_clip, clip_benchmark) stubbed, and its thresholding,
overlap suppression, compute_iou, relative_position and evaluate run beside ours on random detection sets
drawn over the real prompt metadata (every tag, include and exclude clauses, counts, colours, positions),
with confidences and overlaps placed at the thresholds. Agreement must be exact: the verdict, the detections
kept (boxes, order), and the reason text.

The official files are found through GENEVAL_OFFICIAL (a checkout of djghosh13/geneval), by default
../shared/geneval next to the repository."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from eval.geneval.prompts import CLASSES, read_metadata
from eval.geneval.rules import (COLORS, RELATIONS, TAGS, Settings, box_overlaps, judge, pairwise_overlaps, relations,
                                select_objects)
from tests.support.official_code import stubbed_modules

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = Path(os.environ.get("GENEVAL_OFFICIAL", REPO.parent / "shared" / "geneval"))
CASES = 100_000
PAIRS = 50_000


def official_files() -> Path:
    if not (OFFICIAL / "evaluation" / "evaluate_images.py").is_file():
        pytest.skip(f"no official GenEval code at {OFFICIAL} (set GENEVAL_OFFICIAL to a checkout of djghosh13/geneval)")
    return OFFICIAL


def load_official_scorer(root: Path) -> types.ModuleType:
    """evaluation/evaluate_images.py with torch, mmdet, open_clip and clip_benchmark stubbed while it loads
    (the real modules are put back afterwards); its models are never built. Its functions read their
    globals (models, options, thresholds) at call time, so a test sets those."""
    import pandas  # noqa: F401  (the scorer's real imports, loaded before the stubs go in)
    from PIL import Image, ImageOps  # noqa: F401

    def module(name, **attrs):
        stub = types.ModuleType(name)
        stub.__dict__.update(attrs)
        return stub

    zsc = module("clip_benchmark.metrics.zeroshot_classification", tqdm=None)
    data = module("torch.utils.data", Dataset=object, DataLoader=None)
    stubs = {
        "torch": module("torch", cuda=types.SimpleNamespace(is_available=lambda: True),
                        utils=types.SimpleNamespace(data=data)),
        "torch.utils": module("torch.utils", data=data), "torch.utils.data": data,
        "mmdet": module("mmdet", __file__=str(root / "mmdet_stub.py")),
        "mmdet.apis": module("mmdet.apis", inference_detector=None, init_detector=None),
        "open_clip": module("open_clip"),
        "clip_benchmark": module("clip_benchmark"),
        "clip_benchmark.metrics": module("clip_benchmark.metrics", zeroshot_classification=zsc),
        "clip_benchmark.metrics.zeroshot_classification": zsc,
    }
    with stubbed_modules(stubs), warnings.catch_warnings():  # the scorer silences every warning at import
        spec = importlib.util.spec_from_file_location("geneval_official_evaluate_images",
                                                      root / "evaluation" / "evaluate_images.py")
        scorer = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(scorer)
    scorer.args = types.SimpleNamespace(options={})
    scorer.object_detector = None
    scorer.official_color_classification = scorer.color_classification
    return scorer


def rules_only(scorer: types.ModuleType) -> types.ModuleType:
    """The scorer fed synthetic detections: no image is opened, and each detection's colour comes in its
    mask's place."""
    scorer.Image = types.SimpleNamespace(open=lambda path: path)
    scorer.ImageOps = types.SimpleNamespace(exif_transpose=lambda image: image)
    scorer.color_classification = lambda image, objects, classname: [colour for _, colour in objects]
    return scorer


def configure(scorer, settings: Settings) -> None:
    scorer.THRESHOLD, scorer.COUNTING_THRESHOLD = settings.threshold, settings.counting_threshold
    scorer.MAX_OBJECTS, scorer.NMS_THRESHOLD = settings.max_objects, settings.max_overlap
    scorer.POSITION_THRESHOLD = settings.position_threshold


@pytest.fixture(scope="module")
def scorer():
    return rules_only(load_official_scorer(official_files()))


@pytest.fixture(scope="module")
def metadata():
    return read_metadata(official_files() / "prompts" / "evaluation_metadata.jsonl")


def _near(values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """float32 values `steps` ulps away from float32(values)."""
    return (np.asarray(values, np.float32).view(np.int32) + steps.astype(np.int32)).view(np.float32)


def random_boxes(rng, n: int, integer: np.ndarray | None = None) -> np.ndarray:
    """(n, 4) float32 boxes in a 512-pixel image; every other one a jittered copy of the one before (overlaps
    of every size), a quarter of the rest placed beside the one before at about the position margin."""
    x1, y1 = rng.uniform(-20, 500, n), rng.uniform(-20, 500, n)
    w, h = rng.uniform(0.5, 300, n), rng.uniform(0.5, 300, n)
    copy = rng.random(n) < 0.4
    copy[0] = False
    jitter = rng.normal(0, 12, (n, 4)) * (rng.random((n, 1)) < 0.8)
    beside = ~copy & (rng.random(n) < 0.25)
    beside[0] = False
    boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1)
    prev = np.roll(boxes, 1, axis=0)
    boxes[copy] = prev[copy] + jitter[copy]
    # centre offset on one axis ~= 0.1 x (summed sizes) +- a little: the margin's edge
    pw, ph = prev[:, 2] - prev[:, 0], prev[:, 3] - prev[:, 1]
    axis = rng.random(n) < 0.5
    sign = rng.choice([-1.0, 1.0], n)
    edge = rng.choice([0.0, 0.0, 1e-3, -1e-3, 0.5, -0.5, 2.0], n)
    cx_prev, cy_prev = (prev[:, 0] + prev[:, 2]) / 2, (prev[:, 1] + prev[:, 3]) / 2
    along_x = cx_prev + sign * (0.1 * (pw + w) + edge)
    along_y = cy_prev + sign * (0.1 * (ph + h) + edge)
    other_x = cx_prev + rng.normal(0, 40, n) * (rng.random(n) < 0.7)
    other_y = cy_prev + rng.normal(0, 40, n) * (rng.random(n) < 0.7)
    cx, cy = np.where(axis, along_x, other_x), np.where(axis, other_y, along_y)
    placed = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    boxes[beside] = placed[beside]
    if integer is not None:  # the detector's boxes are mask bounds: whole pixels
        boxes[integer] = np.round(boxes[integer])
    return boxes.astype(np.float32)


def random_cases(metadata: list[dict], n: int, seed: int = 0):
    """n random (metadata, settings, {class: (rows, colours)}) detection sets, drawn in bulk."""
    rng = np.random.default_rng(seed)
    by_tag = {tag: [m for m in metadata if m["tag"] == tag] for tag in TAGS}
    tag_of = rng.integers(0, len(TAGS), n)
    pick = rng.random(n)
    # settings: mostly the official ones; overlap suppression in a third; other thresholds and margins sometimes
    threshold = np.where(rng.random(n) < 0.85, 0.3, rng.uniform(0.05, 0.95, n))
    counting = np.where(rng.random(n) < 0.85, 0.9, rng.uniform(0.05, 0.99, n))
    overlap = np.where(rng.random(n) < 0.65, 1.0, rng.choice([0.3, 0.5, 0.7, 0.95, 0.0], n))
    overlap = np.where(rng.random(n) < 0.05, rng.uniform(0, 1, n), overlap)
    max_objects = np.where(rng.random(n) < 0.85, 16, rng.integers(1, 6, n))
    margin = np.where(rng.random(n) < 0.8, 0.1, rng.choice([0.0, 0.05, 0.2, 0.5], n))
    distractor = rng.random(n) < 0.3
    distractor_class = rng.integers(0, len(CLASSES), n)
    # boxes per class, and a pool of rows consumed in order
    per_class = rng.integers(0, 8, (n, 4))
    per_class[rng.random((n, 4)) < 0.15] += rng.integers(3, 12)
    total = int(per_class.sum())
    integer = np.repeat(rng.random(n) < 0.5, per_class.sum(axis=1))
    boxes = random_boxes(rng, total, integer)
    case_of = np.repeat(np.arange(n), per_class.sum(axis=1))
    mode = rng.choice(5, total, p=[0.45, 0.2, 0.15, 0.1, 0.1])
    steps = rng.integers(-2, 3, total)
    scores = rng.random(total).astype(np.float32)
    scores = np.where(mode == 1, _near(threshold[case_of], steps), scores)
    scores = np.where(mode == 2, _near(counting[case_of], steps), scores)
    scores = np.where(mode == 3, np.roll(scores, 1), scores)  # ties with the row before
    scores = np.where(mode == 4, rng.choice(np.float32([0.25, 0.5, 0.75, 0.95]), total), scores)
    rows = np.concatenate([boxes, scores[:, None]], axis=1).astype(np.float32)
    wanted_colour = (rng.random(total) < 0.6).tolist()
    pool = [COLORS[c] for c in rng.integers(0, len(COLORS), total).tolist()]
    metas = [by_tag[TAGS[t]][int(p * len(by_tag[TAGS[t]]))] for t, p in zip(tag_of.tolist(), pick.tolist())]
    settings = [Settings(*values) for values in zip(threshold.tolist(), counting.tolist(), max_objects.tolist(),
                                                    overlap.tolist(), margin.tolist())]
    extra = [CLASSES[c] if d else None for c, d in zip(distractor_class.tolist(), distractor.tolist())]
    at = 0
    for meta, setting, more, sizes in zip(metas, settings, extra, per_class.tolist()):
        names = [c["class"] for c in meta["include"]] + [c["class"] for c in meta.get("exclude", [])] + [more]
        colour_of = {c["class"]: c["color"] for c in meta["include"] if "color" in c}
        raw = {}
        for name, k in zip(dict.fromkeys(n for n in names if n), sizes):
            wanted = colour_of.get(name)
            raw[name] = (rows[at:at + k], [wanted if wanted and wanted_colour[j] else pool[j] for j in range(at, at + k)])
            at += k
        yield meta, setting, raw
    assert at <= total


def at_an_overlap(settings: Settings, raw: dict, scorer) -> Settings:
    """The same settings with max_overlap set to the exact IoU of a pair of the case's boxes (the edge of `<`)."""
    for rows, _ in raw.values():
        if len(rows) >= 2:
            return Settings(settings.threshold, settings.counting_threshold, settings.max_objects,
                            float(scorer.compute_iou(rows[0], rows[1])), settings.position_threshold)
    return settings


_FOUND = re.compile(r"found (.*) target$")


def normalised(reason: str) -> list:
    """The reason with each 'found A and B target' as a set (the official joins a set, in hash order)."""
    lines = []
    for line in reason.split("\n"):
        match = _FOUND.search(line) if "target, found" in line else None
        lines.append((line[:match.start()], frozenset(match.group(1).split(" and ")) - {""}) if match else line)
    return lines


def test_the_official_scorer_loads_with_its_heavy_imports_stubbed_and_the_real_ones_come_back(scorer):
    import torch

    assert sys.modules["torch"] is torch and hasattr(torch, "tensor")
    assert scorer.DEVICE == "cuda" and callable(scorer.evaluate) and callable(scorer.relative_position)
    assert "clip_benchmark" not in sys.modules or hasattr(sys.modules["clip_benchmark"], "__path__")


def agreement(scorer, metadata: list[dict], n: int, seed: int) -> tuple[dict, dict, list]:
    """Run n random detection sets through the official scorer and ours: (counts, cases per tag, mismatches)."""
    counts = {"cases": 0, "correct": 0, "nms_on": 0, "at_overlap_edge": 0, "with_reason": 0, "kept_boxes": 0}
    by_tag = dict.fromkeys(TAGS, 0)
    edge = (np.random.default_rng(seed + 1).random(n) < 0.05).tolist()
    mismatches = []
    for at_edge, (meta, settings, raw) in zip(edge, random_cases(metadata, n, seed)):
        if at_edge:
            settings = at_an_overlap(settings, raw, scorer)
            counts["at_overlap_edge"] += 1
        configure(scorer, settings)
        scorer.classnames = list(raw)
        scorer.inference_detector = lambda detector, path, raw=raw: ([rows for rows, _ in raw.values()],
                                                                      [colours for _, colours in raw.values()])
        theirs = scorer.evaluate_image("image.png", meta)
        detected = select_objects(raw, meta["tag"], settings)
        correct, reason = judge(meta, detected, lambda name, found: [colour for _, colour in found],
                                settings.position_threshold)
        details = json.dumps({name: [box.tolist() for box, _ in found] for name, found in detected.items()})
        if (correct, details) != (theirs["correct"], theirs["details"]) or (
                reason != theirs["reason"] and normalised(reason) != normalised(theirs["reason"])):
            mismatches.append((meta, settings, {"ours": (correct, reason, details), "theirs": theirs}))
        counts["cases"] += 1
        counts["correct"] += bool(correct)
        counts["nms_on"] += settings.max_overlap != 1
        counts["with_reason"] += bool(reason)
        counts["kept_boxes"] += sum(len(found) for found in detected.values())
        by_tag[meta["tag"]] += 1
    return counts, by_tag, mismatches


@pytest.mark.slow  # about 12 s of one core
def test_the_rules_agree_with_the_official_scorer_on_100k_random_detection_sets(scorer, metadata):
    counts, by_tag, mismatches = agreement(scorer, metadata, CASES, seed=0)
    assert not mismatches, f"{len(mismatches)} of {counts['cases']} differ, e.g. {mismatches[0]}"
    assert counts["cases"] >= 100_000 and all(v > 10_000 for v in by_tag.values()), by_tag
    # both verdicts, suppression on and off, and the overlap edge are all well represented
    assert 0.1 < counts["correct"] / counts["cases"] < 0.9 and counts["nms_on"] > 20_000, counts
    assert counts["at_overlap_edge"] > 3_000, counts


def test_the_rules_agree_with_the_official_scorer_on_10k_random_detection_sets(scorer, metadata):
    """The same check on a tenth of the sets (other draws), for the fast suite."""
    counts, by_tag, mismatches = agreement(scorer, metadata, CASES // 10, seed=10)
    assert not mismatches, f"{len(mismatches)} of {counts['cases']} differ, e.g. {mismatches[0]}"
    assert all(v > 1_000 for v in by_tag.values()) and 0.1 < counts["correct"] / counts["cases"] < 0.9, counts


def boundary_pairs(rng, n: int, margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(n, 5) box pairs (a, b) in whole and half pixels with a's centre offset from b's along one axis by
    exactly 2 x margin x the summed sizes (the shrunk offset is then half the offset: the 0.5 edge) or by
    margin x the summed sizes + a hair (the 1e-3 edge), and by 0 or a whole number along the other axis."""
    size_b, size_a = rng.integers(1, 200, (n, 2)), rng.integers(1, 200, (n, 2))
    size_a[:, 0] += (-(size_a[:, 0] + size_b[:, 0])) % 5  # summed widths and heights multiples of 5:
    size_a[:, 1] += (-(size_a[:, 1] + size_b[:, 1])) % 5  # 0.2 x the sum is a whole number
    centre_b = rng.integers(0, 512, (n, 2)).astype(np.float64)
    axis = rng.integers(0, 2, n)
    summed = (size_a + size_b)[np.arange(n), axis]
    along = np.where(rng.random(n) < 0.6, 2 * margin * summed,
                     margin * summed + rng.choice([5e-4, 1e-3, 2e-3, -1e-3, 0.0], n))
    along *= rng.choice([-1.0, 1.0], n)
    across = np.where(rng.random(n) < 0.6, 0.0, rng.integers(-60, 61, n))
    offset = np.where(axis[:, None] == 0, np.stack([along, across], 1), np.stack([across, along], 1))
    centre_a = centre_b + offset
    a = np.concatenate([centre_a - size_a / 2, centre_a + size_a / 2, np.ones((n, 1))], 1).astype(np.float32)
    b = np.concatenate([centre_b - size_b / 2, centre_b + size_b / 2, np.ones((n, 1))], 1).astype(np.float32)
    return a, b


def test_relative_position_agrees_on_50k_box_pairs_with_offsets_at_the_margin(scorer):
    rng = np.random.default_rng(2)
    half = PAIRS // 2
    boxes = random_boxes(rng, half + 1, rng.random(half + 1) < 0.5)  # a quarter beside the box before, near the margin
    boxes = np.concatenate([boxes, rng.random((half + 1, 1)).astype(np.float32)], 1)
    edge_a, edge_b = boundary_pairs(rng, PAIRS - half)
    a, b = np.concatenate([boxes[1:], edge_a]), np.concatenate([boxes[:-1], edge_b])
    margins = np.concatenate([np.where(rng.random(half) < 0.8, 0.1, rng.choice([0.0, 0.05, 0.3], half)),
                              np.full(PAIRS - half, 0.1)])
    seen, differ = {}, []
    for box_a, box_b, margin in zip(a, b, margins.tolist()):
        scorer.POSITION_THRESHOLD = margin
        theirs = scorer.relative_position((box_a, None), (box_b, None))
        ours = relations(box_a, box_b, margin)
        if set(ours) != theirs or len(ours) != len(theirs):
            differ.append((box_a, box_b, margin, ours, theirs))
        seen[tuple(ours)] = seen.get(tuple(ours), 0) + 1
    assert not differ, f"{len(differ)} of {PAIRS} differ, e.g. {differ[0]}"
    assert seen.get((), 0) > 2_500 and sum(v for k, v in seen.items() if len(k) == 2) > 2_500, seen
    assert all(any(r in k for k in seen) for r in RELATIONS)


def test_compute_iou_agrees_on_50k_box_pairs(scorer):
    rng = np.random.default_rng(3)
    boxes = np.concatenate([random_boxes(rng, PAIRS + 1, rng.random(PAIRS + 1) < 0.5),
                            np.ones((PAIRS + 1, 1), np.float32)], 1)
    boxes[rng.random(PAIRS + 1) < 0.02, 2] -= 400  # some degenerate boxes (x2 < x1)
    theirs = np.array([scorer.compute_iou(boxes[i], boxes[i + 1]) for i in range(PAIRS)], dtype=np.float32)
    ours = np.concatenate([np.diagonal(pairwise_overlaps(boxes[i:i + 500], boxes[i + 1:i + 501]))
                           for i in range(0, PAIRS, 500)])
    assert np.array_equal(ours, theirs)
    anchor = boxes[0]
    assert np.array_equal(box_overlaps(anchor, boxes[1:1001]),
                          np.array([scorer.compute_iou(anchor, box) for box in boxes[1:1001]], dtype=np.float32))
    assert (theirs > 0).sum() > 15_000 and (theirs == 0).sum() > 2_500


def test_reasons_name_relations_in_a_fixed_order():
    meta = {"tag": "position", "prompt": "a photo of a dog right of a cat",
            "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}]}
    cat = np.float32([200, 200, 260, 260, 0.9])
    dog = np.float32([10, 10, 60, 60, 0.9])  # up and to the left
    detected = {"cat": [(cat, None)], "dog": [(dog, None)]}
    assert judge(meta, detected, lambda *a: []) == (False, "expected dog right of target, found left of and above "
                                                           "target")
