"""The feature extractors of VBench's model-based dimensions, loaded without a network, and the input
transforms VBench gives them (torchvision transforms with the official settings).

- subject consistency: DINO ViT-B/16 as a transformers ViTModel (facebook/dino-vitb16, the weights VBench
  loads through torch hub); the feature is the final-norm CLS token, as the hub model returns. Frames are
  resized so their short side is 224 (bilinear, no centre crop; VBench's dino_transform), so the position
  embeddings are interpolated for non-square frames.
- background consistency: CLIP ViT-B/32 as a transformers CLIPModel (openai/clip-vit-base-patch32, the
  weights of OpenAI's ViT-B/32); the feature is the projected image embedding (clip's encode_image). Frames
  are resized (bicubic) and centre-cropped to 224.
- dynamic degree: torchvision's RAFT (raft_large; Raft_Large_Weights.C_T_V1 are the original raft-things
  weights VBench loads), 20 flow updates, inputs scaled as the original RAFT scales them (2 * x / 255 - 1).

Each is named by a local folder (file for RAFT) or a name whose weights are cached; the defaults come from
$GENTRON_DINO_VITB16, $GENTRON_CLIP_B32 and $GENTRON_RAFT. A missing model is refused in one line with the
fix (eval/weights.py). Frames go in at VBench's 224 pixels whatever the model's native size (position
embeddings interpolated), so tiny test models see what the real ones see."""
from __future__ import annotations

import logging
import os

import torch
from torchvision import transforms as T

from eval import weights

log = logging.getLogger(__name__)

DINO_ENV, CLIP_ENV, RAFT_ENV = "GENTRON_DINO_VITB16", "GENTRON_CLIP_B32", "GENTRON_RAFT"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
BICUBIC = T.InterpolationMode.BICUBIC
SIZE = 224  # VBench's input size for DINO (short side) and CLIP (crop)


def dino_name(name: str | None = None) -> str:
    return name or os.environ.get(DINO_ENV) or weights.DINO_VITB16


def clip_name(name: str | None = None) -> str:
    return name or os.environ.get(CLIP_ENV) or weights.CLIP_B32


def raft_name(name: str | None = None) -> str:
    return name or os.environ.get(RAFT_ENV) or weights.RAFT_C_T


def _uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(255.0)


class DinoFeatures:
    """DINO CLS features of frames, and VBench's transforms for video tensors and frame images."""

    def __init__(self, name: str | None = None, device: str = "cpu", size: int = SIZE):
        from transformers import ViTModel

        self.name, self.device = dino_name(name), device
        path = weights.hf_model_path(self.name, "DINO ViT-B/16 (subject consistency)")
        log.info("loading DINO %s", path)
        self.model = ViTModel.from_pretrained(path, add_pooling_layer=False).eval().to(device)
        config = self.model.config
        self.n_px = size
        self.video_transform = T.Compose([T.Resize(size=self.n_px, antialias=False), T.Lambda(_uint8_to_unit),
                                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.image_transform = T.Compose([T.Resize(size=self.n_px), T.ToTensor(),  # PIL: always antialiased
                                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.official_size = (config.hidden_size, config.patch_size, config.num_hidden_layers, config.image_size,
                              size) == (768, 16, 12, 224, SIZE)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) transformed frames -> (B, D) features."""
        out = self.model(pixel_values=image.to(self.device), interpolate_pos_encoding=True)
        return out.last_hidden_state[:, 0]

    def clip_features(self, frames) -> torch.Tensor:
        """(T, D) features of a (T, 3, H, W) video tensor of values 0..255 or a list of PIL frames, one frame at a time."""
        images = self.video_transform(frames) if isinstance(frames, torch.Tensor) else \
            [self.image_transform(im) for im in frames]
        return torch.cat([self(image.unsqueeze(0)) for image in images])

    def protocol(self) -> dict:
        return {"model": self.name, "feature": "final-norm CLS token (transformers ViTModel)",
                "transform": f"Resize short side {self.n_px} (bilinear, antialias=False on tensors), no crop, "
                             f"ImageNet normalisation", "official_size": self.official_size}


class ClipFeatures:
    """CLIP image embeddings of frames, and VBench's transforms for video tensors and frame images."""

    def __init__(self, name: str | None = None, device: str = "cpu", size: int = SIZE):
        from transformers import CLIPModel

        self.name, self.device = clip_name(name), device
        path = weights.hf_model_path(self.name, "CLIP ViT-B/32 (background consistency)")
        log.info("loading CLIP %s", path)
        self.model = CLIPModel.from_pretrained(path).eval().to(device)
        vision = self.model.config.vision_config
        self.n_px = size
        self.interpolate = size != vision.image_size
        self.video_transform = T.Compose([T.Resize(self.n_px, interpolation=BICUBIC, antialias=False),
                                          T.CenterCrop(self.n_px), T.Lambda(_uint8_to_unit),
                                          T.Normalize(CLIP_MEAN, CLIP_STD)])
        self.image_transform = T.Compose([T.Resize(self.n_px, interpolation=BICUBIC), T.CenterCrop(self.n_px),
                                          T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
        self.official_size = (vision.hidden_size, vision.patch_size, vision.num_hidden_layers, vision.image_size, size,
                              self.model.config.projection_dim) == (768, 32, 12, 224, SIZE, 512)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, n, n) transformed frames -> (B, D) projected embeddings (clip's encode_image)."""
        out = self.model.get_image_features(pixel_values=images.to(self.device),
                                            interpolate_pos_encoding=self.interpolate)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def clip_features(self, frames) -> torch.Tensor:
        images = self.video_transform(frames) if isinstance(frames, torch.Tensor) else \
            torch.stack([self.image_transform(im) for im in frames])
        return self.encode_image(images)

    def protocol(self) -> dict:
        return {"model": self.name, "feature": "projected image embedding (transformers CLIPModel, float32)",
                "transform": f"Resize {self.n_px} (bicubic, antialias=False on tensors), CentreCrop {self.n_px}, "
                             f"CLIP normalisation", "official_size": self.official_size}


class RaftFlow:
    """torchvision RAFT: the flow of RAFT's last update between two frames given in [0, 255]."""

    def __init__(self, name: str | None = None, device: str = "cpu", iters: int = 20):
        from torchvision.models.optical_flow import raft_large, raft_small

        self.name, self.device, self.iters = raft_name(name), device, iters
        path = weights.raft_checkpoint(self.name)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several types for a file that is no state dict
            raise ValueError(f"RAFT weights {path} are not a readable state dict ({type(e).__name__}); give "
                             f"torchvision's raft_large weights (.pth)") from e
        state = {k.removeprefix("module."): v for k, v in state.items()} if isinstance(state, dict) else state
        for self.architecture, build in (("raft_large", raft_large), ("raft_small", raft_small)):
            model = build(weights=None)
            try:
                model.load_state_dict(state)
                break
            except (RuntimeError, TypeError, AttributeError):
                continue
        else:
            raise ValueError(f"RAFT weights {path} fit neither torchvision's raft_large nor raft_small (the original "
                             f"RAFT repository's raft-things.pth has other names: use torchvision's "
                             f"Raft_Large_Weights.C_T_V1, the same weights ported)")
        log.info("loaded %s from %s", self.architecture, path)
        self.model = model.eval().to(device)

    @torch.no_grad()
    def __call__(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        scale = lambda x: 2 * (x.to(self.device) / 255.0) - 1.0  # noqa: E731 - the original RAFT's input scaling
        return self.model(scale(image1), scale(image2), num_flow_updates=self.iters)[-1]

    def protocol(self) -> dict:
        return {"model": self.name, "architecture": f"torchvision {self.architecture}", "flow_updates": self.iters,
                "official_size": self.architecture == "raft_large"}


def save_tiny_dino(path, seed: int = 0):
    """A tiny random ViT saved like facebook/dino-vitb16 (save_pretrained), for tests."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    return path


def save_tiny_raft(path, seed: int = 0):
    """torchvision's raft_small with random weights, saved as a state dict, for tests."""
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(seed)
    torch.save(raft_small(weights=None).state_dict(), path)
    return path


def save_tiny_models(root) -> dict[str, str]:
    """Tiny random DINO, CLIP and RAFT under `root`, as the environment variables that point the evaluator
    (and the grids' `vbench` metric) at them: {GENTRON_DINO_VITB16, GENTRON_CLIP_B32, GENTRON_RAFT}."""
    from pathlib import Path

    from eval.tiny_models import save_tiny_clip

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return {DINO_ENV: str(save_tiny_dino(root / "dino")), CLIP_ENV: str(save_tiny_clip(root / "clip")),
            RAFT_ENV: str(save_tiny_raft(root / "raft.pth"))}
