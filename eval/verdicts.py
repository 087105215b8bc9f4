"""Verdicts: is an arm better than the grid's control, by how much, and how sure (docs/verdicts.md).

This module reads a grid's run folder (cell.json, eval/<metric>.json, grid.yaml), pairs each arm's
scores with the control's and hands them to eval.paired (the paired differences, Holm/BH and the
verdict rule); it prints, formats and adds the verdicts to results tables.

One training seed cannot measure seed-to-seed variance: its verdict is about that training run, and
the browser and printed tables say so. `eval.planner` says how many seeds a claim needs.
"""
from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from eval.paired import (CORRECTION_NAMES, CORRECTIONS, LEVEL, N_BOOT, adjust, difference_of, paired_table,
                         verdict)

log = logging.getLogger(__name__)

VERDICT_PREFIX = "verdict."
SEED_AXIS = "seed"
AXIS_PREFIX = "axis."
MIN_EFFECT = 0.05
POWER = 0.8
# The direction of the project's evaluators' scores. An evaluator registered in
# ablations/conf/metrics.yaml can record its own with `higher_is_better: true|false|{score: bool}`
# (directions_from_registry reads it).
DEFAULT_DIRECTIONS = {"compshapes_judge": True, "t2i_compbench": True, "clip_score": True, "geneval": True,
                      "fid": False, "kid": False}
# columns of a verdict table (compare / grid_verdicts)
COLUMNS = ["control", "arm", "metric", "difference", "ci_low", "ci_high", "p_value", "p_adjusted", "verdict",
           "higher_is_better", "control_mean", "arm_mean", "n_seeds", "n_units", "unit", "method", "correction",
           "level", "control_cells", "arm_cells"]


# ---------------------------------------------------------------- metric directions


def direction(metric: str, higher_is_better: Mapping[str, bool] | None = None) -> bool | None:
    """Whether a higher value of `metric` ('family/score') is better: the mapping's entry for the
    metric, its family or its score name, else DEFAULT_DIRECTIONS (same order); None if unknown."""
    family, _, score = metric.rpartition("/")
    for table in (higher_is_better or {}, DEFAULT_DIRECTIONS):
        for key in (metric, family, score):
            if key and key in table:
                return bool(table[key])
    return None


def directions_from_registry(path: str | Path) -> dict[str, bool]:
    """The directions an evaluator registry (ablations/conf/metrics.yaml) records: per evaluator an
    optional `higher_is_better: true|false` (every score) or `{score: bool}`. Missing file: {}."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return {}
    out: dict[str, bool] = {}
    for name, entry in raw.items():
        value = entry.get("higher_is_better") if isinstance(entry, dict) else None
        if isinstance(value, bool):
            out[name] = value
        elif isinstance(value, dict):
            out.update({f"{name}/{score}": bool(v) for score, v in value.items()})
    return out


def require_directions(metrics, higher_is_better: Mapping[str, bool] | None = None) -> dict[str, bool]:
    """{metric: higher is better} for every metric, or a ValueError naming those without one."""
    found = {m: direction(m, higher_is_better) for m in metrics}
    missing = sorted(m for m, v in found.items() if v is None)
    if missing:
        raise ValueError(f"no direction known for {', '.join(missing)}: pass higher_is_better="
                         "{'<metric or family or score>': True|False} (or record it in the evaluator's "
                         "ablations/conf/metrics.yaml entry as higher_is_better)")
    return found  # type: ignore[return-value]


# ---------------------------------------------------------------- reading a run folder


def _text(value) -> str:
    return "none" if value is None or (isinstance(value, float) and value != value) else str(value)


def _read_json(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def grid_layout(grid_dir: str | Path) -> dict:
    """What grid.yaml says about the arms: {'order': {axis: [value as shown, ...]}, 'cell_ids': set
    or None}. The order of an axis is the grid file's order of its arms (their labels where the
    profile gives labels); the first arm is the default control."""
    try:
        raw = yaml.safe_load((Path(grid_dir) / "grid.yaml").read_text(encoding="utf-8")) or {}
    except (FileNotFoundError, yaml.YAMLError):
        raw = {}
    labels = raw.get("labels") or {}
    order = {}
    for axis, arms in (raw.get("axes") or {}).items():
        names = list(arms) if isinstance(arms, (dict, list)) else []
        order[axis] = [_text((labels.get(axis) or {}).get(a, a)) for a in names]
    ids = raw.get("cell_ids")
    return {"order": order, "cell_ids": {str(i) for i in ids} if isinstance(ids, list) else None}


def read_scores(grid_dir: str | Path, *, metrics: Sequence[str] | None = None, unit: str = "prompt",
                cell_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Every scored unit of every cell with evaluator output: one row per (cell, metric, unit) with
    cell_id, seed (the training seed: the `seed` axis, 0 without one), metric ('family/score'),
    unit (a prompt: '<category>/<prompt_id>'; an image: '<category>/<prompt_id>/<seed>/<index>'),
    value, unit_kind and one `axis.<name>` column per other axis (the values cells show), plus
    `arm_key.<name>` (the grid file's arm names, where cell.json records them).

    unit='prompt' reads an evaluator's per_prompt rows, or its per_image rows where it has no
    per-prompt rows; unit='image' reads per_image rows. Set-level outputs (no rows: FID, KID) are
    listed in the table's attrs['set_level'] as {metric: [cell ids]}."""
    if unit not in ("prompt", "image"):
        raise ValueError(f"unit must be 'prompt' or 'image', got '{unit}'")
    grid_dir = Path(grid_dir)
    wanted = None if cell_ids is None else {str(c) for c in cell_ids}
    frames, set_level = [], {}
    for cell_dir in sorted(p for p in grid_dir.iterdir() if p.is_dir() and (p / "cell.json").exists()):
        info = _read_json(cell_dir / "cell.json")
        cell_id = str(info.get("cell_id", cell_dir.name))
        if wanted is not None and cell_id not in wanted:
            continue
        axes = dict(info.get("axes") or {})
        train_seed = axes.pop(SEED_AXIS, 0)
        keys = {f"arm_key.{k}": _text(v) for k, v in (info.get("arms") or {}).items() if k != SEED_AXIS}
        for path in sorted((cell_dir / "eval").glob("*.json")):
            result = _read_json(path)
            family = str(result.get("metric", path.stem))
            rows, kind = _unit_rows(result, unit)
            if not rows:
                if result.get("aggregate"):
                    for score in result["aggregate"]:
                        set_level.setdefault(f"{family}/{score}", []).append(cell_id)
                continue
            frame = pd.DataFrame(rows, columns=["unit", "score", "value"])
            frame["metric"] = family + "/" + frame["score"].astype(str)
            if metrics is not None:
                frame = frame[frame["metric"].isin(metrics)]
            frames.append(frame.drop(columns="score").assign(
                cell_id=cell_id, seed=train_seed, unit_kind=kind,
                **{AXIS_PREFIX + k: _text(v) for k, v in axes.items()}, **keys))
    columns = ["cell_id", "seed", "metric", "unit", "value", "unit_kind"]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    table = table.dropna(subset=["value"])
    table.attrs["set_level"] = set_level
    return table


def _unit_rows(result: dict, unit: str) -> tuple[list[tuple], str]:
    per_prompt = result.get("per_prompt") or []
    if unit == "prompt" and per_prompt:
        return [(f"{r.get('category', '')}/{r.get('prompt_id')}", k, v) for r in per_prompt
                for k, v in (r.get("scores") or {}).items() if isinstance(v, (int, float))], "prompt"
    rows = [(f"{r.get('category', '')}/{r.get('prompt_id')}/{r.get('seed')}/{r.get('index', r.get('file'))}", k, v)
            for r in result.get("per_image") or [] for k, v in (r.get("scores") or {}).items()
            if isinstance(v, (int, float))]
    return rows, "image"


# ---------------------------------------------------------------- arms and comparisons


@dataclass
class Arms:
    """The arms of a scores table: their labels in grid order, each arm's axis values and cells."""
    axes: list[str]  # the axes that vary between arms (the seed excluded)
    labels: list[str]  # 'conditioning=adaln', in grid order
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # label -> {axis: value shown}
    keys: dict[str, dict[str, str]] = field(default_factory=dict)  # label -> {axis: grid file arm name}
    cells: dict[str, list[str]] = field(default_factory=dict)


def find_arms(scores: pd.DataFrame, order: Mapping[str, list[str]] | None = None) -> Arms:
    """The arms (combinations of the axes that vary, the seed excluded), ordered axis by axis by
    `order` (grid_layout's: the grid file's order of its arms), values it does not name after them."""
    order = order or {}
    axis_cols = [c for c in scores.columns if c.startswith(AXIS_PREFIX)]
    axes = [c.removeprefix(AXIS_PREFIX) for c in axis_cols if scores[c].nunique(dropna=False) > 1]
    cells = scores.drop_duplicates("cell_id")

    def rank(axis: str, value: str):
        listed = order.get(axis, [])
        return (listed.index(value), "") if value in listed else (len(listed), value)

    combos = cells[[AXIS_PREFIX + a for a in axes]].drop_duplicates().values.tolist() if axes else [[]]
    combos.sort(key=lambda combo: [rank(a, v) for a, v in zip(axes, combo)])
    arms = Arms(axes=axes, labels=[])
    for combo in combos:
        label = ", ".join(f"{a}={v}" for a, v in zip(axes, combo)) or "all"
        arms.labels.append(label)
        arms.values[label] = dict(zip(axes, combo))
        mask = np.ones(len(cells), dtype=bool)
        for a, v in zip(axes, combo):
            mask &= (cells[AXIS_PREFIX + a] == v).to_numpy()
        chosen = cells[mask]
        arms.cells[label] = sorted(chosen["cell_id"])
        arms.keys[label] = {a: _first_key(chosen, a, arms.values[label][a]) for a in axes}
    return arms


def _first_key(cells: pd.DataFrame, axis: str, shown: str) -> str:
    """The grid file's name of an arm's value on `axis` (cell.json's `arms`), else the value shown."""
    column = f"arm_key.{axis}"
    if column in cells and cells[column].notna().any():
        return str(cells[column].dropna().iloc[0])
    return shown


def arm_label(scores: pd.DataFrame, arms: Arms) -> pd.Series:
    if not arms.axes:
        return pd.Series("all", index=scores.index)
    label = None
    for a in arms.axes:
        part = a + "=" + scores[AXIS_PREFIX + a].astype(str)
        label = part if label is None else label + ", " + part
    return label


def resolve_control(arms: Arms, control: str | Mapping[str, str] | None) -> str:
    """The control arm's label: the first arm (grid order) by default; a label ('conditioning=adaln'),
    or {axis: value} naming one arm by the values shown or by the grid file's arm names."""
    if not arms.labels:
        raise ValueError("no arms to compare: the grid's cells have no evaluator output yet")
    if control is None:
        return arms.labels[0]
    if isinstance(control, str):
        if control in arms.labels:
            return control
        matches = [label for label in arms.labels if control in arms.values[label].values()
                   or control in arms.keys[label].values()]
    else:
        matches = [label for label in arms.labels
                   if all(arms.values[label].get(a) == _text(v) or arms.keys[label].get(a) == _text(v)
                          for a, v in control.items())]
    if len(matches) != 1:
        raise ValueError(f"control {control!r} names {len(matches)} arms; the arms are: {'; '.join(arms.labels)}")
    return matches[0]


def comparison_pairs(arms: Arms, control: str, pairs: str | Sequence[tuple[str, str]] = "control") -> list[tuple[str, str]]:
    """(reference, arm) pairs: every arm against the control (`control`), every pair of arms (`all`:
    the later arm in grid order against the earlier), or the pairs given as (arm, reference) labels."""
    if pairs == "control":
        return [(control, a) for a in arms.labels if a != control]
    if pairs == "all":
        return [(a, b) for a, b in itertools.combinations(arms.labels, 2)]
    out = []
    for arm, reference in pairs:
        for label in (arm, reference):
            if label not in arms.labels:
                raise ValueError(f"no arm '{label}'; the arms are: {'; '.join(arms.labels)}")
        out.append((reference, arm))
    return out


def compare(scores: pd.DataFrame, *, control: str | Mapping[str, str] | None = None,
            pairs: str | Sequence[tuple[str, str]] = "control", order: Mapping[str, list[str]] | None = None,
            higher_is_better: Mapping[str, bool] | None = None, correction: str = "holm", level: float = LEVEL,
            method: str = "auto", n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Verdicts from a scores table (read_scores): one row per comparison and metric (COLUMNS), the
    difference being arm - control, p adjusted over all the rows (one family). A metric whose
    direction is unknown gets the verdict `higher` / `lower` when separated (direction())."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction '{correction}' is not one of {', '.join(CORRECTIONS)}")
    arms = find_arms(scores, order)
    rows = []
    if len(arms.labels) >= 2:
        reference = resolve_control(arms, control)
        labelled = scores.assign(arm=arm_label(scores, arms))
        tables = {(arm, metric): part for (arm, metric), part in labelled.groupby(["arm", "metric"], sort=False)}
        metrics = sorted(labelled["metric"].unique())
        for ref, arm in comparison_pairs(arms, reference, pairs):
            for metric in metrics:
                a, c = tables.get((arm, metric)), tables.get((ref, metric))
                if a is None or c is None:
                    continue
                rows.append(_one_row(a, c, ref, arm, metric, arms, method, level, n_boot, seed, higher_is_better))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["p_adjusted"] = adjust(table["p_value"].to_numpy(dtype=np.float64), correction) if len(table) else []
    table["verdict"] = [verdict(d, p, h, level) for d, p, h in
                        zip(table["difference"], table["p_adjusted"], table["higher_is_better"])]
    table["correction"] = correction
    table.attrs.update(control=resolve_control(arms, control) if len(arms.labels) >= 2 else None,
                       arms=arms.labels, axes=arms.axes, keys=arms.keys, correction=correction, level=level,
                       m=int(table["p_value"].notna().sum()), set_level=dict(scores.attrs.get("set_level", {})))
    return table


def _one_row(arm_rows: pd.DataFrame, control_rows: pd.DataFrame, reference: str, arm: str, metric: str, arms: Arms,
             method: str, level: float, n_boot: int, seed: int, higher_is_better) -> dict:
    a, c = _nested(arm_rows), _nested(control_rows)
    base = {"control": reference, "arm": arm, "metric": metric, "higher_is_better": direction(metric, higher_is_better),
            "unit": arm_rows["unit_kind"].iloc[0] if "unit_kind" in arm_rows else "prompt", "level": level,
            "control_cells": " ".join(arms.cells[reference]), "arm_cells": " ".join(arms.cells[arm])}
    try:
        d, seeds, units = paired_table(a, c)
    except ValueError as e:
        log.warning("%s: %s vs %s: %s", metric, arm, reference, e)
        return {**base, "difference": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan,
                "n_seeds": 0, "n_units": 0, "method": str(e), "control_mean": np.nan, "arm_mean": np.nan}
    result = difference_of(d, method, level, n_boot, seed)
    arm_mean = float(np.mean([[a[s][u] for u in units] for s in seeds]))
    return {**base, **{k: getattr(result, k) for k in ("difference", "ci_low", "ci_high", "p_value", "n_seeds",
                                                          "n_units", "method")},
            "arm_mean": arm_mean, "control_mean": arm_mean - result.difference}


def _nested(rows: pd.DataFrame) -> dict:
    """{training seed: {unit: value}}; two cells of one arm and seed (left-over cells) are averaged."""
    grouped = rows.groupby(["seed", "unit"], sort=False)["value"].mean()
    out: dict = {}
    for (s, u), v in grouped.items():
        out.setdefault(s, {})[u] = float(v)
    return out


def grid_verdicts(grid_dir: str | Path, *, control: str | Mapping[str, str] | None = None,
                  pairs: str | Sequence[tuple[str, str]] = "control", metrics: Sequence[str] | None = None,
                  higher_is_better: Mapping[str, bool] | None = None, correction: str = "holm",
                  level: float = LEVEL, method: str = "auto", n_boot: int = N_BOOT, seed: int = 0,
                  unit: str = "prompt", cell_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Verdicts of a grid folder: its cells' evaluator outputs (read_scores; by default only the cells
    grid.yaml plans now), arms in the grid file's order, control its first arm unless given, p
    adjusted over every comparison and metric of the grid. See compare for the table."""
    layout = grid_layout(grid_dir)
    if cell_ids is None and layout["cell_ids"] is not None:
        cell_ids = sorted(layout["cell_ids"])
    scores = read_scores(grid_dir, metrics=metrics, unit=unit, cell_ids=cell_ids)
    table = compare(scores, control=control, pairs=pairs, order=layout["order"], higher_is_better=higher_is_better,
                    correction=correction, level=level, method=method, n_boot=n_boot, seed=seed)
    table.attrs["grid"] = Path(grid_dir).name
    return table


# ---------------------------------------------------------------- output


def p_text(p) -> str:
    """A p-value as the tables print it: three decimals, "<0.001" below."""
    if p is None or not np.isfinite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def describe(table: pd.DataFrame) -> str:
    """One sentence: the family, the correction, the level and what the intervals are."""
    n_seeds = sorted({int(n) for n in table["n_seeds"] if n}) if len(table) else []
    correction = table.attrs.get("correction", table["correction"].iloc[0] if len(table) else "holm")
    level = table.attrs.get("level", LEVEL)
    m = table.attrs.get("m", len(table))
    seeds = "/".join(map(str, n_seeds)) or "no"
    text = (f"difference = arm - control, {100 * (1 - level):g}% interval per comparison; verdict at level {level:g} "
            f"after {CORRECTION_NAMES[correction]} over {m} comparisons; {seeds} training seed(s)")
    if n_seeds == [1]:
        text += ": paired bootstrap over prompts, a verdict about this training run (seed-to-seed spread unmeasured)"
    elif n_seeds:
        text += ": seeds x prompts interval (t over seeds, plus the prompt population)"
    return text


def display_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """control, arm, metric, 'difference [lo, hi]', p, adjusted p, verdict, as text."""
    shown = pd.DataFrame({"control": table["control"], "arm": table["arm"], "metric": table["metric"]})
    shown["difference [CI]"] = [f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]" if np.isfinite(d) else "—"
                                for d, lo, hi in zip(table["difference"], table["ci_low"], table["ci_high"])]
    shown["p"] = table["p_value"].map(p_text)
    shown["adjusted p"] = table["p_adjusted"].map(p_text)
    shown["verdict"] = table["verdict"]
    return shown.reset_index(drop=True)


def format_verdicts(table: pd.DataFrame) -> str:
    """The printed verdicts of a grid: a heading sentence and one line per comparison and metric."""
    name = table.attrs.get("grid")
    head = f"verdicts of grid '{name}'" if name else "verdicts"
    if table.empty:
        return f"{head}: nothing to compare (fewer than two arms with evaluator output)"
    lines = [f"{head} against {table.attrs.get('control') or table['control'].iloc[0]}", "  " + describe(table),
             display_table(table).to_string(index=False)]
    set_level = table.attrs.get("set_level") or {}
    if set_level:
        lines.append("  set-level metrics (" + ", ".join(sorted(set_level)) + ") have no per-prompt rows: "
                     "compare them with eval.paired.set_difference on their per-image features")
    return "\n".join(lines)


def add_to_results(results: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """results.parquet's rows (one per cell and metric) with the verdict of their arm against the
    control in columns verdict.control, verdict.difference, verdict.ci_low, verdict.ci_high,
    verdict.p_value, verdict.p_adjusted, verdict.verdict, verdict.correction, verdict.level,
    verdict.method, verdict.n_seeds. Rows of the control itself, of comparisons between other arms
    and of metrics without a verdict keep them empty; the rows themselves are unchanged."""
    control = table.attrs.get("control")
    fields = ["control", "difference", "ci_low", "ci_high", "p_value", "p_adjusted", "verdict", "correction", "level",
              "method", "n_seeds"]
    columns = [VERDICT_PREFIX + f for f in fields]
    chosen = table[table["control"] == control] if control is not None else table.iloc[0:0]
    rows = [{"cell_id": cell, "metric": r["metric"], **{VERDICT_PREFIX + f: r[f] for f in fields}}
            for _, r in chosen.iterrows() for cell in str(r["arm_cells"]).split()]
    extra = pd.DataFrame(rows, columns=["cell_id", "metric", *columns])
    base = results.drop(columns=[c for c in results.columns if c.startswith(VERDICT_PREFIX)])
    return base.merge(extra, on=["cell_id", "metric"], how="left")
