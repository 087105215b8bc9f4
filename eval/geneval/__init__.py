"""GenEval (Ghosh et al., NeurIPS 2023 Datasets and Benchmarks): object-focused compositional scores from an
instance-segmentation detector and a CLIP colour classifier over 553 prompts in six tasks (single object,
two objects, counting, colours, position, colour attribution), 4 images per prompt.

`python -m eval.geneval SAMPLES_DIR --metadata prompts/evaluation_metadata.jsonl` scores a gentron sample
folder; a folder in the official generator's layout (`<index:05d>/metadata.jsonl`, `samples/<n:04d>.png`)
needs no metadata file. Besides gentron's evaluator output it writes the official results.jsonl, which
the official summary_scores.py reads (docs/evaluators.md "GenEval")."""
from eval.geneval.rules import COLORS, TAGS, Settings, judge, relations, select_objects
from eval.geneval.run import evaluate

__all__ = ["COLORS", "TAGS", "Settings", "evaluate", "judge", "relations", "select_objects"]
