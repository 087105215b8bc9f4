"""Complex compositions ("3-in-1"): per image the mean of the attribute (BLIP-VQA), spatial (detector,
objects around the relation) and non-spatial (CLIP, adjectives stripped) scores. The spatial term counts
only for prompts that contain a spatial relation (the spatial sub-split); others average BLIP-VQA and CLIP.
(Deviation: the reference code picks the sub-split by the prompt's line range in complex_val.txt.)"""
from __future__ import annotations

from eval.compbench.questions import spatial_relation


def combine(vqa: float, spatial: float | None, clip: float) -> float:
    parts = [vqa, clip] if spatial is None else [vqa, spatial, clip]
    return sum(parts) / len(parts)


def uses_spatial(prompt: str) -> bool:
    return spatial_relation(prompt) is not None
