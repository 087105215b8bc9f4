"""Uncertainty for every score: bootstrap CIs over prompts, paired comparisons between arms, set-level
statistics (FID, KID) and the Wilson interval of a proportion, all through scipy.stats."""
from __future__ import annotations

import numpy as np
from scipy import stats


def _resampled(data: np.ndarray, statistic, n_boot: int, seed: int, alpha: float):
    """scipy's percentile bootstrap (resamples drawn from default_rng(seed)): (interval, resampled values)."""
    out = stats.bootstrap((data,), statistic, n_resamples=n_boot, method="percentile", confidence_level=1 - alpha,
                          vectorized=statistic is np.mean, rng=np.random.default_rng(seed))
    return out.confidence_interval, out.bootstrap_distribution


def bootstrap_ci(values, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Mean of `values` with a percentile-bootstrap (1 - alpha) CI; resampling units are prompts."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci got no values: nothing was scored")
    if x.size == 1:  # scipy.stats.bootstrap refuses one observation; the interval is the point (tested)
        return {"mean": float(x.mean()), "ci_low": float(x[0]), "ci_high": float(x[0]), "n": int(x.size)}
    ci, _ = _resampled(x, np.mean, n_boot, seed, alpha)
    return {"mean": float(x.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high), "n": int(x.size)}


def paired_bootstrap(a: dict, b: dict, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Difference mean(a) - mean(b) over the prompts both arms scored ({prompt_id: score}), with a
    paired bootstrap CI and the fraction of resamples where the sign flips (a two-sided p-value)."""
    shared = sorted(set(a) & set(b), key=str)
    if not shared:
        raise ValueError("paired_bootstrap: the two arms share no prompt ids")
    d = np.array([a[k] - b[k] for k in shared], dtype=np.float64)
    if d.size == 1:  # scipy.stats.bootstrap refuses one observation (tested)
        return {"diff": float(d[0]), "ci_low": float(d[0]), "ci_high": float(d[0]), "n": int(d.size),
                "p_value": 1.0 if d[0] == 0 else 0.0}
    ci, means = _resampled(d, np.mean, n_boot, seed, alpha)
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return {"diff": float(d.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high), "n": int(d.size),
            "p_value": float(min(p, 1.0))}


def bootstrap_statistic(statistic, n: int, *, n_boot: int = 200, alpha: float = 0.05, seed: int = 0) -> dict:
    """Bootstrap CI of a set-level statistic (FID, KID): `statistic(indices)` is evaluated on `n_boot`
    resamples of range(n) with replacement, and once on the full set for the point value. Resampling
    duplicates images, which biases FID upward, so the percentile interval is shifted by the bootstrap
    bias (mean of resamples - point value)."""
    if n < 2:
        raise ValueError(f"bootstrap_statistic needs at least 2 items, got {n}")
    point = float(statistic(np.arange(n)))
    if n_boot == 0:  # no CI asked for
        return {"mean": point, "ci_low": None, "ci_high": None, "n": int(n)}
    ci, values = _resampled(np.arange(n), lambda idx: statistic(np.asarray(idx, dtype=np.int64)), n_boot, seed, alpha)
    shift = values.mean() - point
    return {"mean": point, "ci_low": float(ci.low - shift), "ci_high": float(ci.high - shift), "n": int(n)}


def wilson(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's binomtest); (0, 0) for no trials."""
    if n <= 0:
        return 0.0, 0.0
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return float(ci.low), float(ci.high)
