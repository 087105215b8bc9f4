"""The grid runner's command line: run options (RunOptions) and cell-config overrides, in Hydra's
override grammar, with one-line errors that name the fix (`python ablations/run.py --help`)."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ablations.identity import CELL_SECTIONS, RECIPE_SECTION
from gentron.errors import ConfigError


@dataclass
class LocalOptions:
    # Cells (train groups) run at once, sharing the cores. None: one per core on a machine without a
    # GPU (tiny CPU cells use their cores better side by side), 1 with a GPU (cells would share it).
    workers: int | None = None


@dataclass
class RunOptions:
    """Everything on the command line that is not a cell-config key."""
    grid: str = "conditioning"  # a file of ablations/grids by name, or a grid file by its path (ending in .yaml)
    profile: str = "embedded"  # embedded: CPU stand-ins; paper: the paper's models (GPU cluster)
    seeds: list[int] | None = None  # replaces the grid's seeds
    action: str = "run"
    launcher: str = "local"
    slurm: str | None = None  # a profile name of slurm/profiles/*.yaml
    local: LocalOptions = field(default_factory=LocalOptions)
    dry_run: bool = False
    measure: bool = True  # dry_run: time a few real steps of each distinct cell here (ablations.measure)
    preset: str | None = None  # smoke: every cell small, in <runs_dir>/<grid>-smoke/ (ablations/presets.py)
    wait: bool = False  # launcher=slurm: block until the grid is done, then print the table
    runs_dir: str = "runs"


CHOICES = {"action": ("run", "status", "cancel"), "launcher": ("local", "slurm")}
RUN_KEYS = tuple(f.name for f in fields(RunOptions))


def local_workers(run: DictConfig) -> int:
    """Cells run side by side on this machine: local.workers, else LocalOptions' default."""
    import torch

    return run.local.workers or (1 if torch.cuda.is_available() else torch.get_num_threads())


def parse_args(argv: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """Hydra override grammar -> (run options, {dotted cell key: value})."""
    for arg in argv:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            raise ConfigError(f"'{arg}' is not an override: arguments are key=value, e.g. grid=conditioning "
                              "train.steps=500 (python ablations/run.py --help lists the keys)")
    try:
        overrides = OverridesParser.create().parse_overrides(list(argv))
    except HydraException as e:
        problem = str(e).splitlines()[0]
        special = [a for a in argv if any(c in a.partition("=")[2] for c in "{}[],*?")]
        hint = (f"; a value with braces, brackets, commas or wildcards must reach the program quoted: wrap the "
                f"whole argument in double quotes around single-quoted value, e.g. \"{special[0].partition('=')[0]}="
                f"'{special[0].partition('=')[2]}'\" (your shell removed the quotes)") if special else ""
        raise ConfigError(f"cannot parse the command line ({problem}){hint}") from e
    run = OmegaConf.structured(RunOptions)
    cell: dict[str, Any] = {}
    for o in overrides:
        key = o.key_or_group
        if o.is_sweep_override():
            raise ConfigError(f"'{o.input_line}' is a sweep; sweeps are a grid's axes (ablations/grids/*.yaml), "
                              "a list value needs brackets: key=[a,b]")
        if o.is_delete():
            raise ConfigError(f"'{o.input_line}': deleting keys is not supported; set a value instead")
        if key.split(".")[0] in (*CELL_SECTIONS, RECIPE_SECTION):
            cell[key] = o.value()  # encoders.<name>.<key>: a trained encoder's recipe (plan() applies it)
        else:
            _set_run_option(run, key, o.value())
    for name, allowed in CHOICES.items():
        if run[name] not in allowed:
            raise ConfigError(f"{name}={run[name]} is not allowed; choose one of {list(allowed)}")
    if run.launcher == "slurm" and not run.slurm:
        raise ConfigError("launcher=slurm needs slurm=<profile> (a file of slurm/profiles/, e.g. slurm=local)")
    if run.local.workers is not None and run.local.workers < 1:
        raise ConfigError(f"local.workers={run.local.workers} must be at least 1")
    if run.seeds is not None and not run.seeds:
        raise ConfigError("seeds=[] is empty; give at least one training seed, e.g. seeds=[0] or seeds=[0,1,2]")
    _check_runs_dir(Path(run.runs_dir))
    return run, cell


RUN_HELP = {
    "grid": "which grid file of ablations/grids/ to run, or the path of your own (ending in .yaml)",
    "profile": "embedded (CPU stand-ins, minutes) or paper (the paper's models, GPU cluster)",
    "seeds": "training seeds, one cell per seed and arm, e.g. seeds=[0,1,2] (default: the grid's)",
    "action": "run | status (the plan with each stage's state and SLURM jobs) | cancel (SLURM jobs)",
    "launcher": "local (this machine) | slurm (one job array per stage, needs slurm=<profile>)",
    "slurm": "a SLURM profile: a name of slurm/profiles/*.yaml or a file",
    "local": "local.workers=N: cells trained side by side on this machine (default: one per core without a GPU)",
    "dry_run": "true: validate every key, print one row per cell and run nothing",
    "measure": "dry_run: true times a few steps of each distinct cell here for the estimate; false reads the stored costs",
    "preset": "smoke: the whole grid small (100 steps, few prompts) in minutes, marked 'smoke: not a result'",
    "wait": "launcher=slurm: true blocks until the grid is done, then prints the table",
    "runs_dir": "where run folders go: <runs_dir>/<grid>/<cell>/ (default runs)",
}


def override_text(value: Any) -> str:
    """A value as an override writes it: null, true, [a,b], 7000, CS/2."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    return str(value)


def _check_runs_dir(runs_dir: Path) -> None:
    """runs_dir must be a folder this process can write, or creatable as one."""
    existing = next((p for p in (runs_dir, *runs_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = f"runs_dir={runs_dir}" if existing == runs_dir else f"runs_dir={runs_dir}: {existing}"
        raise ConfigError(f"{where} is a file, not a folder; choose a folder for the runs, e.g. runs_dir=runs")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"runs_dir={runs_dir}: {existing} is not writable; choose a folder you can write")


def _set_run_option(run: DictConfig, key: str, value: Any) -> None:
    top = key.split(".")[0]
    if top not in RUN_KEYS:
        close = difflib.get_close_matches(top, RUN_KEYS + CELL_SECTIONS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else \
            f"run options: {', '.join(RUN_KEYS)}; cell-config sections: {', '.join(CELL_SECTIONS)}"
        raise ConfigError(f"unknown key '{key}'; {hint}")
    try:
        OmegaConf.update(run, key, value, merge=True)
    except OmegaConfBaseException as e:
        known = [f"local.{f.name}" for f in fields(LocalOptions)] + list(RUN_KEYS)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"bad value {key}={value!r}: {str(e).splitlines()[0]}{hint}") from e
