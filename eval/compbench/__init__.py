"""T2I-CompBench (Huang et al., NeurIPS 2023) as its reference code scores it (docs/method.md):
BLIP-VQA for attribute binding (color, shape, texture), a zero-shot detector for 2D spatial relations,
CLIP cosine for non-spatial relations, and their mean for complex prompts ("3-in-1").

`python -m eval.compbench plan --checkout T2I-CompBench --out DIR` writes the generation plan;
`python -m eval.compbench SAMPLES_DIR --checkout T2I-CompBench --blip PATH --detector PATH --clip PATH`
scores a sample folder (or a folder in the official `{prompt}_{counter:06}.png` layout with `--category`).
Prompts are parsed with spaCy's en_core_web_sm as the reference code parses them (docs/evaluators.md).
"""
from eval.compbench.prompts import CATEGORIES
from eval.compbench.run import evaluate, merge

__all__ = ["CATEGORIES", "evaluate", "merge"]
