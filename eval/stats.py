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
