"""The named prompt sets and metrics a grid can use (ablations/conf/prompt_sets.yaml, metrics.yaml).

Each file is read, parsed and its entries validated (gentron.schema: `PromptSet`, `Metric`) once per
process. `registry(name)` returns a fresh dict on every call,
with `${oc.env:...}` resolved against the environment of that moment (a test or a user may point a
variable at local copies after the first read): callers may keep or change what they get.
"""
from __future__ import annotations

import fnmatch
import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from gentron.errors import ConfigError
from gentron.schema import parse, required

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).parent / "conf"
ENV = re.compile(r"\$\{oc\.env:([A-Z0-9_]+)")


@dataclass
class PromptSet:
    """A named prompt set: CompShapes prompts (`set`, optionally `per_category` of each) or prompt files."""
    kind: Literal["compshapes", "files"] = required("compshapes")
    set: str | None = None  # compshapes: gentron.generate.prompt_set's name
    per_category: int | None = None
    glob: str | None = None  # files: .txt (one prompt per line) or .jsonl
    images_per_prompt: int | None = None  # fixed by the benchmark; None: the cell's sample.images_per_prompt
    noise: Literal["seed", "per_prompt"] = "seed"  # gentron.generate.noise_seed
    prompts: int | None = None  # files: the benchmark's prompt count, for the plan's costs where the files are absent

    def check(self, where: str) -> None:
        needed = "set" if self.kind == "compshapes" else "glob"
        if getattr(self, needed) is None:
            raise ConfigError(f"kind {self.kind} needs `{needed}`")


@dataclass
class Metric:
    """A named evaluator: its module's evaluate(), the prompt sets it reads, its options."""
    module: str = required("eval.judge")
    prompt_sets: list[str] = required('["compshapes_*"]')
    options: dict[str, Any] = field(default_factory=dict)
    higher_is_better: Any = None  # true, false or {score: bool} (eval.verdicts)


SCHEMAS = {"prompt_sets": PromptSet, "metrics": Metric}


@functools.cache
def _loaded(name: str) -> DictConfig:
    path = CONF_DIR / f"{name}.yaml"
    loaded = OmegaConf.load(path)
    for entry, values in OmegaConf.to_container(loaded, resolve=False).items():
        parse(SCHEMAS[name], values, source=f"{path}: {entry}")
    return loaded


def registry(name: str) -> dict:
    """ablations/conf/<name>.yaml (prompt_sets, metrics) as a plain dict, environment variables resolved."""
    return OmegaConf.to_container(_loaded(name), resolve=True)


def metrics_reading(metrics: list[str], prompt_sets: list[str], overrides: dict) -> list[str]:
    """A cell's metrics when the command line's `overrides` choose its prompt sets and not its metrics
    (`sample.prompt_sets=[compshapes_smoke]`): those that read one of `prompt_sets`, each one left out
    logged (unknown names kept, for the caller's check to name; all of them if none reads one). Otherwise
    `metrics` as they are."""
    if "sample.prompt_sets" not in overrides or "eval.metrics" in overrides:
        return metrics
    known, kept = registry("metrics"), []
    for name in metrics:
        patterns = known.get(name, {}).get("prompt_sets", [])
        if name not in known or any(fnmatch.fnmatch(s, p) for s in prompt_sets for p in patterns):
            kept.append(name)
        else:
            log.info("metric %s left out: it reads %s, not sample.prompt_sets=%s", name, patterns, prompt_sets)
    return kept or list(metrics)


def env_variable(name: str, entry: str, key: str) -> str | None:
    """The environment variable that the first `key` under `entry` of registry `name` reads, if any
    (e.g. prompt_sets / coco30k / glob -> COCO30K_CAPTIONS)."""
    raw = OmegaConf.to_container(_loaded(name), resolve=False).get(entry)
    value = _find(raw, key)
    match = ENV.search(value) if isinstance(value, str) else None
    return match.group(1) if match else None


def _find(node: Any, key: str) -> Any:
    if not isinstance(node, dict):
        return None
    if key in node:
        return node[key]
    return next((found for value in node.values() if (found := _find(value, key)) is not None), None)
