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

import dataclasses
import difflib
import fnmatch
import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from ablations import runfolder
from gentron.config import RUN_ONLY_KEYS as TRAIN_RUN_ONLY_KEYS
from gentron.config import CellConfig, load_config, to_dict
from gentron.errors import ConfigError

log = logging.getLogger(__name__)

GRIDS_DIR = Path(__file__).parent / "grids"
CONF_DIR = Path(__file__).parent / "conf"
CELL_SECTIONS = tuple(f.name for f in fields(CellConfig))
# Keys that change how a cell runs, not what it computes: excluded from the cell id, so a rerun with
# more logging, another batch size for sampling or an extra metric finds the same cell.
RUN_ONLY_KEYS = (*TRAIN_RUN_ONLY_KEYS, "sample.batch_size", "eval.metrics")
# Bump when the same cell config would now train, sample or score differently (what CompShapes draws,
# how a tiny text encoder initialises, what the judge reads): an old run folder's cells then get new
# ids and are recomputed instead of being reused as if current. (The caches below a cell key on their
# own: encoded data on gentron.data.compshapes.VERSION, text features on the encoder's weights.)
# 2: tiny_clip keeps words apart, CompShapes objects r = 0.19. 3: diamonds; tiny_clip's local window.
# 4: width 48 / MLP 96 for 7,000 steps; fused AdamW. 5: logit-normal training timesteps (std 0.8).
CELL_VERSION = 5
GRID_KEYS = ("description", "seeds", "base", "axes", "evaluation", "profiles", "note", "labels", "encoders")
# Trained text encoders live in <runs_dir>/ENCODER_STORE/<objective>-<recipe hash>/ (gentron.text.pretrain).
ENCODER_STORE = "encoders"
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
    # trained text encoders the cell loads: folder -> recipe (gentron.text.pretrain), trained before it
    encoders: dict[str, dict] = field(default_factory=dict)

    def info(self) -> dict:
        """cell.json."""
        return {"grid": self.grid, "cell_id": self.cell_id, "axes": self.axes, "arms": self.arms,
                "profile": self.profile, "prompt_sets": self.config["sample"]["prompt_sets"],
                "metrics": self.config["eval"]["metrics"], **({"encoders": self.encoders} if self.encoders else {})}


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
    for arg in argv:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            raise ConfigError(f"'{arg}' is not an override: arguments are key=value, e.g. grid=conditioning "
                              "train.steps=500 (python ablations/run.py --help lists the keys)")
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
        if key.split(".")[0] in CELL_SECTIONS or key.split(".")[0] == "encoders":
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
    "grid": "which grid file of ablations/grids/ to run",
    "profile": "embedded (CPU stand-ins, minutes) or paper (the paper's models, GPU cluster)",
    "seeds": "training seeds, one cell per seed and arm, e.g. seeds=[0,1,2] (default: the grid's)",
    "action": "run | status (the plan with each stage's state and SLURM jobs) | cancel (SLURM jobs)",
    "launcher": "local (this machine) | slurm (one job array per stage, needs slurm=<profile>)",
    "slurm": "a SLURM profile: a name of slurm/profiles/*.yaml or a file",
    "local": "local.workers=N: cells trained side by side on this machine (default: one per core without a GPU)",
    "dry_run": "true: validate every key, print one row per cell and run nothing",
    "wait": "launcher=slurm: true blocks until the grid is done, then prints the table",
    "runs_dir": "where run folders go: <runs_dir>/<grid>/<cell>/ (default runs)",
}
CELL_HELP_KEYS = ("train.steps", "train.batch_size", "train.lr", "train.grad_clip", "model.size", "model.conditioning",
                  "data.kind", "data.path", "data.resolution", "sample.steps", "sample.cfg_scale", "sample.seeds",
                  "sample.prompt_sets", "eval.metrics")


def usage() -> str:
    """`python ablations/run.py --help`: the run options, the grids, the profiles and the cell keys
    that matter, with their defaults."""
    from gentron.config import default_config

    defaults = RunOptions()
    lines = ["usage: python ablations/run.py [key=value ...]", "",
             "Plan an ablation grid, then run it here or on SLURM. Every argument is an override key=value "
             "(Hydra's grammar: lists as [a,b], strings with spaces in quotes); every key and value is checked "
             "before anything runs.", "", "run options:"]
    for name in RUN_KEYS:
        value = getattr(defaults, name)
        shown = "local.workers=null" if name == "local" else f"{name}={_override_text(value)}"
        lines.append(f"  {shown:<28} {RUN_HELP[name]}")
    lines += ["", "grids (grid=<name>):"]
    for name in available_grids():
        description = (_load_yaml(GRIDS_DIR / f"{name}.yaml").get("description") or "").strip()
        lines.append(f"  {name:<28} {description}")
    lines += ["", f"profiles (profile=<name>): {', '.join(available_profiles())}", "",
              f"cell-config keys (sections {', '.join(CELL_SECTIONS)}; DESIGN.md lists them all), with the "
              "embedded defaults:"]
    config = to_dict(default_config())
    for key in CELL_HELP_KEYS:
        section, name = key.split(".")
        lines.append(f"  {key}={_override_text(config[section][name])}")
    lines += ["", "examples:",
              "  python ablations/run.py grid=conditioning seeds=[0,1,2] train.steps=500",
              "  python ablations/run.py grid=text_encoder profile=paper slurm=my_cluster.yaml data.path=... dry_run=true",
              "  python ablations/run.py grid=text_encoder profile=paper launcher=slurm slurm=my_cluster.yaml "
              "data.path=... action=status"]
    return "\n".join(lines)


def _override_text(value: Any) -> str:
    """A value as an override writes it: null, true, [a,b], 7000, CS/2."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_text(v) for v in value) + "]"
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
    grid.encoder_store = str(Path(run.runs_dir) / ENCODER_STORE)
    grid.runs_dir = str(run.runs_dir)
    for key in [k for k in overrides if k.split(".")[0] == "encoders"]:
        name = key.split(".")[1] if key.count(".") >= 2 else None
        if name is None or name not in (grid.get("encoders") or {}):
            known = ", ".join(f"encoders.{n}" for n in (grid.get("encoders") or {})) or "none"
            raise ConfigError(f"{key}: the grid's trained encoders are {known}; set a recipe key as "
                              "encoders.<name>.<key>=value, e.g. encoders.clip.steps=500")
        OmegaConf.update(grid, key, overrides.pop(key), merge=True)
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
    seeds = grid.get("seeds")
    seeds = [0] if seeds is None else list(seeds)
    if not seeds:
        raise ConfigError(f"grid '{grid.name}': seeds=[] is empty; give at least one training seed, e.g. seeds=[0]")
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
    encoders = _trained_encoders(container, raw, where)
    _init_from_grid(container, raw, seed, overrides, where)
    try:
        config = to_dict(load_config(container))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    check_evaluation(config, where)
    labels = grid.get("labels") or {}
    axes = {axis: labels.get(axis, {}).get(arm, arm) for axis, arm in arms.items()}
    return Cell(grid=grid.name, cell_id=cell_id(config), axes={**axes, "seed": seed}, arms=arms,
                config=config, profile=grid.profile, encoders=encoders)


def _init_from_grid(container: dict, raw: dict, seed: int, overrides: dict[str, Any], where: str) -> None:
    """`train.init_from: {grid: conditioning, arms: {conditioning: cross_attn}}`: start from the final
    checkpoint of that cell of another grid (same profile, runs_dir, seed and command-line overrides),
    e.g. a text-to-video model from its text-to-image model. Resolved to the checkpoint's path; the
    other grid must have run first (its cell id is in the path, so a changed source is a new cell)."""
    ref = (container.get("train") or {}).get("init_from")
    if not isinstance(ref, dict):
        return
    if set(ref) - {"grid", "arms"} or "grid" not in ref:
        raise ConfigError(f"{where}: train.init_from as a mapping is {{grid: <name>, arms: {{axis: arm}}}}, got {ref}")
    source = load_grid(ref["grid"], raw["profile"])
    source.runs_dir = raw.get("runs_dir") or "runs"
    source.encoder_store = str(Path(source.runs_dir) / ENCODER_STORE)
    arms = dict(ref.get("arms") or {})
    axes = OmegaConf.to_container(source.axes, resolve=False)
    for axis in axes:
        if axis not in arms:
            raise ConfigError(f"{where}: train.init_from names grid '{ref['grid']}' without an arm of its axis "
                              f"'{axis}' ({', '.join(axes[axis])})")
        if arms[axis] not in axes[axis]:
            raise ConfigError(f"{where}: train.init_from: grid '{ref['grid']}' has no arm '{arms[axis]}' on axis "
                              f"'{axis}' ({', '.join(axes[axis])})")
    swept = {key for arm in axes.values() for spec in arm.values() for key in spec}
    kept = {k: v for k, v in overrides.items() if k not in swept and k != "train.init_from"}
    cell = make_cell(source, {axis: arms[axis] for axis in axes}, seed, kept)
    container["train"]["init_from"] = str(Path(source.runs_dir) / ref["grid"] / cell.cell_id / runfolder.CHECKPOINT)


def _trained_encoders(container: dict, raw: dict, where: str) -> dict[str, dict]:
    """Replace each `{trained: <name>}` entry of text_encoders by the spec that loads the grid's
    recipe `encoders.<name>` from the encoder store (as real weights load: open_clip folder or
    transformers folder); returns {folder: recipe} for the encoders the cell needs trained first."""
    from gentron.text.pretrain import encoder_spec, load_recipe

    recipes = raw.get("encoders") or {}
    store = raw.get("encoder_store") or ENCODER_STORE
    needed = {}
    for i, spec in enumerate(container.get("text_encoders") or []):
        if not isinstance(spec, dict) or "trained" not in spec:
            continue
        name = spec["trained"]
        if set(spec) != {"trained"}:
            raise ConfigError(f"{where}: text_encoders[{i}] {spec}: a trained encoder is named alone, "
                              "{trained: <name>}; its recipe is the grid's encoders.<name>")
        if name not in recipes:
            raise ConfigError(f"{where}: text_encoders[{i}] names trained encoder {name!r}, which the grid's "
                              f"`encoders` section does not define (it has: {', '.join(recipes) or 'none'})")
        try:
            recipe = load_recipe(recipes[name])
        except ConfigError as e:
            raise ConfigError(f"{where}: encoders.{name}: {e}") from e
        container["text_encoders"][i] = encoder_spec(recipe, store)
        needed[str(Path(store) / recipe.folder_name())] = dataclasses.asdict(recipe)
    return needed


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
