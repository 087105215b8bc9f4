"""Text encoders (frozen) and the prompt cache that keeps them off the training hot path."""
from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Callable

from gentron.text.base import TextEmbedding
from gentron.text.cache import PromptCache
from gentron.text.clip import build_hf_clip, build_openclip, build_tiny_clip
from gentron.text.encoder import TextEncoder
from gentron.text.t5 import build_t5, build_tiny_t5

BUILDERS: dict[str, Callable[..., TextEncoder]] = {
    "clip": build_openclip,
    "hf_clip": build_hf_clip,
    "t5": build_t5,
    "tiny_clip": build_tiny_clip,
    "tiny_t5": build_tiny_t5,
}


def build_text_encoder(spec: Any) -> TextEncoder:
    """Build an encoder from its spec (gentron.config: ClipSpec, T5Spec, ...) or a mapping such as
    {kind: t5, path: google/flan-t5-xxl}, validated by the same schema as a cell config."""
    from gentron.specs import text_encoder_spec

    options = dataclasses.asdict(text_encoder_spec(spec))
    return BUILDERS[options.pop("kind")](**options)


def build_text_encoders(specs: list, device: Any = "cpu") -> list[TextEncoder]:
    """A cell's text encoders (`cfg.text_encoders`), frozen, on `device`."""
    return [build_text_encoder(spec).to(device) for spec in specs]


__all__ = ["build_text_encoders", "BUILDERS", "PromptCache", "TextEmbedding", "TextEncoder", "build_text_encoder"]
