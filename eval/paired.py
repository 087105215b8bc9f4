"""The statistics of a verdict: paired differences, set-level differences, multiplicity, the rule.

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
the browser and printed tables say so. `eval.planner` says how many seeds a claim needs.

Multiplicity: Holm's step-down correction over every comparison of one grid (arms x metrics) by
default, Benjamini-Hochberg (`scipy.stats.false_discovery_control`) as an option. A comparison is
`better` / `worse` (the arm against the control, in the metric's direction) when its adjusted p is
below the level, else `not separated`. Intervals are per comparison at 1 - level, not adjusted.

Set-level metrics (FID, KID) have no per-prompt rows: `set_difference` bootstraps images for the
difference of a statistic of two sets of per-image features (or of two index callbacks, as
`eval.stats.bootstrap_statistic` takes), and `combine_seed_differences` pools several seeds.

Imports only numpy and scipy.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.05
N_BOOT = 2000
METHODS = ("auto", "bootstrap", "t")
CORRECTIONS = ("holm", "bh", "none")
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no correction"}
BETTER, WORSE, NOT_SEPARATED = "better", "worse", "not separated"


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
    return difference_of(d, method, level, n_boot, seed)


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


def difference_of(d: np.ndarray, method: str, level: float, n_boot: int, seed: int) -> Difference:
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
