"""The object detector: Mask2Former with a Swin-S backbone trained for COCO instance segmentation, the
architecture of GenEval's mmdetection model, run through transformers (`Mask2FormerForUniversalSegmentation`,
e.g. facebook/mask2former-swin-small-coco-instance, or a local folder) with mmdetection's test-time
pipeline and instance post-processing written out here:

- input: resized keeping its aspect ratio to fit 1333 x 800 (short side 800 unless the long side would
  pass 1333; size rounded as mmcv rounds it), bilinear, rounded back to 8-bit as OpenCV returns it,
  normalised with mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375), zero-padded at the
  bottom and right to a multiple of 32;
- output: class probabilities (softmax without the no-object class) of every query for every class, the
  100 best (query, class) pairs, each query's mask logits upsampled (bilinear) to the padded input, cropped
  to the image, upsampled to the original size and thresholded at 0; score = class probability x mean
  sigmoid inside the mask; box = the mask's bounding box ([first, last + 1] pixel on each axis, zeros for
  an empty mask).

Detections come back per class name (GenEval's names, by label index) as float32 rows
`[x1, y1, x2, y2, score]` with their boolean masks, as mmdetection's `inference_detector` returns them."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from eval import weights
from eval.geneval.prompts import CLASSES

log = logging.getLogger(__name__)

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DETECTOR_ENV = "GENTRON_GENEVAL_DETECTOR"
SCALE = (1333, 800)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32
MAX_PER_IMAGE = 100


def detector_name(detector: str | None = None) -> str:
    """The detector to load: the argument, else $GENTRON_GENEVAL_DETECTOR, else the default hub name."""
    return detector or os.environ.get(DETECTOR_ENV) or DEFAULT_DETECTOR


def detector_folder(detector: str) -> os.PathLike:
    """A local folder of the detector's weights, or FileNotFoundError in one line naming the fix."""
    try:
        return weights.hf_model_path(detector, "GenEval detector")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"GenEval detector '{detector}' (Mask2Former Swin-S, COCO instance segmentation) is neither a local folder "
            f"nor in the Hugging Face cache ({weights.hf_cache_dir()}): run `huggingface-cli download {detector}` "
            f"on a machine with internet and copy the cache here, or set {DETECTOR_ENV}=/path/to/a/saved/model "
            f"(or pass --detector)") from None


def resized_shape(width: int, height: int) -> tuple[int, int]:
    """(width, height) after the keep-ratio resize into 1333 x 800, rounded as mmcv rounds."""
    factor = min(max(SCALE) / max(width, height), min(SCALE) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def preprocess(image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 3, H', W') network input (padded to a multiple of 32) and the resized (height, width)."""
    width, height = resized_shape(*image.size)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    pixels = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    pixels = pixels.round().clamp(0, 255)
    mean, std = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    pixels = (pixels - mean) / std
    pad_h, pad_w = (-height) % SIZE_DIVISOR, (-width) % SIZE_DIVISOR
    return F.pad(pixels, (0, pad_w, 0, pad_h)), (height, width)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) float32 boxes [x1, y1, x2 + 1, y2 + 1] around each (N, H, W) boolean mask; zeros if empty."""
    n, height, width = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    cols, rows = masks.any(dim=1), masks.any(dim=2)
    x1 = cols.int().argmax(dim=1)
    x2 = width - cols.flip(1).int().argmax(dim=1)
    y1 = rows.int().argmax(dim=1)
    y2 = height - rows.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where((cols.any(dim=1) & rows.any(dim=1))[:, None], boxes, torch.zeros_like(boxes))


def instances(class_logits: torch.Tensor, mask_logits: torch.Tensor, input_hw: tuple[int, int],
              resized_hw: tuple[int, int], original_hw: tuple[int, int], max_per_image: int = MAX_PER_IMAGE,
              min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, float32 rows [x1, y1, x2, y2, score], bool masks) of one image from its queries'
    (Q, C + 1) class logits and (Q, h, w) mask logits; rows scoring <= min_score are dropped at the end
    (no rule keeps them) to spare memory."""
    masks = F.interpolate(mask_logits[None], size=input_hw, mode="bilinear", align_corners=False)[0]
    masks = masks[:, :resized_hw[0], :resized_hw[1]]
    masks = F.interpolate(masks[None], size=original_hw, mode="bilinear", align_corners=False)[0]
    probs = class_logits.softmax(dim=-1)[:, :-1]
    num_classes = probs.shape[1]
    top, index = probs.flatten().topk(min(max_per_image, probs.numel()), sorted=True)
    labels, queries = index % num_classes, index // num_classes
    chosen = masks[queries]
    binary = (chosen > 0).float()
    mask_scores = (chosen.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores = top * mask_scores
    binary = binary.bool()
    rows = torch.cat([mask_boxes(binary), scores[:, None]], dim=1)
    keep = scores > min_score
    return labels[keep].cpu().numpy(), rows[keep].cpu().numpy().astype(np.float32), binary[keep].cpu().numpy()


class Detector:
    """Mask2Former instance segmentation, loaded from a folder or a cached hub name."""

    def __init__(self, detector: str | None = None, device: str = "cpu", min_score: float = 0.0):
        from transformers import Mask2FormerForUniversalSegmentation

        self.name = detector_name(detector)
        folder = detector_folder(self.name)
        log.info("loading GenEval detector %s from %s", self.name, folder)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(folder).eval().to(device)
        config = self.model.config
        if config.num_labels != len(CLASSES):
            raise ValueError(f"GenEval detector '{self.name}' has {config.num_labels} classes; GenEval needs a COCO "
                             f"instance-segmentation model with the 80 COCO classes (e.g. {DEFAULT_DETECTOR})")
        self.label_names = [str(config.id2label.get(i, "")) for i in range(config.num_labels)]
        self.device, self.min_score = device, min_score

    @torch.no_grad()
    def detect(self, image: Image.Image) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{class name: (float32 rows [x1, y1, x2, y2, score], bool masks (N, H, W))} in class order,
        every class present (empty arrays for classes without a detection)."""
        pixels, resized = preprocess(image)
        out = self.model(pixel_values=pixels.to(self.device))
        labels, rows, masks = instances(out.class_queries_logits[0].float(), out.masks_queries_logits[0].float(),
                                        tuple(pixels.shape[-2:]), resized, (image.height, image.width),
                                        min_score=self.min_score)
        return {name: (rows[labels == i], masks[labels == i]) for i, name in enumerate(CLASSES)}

    def protocol(self) -> dict:
        renamed = {i: [ours, theirs] for i, (ours, theirs) in enumerate(zip(CLASSES, self.label_names))
                   if theirs and ours != theirs}
        return {"detector": self.name, "detector_backend": "transformers Mask2FormerForUniversalSegmentation",
                "detector_backbone": getattr(self.model.config.backbone_config, "model_type", None),
                "detector_input": f"keep-ratio resize into {SCALE[0]}x{SCALE[1]} (bilinear, rounded to 8 bit), "
                                  f"mean {list(PIXEL_MEAN)}, std {list(PIXEL_STD)}, zero pad to /{SIZE_DIVISOR}",
                "detector_postprocess": f"mmdetection instance post-processing: top {MAX_PER_IMAGE} (query, class) "
                                        "pairs, score = class prob x mean mask prob, box = mask bounds",
                "detector_label_names_renamed": renamed}
