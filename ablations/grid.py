"""Grids: parse the command line, compose a grid file with a profile, expand it into cells.

A grid file (ablations/grids/<name>.yaml) is data:

    description: one line, shown in the plan and the table
    seeds: [0, 1, 2]                 # the `seed` axis (sets train.seed)
    base: {model.size: T/2, ...}     # cell-config overrides shared by every cell
    axes:                            # axis -> arm -> cell-config overrides (dotted keys)
      conditioning: {adaln: {model.conditioning: adaln}, cross_attn: {model.conditioning: cross_attn}}
    evaluation: {prompt_sets: [...], metrics: [...]}
    profiles:                        # per profile, the same keys again, merged on top (OmegaConf)
      embedded: {note: ..., labels: {axis: {arm: shown-as}}, base: ..., axes: ...}
      paper: {...}

A cell's config is gentron.config's defaults, then `base`, `evaluation`, the arm of every axis and
the seed, then the command line's cell overrides (`train.steps=20`); gentron.config validates it.
Its id is the sha1 of that resolved config as canonical JSON, without RUN_ONLY_KEYS, with CELL_VERSION.
"""
from __future__ import annotations

import difflib
import fnmatch
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from ablations import runfolder
from gentron.config import CellConfig, load_config, to_dict
from gentron.errors import ConfigError

log = logging.getLogger(__name__)

GRIDS_DIR = Path(__file__).parent / "grids"
CONF_DIR = Path(__file__).parent / "conf"
CELL_SECTIONS = tuple(f.name for f in fields(CellConfig))
# Keys that change how a cell runs, not what it computes: excluded from the cell id, so a rerun with
# more logging, another batch size for sampling or an extra metric finds the same cell.
RUN_ONLY_KEYS = ("train.log_every", "train.ckpt_every", "train.tensorboard",
                 "train.compile", "train.grad_checkpointing", "train.strategy", "data.cache_dir",
                 "sample.batch_size", "eval.metrics")
# Bump when the same cell config would now train, sample or score differently (what CompShapes draws,
# how a tiny text encoder initialises, what the judge reads): an old run folder's cells then get new
# ids and are recomputed instead of being reused as if current. (The caches below a cell key on their
# own: encoded data on gentron.data.compshapes.VERSION, text features on the encoder's weights.)
# 2: tiny_clip keeps words apart, CompShapes objects r = 0.19. 3: diamonds; tiny_clip's local window.
# 4: width 48 / MLP 96 for 7,000 steps; fused AdamW. 5: logit-normal training timesteps (std 0.8).
CELL_VERSION = 5
GRID_KEYS = ("description", "seeds", "base", "axes", "evaluation", "profiles", "note", "labels")
ID_LENGTH = 10


@dataclass
class LocalOptions:
    # Cells (train groups) run at once, sharing the cores. None: one per core on a machine without a
    # GPU (tiny CPU cells use their cores better side by side), 1 with a GPU (cells would share it).
    workers: Optional[int] = None


@dataclass
class RunOptions:
    """Everything on the command line that is not a cell-config key."""
    grid: str = "conditioning"
    profile: str = "embedded"  # embedded: CPU stand-ins; paper: the paper's models (GPU cluster)
    seeds: Optional[list[int]] = None  # replaces the grid's seeds
    action: str = "run"
    launcher: str = "local"
    slurm: Optional[str] = None  # a profile name of slurm/profiles/*.yaml
    local: LocalOptions = field(default_factory=LocalOptions)
    dry_run: bool = False
    wait: bool = False  # launcher=slurm: block until the grid is done, then print the table
    runs_dir: str = "runs"


CHOICES = {"action": ("run", "status", "cancel"), "launcher": ("local", "slurm")}
RUN_KEYS = tuple(f.name for f in fields(RunOptions))


@dataclass
class Cell:
    grid: str
    cell_id: str
    axes: dict[str, Any]  # {"conditioning": "adaln", "seed": 0}: the values shown everywhere
    arms: dict[str, str]  # {"conditioning": "adaln"}: the grid file's arm names
    config: dict  # the resolved, validated cell config
    profile: str

    def info(self) -> dict:
        """cell.json."""
        return {"grid": self.grid, "cell_id": self.cell_id, "axes": self.axes, "arms": self.arms,
                "profile": self.profile, "prompt_sets": self.config["sample"]["prompt_sets"],
                "metrics": self.config["eval"]["metrics"]}


@dataclass
class Plan:
    run: DictConfig
    grid: DictConfig  # the composed grid (profile merged in)
    cells: list[Cell]

    @property
    def grid_dir(self) -> Path:
        return Path(self.run.runs_dir) / self.run.grid


# --- the command line ---------------------------------------------------------------------------

def parse_args(argv: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """Hydra override grammar -> (run options, {dotted cell key: value})."""
    try:
        overrides = OverridesParser.create().parse_overrides(list(argv))
    except HydraException as e:
        raise ConfigError(f"cannot parse the command line: {e}") from e
    run = OmegaConf.structured(RunOptions)
    cell: dict[str, Any] = {}
    for o in overrides:
        key = o.key_or_group
        if o.is_sweep_override():
            raise ConfigError(f"'{o.input_line}' is a sweep; sweeps are a grid's axes (ablations/grids/*.yaml), "
                              "a list value needs brackets: key=[a,b]")
        if o.is_delete():
            raise ConfigError(f"'{o.input_line}': deleting keys is not supported; set a value instead")
        if key.split(".")[0] in CELL_SECTIONS:
            cell[key] = o.value()
        else:
            _set_run_option(run, key, o.value())
    for name, allowed in CHOICES.items():
        if run[name] not in allowed:
            raise ConfigError(f"{name}={run[name]} is not allowed; choose one of {list(allowed)}")
    if run.launcher == "slurm" and not run.slurm:
        raise ConfigError("launcher=slurm needs slurm=<profile> (a file of slurm/profiles/, e.g. slurm=local)")
    if run.local.workers is not None and run.local.workers < 1:
        raise ConfigError(f"local.workers={run.local.workers} must be at least 1")
    return run, cell


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


# --- grid files ---------------------------------------------------------------------------------

def available_grids() -> list[str]:
    return sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "profiles").glob("*.yaml"))


def load_grid(name: str, profile: str) -> DictConfig:
    """conf/profiles/<profile>.yaml, then the grid file, then the grid's `profiles[profile]` section."""
    path = GRIDS_DIR / f"{name}.yaml"
    if not path.exists():
        close = difflib.get_close_matches(name, available_grids(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown grid '{name}'{hint}; grids: {', '.join(available_grids())} "
                          f"(files in {GRIDS_DIR})")
    if profile not in available_profiles():
        raise ConfigError(f"unknown profile '{profile}'; profiles: {', '.join(available_profiles())}")
    raw = _load_yaml(path)
    _check_keys(raw, GRID_KEYS, str(path))
    sections = raw.pop("profiles", {})
    if profile not in sections:
        raise ConfigError(f"grid '{name}' has no profile '{profile}'; its profiles: {', '.join(sections)}")
    _check_keys(sections[profile] or {}, GRID_KEYS, f"{path} profiles.{profile}")
    grid = OmegaConf.merge(_load_yaml(CONF_DIR / "profiles" / f"{profile}.yaml"), raw, sections[profile] or {})
    grid.name, grid.profile = name, profile
    if not grid.get("axes"):
        raise ConfigError(f"{path} defines no axes for profile '{profile}'")
    return grid


def _load_yaml(path: Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e


def _check_keys(node: DictConfig, allowed: tuple[str, ...], where: str) -> None:
    for key in node:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(allowed)}"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")


def registry(name: str) -> dict:
    """ablations/conf/<name>.yaml as a plain dict (prompt_sets, metrics)."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{name}.yaml"), resolve=True)


# --- expansion ----------------------------------------------------------------------------------

def plan(argv: list[str]) -> Plan:
    """Parse, compose and expand: every error a user can cause surfaces here, before anything runs."""
    run, overrides = parse_args(argv)
    grid = load_grid(run.grid, run.profile)
    if run.seeds is not None:
        grid.seeds = run.seeds
    cells = expand(grid, overrides)
    # grid.yaml records what chose these cells, so a reader can tell them from left-over cells and
    # print the command that reproduces them (ablations.runfolder.grid_record)
    grid[runfolder.PLAN_ARGS] = runfolder.plan_arguments(run.grid, run.profile, list(argv), CELL_SECTIONS)
    grid[runfolder.CELL_IDS] = [cell.cell_id for cell in cells]
    log.debug("grid %s (%s): %d cells", run.grid, run.profile, len(cells))
    return Plan(run=run, grid=grid, cells=cells)


def expand(grid: DictConfig, overrides: dict[str, Any]) -> list[Cell]:
    axes = OmegaConf.to_container(grid.axes, resolve=False)
    swept = {key: axis for axis, arms in axes.items() for spec in arms.values() for key in spec}
    for key in overrides:
        clash = [k for k in swept if k == key or k.startswith(key + ".") or key.startswith(k + ".")]
        if clash:
            raise ConfigError(f"{key} is set by the grid's axis '{swept[clash[0]]}'; "
                              f"override another key or edit {GRIDS_DIR / grid.name}.yaml")
    seeds = list(grid.get("seeds") or [0])
    cells = []
    for combo in itertools.product(*[[(axis, arm) for arm in arms] for axis, arms in axes.items()], seeds):
        *chosen, seed = combo
        cells.append(make_cell(grid, dict(chosen), seed, overrides))
    _check_distinct(cells, grid.name)
    return cells


def make_cell(grid: DictConfig, arms: dict[str, str], seed: int, overrides: dict[str, Any]) -> Cell:
    cfg = OmegaConf.create({})
    raw = OmegaConf.to_container(grid, resolve=False)  # ??? values stay unresolved until the end
    evaluation = raw.get("evaluation") or {}
    updates = list((raw.get("base") or {}).items())
    updates += [(key, evaluation[name]) for key, name in (("sample.prompt_sets", "prompt_sets"),
                                                          ("eval.metrics", "metrics")) if name in evaluation]
    updates += [(k, v) for axis, arm in arms.items() for k, v in raw["axes"][axis][arm].items()]
    updates += [("train.seed", seed)] + list(overrides.items())
    for key, value in updates:
        OmegaConf.update(cfg, key, value, merge=True)
    where = f"grid '{grid.name}' (profile {grid.profile}), cell {arms} seed {seed}"
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{where}: {e.full_key} has no value (??? in the grid file); "
                          f"pass it on the command line, e.g. {e.full_key}=...") from e
    try:
        config = to_dict(load_config(container))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    check_evaluation(config, where)
    labels = grid.get("labels") or {}
    axes = {axis: labels.get(axis, {}).get(arm, arm) for axis, arm in arms.items()}
    return Cell(grid=grid.name, cell_id=cell_id(config), axes={**axes, "seed": seed}, arms=arms,
                config=config, profile=grid.profile)


def check_evaluation(config: dict, where: str) -> None:
    """Every prompt set must be known and every metric must read one of the cell's prompt sets."""
    sets, metrics = registry("prompt_sets"), registry("metrics")
    for name in config["sample"]["prompt_sets"]:
        if name not in sets:
            raise ConfigError(f"{where}: unknown prompt set '{name}'; known: {', '.join(sets)} "
                              f"({CONF_DIR / 'prompt_sets.yaml'})")
    for name in config["eval"]["metrics"]:
        if name not in metrics:
            close = difflib.get_close_matches(name, list(metrics), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown metric '{name}'{hint}; known: {', '.join(metrics)}")
        metric_prompt_set(name, config["sample"]["prompt_sets"], where)


def metric_prompt_set(metric: str, prompt_sets: list[str], where: str = "") -> str:
    """The first of the cell's prompt sets that `metric` reads (ablations/conf/metrics.yaml)."""
    patterns = registry("metrics")[metric]["prompt_sets"]
    for name in prompt_sets:
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            return name
    raise ConfigError(f"{where}: metric '{metric}' reads prompt sets {patterns}, none of which the cell samples "
                      f"({prompt_sets}); add one to sample.prompt_sets")


def cell_id(config: dict) -> str:
    """10-hex sha1 of the canonical JSON of the resolved config without RUN_ONLY_KEYS, with CELL_VERSION."""
    identity = json.loads(json.dumps(config))
    for key in RUN_ONLY_KEYS:
        section, name = key.split(".")
        identity.get(section, {}).pop(name, None)
    identity["cell_version"] = CELL_VERSION
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:ID_LENGTH]


def _check_distinct(cells: list[Cell], grid: str) -> None:
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.cell_id in seen:
            raise ConfigError(f"grid '{grid}': cells {seen[cell.cell_id].axes} and {cell.axes} resolve to the same "
                              "config; their arms must differ in some cell-config key")
        seen[cell.cell_id] = cell
