"""Tiny random stand-ins for GenEval's two models, built from configs and saved the way real weights are
saved, so that tests and benchmarks load them by path through the evaluator's own loaders: a Mask2Former
with a tiny Swin backbone and the 80 COCO labels (save_pretrained), and a tiny open_clip model
(open_clip_config.json + open_clip_model.safetensors, loaded as local-dir:FOLDER). Their outputs are
meaningless; `favour` makes the detector's queries pick among a few classes with high confidence, so that
the colour and position rules are reached."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from eval.geneval.prompts import CLASSES


def save_tiny_detector(path: str | Path, seed: int = 0, favour: Sequence[str] = (), num_queries: int = 16) -> Path:
    """A Mask2Former with a tiny Swin backbone and the 80 COCO labels (save_pretrained). With `favour`, the
    class head is set so that query i names favour[i % len(favour)] with probability ~0.999 (fitted on the
    queries' states for a probe image, which barely move with the image at this size)."""
    import numpy as np
    from PIL import Image
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    from eval.geneval.detector import preprocess

    torch.manual_seed(seed)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=3, num_attention_heads=2,
                               dim_feedforward=32, num_queries=num_queries,
                               id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    model = Mask2FormerForUniversalSegmentation(config).eval()
    if favour:
        probe = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8))
        states = []
        hook = model.class_predictor.register_forward_hook(lambda module, args, out: states.append(args[0][0]))
        with torch.no_grad():
            model(pixel_values=preprocess(probe)[0])
        hook.remove()
        target = torch.zeros(num_queries, len(CLASSES) + 1)
        for query in range(num_queries):
            target[query, CLASSES.index(favour[query % len(favour)])] = 12.0
        with torch.no_grad():
            model.class_predictor.weight.copy_((torch.linalg.pinv(states[-1]) @ target).T)  # the last layer's
            model.class_predictor.bias.zero_()
    model.save_pretrained(path)
    return Path(path)


def tiny_clip_config() -> dict:
    return {"model_cfg": {"embed_dim": 16, "quick_gelu": True,
                          "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16,
                                         "mlp_ratio": 2.0},
                          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                       "layers": 1, "mlp_ratio": 2.0}},
            "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                               "interpolation": "bicubic", "resize_mode": "shortest"}}


def save_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """An open_clip folder: open_clip_config.json + open_clip_model.safetensors (load as local-dir:PATH)."""
    import open_clip
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = tiny_clip_config()
    torch.manual_seed(seed)
    model = open_clip.CLIP(**config["model_cfg"])
    (path / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path
