"""A grid's named prompt sets as prompt records (ablations/conf/prompt_sets.yaml), their sizes, and
the prompt set sampled and scored during training (train.eval_prompt_set, gentron.validation)."""
from __future__ import annotations

import glob
import importlib
from pathlib import Path

from ablations import outputs
from ablations.registries import registry
from gentron.config import CellConfig, SampleConfig
from gentron.generate import prompt_set, read_prompt_file
from gentron.io import read_json


def sample_evaluation(config: CellConfig):
    """train.eval_prompt_set and train.eval_metrics as gentron.validation's SampleEvaluation (None
    without them): the set's records, and a scorer that runs each metric's evaluator on the step's
    sample folder, keeps its result there (<metric>.json) and returns the means."""
    t = config.train
    if not (t.eval_every and t.eval_prompt_set):
        return None
    from eval.common import write_result
    from gentron.validation import SampleEvaluation

    def score(folder: Path) -> dict[str, float]:
        means = {}
        for name in t.eval_metrics:
            spec = registry("metrics")[name]
            out = folder / f"{name}.json"
            result = (read_json(out) if out.exists() and outputs.json_problem(out) is None else
                      importlib.import_module(spec["module"]).evaluate(folder, **spec.get("options", {})))
            write_result(out, result)
            means.update({f"{name}/{k}": v["mean"] for k, v in result["aggregate"].items()
                          if isinstance(v, dict) and isinstance(v.get("mean"), (int, float))})
        return means

    noise = registry("prompt_sets")[t.eval_prompt_set].get("noise", "seed")
    return SampleEvaluation(t.eval_prompt_set, prompt_records(t.eval_prompt_set, config.sample), score, noise)


def prompt_records(name: str, sample: SampleConfig) -> list[dict]:
    """The fixed prompts x seeds of a named prompt set (ablations/conf/prompt_sets.yaml)."""
    spec = registry("prompt_sets")[name]
    per_prompt = spec.get("images_per_prompt") or sample.images_per_prompt
    if spec["kind"] == "compshapes":
        records = prompt_set(spec["set"], sample.seeds, per_prompt)
    else:
        files = sorted(glob.glob(spec["glob"]))
        if not files:
            raise FileNotFoundError(f"prompt set '{name}': no files match {spec['glob']} "
                                    "(set the environment variable named in ablations/conf/prompt_sets.yaml)")
        records = [record for path in files for record in read_prompt_file(Path(path), sample.seeds, per_prompt)]
    return first_prompts(records, spec.get("per_category"))


def first_prompts(records: list[dict], per_category: int | None) -> list[dict]:
    """The records of the first `per_category` prompts of each category, in the set's order (all if None)."""
    if per_category is None:
        return records
    kept: dict[str, set] = {}
    out = []
    for r in records:
        seen = kept.setdefault(r.get("category"), set())
        if r["prompt_id"] in seen or len(seen) < per_category:
            seen.add(r["prompt_id"])
            out.append(r)
    return out


def prompt_count(name: str, sample: SampleConfig) -> int:
    """Samples the prompt set draws: its records where its files are here, else the benchmark's size (the
    registry's `prompts` x seeds x images per prompt: e.g. COCO-30K's 30,000 images); FileNotFoundError
    when neither is known."""
    try:
        return len(prompt_records(name, sample))
    except FileNotFoundError:
        spec = registry("prompt_sets")[name]
        if not spec.get("prompts"):
            raise
        return spec["prompts"] * len(sample.seeds) * (spec.get("images_per_prompt") or sample.images_per_prompt)
