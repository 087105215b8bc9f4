"""Baselines in a grid: pretrained diffusers pipelines planned as cells beside the trained arms.

    baselines:                       # a grid file's (or a profile's) section: name -> eval.baseline.Baseline
      pixart_alpha: {pipeline: PixArt-alpha/PixArt-XL-2-512x512, steps: 20, guidance: 4.5}

A baseline cell is the grid's base config (its `base`, `evaluation`, first seed and the command line's
cell overrides; sample.steps and sample.cfg_scale the baseline's steps and guidance), so it samples the
same prompt sets with the same seeds, images per prompt and batches as the trained cells, and the same
evaluators score it. Its cell.json names the pipeline (`baseline`), its id hashes the config and the
pipeline, and on every axis it shows the baseline's name marked `(baseline)` (or its `labels` entry), so
every table, plot and verdict of the grid names it as a baseline, after the trained arms. Its
train stage trains nothing: it is marked done when the cell is prepared, with no outputs; its sample
stage draws through the pipeline (eval.baseline) instead of a checkpoint. A pipeline that is neither a
local folder nor in the Hugging Face cache is refused when the grid is planned, in one line naming the
`huggingface-cli download` command that fetches it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

from ablations import manifest
from ablations.identity import ID_LENGTH, cell_id
from ablations.runfolder import STAGES
from eval.baseline import load_baseline, pipeline_folder
from gentron.errors import ConfigError

if TYPE_CHECKING:
    from ablations.grid import Cell, Grid

MARK = "(baseline)"  # after a baseline's name wherever its arm is shown (unless the grid's labels name it)


def baseline_cells(grid: Grid, overrides: dict[str, Any], make_cell: Callable[..., Cell]) -> list[Cell]:
    """One cell per entry of the grid's `baselines` (grid.make_cell builds the base cell)."""
    seed = (grid.seeds or [0])[0]
    arm_names = {arm for arms in grid.axes.values() for arm in arms}
    cells = []
    for name, values in grid.baselines.items():
        where = f"grid '{grid.name}' (profile {grid.profile}), baseline '{name}'"
        if name in arm_names:
            raise ConfigError(f"{where}: an arm of the grid has the same name; rename the baseline")
        try:
            spec = load_baseline(values, f"baselines.{name}")
            pipeline_folder(spec.pipeline)  # here, or cached: nothing is planned that cannot load its weights
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{where}: {e}") from None
        cell = make_cell(grid, {}, seed, {**overrides, "sample.steps": spec.steps, "sample.cfg_scale": spec.guidance})
        if (spec.resolution or cell.config.data.resolution) % 8:
            raise ConfigError(f"{where}: diffusers pipelines draw sides that are a multiple of 8, and the cells' "
                              f"data.resolution is {cell.config.data.resolution}; give the baseline one, e.g. "
                              "resolution: 512 (evaluators resize as for any sample folder)")
        record = spec.record()
        shown = {axis: grid.labels.get(axis, {}).get(name, f"{name} {MARK}") for axis in grid.axes}
        cells.append(dataclasses.replace(cell, cell_id=baseline_id(cell.config, record), axes={**shown, "seed": seed},
                                         arms={axis: name for axis in grid.axes}, baseline=record))
    return cells


def baseline_id(config, record: dict) -> str:
    """The folder name of a baseline cell: the cell id of its config and its pipeline spec, hashed together."""
    canonical = json.dumps({"cell": cell_id(config), "baseline": record}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:ID_LENGTH]


def mark_pretrained(cell_dir: str | Path, info: dict) -> None:
    """A baseline's train stage: done, with no outputs, naming the pretrained pipeline (idempotent)."""
    cell_dir = Path(cell_dir)
    if manifest.stage_state(manifest.read(cell_dir), "train") == "done":
        return
    started = manifest.begin(cell_dir, "train", STAGES[1:])
    manifest.finish(cell_dir, "train", started, "done", STAGES, outputs={}, pretrained=info["baseline"]["pipeline"])
