"""Presets: `preset=smoke` runs every cell of a grid small, to check it runs end to end in minutes.

A preset (ablations/conf/presets.yaml, validated as `Preset`) is a layer over the composed grid: its
`base` keys go over the grid's base (the grid's axes and the command line still win), its `encoders`
keys over every trained text encoder's recipe (command-line `encoders.<name>.<key>` still win), and
its `prompt_sets` swap the evaluation's prompt sets. The grid keeps its arms and seeds; its runs go to
<runs_dir>/<grid>-<preset>/ (so a smoke run never mixes with the grid's results), and its note and
description start with the preset's note, which the plan, the results table and the browser show.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

import yaml

from ablations.registries import CONF_DIR
from gentron import schema
from gentron.errors import ConfigError
from gentron.schema import required

PRESETS_FILE = CONF_DIR / "presets.yaml"


@dataclass
class Preset:
    note: str = required("smoke: not a result")
    base: dict[str, Any] = field(default_factory=dict)  # dotted cell-config key -> value
    encoders: dict[str, Any] = field(default_factory=dict)  # EncoderRecipe key -> value, for every recipe
    prompt_sets: dict[str, str] = field(default_factory=dict)  # evaluation prompt set -> the one sampled instead


def _file() -> dict:
    return yaml.safe_load(PRESETS_FILE.read_text(encoding="utf-8")) or {}


def available() -> list[str]:
    return list(_file())


def load(name: str) -> Preset:
    presets = _file()
    if name not in presets:
        close = difflib.get_close_matches(str(name), list(presets), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown preset '{name}'; {hint}presets: {', '.join(presets)} ({PRESETS_FILE})")
    return schema.parse(Preset, presets[name], f"preset {name}", source=str(PRESETS_FILE))


def apply(grid, name: str | None, recipe_overrides: dict[str, Any] | None = None):
    """The ablations.grid.Grid with preset `name` layered over it (unchanged for None); recipe keys the
    command line set (`encoders.<name>.<key>` in `recipe_overrides`) keep the command line's value."""
    if not name:
        return grid
    from gentron.text.pretrain import load_recipe

    preset = load(name)
    given = set(recipe_overrides or {})
    encoders, recipes = {}, {}
    for recipe_name, values in grid.encoders.items():
        layer = {k: v for k, v in preset.encoders.items() if f"encoders.{recipe_name}.{k}" not in given}
        encoders[recipe_name] = {**values, **layer}
        recipes[recipe_name] = load_recipe({**dataclasses.asdict(grid.recipes[recipe_name]), **layer},
                                           f"preset {name}: encoders.{recipe_name}")
    sets = grid.evaluation.prompt_sets
    evaluation = dataclasses.replace(grid.evaluation, prompt_sets=None if sets is None else
                                     [preset.prompt_sets.get(s, s) for s in sets])
    return dataclasses.replace(
        grid, name=f"{grid.name}-{name}", preset=name, base={**grid.base, **preset.base}, encoders=encoders,
        recipes=recipes, evaluation=evaluation, note=f"{preset.note}; {grid.note or ''}".rstrip("; "),
        description=f"{preset.note.split(' (')[0]} · {grid.description or grid.name}")
