"""What makes two cells the same: the cell id, the training key and the arguments that plan a grid's
cells again.

    cell_id(cfg)      10-hex sha1 of the resolved cell config as canonical JSON, without RUN_ONLY_KEYS,
                      with CELL_VERSION: the cell's folder name
    train_key(cfg)    the same without the `sample` and `eval` sections: cells with equal train keys
                      train one model (the others link its checkpoint)
    plan_arguments()  the command-line arguments that decide a grid's cells (grid, profile, seeds,
                      cell-config and encoder-recipe overrides): the rerun command resumes exactly them
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import fields

from gentron.config import RUN_ONLY_KEYS as TRAIN_RUN_ONLY_KEYS
from gentron.config import CellConfig, to_dict

CELL_SECTIONS = tuple(f.name for f in fields(CellConfig))
# Keys that change how a cell runs, not what it computes: excluded from the cell id, so a rerun with
# more logging, another batch size for sampling or an extra metric finds the same cell.
RUN_ONLY_KEYS = (*TRAIN_RUN_ONLY_KEYS, "sample.batch_size", "eval.metrics")
# Bump when the same config would now train, sample or score differently: every cell gets a new id.
CELL_VERSION = 6  # 6: CompShapes' counting captions
ID_LENGTH = 10
TRAIN_ONLY = ("sample", "eval")  # sections that do not change the trained model
# Command-line keys besides the cell-config sections that decide the cells: encoders.<name>.<key>
# (a trained text encoder's recipe is part of the config of every cell that loads it).
RECIPE_SECTION = "encoders"


def cell_id(config: CellConfig) -> str:
    """10-hex sha1 of the canonical JSON of the resolved config without RUN_ONLY_KEYS, with CELL_VERSION."""
    return _digest(to_dict(config))


def train_key(config: CellConfig) -> str:
    """Cells with equal train keys train the same model (their configs differ in sample/eval only)."""
    return _digest({k: v for k, v in to_dict(config).items() if k not in TRAIN_ONLY})


def _digest(identity: dict) -> str:
    for key in RUN_ONLY_KEYS:
        section, name = key.split(".")
        identity.get(section, {}).pop(name, None)
    identity["cell_version"] = CELL_VERSION
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:ID_LENGTH]


def plan_arguments(name: str, profile: str, argv: list[str]) -> list[str]:
    """The arguments that decide a grid's cells: grid, profile, seeds, preset, the cell-config overrides
    and the encoder-recipe overrides of `argv` (not the launcher, the runs folder or the action)."""
    def key(arg: str) -> str:
        return arg.split("=", 1)[0].lstrip("+~")
    kept = [a for a in argv if key(a) in ("seeds", "preset") or key(a).split(".")[0] in (*CELL_SECTIONS, RECIPE_SECTION)]
    return [f"grid={name}", f"profile={profile}", *kept]
