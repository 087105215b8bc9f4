"""Text encoders (frozen) and the prompt cache that keeps them off the training hot path."""
from __future__ import annotations

import inspect
from typing import Any, Callable

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


def build_text_encoder(spec: dict[str, Any]) -> TextEncoder:
    """Build an encoder from a config dict: `kind` picks the builder, the other keys are its
    arguments, e.g. {kind: t5, path: google/flan-t5-xxl} or {kind: tiny_clip, seed: 0}."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in BUILDERS:
        raise ValueError(f"text encoder kind {kind!r} is unknown; choose one of {sorted(BUILDERS)}")
    builder = BUILDERS[kind]
    allowed = set(inspect.signature(builder).parameters)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"text encoder {kind!r} does not take {unknown}; its options are {sorted(allowed)}")
    return builder(**spec)


__all__ = ["BUILDERS", "PromptCache", "TextEmbedding", "TextEncoder", "build_text_encoder"]
