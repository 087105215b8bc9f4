"""Grids: compose a grid file with a profile and expand it into cells (the command line: ablations/command_line.py).

A grid file (ablations/grids/<name>.yaml) is data (GridFile, validated by gentron.schema):

    description: one line, shown in the plan and the table
    seeds: [0, 1, 2]                 # the `seed` axis (sets train.seed)
    base: {model.size: T/2, ...}     # cell-config overrides shared by every cell
    axes:                            # axis -> arm -> cell-config overrides (dotted keys)
      conditioning: {adaln: {model.conditioning: adaln}, cross_attn: {model.conditioning: cross_attn}}
    evaluation: {prompt_sets: [...], metrics: [...]}
    encoders: {clip: {objective: clip_contrastive, seed: 0}}   # recipes of text encoders the grid trains
    profiles:                        # per profile, the same keys again, merged on top (OmegaConf)
      embedded: {note: ..., labels: {axis: {arm: shown-as}}, base: ..., axes: ...}
      paper: {...}

Two values of a cell-config key are macros the plan resolves: `text_encoders: [{trained: clip}]`
(TrainedEncoder: the encoder the grid trains from its recipe `encoders.clip`) and
`train.init_from: {grid: conditioning, arms: {conditioning: cross_attn}}` (InitFrom: the final
checkpoint of that cell of another grid).

A cell's config is gentron.config's defaults, then `base`, `evaluation`, the arm of every axis and
the seed, then the command line's cell overrides (`train.steps=20`), validated into one CellConfig
that every stage reads; its id is ablations.identity.cell_id.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import itertools
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ablations import presets, runfolder
from ablations.baselines import baseline_cells
from ablations.command_line import RUN_HELP, RUN_KEYS, RunOptions, override_text, parse_args
from ablations.identity import CELL_SECTIONS, RECIPE_SECTION, cell_id, plan_arguments
from ablations.registries import CONF_DIR, metrics_reading, registry
from gentron import schema
from gentron.config import CellConfig, load_config, resolve
from gentron.specs import ClipSpec, EncoderShape, HFClipSpec, T5Spec
from gentron.errors import ConfigError
from gentron.schema import required

log = logging.getLogger(__name__)

GRIDS_DIR = Path(__file__).parent / "grids"
# A grid's name is its folder under runs_dir: one path component, no `..`, nothing hidden.
GRID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
GRID_FILE_SUFFIXES = (".yaml", ".yml")
# Trained text encoders live in <runs_dir>/ENCODER_STORE/<objective>-<recipe hash>/ (gentron.text.pretrain).
ENCODER_STORE = "encoders"


# --- grid files ---------------------------------------------------------------------------------

@dataclass
class Evaluation:
    prompt_sets: list[str] | None = None  # sample.prompt_sets of every cell
    metrics: list[str] | None = None  # eval.metrics of every cell


@dataclass
class GridSection:
    """The keys of a grid file, of each of its `profiles` and of a profile file (conf/profiles/)."""
    description: str | None = None
    note: str | None = None  # what the profile is, shown with the plan and the results
    seeds: list[int] | None = None
    base: dict[str, Any] = field(default_factory=dict)  # dotted cell-config key -> value
    axes: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # axis -> arm -> {key: value}
    evaluation: Evaluation = field(default_factory=Evaluation)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # axis -> arm -> label shown
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> EncoderRecipe keys
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> eval.baseline.Baseline keys


@dataclass
class GridFile(GridSection):
    profiles: dict[str, GridSection | None] = field(default_factory=dict)


@dataclass
class TrainedEncoder:
    """`text_encoders: [{trained: clip}]`: the text encoder the grid trains from its recipe encoders.clip."""
    trained: str = required("clip")


@dataclass
class InitFrom:
    """`train.init_from: {grid: conditioning, arms: {conditioning: cross_attn}}`: start from the final
    checkpoint of that cell of another grid."""
    grid: str = required("conditioning")
    arms: dict[str, str] = field(default_factory=dict)


@dataclass
class Grid(GridSection):
    """A grid file composed with a profile: what the plan expands. Cell-config values stay as written
    (`???` and `${oc.env:...}` are resolved per cell)."""
    name: str = ""
    profile: str = ""
    runs_dir: str = "runs"
    recipes: dict = field(default_factory=dict)  # name -> validated EncoderRecipe of `encoders`
    source: str = ""  # the grid file
    preset: str | None = None  # the preset layered over it (ablations.presets), which its name ends with

    @property
    def encoder_store(self) -> str:
        return str(Path(self.runs_dir) / ENCODER_STORE)

    def record(self) -> dict:
        """What grid.yaml keeps of the grid (ablations.runfolder.write_grid_record)."""
        keys = [f.name for f in fields(GridSection)]
        return {"name": self.name, "profile": self.profile, "runs_dir": self.runs_dir,
                "encoder_store": self.encoder_store, **{k: _plain(getattr(self, k)) for k in keys}}


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


@dataclass
class Cell:
    grid: str
    cell_id: str
    axes: dict[str, Any]  # {"conditioning": "adaln", "seed": 0}: the values shown everywhere
    arms: dict[str, str]  # {"conditioning": "adaln"}: the grid file's arm names
    config: CellConfig  # the resolved, validated cell config
    profile: str
    # trained text encoders the cell loads: folder -> recipe (gentron.text.pretrain), trained before it
    encoders: dict[str, dict] = field(default_factory=dict)
    baseline: dict | None = None  # a pretrained pipeline sampled in place of training (ablations.baselines)

    def info(self) -> dict:
        """cell.json."""
        return {"grid": self.grid, "cell_id": self.cell_id, "axes": self.axes, "arms": self.arms,
                "profile": self.profile, "prompt_sets": self.config.sample.prompt_sets,
                "metrics": self.config.eval.metrics, **({"encoders": self.encoders} if self.encoders else {}),
                **({"baseline": self.baseline} if self.baseline else {})}

    def recipe(self, spec) -> dict | None:
        """The recipe of a text-encoder spec the grid trains itself (None for other encoders)."""
        return self.encoders.get(spec_folder(spec) or "")

    def shapes(self) -> list[EncoderShape]:
        """Each text encoder's shape; a trained encoder's from its recipe, known before its folder exists."""
        return [recipe_shape(recipe) if (recipe := self.recipe(spec)) is not None else spec.shape()
                for spec in self.config.text_encoders]

    def model(self):
        """The GenTronConfig the cell trains (gentron.config.resolve)."""
        return resolve(self.config, self.shapes())


def spec_folder(spec) -> str | None:
    """The local folder or hub name a text-encoder spec loads its weights from (None: built from a seed
    or named by a model tag)."""
    if isinstance(spec, ClipSpec):
        return spec.model.removeprefix("local-dir:") if spec.model.startswith("local-dir:") else None
    if isinstance(spec, (T5Spec, HFClipSpec)):
        return spec.path
    return None


def recipe_shape(recipe: dict) -> EncoderShape:
    """The shape of the encoder a recipe trains (gentron.text.pretrain): a CLIP text tower of the
    recipe's width projected to its embed_dim over context_length tokens, or a T5 encoder of its
    width over max_length bytes."""
    from gentron.text.pretrain import clip_model_config, load_recipe

    r = load_recipe(recipe)
    if r.objective == "clip_contrastive":
        cfg = clip_model_config(r)
        return EncoderShape(cfg["text_cfg"]["width"], cfg["embed_dim"], cfg["text_cfg"]["context_length"])
    return EncoderShape(r.width, r.width, r.max_length)


@dataclass
class Plan:
    run: DictConfig
    grid: Grid  # the composed grid (profile merged in)
    cells: list[Cell]
    args: list[str] = field(default_factory=list)  # the arguments that plan these cells (identity.plan_arguments)

    @property
    def grid_dir(self) -> Path:
        return Path(self.run.runs_dir) / self.grid.name


# --- the command line ---------------------------------------------------------------------------

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
        shown = "local.workers=null" if name == "local" else f"{name}={override_text(value)}"
        lines.append(f"  {shown:<28} {RUN_HELP[name]}")
    lines += ["", "grids (grid=<name>):"]
    for name in available_grids():
        description = (_load_yaml(GRIDS_DIR / f"{name}.yaml").get("description") or "").strip()
        lines.append(f"  {name:<28} {description}")
    lines += ["", f"profiles (profile=<name>): {', '.join(available_profiles())}", "",
              f"cell-config keys (sections {', '.join(CELL_SECTIONS)}; DESIGN.md lists them all), with the "
              "embedded defaults:"]
    config = default_config()
    for key in CELL_HELP_KEYS:
        section, name = key.split(".")
        lines.append(f"  {key}={override_text(getattr(getattr(config, section), name))}")
    lines += ["", "examples:",
              "  python ablations/run.py grid=conditioning seeds=[0,1,2] train.steps=500",
              "  python ablations/run.py grid=text_encoder profile=paper slurm=my_cluster.yaml data.path=... dry_run=true",
              "  python ablations/run.py grid=text_encoder profile=paper launcher=slurm slurm=my_cluster.yaml "
              "data.path=... action=status"]
    return "\n".join(lines)


def available_grids() -> list[str]:
    return sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "profiles").glob("*.yaml"))


def grid_file(grid: str) -> tuple[str, Path]:
    """(name, file) of `grid=`: a name of ablations/grids (conditioning), or the path of a grid file
    ending in .yaml, whose stem names it (its runs go to <runs_dir>/<stem>/). Anything else that
    could lead outside runs_dir (a path separator, `..`) is refused."""
    grid = str(grid)
    if grid.endswith(GRID_FILE_SUFFIXES):
        path = Path(grid).expanduser()
        if not GRID_NAME.fullmatch(path.stem) or ".." in path.stem:
            raise ConfigError(f"grid={grid}: the file's name '{path.stem}' cannot name a runs folder; rename it to "
                              "letters, digits, '_', '-' and '.' (its runs go to <runs_dir>/<its name>/)")
        if not path.is_file():
            shipped = f"; or grid={path.stem} for the grid of ablations/grids" if path.stem in available_grids() else ""
            raise ConfigError(f"grid file {path} {'is not a file' if path.exists() else 'does not exist'}"
                              f"{shipped}")
        return path.stem, path.resolve()
    if not GRID_NAME.fullmatch(grid) or ".." in grid:
        raise ConfigError(f"grid={grid!r} is not a grid name: give a name of ablations/grids "
                          f"({', '.join(available_grids())}) or the path of a grid file ending in .yaml")
    return grid, GRIDS_DIR / f"{grid}.yaml"


def load_grid(name: str, profile: str, runs_dir: str = "runs", recipe_overrides: dict[str, Any] | None = None) -> Grid:
    """conf/profiles/<profile>.yaml, then the grid file, then the grid's `profiles[profile]` section,
    then `encoders.<name>.<key>` overrides; each file checked key by key (gentron.schema). `name` is a
    grid's name or the path of a grid file (grid_file)."""
    name, path = grid_file(name)
    if not path.exists():
        close = difflib.get_close_matches(name, available_grids(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown grid '{name}'{hint}; grids: {', '.join(available_grids())} "
                          f"(files in {GRIDS_DIR}), or the path of a grid file ending in .yaml")
    if profile not in available_profiles():
        raise ConfigError(f"unknown profile '{profile}'; profiles: {', '.join(available_profiles())}")
    raw = _load_yaml(path)
    schema.parse(GridFile, _container(raw), source=str(path))
    sections = raw.pop("profiles", {}) or {}
    if profile not in sections:
        raise ConfigError(f"grid '{name}' has no profile '{profile}'; its profiles: {', '.join(sections)}")
    profile_path = CONF_DIR / "profiles" / f"{profile}.yaml"
    defaults = _load_yaml(profile_path)
    schema.parse(GridSection, _container(defaults), source=str(profile_path))
    merged = OmegaConf.merge(defaults, raw, sections[profile] or {})
    for key, value in (recipe_overrides or {}).items():
        recipe = key.split(".")[1] if key.count(".") >= 2 else None
        if recipe is None or recipe not in (merged.get("encoders") or {}):
            known = ", ".join(f"encoders.{n}" for n in (merged.get("encoders") or {})) or "none"
            raise ConfigError(f"{key}: the grid's trained encoders are {known}; set a recipe key as "
                              "encoders.<name>.<key>=value, e.g. encoders.clip.steps=500")
        OmegaConf.update(merged, key, value, merge=True)
    where = f"grid '{name}' (profile {profile})"
    section = schema.parse(GridSection, _container(merged), source=where)
    if not section.axes:
        raise ConfigError(f"{path} defines no axes for profile '{profile}'")
    from gentron.text.pretrain import load_recipe

    try:
        recipes = {n: load_recipe(values, f"{RECIPE_SECTION}.{n}") for n, values in section.encoders.items()}
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return Grid(**{f.name: getattr(section, f.name) for f in fields(GridSection)}, name=name, profile=profile,
                runs_dir=str(runs_dir), recipes=recipes, source=str(path))


def _load_yaml(path: Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e


def _container(node: DictConfig) -> dict:
    """A grid's keys as plain data; `???` and `${...}` stay as written, resolved per cell."""
    return OmegaConf.to_container(node, resolve=False) or {}


# --- expansion ----------------------------------------------------------------------------------

def plan(argv: list[str]) -> Plan:
    """Parse, compose and expand: every error a user can cause surfaces here, before anything runs."""
    run, overrides = parse_args(argv)
    recipes = {k: overrides.pop(k) for k in list(overrides) if k.split(".")[0] == RECIPE_SECTION}
    grid = presets.apply(load_grid(run.grid, run.profile, run.runs_dir, recipes), run.preset, recipes)
    _check_folder(Path(run.runs_dir) / grid.name, "the grid's runs folder")
    if run.seeds is not None:
        grid.seeds = list(run.seeds)
    cells = expand(grid, overrides) + baseline_cells(grid, overrides, make_cell)
    log.debug("grid %s (%s): %d cells", run.grid, run.profile, len(cells))
    named = grid.source if grid.source != str(GRIDS_DIR / f"{Path(grid.source).stem}.yaml") else Path(grid.source).stem
    return Plan(run=run, grid=grid, cells=cells, args=plan_arguments(named, run.profile, list(argv)))


def _check_folder(path: Path, what: str) -> None:
    """A folder the run will write must not be a file."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder; move the file away, or choose another "
                          "runs_dir=")


def expand(grid: Grid, overrides: dict[str, Any]) -> list[Cell]:
    swept = {key: axis for axis, arms in grid.axes.items() for spec in arms.values() for key in spec}
    for key in overrides:
        clash = [k for k in swept if k == key or k.startswith(key + ".") or key.startswith(k + ".")]
        if clash:
            raise ConfigError(f"{key} is set by the grid's axis '{swept[clash[0]]}'; "
                              f"override another key or edit {grid.source or GRIDS_DIR / (grid.name + '.yaml')}")
    seeds = [0] if grid.seeds is None else list(grid.seeds)
    if not seeds:
        raise ConfigError(f"grid '{grid.name}': seeds=[] is empty; give at least one training seed, e.g. seeds=[0]")
    cells = []
    for combo in itertools.product(*[[(axis, arm) for arm in arms] for axis, arms in grid.axes.items()], seeds):
        *chosen, seed = combo
        cells.append(make_cell(grid, dict(chosen), seed, overrides))
    _check_distinct(cells, grid.name)
    return cells


def make_cell(grid: Grid, arms: dict[str, str], seed: int, overrides: dict[str, Any]) -> Cell:
    cfg = OmegaConf.create({})
    evaluation = grid.evaluation
    updates = list(grid.base.items())
    updates += [(key, value) for key, value in (("sample.prompt_sets", evaluation.prompt_sets),
                                                ("eval.metrics", evaluation.metrics)) if value is not None]
    updates += [(k, v) for axis, arm in arms.items() for k, v in grid.axes[axis][arm].items()]
    updates += [("train.seed", seed)] + list(overrides.items())
    for key, value in updates:
        OmegaConf.update(cfg, key, value, merge=True)
    where = f"grid '{grid.name}' (profile {grid.profile}), cell {arms} seed {seed}"
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{where}: {e.full_key} has no value (??? in the grid file); "
                          f"pass it on the command line, e.g. {e.full_key}=...") from e
    encoders = _trained_encoders(container, grid, where)
    _init_from_grid(container, grid, seed, overrides, where)
    try:
        config = load_config(container)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    config.eval.metrics = metrics_reading(config.eval.metrics, config.sample.prompt_sets, overrides)
    check_evaluation(config, where)
    axes = {axis: grid.labels.get(axis, {}).get(arm, arm) for axis, arm in arms.items()}
    return Cell(grid=grid.name, cell_id=cell_id(config), axes={**axes, "seed": seed}, arms=arms,
                config=config, profile=grid.profile, encoders=encoders)


def _init_from_grid(container: dict, grid: Grid, seed: int, overrides: dict[str, Any], where: str) -> None:
    """`train.init_from: {grid: conditioning, arms: {conditioning: cross_attn}}` (InitFrom): start from
    the final checkpoint of that cell of another grid (same profile, runs_dir, seed and command-line
    overrides), e.g. a text-to-video model from its text-to-image model. Resolved to the checkpoint's
    path; the other grid must have run first (its cell id is in the path, so a changed source is a new cell)."""
    value = (container.get("train") or {}).get("init_from")
    if not isinstance(value, dict):
        return
    try:
        ref = schema.parse(InitFrom, value, "train.init_from")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    source = presets.apply(load_grid(ref.grid, grid.profile, grid.runs_dir), grid.preset)
    for axis, arms in source.axes.items():
        if axis not in ref.arms:
            raise ConfigError(f"{where}: train.init_from names grid '{ref.grid}' without an arm of its axis "
                              f"'{axis}' ({', '.join(arms)})")
        if ref.arms[axis] not in arms:
            raise ConfigError(f"{where}: train.init_from: grid '{ref.grid}' has no arm '{ref.arms[axis]}' on axis "
                              f"'{axis}' ({', '.join(arms)})")
    swept = {key for arms in source.axes.values() for spec in arms.values() for key in spec}
    kept = {k: v for k, v in overrides.items() if k not in swept and k != "train.init_from"}
    cell = make_cell(source, {axis: ref.arms[axis] for axis in source.axes}, seed, kept)
    container["train"]["init_from"] = str(Path(source.runs_dir) / source.name / cell.cell_id / runfolder.CHECKPOINT)


def _trained_encoders(container: dict, grid: Grid, where: str) -> dict[str, dict]:
    """Replace each `{trained: <name>}` entry of text_encoders (TrainedEncoder) by the spec that loads
    the grid's recipe `encoders.<name>` from the encoder store (as real weights load: open_clip folder
    or transformers folder); returns {folder: recipe} for the encoders the cell needs trained first."""
    from gentron.text.pretrain import encoder_spec

    needed = {}
    for i, spec in enumerate(container.get("text_encoders") or []):
        if not isinstance(spec, dict) or "trained" not in spec:
            continue
        try:
            name = schema.parse(TrainedEncoder, spec, f"text_encoders[{i}]").trained
        except ConfigError as e:
            raise ConfigError(f"{where}: {e} (a trained encoder is named alone, {{trained: <name>}}; its recipe "
                              "is the grid's encoders.<name>)") from None
        if name not in grid.recipes:
            raise ConfigError(f"{where}: text_encoders[{i}] names trained encoder {name!r}, which the grid's "
                              f"`encoders` section does not define (it has: {', '.join(grid.recipes) or 'none'})")
        recipe = grid.recipes[name]
        container["text_encoders"][i] = encoder_spec(recipe, grid.encoder_store)
        needed[str(Path(grid.encoder_store) / recipe.folder_name())] = dataclasses.asdict(recipe)
    return needed


def check_evaluation(config: CellConfig, where: str) -> None:
    """Every prompt set must be known and every metric must read one of the cell's prompt sets."""
    sets, metrics = registry("prompt_sets"), registry("metrics")
    for name in config.sample.prompt_sets:
        if name not in sets:
            raise ConfigError(f"{where}: unknown prompt set '{name}'; known: {', '.join(sets)} "
                              f"({CONF_DIR / 'prompt_sets.yaml'})")
    for name in config.eval.metrics:
        if name not in metrics:
            close = difflib.get_close_matches(name, list(metrics), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown metric '{name}'{hint}; known: {', '.join(metrics)}")
        metric_prompt_set(name, config.sample.prompt_sets, where)
    t = config.train
    if t.eval_prompt_set:  # sampled and scored during training (gentron.validation)
        if t.eval_prompt_set not in sets:
            close = difflib.get_close_matches(t.eval_prompt_set, list(sets), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: train.eval_prompt_set: unknown prompt set '{t.eval_prompt_set}'{hint}; "
                              f"known: {', '.join(sets)}")
        for name in t.eval_metrics:
            if name not in metrics:
                close = difflib.get_close_matches(name, list(metrics), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{where}: train.eval_metrics: unknown metric '{name}'{hint}; known: "
                                  f"{', '.join(metrics)}")
            metric_prompt_set(name, [t.eval_prompt_set], f"{where}: train.eval_metrics")


def metric_prompt_set(metric: str, prompt_sets: list[str], where: str = "") -> str:
    """The first of the cell's prompt sets that `metric` reads (ablations/conf/metrics.yaml)."""
    patterns = registry("metrics")[metric]["prompt_sets"]
    for name in prompt_sets:
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            return name
    raise ConfigError(f"{where}: metric '{metric}' reads prompt sets {patterns}, none of which the cell samples "
                      f"({prompt_sets}); add one to sample.prompt_sets")


def _check_distinct(cells: list[Cell], grid: str) -> None:
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.cell_id in seen:
            raise ConfigError(f"grid '{grid}': cells {seen[cell.cell_id].axes} and {cell.axes} resolve to the same "
                              "config; their arms must differ in some cell-config key")
        seen[cell.cell_id] = cell
