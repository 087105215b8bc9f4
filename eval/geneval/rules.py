"""GenEval's scoring rules as pure functions over detections: which detections count (confidence
threshold, per-class cap, optional greedy overlap suppression), the relative position of two boxes, and
the verdict on one image from its prompt's include/exclude clauses.

Detections are what the detector gives per COCO class: rows `[x1, y1, x2, y2, score]` (float32, pixels of
the image) with one mask each (bool, image-sized) or None. The arithmetic follows the reference exactly,
in the dtype of the boxes (float32 from the detector), so that results agree at the thresholds too
(docs/evaluators.md "GenEval": tested against the reference on random detection sets)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")

Detection = tuple[np.ndarray, "np.ndarray | None"]  # (box row [x1, y1, x2, y2, score], mask or None)
ColourFn = Callable[[str, Sequence[Detection]], list[str]]  # (class name, detections) -> one colour each


@dataclass(frozen=True)
class Settings:
    """Every setting of the rules (the reference's command-line options and defaults)."""
    threshold: float = 0.3            # detections must score above this ...
    counting_threshold: float = 0.9   # ... or above this in an image of a counting prompt
    max_objects: int = 16             # at most this many detections per class, the most confident
    max_overlap: float = 1.0          # greedy suppression of a box whose IoU with a kept one is >= this; 1: none
    position_threshold: float = 0.1   # margin, as a fraction of the two boxes' summed sizes, for a relation

    def check(self) -> Settings:
        for name in ("threshold", "counting_threshold", "max_overlap", "position_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"GenEval {name}={value!r} must be a number in [0, 1] (official: "
                                 f"{getattr(Settings, name)})")
        if not isinstance(self.max_objects, int) or isinstance(self.max_objects, bool) or self.max_objects < 1:
            raise ValueError(f"GenEval max_objects={self.max_objects!r} must be a whole number >= 1 (official: 16)")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def box_overlaps(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box with each of `others` in the pixel-inclusive convention (a box spans x2 - x1 + 1
    pixels), 0 where the union is empty; computed in the boxes' own dtype."""
    return pairwise_overlaps(box[None], others)[0]


def pairwise_overlaps(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(len(boxes), len(others)) IoUs, element by element the same arithmetic as `box_overlaps`."""
    a, b = boxes[:, None, :], others[None, :, :]
    area_a = np.maximum(a[..., 2] - a[..., 0] + 1, 0) * np.maximum(a[..., 3] - a[..., 1] + 1, 0)
    area_b = np.maximum(b[..., 2] - b[..., 0] + 1, 0) * np.maximum(b[..., 3] - b[..., 1] + 1, 0)
    inter = (np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0)
             * np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0))
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union != 0, inter / np.where(union != 0, union, 1), 0)


def select_objects(raw: Mapping[str, tuple[np.ndarray, Sequence | None]], tag: str,
                   settings: Settings = Settings()) -> dict[str, list[Detection]]:
    """The detections that count, per class, most confident first: above the (counting) threshold, at
    most `max_objects`, then greedily dropping any box overlapping a kept one by IoU >= max_overlap
    (never at max_overlap 1). Classes left without a detection are absent."""
    threshold = settings.counting_threshold if tag == "counting" else settings.threshold
    selected: dict[str, list[Detection]] = {}
    for name, (boxes, masks) in raw.items():
        if len(boxes) == 0:
            continue
        scores = boxes[:, 4]
        order = np.argsort(scores)[::-1]  # numpy's default sort, reversed: ties broken as the reference does
        order = order[scores[order] > threshold][:settings.max_objects].tolist()
        if settings.max_overlap != 1 and len(order) > 1:
            ranked = boxes[order]
            apart = (pairwise_overlaps(ranked, ranked) < settings.max_overlap).tolist()
            alive, kept = [True] * len(order), []
            for j in range(len(order)):
                if alive[j]:
                    kept.append(order[j])
                    alive = [alive[k] and (k <= j or apart[j][k]) for k in range(len(order))]
            order = kept
        if order:
            selected[name] = [(boxes[i], None if masks is None else masks[i]) for i in order]
    return selected


def relations(box_a: np.ndarray, box_b: np.ndarray, margin: float = Settings.position_threshold) -> list[str]:
    """Where box A lies relative to box B, in RELATIONS order. The centre offset is shrunk on each axis by
    `margin` times the two boxes' summed extents on that axis (never past 0); a relation holds when the
    shrunk offset along it exceeds half the length of the full offset. Boxes too close give none."""
    pair = np.array([box_a[:4], box_b[:4]])
    centres = (pair[:, :2] + pair[:, 2:]) / 2
    sizes = np.abs(pair[:, 2:] - pair[:, :2])
    offset = centres[0] - centres[1]
    shrunk = np.maximum(np.abs(offset) - margin * (sizes[0] + sizes[1]), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return []
    dx, dy = shrunk / np.linalg.norm(offset)
    return [name for name, holds in zip(RELATIONS, (dx < -0.5, dx > 0.5, dy < -0.5, dy > 0.5)) if holds]


def _position_failure(objects: Sequence[Detection], targets: Sequence[Detection], relation: str,
                      margin: float) -> list[str] | None:
    """The relations found for the first (object, target) pair lacking `relation`, or None if every pair has it."""
    for box, _ in objects:
        for target, _ in targets:
            found = relations(box, target, margin)
            if relation not in found:
                return found
    return None


def judge(metadata: Mapping, detected: Mapping[str, Sequence[Detection]], colours: ColourFn,
          margin: float = Settings.position_threshold) -> tuple[bool, str]:
    """(correct, reason) for one image. Include clauses all must hold: at least `count` detections of the
    class; with a colour, that many of its `count` most confident detections classified that colour; with
    a position, each of them in the relation to each detection matched by the target clause (which must
    itself hold). Exclude clauses: fewer than `count` detections. The reason lists every failed clause,
    one per line, in the reference's wording."""
    correct, reasons, matched = True, [], []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        found = list(detected.get(name, []))[:count]
        holds = len(found) >= count
        if not holds:
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in clause:
                wanted, seen = clause["color"], colours(name, found)
                if seen.count(wanted) < count:
                    holds = False
                    tally = ", ".join(f"{seen.count(c)} {c}" for c in COLORS if c in seen)
                    reasons.append(f"expected {wanted} {name}>={count}, found {seen.count(wanted)} {wanted}; and {tally}")
            if holds and "position" in clause:
                relation, target = clause["position"]
                if matched[target] is None:
                    holds = False
                    reasons.append(f"no target for {name} to be {relation}")
                elif (failure := _position_failure(found, matched[target], relation, margin)) is not None:
                    holds = False
                    reasons.append(f"expected {name} {relation} target, found {' and '.join(failure)} target")
        correct = correct and holds
        matched.append(found if holds else None)
    for clause in metadata.get("exclude", []):
        present = len(detected.get(clause["class"], []))
        if present >= clause["count"]:
            correct = False
            reasons.append(f"expected {clause['class']}<{clause['count']}, found {present}")
    return correct, "\n".join(reasons)
