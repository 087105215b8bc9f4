"""The named prompt sets and metrics a grid can use (ablations/conf/prompt_sets.yaml, metrics.yaml).

Each file is read and parsed once per process. `registry(name)` returns a fresh dict on every call,
with `${oc.env:...}` resolved against the environment of that moment (a test or a user may point a
variable at local copies after the first read): callers may keep or change what they get.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).parent / "conf"
ENV = re.compile(r"\$\{oc\.env:([A-Z0-9_]+)")


@functools.cache
def _loaded(name: str) -> DictConfig:
    return OmegaConf.load(CONF_DIR / f"{name}.yaml")


def registry(name: str) -> dict:
    """ablations/conf/<name>.yaml (prompt_sets, metrics) as a plain dict, environment variables resolved."""
    return OmegaConf.to_container(_loaded(name), resolve=True)


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
