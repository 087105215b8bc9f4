"""VBench's leaderboard normalisation (its scripts/cal_final_score.py and scripts/constant.py): each
dimension's raw score maps to (score - min) / (max - min) with the leaderboard's min and max, times the
dimension's weight; the quality score is the weighted sum over its seven dimensions divided by their
weights. Only the dimensions scored here are normalised, and the quality score over them is partial
(`quality_partial`: it lacks motion smoothness, aesthetic and imaging quality, so it is not VBench's)."""
from __future__ import annotations

# dimension: (min, max, weight) of VBench's NORMALIZE_DIC and DIM_WEIGHT
NORMALIZATION = {
    "subject_consistency": (0.1462, 1.0, 1.0),
    "background_consistency": (0.2615, 1.0, 1.0),
    "temporal_flickering": (0.6293, 1.0, 1.0),
    "motion_smoothness": (0.706, 0.9975, 1.0),
    "dynamic_degree": (0.0, 1.0, 0.5),
    "aesthetic_quality": (0.0, 1.0, 1.0),
    "imaging_quality": (0.0, 1.0, 1.0),
}
QUALITY_DIMENSIONS = tuple(NORMALIZATION)


def normalized(dimension: str, score: float) -> float:
    """(score - min) / (max - min), before the weight."""
    low, high, _ = NORMALIZATION[dimension]
    return (score - low) / (high - low)


def quality_partial(scores: dict[str, float]) -> dict:
    """The quality score over the quality dimensions present in `scores` (raw official aggregates): the
    weighted normalised scores summed, over the sum of their weights; with the dimensions it lacks."""
    present = [d for d in QUALITY_DIMENSIONS if d in scores]
    if not present:
        return {"score": None, "dimensions": [], "missing": list(QUALITY_DIMENSIONS)}
    total = sum(normalized(d, scores[d]) * NORMALIZATION[d][2] for d in present)
    return {"score": total / sum(NORMALIZATION[d][2] for d in present), "dimensions": present,
            "missing": [d for d in QUALITY_DIMENSIONS if d not in present]}
