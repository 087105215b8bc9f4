"""Complex compositions ("3-in-1"): per image the mean of the attribute (BLIP-VQA), spatial (detector,
objects by the complex preposition rule) and non-spatial (CLIP, adjectives stripped) scores, restricted as
the official 3_in_1.py restricts it by the sub-split file that lists the prompt: attribute + spatial for
complex_val_spatial.txt, attribute + CLIP for complex_val_action.txt, all three otherwise
(eval.compbench.prompts.complex_parts)."""
from __future__ import annotations


def combine(parts: tuple[str, ...], vqa: float, spatial: float, clip: float) -> float:
    """The official formula, in its order of operations (so that the two agree to the last bit)."""
    if parts == ("vqa", "spatial"):
        return (spatial + vqa) * 0.5
    if parts == ("vqa", "clip"):
        return (clip + vqa) * 0.5
    return (vqa + spatial + clip) / 3
