"""Uncertainty for every score: bootstrap CIs over prompts and paired comparisons between arms."""
from __future__ import annotations

import numpy as np


def bootstrap_ci(values, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Mean of `values` with a percentile-bootstrap (1 - alpha) CI; resampling units are prompts."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci got no values: nothing was scored")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(x.size)}


def paired_bootstrap(a: dict, b: dict, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Difference mean(a) - mean(b) over the prompts both arms scored ({prompt_id: score}), with a
    paired bootstrap CI and the fraction of resamples where the sign flips (a two-sided p-value)."""
    shared = sorted(set(a) & set(b), key=str)
    if not shared:
        raise ValueError("paired_bootstrap: the two arms share no prompt ids")
    d = np.array([a[k] - b[k] for k in shared], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return {"diff": float(d.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(d.size),
            "p_value": float(min(p, 1.0))}


def bootstrap_statistic(statistic, n: int, *, n_boot: int = 200, alpha: float = 0.05, seed: int = 0) -> dict:
    """Bootstrap CI of a set-level statistic (FID, KID): `statistic(indices)` is evaluated on `n_boot`
    resamples of range(n) with replacement, and once on the full set for the point value. Resampling
    duplicates images, which biases FID upward, so the percentile interval is shifted by the bootstrap
    bias (mean of resamples - point value)."""
    if n < 2:
        raise ValueError(f"bootstrap_statistic needs at least 2 items, got {n}")
    rng = np.random.default_rng(seed)
    point = float(statistic(np.arange(n)))
    if n_boot == 0:  # no CI asked for
        return {"mean": point, "ci_low": None, "ci_high": None, "n": int(n)}
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2]) - (values.mean() - point)
    return {"mean": point, "ci_low": float(low), "ci_high": float(high), "n": int(n)}
