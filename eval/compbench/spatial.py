"""2D spatial relations: the reference code's scoring rules as pure functions, and a transformers
zero-shot detector (OWL-ViT / OWLv2) in place of UniDet, which needs detectron2 (a documented deviation:
the detector, its vocabulary and its confidence calibration differ, so the numbers are not the paper's)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from PIL import Image

from eval import weights
from eval.compbench.questions import spatial_objects, spatial_relation

log = logging.getLogger(__name__)

DISTANCE_THRESHOLD = 150  # pixels, in the resized image
IOU_THRESHOLD = 0.1
CONFIDENCE = 0.5
SHORT_SIDE, MAX_SIZE = 479, 480  # detectron2 ResizeShortestEdge as the UniDet config uses it


@dataclass
class Detection:
    confidence: float
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def position_score(relation: str | None, box1, box2, iou_threshold: float = IOU_THRESHOLD,
                   distance_threshold: float = DISTANCE_THRESHOLD) -> float:
    """How well box1 (first object) stands in `relation` to box2 (second object), in [0, 1]."""
    c1 = ((box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2)
    c2 = ((box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2)
    dx, dy = c2[0] - c1[0], c2[1] - c1[1]
    if relation in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    sign_ok, along, across = {"on the left of": (dx > 0, dx, dy), "on the right of": (dx < 0, dx, dy),
                              "on the top of": (dy > 0, dy, dx), "on the bottom of": (dy < 0, dy, dx)
                              }.get(relation, (False, 0, 0))
    if not sign_ok or abs(along) <= abs(across):
        return 0.0
    overlap = iou(box1, box2)
    return 1.0 if overlap < iou_threshold else iou_threshold / overlap


def image_score(relation: str | None, first: Detection | None, second: Detection | None) -> float:
    """0.25*conf1 + 0.25*conf2 + position/2 with both objects, 0.25*conf with one, 0 with none; < 0.5 -> 0."""
    if first is not None and second is not None:
        score = 0.25 * first.confidence + 0.25 * second.confidence + position_score(relation, first.box, second.box) / 2
    elif first is not None or second is not None:
        score = 0.25 * (first or second).confidence
    else:
        score = 0.0
    return score if score >= 0.5 else 0.0


def resize_for_detection(image: Image.Image) -> Image.Image:
    """Short side to 479 unless the long side would pass 480 (then long side 480), bilinear."""
    width, height = image.size
    scale = SHORT_SIDE / min(width, height)
    if max(width, height) * scale > MAX_SIZE:
        scale = MAX_SIZE / max(width, height)
    return image.resize((int(width * scale + 0.5), int(height * scale + 0.5)), Image.BILINEAR)


class Detector:
    """A transformers zero-shot detector queried with the two object names."""

    def __init__(self, path: str = weights.OWLVIT, device: str = "cpu", confidence: float = CONFIDENCE):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        if not 0.0 <= confidence <= 1.0:  # also NaN
            raise ValueError(f"--detector-confidence {confidence} is not a probability; give a number in [0, 1] "
                             f"(official: {CONFIDENCE})")
        folder = weights.hf_model_path(path, "zero-shot object detector (--detector)")
        log.info("loading detector from %s", folder)
        self.processor = AutoProcessor.from_pretrained(folder)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval().to(device)
        if not hasattr(self.processor, "post_process_grounded_object_detection") or "Owl" not in type(self.model).__name__:
            raise ValueError(f"{path}: only OWL-ViT / OWLv2 detectors are wired in (got {type(self.model).__name__})")
        self.device, self.confidence, self.path = device, confidence, str(path)

    @torch.no_grad()
    def first_detections(self, image: Image.Image, labels: tuple[str, str]) -> list[Detection | None]:
        """The most confident detection (>= confidence) of each label, in resized-image pixels."""
        inputs = self.processor(text=[list(labels)], images=image, padding=True, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        found = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.confidence, target_sizes=[(image.height, image.width)], text_labels=[list(labels)])[0]
        best: list[Detection | None] = [None, None]
        for score, box, label in zip(found["scores"].tolist(), found["boxes"].tolist(), found["labels"].tolist()):
            for slot in (0, 1):
                # Both slots take a box of the same label when the two object names are equal.
                if labels[slot] == labels[label] and (best[slot] is None or score > best[slot].confidence):
                    best[slot] = Detection(score, tuple(box))
        return best

    def score(self, image: Image.Image, prompt: str, around_relation: bool = False) -> float:
        objects = spatial_objects(prompt, around_relation)
        if objects is None:
            return 0.0
        first, second = self.first_detections(resize_for_detection(image), objects)
        return image_score(spatial_relation(prompt), first, second)

    def protocol(self) -> dict:
        return {"detector": self.path, "detector_confidence": self.confidence,
                "detector_resize": f"short side {SHORT_SIDE}, max {MAX_SIZE}, bilinear",
                "spatial_rules": f"distance {DISTANCE_THRESHOLD}px, IoU {IOU_THRESHOLD}, 0.25*conf terms, <0.5 -> 0",
                "detector_deviation": "UniDet (detectron2) replaced by a transformers zero-shot detector"}
