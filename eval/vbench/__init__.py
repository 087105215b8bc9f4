"""VBench (Huang et al., CVPR 2024) dimensions for any folder of clips: temporal flickering (no model),
subject consistency (DINO ViT-B/16), background consistency (CLIP ViT-B/32) and dynamic degree (RAFT), with
the official formulas, rules and normalisation (docs/evaluators.md "Video metrics"). Motion smoothness
needs AMT frame interpolation and is not implemented.

`python -m eval.vbench SAMPLES_DIR [--full-info VBench_full_info.json] [--dimensions ...]` scores a gentron
sample folder of clips or a plain folder of .mp4 / .gif files and frame folders."""
from eval.vbench.run import evaluate, merge

__all__ = ["evaluate", "merge"]
