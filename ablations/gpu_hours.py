"""GPU-hours of a cell's stages: counted FLOPs over one calibrated rate.

Every stage's work is counted in FLOPs (a multiply-add is 2, as gentron.sizes counts):
- train: steps x batch x the model's step, 3 forwards (forward + backward; 4 with activation
  checkpointing, which recomputes the forward), plus with `data.encode=per_batch` the frozen text
  encoders on every caption and the VAE encoder on every image (every frame of a clip);
- encode: with `shards` (and `memory`) the text encoders and the VAE encoder once per image of the data
  set (`python -m gentron.data.encode`), a stage of its own; unknown (None) where the plan cannot count
  the data set (a WebDataset before its feature shards exist);
- sample: NFE x guided branches x images x the model's forward (gentron.generate.sampling_cost), plus
  the VAE decoder on every image and the text encoders once per image (an upper bound: a prompt's
  images share its encoding);
- evaluate: every image through the image towers of each metric's models (METRIC_MODELS; the text
  sides, the final aggregation and the judge's language model are not counted).

FLOPs become GPU-hours at one rate, calibrated on one named measurement:

    DiT's train.py, DiT-XL/2 at 256 px, global batch 256 on one node of 8 A100-80GB: 0.81 steps/s with
    TF32 matmuls and convolutions (0.51 steps/s without), as W. Peebles reports it in
    github.com/facebookresearch/DiT/issues/22 (2023-02-22; it is not in DiT's README).

That script runs, per image, the SD VAE encoder (it trains from pixels) and DiT-XL/2's forward and
backward: 25.92 images/s per A100 x (3 x 237.2 + the VAE encoder's FLOPs at 256 px) is the FLOP rate
an A100 reached there (`rate()`). The GPU-hours are therefore A100-hours at the efficiency of DiT's
TF32 script; bf16 autocast, torch.compile and an H100 change the rate, which `benchmarks/gpu_bench.py`
measures for this code (images/s and MFU of the trainer's real step).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from gentron.config import CellConfig

DIT_STEPS_PER_S, DIT_BATCH, DIT_GPUS = 0.81, 256, 8  # facebookresearch/DiT issue 22, TF32, 8 x A100-80GB
DIT_IMAGES_PER_GPU_S = DIT_STEPS_PER_S * DIT_BATCH / DIT_GPUS
SOURCE = ("DiT-XL/2 train.py at 0.81 steps/s, batch 256, 8 x A100-80GB, TF32 (github.com/facebookresearch/DiT/issues/22): "
          "the A100's FLOP rate there (DiT's forward+backward and SD-VAE encoder per image) applied to each stage's "
          "counted FLOPs, in A100-hours")
TRAIN_FORWARDS = 3  # a training sample: its forward and a backward of twice the cost
# The SD VAE (stabilityai/sd-vae-ft-ema), for VAEs named by hub id before their weights are here.
SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
          "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
          "up_block_types": ["UpDecoderBlock2D"] * 4}
# The T5 encoders of the paper profile, for hub ids before their weights are here (their config.json).
KNOWN_T5 = {"google/flan-t5-xxl": (4096, 64, 64, 10240, 24), "google/t5-v1_1-xxl": (4096, 64, 64, 10240, 24),
            "google/flan-t5-xl": (2048, 32, 64, 5120, 24)}  # d_model, heads, d_kv, d_ff, layers


# --- FLOPs of the parts -------------------------------------------------------------------------

def transformer_flops(tokens: int, width: int, layers: int, inner: int, ffn: int, gated: bool) -> int:
    """Forward FLOPs of a transformer encoder over `tokens`: per layer and token, the q/k/v/o
    projections (4 x width x inner), the MLP (2 or, gated, 3 matrices of width x ffn) and attention's
    two token-by-token products (2 x tokens x inner); 2 FLOPs per multiply-add."""
    per_token = 4 * width * inner + (3 if gated else 2) * width * ffn + 2 * tokens * inner
    return 2 * layers * tokens * per_token


def text_encoder_flops(spec, recipe: dict | None = None) -> int:
    """Forward FLOPs of one caption through a frozen text encoder (at its full token length)."""
    from gentron.specs import local_json

    kind = spec.kind
    if recipe is not None:  # a text encoder the grid trains (gentron.text.pretrain)
        clip = recipe.get("objective") == "clip_contrastive"
        width, layers = recipe["width"], recipe["layers"]
        return transformer_flops(spec.shape().tokens, width, layers, width, (4 if clip else 2) * width, not clip)
    if kind in ("t5", "tiny_t5"):
        if kind == "tiny_t5":
            d, heads, d_kv, d_ff, layers = spec.width, spec.heads, spec.width // spec.heads, 2 * spec.width, spec.layers
        else:
            c = local_json(spec.path, "config.json")
            d, heads, d_kv, d_ff, layers = ((c["d_model"], c["num_heads"], c["d_kv"], c["d_ff"], c["num_layers"]) if c
                                            else KNOWN_T5.get(spec.path, KNOWN_T5["google/flan-t5-xxl"]))
        return transformer_flops(spec.shape().tokens, d, layers, heads * d_kv, d_ff, True)
    if kind == "tiny_clip":
        return transformer_flops(77, spec.width, spec.layers, spec.width, 4 * spec.width, False)
    if kind == "hf_clip":
        c = local_json(spec.path, "config.json") or {}
        c = c.get("text_config", c)
        width = c.get("hidden_size", 768)
        return transformer_flops(spec.max_length, width, c.get("num_hidden_layers", 12), width,
                                 c.get("intermediate_size", 4 * width), False)
    text = _open_clip_text(spec.model)  # clip
    return transformer_flops(text.get("context_length", 77), text["width"], text["layers"], text["width"],
                             int(text.get("mlp_ratio", 4) * text["width"]), False)


def _open_clip_text(model: str) -> dict:
    from gentron.specs import local_json

    if model.startswith("local-dir:"):
        cfg = (local_json(model.removeprefix("local-dir:"), "open_clip_config.json") or {}).get("model_cfg")
    else:
        import open_clip

        cfg = None if model.startswith("hf-hub:") else open_clip.get_model_config(model)
    return (cfg or {}).get("text_cfg") or {"width": 768, "layers": 12, "context_length": 77}  # CLIP-L's


def vae_flops(vae, resolution: int, part: str = "encode") -> int:
    """FLOPs of one image through the VAE's encoder (`encode`) or decoder (`decode`) at `resolution`
    px: 0 in pixel space; else the diffusers AutoencoderKL of the folder's config.json (the SD VAE's
    layout for a hub id), counted on the meta device."""
    if vae.kind == "identity":
        return 0
    from gentron.specs import local_json

    config = local_json(vae.path, "config.json") or SD_VAE
    return _vae_flops(json.dumps({k: config[k] for k in SD_VAE if k in config}, sort_keys=True), resolution, part)


@functools.lru_cache(maxsize=32)
def _vae_flops(config: str, resolution: int, part: str) -> int:
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = AutoencoderKL(**json.loads(config))
        image = torch.empty(1, model.config.in_channels, resolution, resolution)
        with FlopCounterMode(display=False) as counter:
            if part == "encode":
                model.quant_conv(model.encoder(image))
            else:
                down = 2 ** (len(model.config.block_out_channels) - 1)
                latent = torch.empty(1, model.config.latent_channels, resolution // down, resolution // down)
                model.decoder(model.post_quant_conv(latent))
    return int(counter.get_total_flops())


def vit_flops(image: int, patch: int, width: int, layers: int) -> int:
    """Forward FLOPs of a ViT image tower (MLP 4x width, one class token)."""
    tokens = (image // patch) ** 2 + 1
    return transformer_flops(tokens, width, layers, width, 4 * width, False) + 2 * (image // patch) ** 2 * 3 * patch ** 2 * width


@functools.lru_cache(maxsize=1)
def inception_flops() -> int:
    """Inception-v3 at 299 px (FID's feature extractor), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models import inception_v3

    with torch.device("meta"):
        model = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 299, 299))
    return int(counter.get_total_flops())


# The image towers each metric runs on every sampled image (eval/): FID's Inception-v3; CLIP score's
# ViT-B/32; T2I-CompBench's BLIP-VQA (ViT-L/16 at 384 px), OWL-ViT B/32 detector (768 px) and CLIP
# ViT-B/32, all three counted for every image (an upper bound: each category uses some of them).
METRIC_MODELS = {
    "fid": lambda: inception_flops(),
    "clip_score": lambda: vit_flops(224, 32, 768, 12),
    "t2i_compbench": lambda: vit_flops(384, 16, 1024, 24) + vit_flops(768, 32, 768, 12) + vit_flops(224, 32, 768, 12),
}


@dataclass(frozen=True)
class ImageFlops:
    """FLOPs per training sample (image or clip): the model's step, the text encoders on its
    caption, the VAE encoder on its pixels."""
    train: int
    text: int
    vae: int


def image_flops(cfg: CellConfig, model_flops: int | None = None, recipes: list | None = None) -> ImageFlops:
    """ImageFlops of a cell; `model_flops` the model's forward per sample (default: counted from the
    config), `recipes` per text encoder the recipe of one the grid trains (or None)."""
    from gentron.config import encoder_shapes, resolve
    from gentron.sizes import count_flops

    frames = cfg.data.num_frames if cfg.data.video else 1
    if model_flops is None:
        model_flops = count_flops(resolve(cfg), tuple(e.tokens for e in encoder_shapes(cfg)), frames)
    forwards = TRAIN_FORWARDS + (1 if cfg.train.grad_checkpointing else 0)
    recipes = recipes or [None] * len(cfg.text_encoders)
    text = sum(text_encoder_flops(spec, recipe) for spec, recipe in zip(cfg.text_encoders, recipes))
    return ImageFlops(forwards * model_flops, text, frames * vae_flops(cfg.vae, cfg.data.resolution))


# --- the rate and the stages --------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def rate() -> float:
    """FLOPs per GPU-second: what an A100 reached in DiT's train.py (see the module docstring)."""
    from gentron import sizes
    from gentron.config import VAEConfig

    dit = sizes.count_flops(sizes.paper_config("XL/2", "adaln", "CLIP-L"), (77,), 1)
    vae = vae_flops(VAEConfig(kind="autoencoder_kl", path="stabilityai/sd-vae-ft-ema"), 256)
    return DIT_IMAGES_PER_GPU_S * (TRAIN_FORWARDS * dit + vae)


def hours(flops: float) -> float:
    return flops / rate() / 3600


def dataset_size(cfg: CellConfig) -> int | None:
    """Samples the encode stage encodes: CompShapes' num_train (x2 for video: images and clips), the
    feature shards' count once they exist, else None (a real data set the plan cannot count)."""
    from pathlib import Path

    d = cfg.data
    if d.kind == "compshapes":
        return d.num_train * (2 if d.video else 1)
    index = Path(d.features_dir or "") / "index.json"
    if d.features_dir and index.is_file():
        return sum(s["samples"] for s in json.loads(index.read_text(encoding="utf-8"))["shards"].values())
    return None


@dataclass(frozen=True)
class StageHours:
    """GPU-hours of a cell's stages (None: not countable here, see `dataset_size` and prompt sets)."""
    train: float
    encode: float | None
    sample: float | None
    evaluate: float | None

    def total(self) -> float:
        return self.train + sum(h for h in (self.encode, self.sample, self.evaluate) if h is not None)


def stage_hours(cfg: CellConfig, model_flops: int, images: int | None, recipes: list | None = None) -> StageHours:
    """The cell's GPU-hours per stage; `images` the samples its sample stage draws (None: unknown)."""
    from gentron.generate import sampling_cost

    parts = image_flops(cfg, model_flops, recipes)
    seen = cfg.train.steps * cfg.train.batch_size
    per_batch = cfg.data.encode == "per_batch"
    train = seen * (parts.train + (parts.text + parts.vae if per_batch else 0))
    size = None if per_batch else dataset_size(cfg)
    encode = 0.0 if per_batch else (None if size is None else hours(size * (parts.text + parts.vae)))
    if images is None:
        return StageHours(hours(train), encode, None, None)
    frames = cfg.data.num_frames if cfg.data.video else 1
    sample = sampling_cost(cfg, images).flops + images * (frames * vae_flops(cfg.vae, cfg.data.resolution, "decode")
                                                           + parts.text)
    evaluate = images * sum(METRIC_MODELS[m]() for m in cfg.eval.metrics if m in METRIC_MODELS)
    return StageHours(hours(train), encode, hours(sample), hours(evaluate))
