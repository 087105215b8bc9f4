"""The seeds planner: from the variance a grid's cells measured (eval.verdicts' paired differences), how
many training seeds (and prompts) a difference of a given size needs to be separated with a given
power at the corrected level, and what that costs; the dry run prints it (ablations.launch)."""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from eval.paired import CORRECTION_NAMES, CORRECTIONS, LEVEL, _half_width, _sort_key
from eval.paired import paired_table
from eval.verdicts import (MIN_EFFECT, POWER, _nested, arm_label, comparison_pairs, find_arms, grid_layout, read_scores,
                           resolve_control)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Components:
    """Variance components of a paired difference d[seed, prompt] = mu + u_seed + v_prompt + e:
    `between_seed` var(u) (None when one seed gives nothing to measure it with), `prompt` var(v)
    (the prompt population, shared by every seed) and `within` var(e), from the two-way layout's
    mean squares (negative estimates as 0). With one seed, `within` holds var(v) + var(e)."""
    between_seed: float | None
    prompt: float
    within: float
    n_seeds: int
    n_units: int
    source: str = ""

    def variance(self, n_seeds: int, n_units: int) -> float:
        """Var(mean difference) with n_seeds x n_units (the seed term 0 when unmeasured)."""
        return (self.between_seed or 0.0) / n_seeds + self.prompt / n_units + self.within / (n_seeds * n_units)


def variance_components(d, source: str = "") -> Components:
    """Components of one seeds x units table of paired differences (paired_table's d), or of one
    arm's scores (then a difference of two independent arms has twice each: pilot_components)."""
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    S, P = d.shape
    if P < 2:
        raise ValueError("variance_components needs at least 2 prompts per seed")
    if S == 1:
        return Components(None, 0.0, float(d.var(ddof=1)), 1, P, source)
    grand = d.mean()
    seed_means, unit_means = d.mean(1), d.mean(0)
    ms_seeds = P * seed_means.var(ddof=1)
    ms_units = S * unit_means.var(ddof=1)
    resid = d - seed_means[:, None] - unit_means[None, :] + grand
    ms_resid = float((resid ** 2).sum() / ((S - 1) * (P - 1)))
    return Components(max(0.0, (ms_seeds - ms_resid) / P), max(0.0, (ms_units - ms_resid) / S), ms_resid, S, P,
                      source)


def pilot_components(scores: pd.DataFrame, metric: str, *, control: str | Mapping[str, str] | None = None,
                     order: Mapping[str, list[str]] | None = None) -> Components:
    """Components for `metric` from measured cells: the mean, component by component, over the
    paired differences of every arm against the control when there are two arms or more; from a
    single arm (a pilot of k seeds of one arm), twice its own components (two independent arms)."""
    part = scores[scores["metric"] == metric]
    if part.empty:
        raise ValueError(f"no scores of {metric} in these cells")
    arms = find_arms(part, order)
    labelled = part.assign(arm=arm_label(part, arms))
    if len(arms.labels) >= 2:
        reference = resolve_control(arms, control)
        found = []
        for _, arm in comparison_pairs(arms, reference):
            d, _, _ = paired_table(_nested(labelled[labelled["arm"] == arm]),
                                   _nested(labelled[labelled["arm"] == reference]))
            if d.shape[1] >= 2:
                found.append(variance_components(d))
        if not found:
            raise ValueError(f"{metric}: no two arms share seeds and prompts to measure from")
        seeds = min(c.n_seeds for c in found)
        between = None if seeds < 2 else float(np.mean([c.between_seed for c in found]))
        return Components(between, float(np.mean([c.prompt for c in found])), float(np.mean([c.within for c in found])),
                          seeds, min(c.n_units for c in found), f"paired differences against {reference}")
    nested = _nested(labelled)
    seeds = sorted(nested, key=_sort_key)
    units = sorted(set.intersection(*(set(nested[s]) for s in seeds)), key=str)
    one = variance_components([[nested[s][u] for u in units] for s in seeds])
    return Components(None if one.between_seed is None else 2 * one.between_seed, 2 * one.prompt, 2 * one.within,
                      one.n_seeds, one.n_units, "one arm, doubled for a difference of two independent arms")


def planning_level(alpha: float = LEVEL, m: int = 1, correction: str = "holm") -> float:
    """The per-comparison level a plan must reach: alpha / m for Holm (the level its first step
    tests, the most stringent of all: a conservative bound) and, as a bound too, for BH; alpha when
    uncorrected."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction '{correction}' is not one of {', '.join(CORRECTIONS)}")
    return alpha if correction == "none" else alpha / max(1, m)


def predicted_power(components: Components, n_seeds: int, n_units: int, effect: float = MIN_EFFECT,
                    level: float = LEVEL, grid: int = 400) -> float:
    """Power of the seeds x prompts interval (`t`, n_seeds >= 2) to separate a true difference
    `effect` at two-sided `level`: the mean is normal around `effect`; the seed term's mean square is
    a scaled chi-square with n_seeds - 1 df (integrated over `grid` quantiles), the prompt term taken
    as known. Without a prompt term this is the t-test's power (noncentral t)."""
    if n_seeds < 2:
        raise ValueError("predicted_power plans two seeds or more: one seed cannot separate an arm from seed noise")
    S, P = n_seeds, n_units
    seed_term = ((components.between_seed or 0.0) * P + components.within) / (S * P)  # E[MS_seeds] / (S P)
    prompt_term = components.prompt / P
    sd = math.sqrt(seed_term + prompt_term)
    if sd == 0:
        return 1.0 if effect != 0 else level
    q = (np.arange(grid) + 0.5) / grid
    chi = stats.chi2.ppf(q, S - 1) / (S - 1)
    half = _half_width(seed_term * chi, prompt_term, S - 1, level)
    power = stats.norm.sf((half - effect) / sd) + stats.norm.cdf((-half - effect) / sd)
    return float(power.mean())


@dataclass
class SeedPlan:
    """How many seeds (at each prompt count) reach `power` for `min_effect` at `level`."""
    metric: str
    components: Components
    min_effect: float
    power: float
    level: float
    correction: str
    m: int
    options: list[dict]  # per prompt count: {'units', 'seeds' (None: not within max_seeds), 'power'}
    max_seeds: int

    @property
    def seeds(self) -> int | None:
        """Seeds needed at the measured prompt count."""
        return self.options[0]["seeds"]


def plan_seeds(components: Components, *, min_effect: float = MIN_EFFECT, power: float = POWER,
               alpha: float = LEVEL, m: int = 1, correction: str = "holm", n_units: int | None = None,
               unit_factors: Sequence[int] = (1, 2, 4), max_seeds: int = 100, metric: str = "") -> SeedPlan:
    """Seeds needed to separate a true difference of `min_effect` with probability `power` at the
    level the correction leaves each of `m` comparisons (planning_level: alpha/m for Holm), at the
    measured prompt count times each of `unit_factors`. An unmeasured seed variance (one seed) plans
    with none: the counts are then lower bounds."""
    if min_effect <= 0:
        raise ValueError(f"min_effect must be positive, got {min_effect}")
    level = planning_level(alpha, m, correction)
    base = n_units or components.n_units
    options = []
    for factor in unit_factors:
        units = int(base * factor)
        found = None
        for S in range(2, max_seeds + 1):
            achieved = predicted_power(components, S, units, min_effect, level)
            if achieved >= power:
                found = (S, achieved)
                break
        options.append({"units": units, "seeds": found[0] if found else None, "power": found[1] if found else
                        predicted_power(components, max_seeds, units, min_effect, level)})
    return SeedPlan(metric, components, min_effect, power, level, correction, m, options, max_seeds)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def format_seed_plan(grid_dir: str | Path, *, n_arms: int, per_cell_s: float, workers: int = 1,
                     metrics: Sequence[str] | None = None, min_effect: float = MIN_EFFECT, power: float = POWER,
                     alpha: float = LEVEL, correction: str = "holm", m: int | None = None,
                     per_unit_s: float = 0.0, control: str | Mapping[str, str] | None = None,
                     components: Mapping[str, Components] | None = None) -> str:
    """What the dry run prints: per metric measured in `grid_dir` (its cells' evaluator outputs: an
    earlier run, or a pilot of a few seeds), the seeds needed to separate `min_effect` with `power`
    at the corrected level, at the measured prompt count and at 2x and 4x as many, and the time that
    costs: seeds x n_arms cells of per_cell_s each (plus per_unit_s per extra prompt per cell),
    `workers` cells at a time. `m` defaults to (n_arms - 1) x the metrics planned for (the Holm
    family of the grid's verdicts). `components` ({metric: Components}) replaces the measurement."""
    grid_dir = Path(grid_dir)
    lines = [f"seeds needed to separate a difference of {min_effect:g} with {100 * power:.0f}% power"]
    if components is None:
        if not grid_dir.is_dir():
            return lines[0] + f": nothing measured yet ({grid_dir} does not exist); run a pilot with seeds=[0,1,2]"
        layout = grid_layout(grid_dir)
        scores = read_scores(grid_dir, metrics=metrics, cell_ids=sorted(layout["cell_ids"]) if layout["cell_ids"] else None)
        if scores.empty:
            return lines[0] + f": nothing measured yet (no evaluator output in {grid_dir}); run a pilot with seeds=[0,1,2]"
        found = {}
        for metric in sorted(scores["metric"].unique()):
            try:
                found[metric] = pilot_components(scores, metric, control=control, order=layout["order"])
            except ValueError as e:
                log.info("no variance components for %s: %s", metric, e)
        components = found
    if not components:
        return lines[0] + ": no metric with two arms or two seeds to measure from; run a pilot with seeds=[0,1,2]"
    m = m or max(1, (n_arms - 1) * len(components))
    lines[0] += (f" at level {planning_level(alpha, m, correction):.2g} ({alpha:g} / {m} comparisons: "
                 f"{CORRECTION_NAMES[correction]}'s most stringent step, a conservative bound)")
    unmeasured = False
    for metric, comp in components.items():
        plan = plan_seeds(comp, min_effect=min_effect, power=power, alpha=alpha, m=m, correction=correction,
                          metric=metric)
        parts = []
        for option in plan.options:
            if option["seeds"] is None:
                parts.append(f"{option['units']} prompts: more than {plan.max_seeds} seeds")
                continue
            extra = max(0, option["units"] - comp.n_units) * per_unit_s
            cost = math.ceil(option["seeds"] * n_arms / max(1, workers)) * (per_cell_s + extra)
            parts.append(f"{option['units']} prompts: {option['seeds']} seeds ({option['seeds'] * n_arms} cells, "
                         f"{_duration(cost)})")
        sd = (f"between seeds {math.sqrt(comp.between_seed):.3f}" if comp.between_seed is not None
              else "between seeds unmeasured (1 seed)")
        unmeasured |= comp.between_seed is None
        lines.append(f"  {metric}: sd {sd}, prompts {math.sqrt(comp.prompt):.3f}, within {math.sqrt(comp.within):.3f}"
                     f" -> " + "; ".join(parts))
    if unmeasured:
        lines.append("  (one seed measured: seed-to-seed spread taken as 0, so these are lower bounds; "
                     "a pilot with seeds=[0,1,2] measures it)")
    return "\n".join(lines)
