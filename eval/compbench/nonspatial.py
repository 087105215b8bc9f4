"""Non-spatial relations: raw CLIP ViT-B/32 cosine between image and prompt (not x100, not clipped),
through eval.clip_score's embedder. For complex prompts the text is the prompt without adjectives."""
from __future__ import annotations

from eval.clip_score import ClipEmbedder
from eval.compbench.questions import strip_adjectives


def clip_texts(prompts: list[str], complex_: bool = False) -> list[str]:
    return [strip_adjectives(p) for p in prompts] if complex_ else list(prompts)


def score(embedder: ClipEmbedder, images, prompts: list[str], complex_: bool = False) -> list[float]:
    return embedder.cosines(images, clip_texts(prompts, complex_))
