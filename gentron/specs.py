"""Text-encoder specs: what each kind of frozen text encoder takes (small frozen dataclasses keyed by
`kind`, validated by gentron.schema as part of a cell config) and its shape, known without loading
weights: from a local folder's config, or the paper encoders' known widths. gentron.text builds them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from gentron import schema
from gentron.errors import ConfigError
from gentron.schema import TaggedUnion, required

Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class EncoderShape:
    """What the model needs of a text encoder: token width, pooled width, tokens per prompt."""
    width: int
    pooled_width: int
    tokens: int


# Widths of the paper's encoders, for shapes asked for before their weights are downloaded.
KNOWN_T5_WIDTHS = {"google/flan-t5-xxl": 4096, "google/t5-v1_1-xxl": 4096, "google/flan-t5-xl": 2048}
CLIP_L = EncoderShape(768, 768, 77)


def local_json(folder: str | None, name: str) -> dict | None:
    path = Path(folder or "").expanduser() / name
    return json.loads(path.read_text(encoding="utf-8")) if folder and path.is_file() else None


@dataclass(frozen=True)
class ClipSpec:
    """An open_clip CLIP text tower: a model name with a pretrained tag or checkpoint file, or an
    open_clip folder (`model: local-dir:<folder>`, `pretrained: null`). CLIP-L: ViT-L-14 / openai."""
    kind: Literal["clip"] = "clip"
    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    dtype: Dtype = "float32"

    def shape(self) -> EncoderShape:
        if self.model.startswith("local-dir:"):
            cfg = (local_json(self.model.removeprefix("local-dir:"), "open_clip_config.json") or {}).get("model_cfg")
        elif self.model.startswith("hf-hub:"):
            cfg = None
        else:
            import open_clip

            cfg = open_clip.get_model_config(self.model)
        if not cfg:  # a folder not there yet (preflight names it): CLIP-L's
            return CLIP_L
        text = cfg["text_cfg"]
        return EncoderShape(text["width"], cfg["embed_dim"], text.get("context_length", 77))


@dataclass(frozen=True)
class HFClipSpec:
    """A transformers CLIP text model (folder or hub name), with its projection if it has one."""
    kind: Literal["hf_clip"] = "hf_clip"
    path: str = required("openai/clip-vit-large-patch14")
    tokenizer: str | None = None
    max_length: int = 77
    dtype: Dtype = "float32"

    def shape(self) -> EncoderShape:
        cfg = local_json(self.path, "config.json")
        if not cfg:
            return dataclasses.replace(CLIP_L, tokens=self.max_length)
        text = cfg.get("text_config", cfg)
        projected = {"CLIPTextModelWithProjection", "CLIPModel"} & set(cfg.get("architectures") or [])
        width = text.get("hidden_size", 512)
        pooled = cfg.get("projection_dim", text.get("projection_dim", width)) if projected else width
        return EncoderShape(width, pooled, self.max_length)


@dataclass(frozen=True)
class T5Spec:
    """The encoder half of a T5 checkpoint (folder or hub name); pooled = mean of its tokens."""
    kind: Literal["t5"] = "t5"
    path: str = "google/flan-t5-xxl"
    tokenizer: str | None = None
    max_length: int = 120  # PixArt-alpha's, for T5-XXL captions
    dtype: Dtype = "float32"

    def shape(self) -> EncoderShape:
        cfg = local_json(self.path, "config.json")
        width = cfg["d_model"] if cfg else KNOWN_T5_WIDTHS.get(self.path, 4096)
        return EncoderShape(width, width, self.max_length)


@dataclass(frozen=True)
class TinyClipSpec:
    """A small random open_clip text tower with CLIP's tokenizer (gentron.text.clip.build_tiny_clip)."""
    kind: Literal["tiny_clip"] = "tiny_clip"
    width: int = 64
    layers: int = 2
    heads: int = 4
    pooled_width: int | None = None  # None: the token width
    seed: int = 0
    embed_std: float = 1.0
    position_std: float = 0.3
    window: int | None = 2  # each token sees itself and window - 1 before it; None: causal

    def shape(self) -> EncoderShape:
        return EncoderShape(self.width, self.pooled_width or self.width, 77)

    def check(self, where: str) -> None:
        _check_tower(self, where)


@dataclass(frozen=True)
class TinyT5Spec:
    """A small random T5 encoder over bytes (gentron.text.t5.build_tiny_t5)."""
    kind: Literal["tiny_t5"] = "tiny_t5"
    width: int = 64
    layers: int = 2
    heads: int = 4
    max_length: int = 128
    seed: int = 0

    def shape(self) -> EncoderShape:
        return EncoderShape(self.width, self.width, self.max_length)

    def check(self, where: str) -> None:
        _check_tower(self, where)


TextEncoderSpec = Annotated[ClipSpec | HFClipSpec | T5Spec | TinyClipSpec | TinyT5Spec, TaggedUnion]


def _check_tower(spec, where: str) -> None:
    for key in ("width", "layers", "heads", "max_length", "pooled_width", "window"):
        value = getattr(spec, key, 1)
        if value is not None and value < 1:
            raise ConfigError(f"{where}.{key}={value} must be at least 1")
    if spec.seed < 0:
        raise ConfigError(f"{where}.seed={spec.seed} must be >= 0")
    if spec.width % spec.heads:
        raise ConfigError(f"{where}: width {spec.width} is not divisible by heads {spec.heads}")


def text_encoder_spec(values: Any, where: str = "text encoder"):
    """A validated text-encoder spec from a mapping such as {kind: t5, path: google/flan-t5-xxl}."""
    return schema.check(TextEncoderSpec, values, where)


