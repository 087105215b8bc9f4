"""eval.verdicts calibrated by simulation: thousands of simulated grids whose true difference is
known, run through the same vectorised code as a grid's verdicts (difference_batch is
paired_difference for many tables at once).

Settings measured on the project's grids (docs/ablations.md): 100 held-out prompts per category,
binary judge scores, and a seed-to-seed spread of an arm's colour score of about 0.05-0.1.
"""
from __future__ import annotations

import numpy as np
import pytest

from eval.planner import Components, plan_seeds, planning_level, predicted_power
from eval.paired import difference_batch

N_GRIDS = 2000
LEVEL = 0.05
PROMPTS = 100


def rate(p_values, level=LEVEL) -> float:
    """Share of comparisons called `better` or `worse` at `level` (uncorrected: one comparison)."""
    return float((np.asarray(p_values) < level).mean())


def coverage(out, truth) -> float:
    return float(((out["ci_low"] <= truth) & (truth <= out["ci_high"])).mean())


def binary_one_seed(rng, effect: float) -> np.ndarray:
    """One training seed: per prompt, the control succeeds with probability q ~ U(0.1, 0.7) (prompts
    differ in difficulty) and the arm with q + effect; d = arm - control, (grids, 1, prompts)."""
    q = rng.uniform(0.1, 0.7, (N_GRIDS, 1, PROMPTS))
    control = rng.random(q.shape) < q
    arm = rng.random(q.shape) < q + effect
    return arm.astype(float) - control


def seeds_and_prompts(rng, seeds: int, effect: float, between=0.06, prompt=0.15, within=0.5, grids=N_GRIDS,
                      prompts=PROMPTS) -> np.ndarray:
    """d[s, p] = effect + u_s + v_p + e_sp: seed-to-seed spread of the difference (u), the prompt
    population's (v, shared by every seed) and the rest (e)."""
    return (effect + rng.normal(0, between, (grids, seeds, 1)) + rng.normal(0, prompt, (grids, 1, prompts))
            + rng.normal(0, within, (grids, seeds, prompts)))


def test_one_seed_null_separates_five_percent_and_covers_95():
    """One training seed (the paired bootstrap over prompts), binary scores, no true difference."""
    d = binary_one_seed(np.random.default_rng(11), 0.0)
    out = difference_batch(d, level=LEVEL, n_boot=1000, seed=1)
    assert out["method"] == "bootstrap"
    assert abs(rate(out["p_value"]) - 0.05) <= 0.015, rate(out["p_value"])
    assert abs(coverage(out, 0.0) - 0.95) <= 0.015


def test_one_seed_intervals_cover_a_true_difference():
    d = binary_one_seed(np.random.default_rng(12), 0.1)
    out = difference_batch(d, level=LEVEL, n_boot=1000, seed=2)
    assert abs(coverage(out, 0.1) - 0.95) <= 0.015, coverage(out, 0.1)


@pytest.mark.parametrize("seeds", [3, 5])
def test_several_seeds_null_separates_five_percent_and_covers_95(seeds):
    """Several seeds with seed-to-seed and prompt-to-prompt spread: the seeds x prompts interval."""
    d = seeds_and_prompts(np.random.default_rng(20 + seeds), seeds, 0.0)
    out = difference_batch(d, level=LEVEL)
    assert out["method"] == "t"
    assert abs(rate(out["p_value"]) - 0.05) <= 0.015, rate(out["p_value"])
    assert abs(coverage(out, 0.0) - 0.95) <= 0.015


def test_several_seeds_intervals_cover_a_true_difference():
    d = seeds_and_prompts(np.random.default_rng(30), 3, 0.08)
    out = difference_batch(d, level=LEVEL)
    assert abs(coverage(out, 0.08) - 0.95) <= 0.015, coverage(out, 0.08)


def test_several_seeds_without_seed_spread_stay_calibrated():
    """No seed-to-seed spread and no prompt effect: the interval does not over-react either way."""
    d = seeds_and_prompts(np.random.default_rng(31), 3, 0.0, between=0.0, prompt=0.0)
    out = difference_batch(d, level=LEVEL)
    assert abs(rate(out["p_value"]) - 0.05) <= 0.015, rate(out["p_value"])


def test_the_hierarchical_bootstrap_over_three_seeds_separates_too_often():
    """Why `auto` leaves the bootstrap at one seed: over 3 seeds with a real seed-to-seed spread,
    resampling the seeds under-states it, and null comparisons are called separated well above 5%."""
    d = seeds_and_prompts(np.random.default_rng(40), 3, 0.0, between=0.12, grids=600)
    boot = difference_batch(d, method="bootstrap", n_boot=400, seed=3)
    t = difference_batch(d, method="t")
    assert rate(boot["p_value"]) > 0.1 > rate(t["p_value"])


def test_one_seed_planning_limit_reads_seed_noise_as_signal():
    """With one seed a seed-to-seed spread is part of every comparison: no interval over prompts can
    cover the method's true difference, which is why one seed's verdict is about its training run."""
    d = seeds_and_prompts(np.random.default_rng(41), 1, 0.0, between=0.12)
    out = difference_batch(d)
    assert rate(out["p_value"]) > 0.2


@pytest.mark.parametrize("target", [0.8, 0.5])
def test_planned_power_is_the_simulated_power(target):
    """The planner's power at the seeds it plans (and at a power of about one half) against the share
    of simulated grids with that true difference that the verdict separates at the Holm bound."""
    components = Components(between_seed=0.06 ** 2, prompt=0.15 ** 2, within=0.5 ** 2, n_seeds=3, n_units=PROMPTS)
    effect, m = 0.1, 6
    level = planning_level(LEVEL, m, "holm")
    if target == 0.8:
        seeds = plan_seeds(components, min_effect=effect, m=m).seeds
    else:
        seeds = next(s for s in range(2, 50) if predicted_power(components, s, PROMPTS, effect, level) >= 0.5)
    predicted = predicted_power(components, seeds, PROMPTS, effect, level)
    d = seeds_and_prompts(np.random.default_rng(50 + seeds), seeds, effect)
    simulated = rate(difference_batch(d, level=level)["p_value"], level)
    assert abs(predicted - simulated) <= 0.05, (seeds, predicted, simulated)
    assert predicted >= target
