"""The colour classifier: CLIP zero-shot over GenEval's ten colours, with clip_benchmark's
`zero_shot_classifier` / `run_classification` (the functions the reference calls) and the reference's
three templates per object class. Each detected object is shown to CLIP as its bounding-box crop of the
image with everything outside its mask painted grey (#999), resized and centre-cropped by open_clip's
evaluation transform, 16 crops per batch.

The model is open_clip's ViT-L-14 with the `openai` weights by default (a pretrained tag already in the
cache, or a checkpoint file: $GENTRON_GENEVAL_CLIP_WEIGHTS), or any open_clip folder as `local-dir:FOLDER`
(its own weights). An open_clip model is never built without weights."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eval import weights
from eval.geneval.rules import COLORS, Detection

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"
WEIGHTS_ENV = "GENTRON_GENEVAL_CLIP_WEIGHTS"
BACKGROUND = "#999"
BATCH_SIZE = 16


def templates(classname: str) -> list[str]:
    """The three prompt templates for an object class; clip_benchmark fills {c} with each colour."""
    return [f"a photo of a {{c}} {classname}", f"a photo of a {{c}}-colored {classname}", "a photo of a {c} object"]


def clip_pretrained(model: str, pretrained: str | None = None) -> str | None:
    """The weights for the colour CLIP: `pretrained` when given; for a local-dir: folder its own (None); for
    the official ViT-L-14, $GENTRON_GENEVAL_CLIP_WEIGHTS (a checkpoint file of its openai weights) when set;
    otherwise the `openai` tag."""
    if pretrained is not None or model.startswith("local-dir:"):
        return pretrained
    if model == DEFAULT_MODEL and os.environ.get(WEIGHTS_ENV):
        return os.environ[WEIGHTS_ENV]
    return DEFAULT_PRETRAINED


def object_crop(image: Image.Image, box: np.ndarray, mask: np.ndarray | None, background: str = BACKGROUND,
                crop: bool = True) -> Image.Image:
    """The object as CLIP sees it: pixels outside its mask replaced by `background` (a colour, or
    'original' to keep them), then cropped to its box."""
    if mask is not None:
        if tuple(mask.shape) != (image.height, image.width):
            raise ValueError(f"mask of shape {tuple(mask.shape)} for an image of {image.width}x{image.height}")
        fill = image if background == "original" else Image.new("RGB", image.size, background)
        image = Image.fromarray(np.where(mask[..., None], np.asarray(image), np.asarray(fill)))
    return image.crop(tuple(box[:4])) if crop else image


class ColourClassifier:
    """Classifies detected objects into COLORS; loads CLIP on first use."""

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str | None = None, device: str = "cpu",
                 background: str = BACKGROUND, crop: bool = True, batch_size: int = BATCH_SIZE, amp: bool | None = None):
        self.model_name, self.pretrained = model, clip_pretrained(model, pretrained)
        self.device, self.background, self.crop, self.batch_size = device, background, crop, batch_size
        # clip_benchmark's autocast: on CUDA, as the reference runs (float16); off elsewhere unless asked (on a
        # CPU it would run in bfloat16, further from the reference than float32)
        self.amp = torch.device(device).type == "cuda" if amp is None else amp
        self.checkpoint = check_weights(self.model_name, self.pretrained)
        self._loaded = None
        self._classifiers: dict[str, torch.Tensor] = {}

    def _load(self):
        if self._loaded is None:
            import open_clip

            log.info("loading colour CLIP %s (%s)", self.model_name, self.pretrained)
            if self.model_name.startswith("local-dir:"):
                model, _, transform = open_clip.create_model_and_transforms(self.model_name)
                if self.checkpoint:
                    open_clip.load_checkpoint(model, self.checkpoint)
            else:
                model, _, transform = open_clip.create_model_and_transforms(self.model_name, pretrained=self.checkpoint)
            self._loaded = (model.eval().to(self.device), transform, open_clip.get_tokenizer(self.model_name))
        return self._loaded

    @contextlib.contextmanager
    def _quiet(self):
        """clip_benchmark with its progress bars off (as the reference sets them) on this classifier's GPU."""
        from clip_benchmark.metrics import zeroshot_classification as zsc

        bars, zsc.tqdm = zsc.tqdm, lambda items, *args, **kwargs: items
        device = torch.device(self.device)
        gpu = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        try:
            with gpu:
                yield zsc
        finally:
            zsc.tqdm = bars

    def classify(self, image: Image.Image, objects: Sequence[Detection], classname: str) -> list[str]:
        """One colour per object (the most probable of COLORS for its masked crop)."""
        if not objects:
            return []
        model, transform, tokenizer = self._load()
        device_type = torch.device(self.device).type
        with self._quiet() as zsc:
            if classname not in self._classifiers:
                self._classifiers[classname] = zsc.zero_shot_classifier(
                    model, tokenizer, list(COLORS), templates(classname), device_type, amp=self.amp)
            crops = [transform(object_crop(image, box, mask, self.background, self.crop)) for box, mask in objects]
            batches = [(torch.stack(crops[i:i + self.batch_size]), torch.zeros(len(crops[i:i + self.batch_size])))
                       for i in range(0, len(crops), self.batch_size)]
            logits, _ = zsc.run_classification(model, self._classifiers[classname], batches, device_type, amp=self.amp)
        return [COLORS[i] for i in logits.argmax(1).tolist()]

    def protocol(self) -> dict:
        from importlib.metadata import version

        return {"colour_model": self.model_name, "colour_pretrained": self.pretrained,
                "colour_checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "colour_templates": templates("{object}"), "colours": list(COLORS),
                "colour_classifier": f"clip_benchmark {version('clip_benchmark')} zero_shot_classifier + "
                                     f"run_classification, autocast {'on' if self.amp else 'off'}",
                "colour_crop": f"box crop {'on' if self.crop else 'off'}, outside the mask {self.background}",
                "colour_batch_size": self.batch_size}


def check_weights(model: str, pretrained: str | None) -> str | None:
    """The checkpoint open_clip should load (a cached file for a tag, a local file, or None for a
    local-dir: folder's own weights); FileNotFoundError / ValueError in one line naming the fix."""
    if model.startswith("local-dir:"):
        folder = Path(model.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"GenEval colour CLIP folder {folder}: no open_clip_config.json; give a folder "
                                    f"saved with open_clip's config and weights, or the default {DEFAULT_MODEL}")
        if pretrained is not None and not Path(pretrained).expanduser().is_file():
            raise ValueError(f"GenEval colour CLIP '{model}' brings its own weights; pretrained={pretrained!r} must "
                             f"be a checkpoint file or left out")
        return pretrained
    import open_clip

    if model not in open_clip.list_models():
        raise ValueError(f"GenEval colour CLIP '{model}' is not an open_clip model name (official: {DEFAULT_MODEL}); "
                         f"give one of open_clip.list_models() or local-dir:FOLDER")
    if pretrained is None:
        pretrained = DEFAULT_PRETRAINED
    try:
        return weights.open_clip_checkpoint(model, pretrained)
    except FileNotFoundError:
        cfg = open_clip.get_pretrained_cfg(model, pretrained)
        source = (cfg.get("hf_hub") or "").strip("/")
        fetch = f"`huggingface-cli download {source}`" if source else f"download {cfg.get('url')}"
        raise FileNotFoundError(
            f"GenEval colour CLIP {model} '{pretrained}' weights are not cached ({weights.hf_cache_dir()}): run "
            f"{fetch} on a machine with internet and copy the cache here, or set {WEIGHTS_ENV}=/path/to/checkpoint "
            f"(an open_clip checkpoint file of {model})") from None
