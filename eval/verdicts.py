"""Verdicts: is an arm better than the grid's control, by how much, and how sure (docs/verdicts.md).

Paired differences. Arms of a grid share their prompts, the images' sampling seeds and, per training
seed, the data order, so each arm is compared with the control on the same (training seed, prompt)
pairs: d[s, p] = arm[s, p] - control[s, p], over the training seeds both arms ran and the prompts
every one of those cells scored (images instead of prompts with `unit="image"`, or where a metric
has per-image rows only). The difference is the mean of d over seeds and prompts; its interval and
two-sided p-value come from one of two procedures (`method`):

- `bootstrap`, the hierarchical bootstrap: each replicate draws the training seeds with replacement
  and, within each drawn seed, its prompts with replacement (the pairs stay together); percentile
  interval, and p = twice the smaller share of replicates on either side of zero (the test the
  interval inverts, so p < level exactly when the interval leaves out zero). With one training seed
  it is the paired bootstrap over prompts, draw for draw `eval.stats.paired_bootstrap`.
- `t`, seeds x prompts variance components: the same mean, with the half-width
  sqrt(t_{S-1}^2 * MS_seeds / (S P) + z^2 * max(MS_prompts - MS_resid, 0) / (S P)) of the two-way
  (seed x prompt) layout: the seed term carries its S - 1 degrees of freedom, the prompt term the
  spread of the prompt population that every seed shares; p is the level at which the interval
  touches zero. Without the prompt term this is the paired t-test on the seeds' mean differences.

`auto` (the default) is `bootstrap` for one training seed and `t` for two or more. Why: with 2-5
seeds the bootstrap's seed level sees only S values; it under-states their spread by (S - 1)/S
and reads its quantiles as if the seed means were known, so with real seed-to-seed variance it
calls 10-20% of null comparisons separated at level 0.05 (tests/test_verdicts_calibration.py
measures this). The `t` interval keeps 95% coverage from one seed-variance extreme to the other.
A permutation test is no answer either: with 3 seeds only 2^3 sign patterns of the seeds exist
(smallest p 0.25), and flipping signs per prompt ignores the seeds' spread.

One training seed cannot measure seed-to-seed variance: its verdict is about that training run, and
the browser and printed tables say so. `plan_seeds` says how many seeds a claim needs.

Multiplicity: Holm's step-down correction over every comparison of one grid (arms x metrics) by
default, Benjamini-Hochberg (`scipy.stats.false_discovery_control`) as an option. A comparison is
`better` / `worse` (the arm against the control, in the metric's direction) when its adjusted p is
below the level, else `not separated`. Intervals are per comparison at 1 - level, not adjusted.

Set-level metrics (FID, KID) have no per-prompt rows: `set_difference` bootstraps images for the
difference of a statistic of two sets of per-image features (or of two index callbacks, as
`eval.stats.bootstrap_statistic` takes), and `combine_seed_differences` pools several seeds.

This module reads a run folder through the files DESIGN.md fixes (cell.json, eval/<metric>.json,
grid.yaml) and imports only numpy, scipy, pandas and eval.stats.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

log = logging.getLogger(__name__)

LEVEL = 0.05
N_BOOT = 2000
METHODS = ("auto", "bootstrap", "t")
CORRECTIONS = ("holm", "bh", "none")
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no correction"}
BETTER, WORSE, NOT_SEPARATED = "better", "worse", "not separated"
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


# ---------------------------------------------------------------- the paired difference


@dataclass(frozen=True)
class Difference:
    """One paired comparison: `difference` = mean(arm) - mean(control) with its (1 - level) interval."""
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n_seeds: int
    n_units: int
    method: str  # bootstrap | t
    level: float = LEVEL

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def paired_difference(arm, control, *, method: str = "auto", level: float = LEVEL, n_boot: int = N_BOOT,
                      seed: int = 0) -> Difference:
    """The paired difference arm - control of two score tables.

    `arm` and `control` are {training seed: {unit id: score}} (a unit is a prompt, or an image), or
    DataFrames with columns seed, unit, value. The pairs are the seeds both have and, for those, the
    units every one of those seeds scored in both arms (a balanced seeds x units table)."""
    d, _, _ = paired_table(_as_nested(arm), _as_nested(control))
    return _difference_of(d, method, level, n_boot, seed)


def paired_table(arm: Mapping, control: Mapping) -> tuple[np.ndarray, list, list]:
    """(d, seeds, units): d[s, u] = arm - control over the shared seeds and the units every shared
    seed scored in both arms (sorted as eval.stats.paired_bootstrap sorts prompt ids: by str)."""
    seeds = sorted(set(arm) & set(control), key=_sort_key)
    if not seeds:
        raise ValueError(f"the two arms share no training seed (arm: {sorted(arm, key=str)}, control: "
                         f"{sorted(control, key=str)}); run both arms with the same seeds=[...]")
    units = set.intersection(*(set(arm[s]) & set(control[s]) for s in seeds))
    if not units:
        raise ValueError(f"the two arms share no scored prompt over seeds {seeds}: were they evaluated on the "
                         "same prompt set?")
    units = sorted(units, key=str)
    d = np.array([[float(arm[s][u]) - float(control[s][u]) for u in units] for s in seeds], dtype=np.float64)
    return d, seeds, units


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def _as_nested(table) -> dict:
    if isinstance(table, pd.DataFrame):
        out: dict = {}
        for s, u, v in zip(table["seed"], table["unit"], table["value"]):
            out.setdefault(s, {})[u] = v
        return out
    if isinstance(table, Mapping) and table and not isinstance(next(iter(table.values())), Mapping):
        return {0: dict(table)}  # {unit: score}: one seed
    return {s: dict(v) for s, v in table.items()}


def _difference_of(d: np.ndarray, method: str, level: float, n_boot: int, seed: int) -> Difference:
    out = difference_batch(d[None], method=method, level=level, n_boot=n_boot, seed=seed)
    return Difference(float(out["difference"][0]), float(out["ci_low"][0]), float(out["ci_high"][0]),
                      float(out["p_value"][0]), int(d.shape[0]), int(d.shape[1]), out["method"], level)


def resolve_method(method: str, n_seeds: int) -> str:
    if method not in METHODS:
        raise ValueError(f"method '{method}' is not one of {', '.join(METHODS)}")
    if method == "auto":
        return "bootstrap" if n_seeds == 1 else "t"
    return method


def difference_batch(d: np.ndarray, *, method: str = "auto", level: float = LEVEL, n_boot: int = N_BOOT,
                     seed: int = 0) -> dict:
    """The paired difference of many seeds x units tables at once: d is (n, S, P); returns arrays of n
    `difference`, `ci_low`, `ci_high`, `p_value` and the `method` used. Every table gets the same
    bootstrap draws (they are independent of the data), which is what makes a simulation of
    thousands of grids take seconds; paired_difference is this with n = 1."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 3 or d.shape[1] < 1 or d.shape[2] < 1:
        raise ValueError(f"difference_batch needs (tables, seeds, units) with at least one of each, got {d.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    method = resolve_method(method, d.shape[1])
    if method == "bootstrap":
        replicates = _hierarchical_replicates(d, n_boot, seed)
        low, high = np.quantile(replicates, [level / 2, 1 - level / 2], axis=-1)
        p = np.minimum(2 * np.minimum((replicates <= 0).mean(-1), (replicates >= 0).mean(-1)), 1.0)
        estimate = d.mean(axis=(1, 2))
        return {"difference": estimate, "ci_low": low, "ci_high": high, "p_value": p, "method": method}
    estimate, seed_term, prompt_term, df = _components_terms(d)
    half = _half_width(seed_term, prompt_term, df, level)
    p = _components_p(estimate, seed_term, prompt_term, df)
    return {"difference": estimate, "ci_low": estimate - half, "ci_high": estimate + half, "p_value": p,
            "method": method}


def _hierarchical_replicates(d: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n, n_boot) replicate means: seeds drawn with replacement, then within each drawn seed its
    units with replacement. One seed: the draws of scipy.stats.bootstrap (rng.integers(0, P, (B, P))
    from default_rng(seed)), so the result is eval.stats.paired_bootstrap's."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    n, S, P = d.shape
    rng = np.random.default_rng(seed)
    out = np.empty((n, n_boot))
    chunk = max(1, int(4_000_000 // (n * S * P)))  # replicates per step: about 32 MB of gathered scores
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        if S == 1:
            counts = _counts(rng.integers(0, P, (k, P)), P)  # (k, P)
            out[:, start:start + k] = d[:, 0, :] @ counts.T / P
            continue
        drawn = rng.integers(0, S, (k, S))
        counts = _counts(rng.integers(0, P, (k * S, P)), P).reshape(k, S, P)
        # replicate b: (1 / S P) sum_j counts[b, j] . d[:, drawn[b, j]]
        out[:, start:start + k] = np.einsum("nbjp,bjp->nb", d[:, drawn, :], counts) / (S * P)
    return out


def _counts(idx: np.ndarray, P: int) -> np.ndarray:
    """How often each unit was drawn, per row of draws: (rows, P) floats (sums of scores stay exact)."""
    rows = idx.shape[0]
    flat = (idx + P * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * P).reshape(rows, P).astype(np.float64)


def _components_terms(d: np.ndarray):
    """Mean, seed term MS_seeds/(S P), prompt term max(MS_prompts - MS_resid, 0)/(S P) and the seed
    term's degrees of freedom, per table. One seed: the paired t over units (P - 1 df)."""
    n, S, P = d.shape
    estimate = d.mean(axis=(1, 2))
    if S == 1:
        var = d[:, 0, :].var(axis=-1, ddof=1) if P > 1 else np.zeros(n)
        return estimate, var / P, np.zeros(n), max(P - 1, 1)
    seed_means = d.mean(axis=2)
    ms_seeds = P * seed_means.var(axis=1, ddof=1)
    prompt_term = np.zeros(n)
    if P > 1:
        prompt_means = d.mean(axis=1)
        ms_prompts = S * prompt_means.var(axis=1, ddof=1)
        resid = d - seed_means[:, :, None] - prompt_means[:, None, :] + estimate[:, None, None]
        ms_resid = (resid ** 2).sum(axis=(1, 2)) / ((S - 1) * (P - 1))
        prompt_term = np.maximum(ms_prompts - ms_resid, 0.0) / (S * P)
    return estimate, ms_seeds / (S * P), prompt_term, S - 1


def _half_width(seed_term, prompt_term, df, level):
    t = stats.t.isf(level / 2, df)
    z = stats.norm.isf(level / 2)
    return np.sqrt(t * t * seed_term + z * z * prompt_term)


def _components_p(estimate, seed_term, prompt_term, df, iterations: int = 80) -> np.ndarray:
    """The two-sided level at which the interval's half-width equals |estimate| (bisection on the
    log of the tail probability; the half-width falls as the level rises)."""
    target = np.abs(estimate)
    zero_var = (seed_term + prompt_term) <= 0
    lo = np.full(target.shape, math.log(1e-300))  # log tail probabilities: half-width(lo) >= target
    hi = np.full(target.shape, math.log(0.5))  # half-width(hi) = 0 <= target
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(iterations):
            mid = (lo + hi) / 2
            wide = _half_width(seed_term, prompt_term, df, 2 * np.exp(mid)) >= target
            lo = np.where(wide, mid, lo)
            hi = np.where(wide, hi, mid)
    p = np.minimum(2 * np.exp((lo + hi) / 2), 1.0)
    p = np.where(target == 0, 1.0, p)
    return np.where(zero_var & (target > 0), 0.0, p)


# ---------------------------------------------------------------- set-level metrics


def set_difference(features_a, features_b, statistic: Callable[[np.ndarray], float], *, paired: bool = False,
                   n_boot: int = 200, level: float = LEVEL, seed: int = 0) -> dict:
    """statistic(features_a) - statistic(features_b) for a set-level metric (FID, KID against a fixed
    reference), with a bootstrap over images: each replicate redraws the images of each set with
    replacement (the same rows of both when `paired`: row i of a and of b are the same prompt and
    sampling seed). `statistic` maps an (n, d) array of per-image features to a number, e.g.
    `lambda f: eval.fid.frechet_distance(*eval.fid.feature_stats(f), mu_ref, sigma_ref)`."""
    a, b = np.asarray(features_a), np.asarray(features_b)
    return set_difference_by_index(lambda idx: statistic(a[idx]), lambda idx: statistic(b[idx]), len(a), len(b),
                                   paired=paired, n_boot=n_boot, level=level, seed=seed)


def set_difference_by_index(statistic_a: Callable[[np.ndarray], float], statistic_b: Callable[[np.ndarray], float],
                            n_a: int, n_b: int, *, paired: bool = False, n_boot: int = 200, level: float = LEVEL,
                            seed: int = 0) -> dict:
    """The same from callbacks: `statistic_x(indices)` evaluates the metric on those images of set x
    (eval.stats.bootstrap_statistic's form; eval.fid's `fid_of`). Resampling duplicates images, which
    biases FID upward in both sets; the percentile interval is shifted by the replicates' mean bias
    (as bootstrap_statistic does) and p = twice the smaller share of shifted replicates on either side
    of zero."""
    if min(n_a, n_b) < 2:
        raise ValueError(f"set_difference needs at least 2 images per set, got {n_a} and {n_b}")
    if paired and n_a != n_b:
        raise ValueError(f"paired resampling needs the same images in both sets, got {n_a} and {n_b}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    point = float(statistic_a(np.arange(n_a))) - float(statistic_b(np.arange(n_b)))
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for i in range(n_boot):
        ia = rng.integers(0, n_a, n_a)
        ib = ia if paired else rng.integers(0, n_b, n_b)
        values[i] = float(statistic_a(ia)) - float(statistic_b(ib))
    shifted = values - (values.mean() - point)
    low, high = np.quantile(shifted, [level / 2, 1 - level / 2])
    p = min(2 * min((shifted <= 0).mean(), (shifted >= 0).mean()), 1.0)
    return {"difference": point, "ci_low": float(low), "ci_high": float(high), "p_value": float(p), "n_a": n_a,
            "n_b": n_b, "n_seeds": 1, "paired": paired, "method": "bootstrap over images (bias-shifted percentile)",
            "level": level}


def combine_seed_differences(per_seed: Sequence[dict], *, level: float = LEVEL) -> dict:
    """Several training seeds' set-level differences (set_difference per seed) as one: one seed
    keeps its bootstrap interval; two or more give the t-interval (S - 1 df) over the seeds'
    differences, whose spread already holds each seed's image noise."""
    if not per_seed:
        raise ValueError("combine_seed_differences got no seeds")
    if len(per_seed) == 1:
        return dict(per_seed[0])
    values = np.array([float(x["difference"]) for x in per_seed])
    S = len(values)
    estimate = float(values.mean())
    seed_term = values.var(ddof=1) / S
    half = float(_half_width(seed_term, 0.0, S - 1, level))
    p = float(_components_p(np.array([estimate]), np.array([seed_term]), np.zeros(1), S - 1)[0])
    return {"difference": estimate, "ci_low": estimate - half, "ci_high": estimate + half, "p_value": p,
            "n_seeds": S, "method": "t over the seeds' set-level differences", "level": level}


# ---------------------------------------------------------------- multiplicity and verdicts


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in m)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m:
        order = np.argsort(p[ok], kind="stable")
        scaled = (m - np.arange(m)) * p[ok][order]
        adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
        values = np.empty(m)
        values[order] = adjusted
        out[ok] = values
    return out


def adjust(p_values, correction: str = "holm") -> np.ndarray:
    """Adjusted p-values over one family: `holm` (default), `bh` (scipy.stats.false_discovery_control,
    Benjamini-Hochberg) or `none`."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction '{correction}' is not one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p_values, dtype=np.float64)
    if correction == "none":
        return p.copy()
    if correction == "holm":
        return holm(p)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def verdict(difference: float, p_adjusted: float, higher_is_better: bool | None, level: float = LEVEL) -> str:
    """`better` / `worse` for the arm against the control when p_adjusted < level (in the metric's
    direction; with no known direction: `higher` / `lower`), else `not separated`."""
    if p_adjusted is None or not np.isfinite(p_adjusted) or p_adjusted >= level or difference == 0:
        return NOT_SEPARATED
    if higher_is_better is None:
        return "higher" if difference > 0 else "lower"
    return BETTER if (difference > 0) == bool(higher_is_better) else WORSE


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
    result = _difference_of(d, method, level, n_boot, seed)
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


def _p_text(p) -> str:
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
    shown["p"] = table["p_value"].map(_p_text)
    shown["adjusted p"] = table["p_adjusted"].map(_p_text)
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
                     "compare them with eval.verdicts.set_difference on their per-image features")
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
