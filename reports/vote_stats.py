"""Statistics of pairwise votes: win/draw/loss rates with Wilson CIs (with and without ties),
rater agreement with the consensus, attention checks, and Bradley-Terry strengths (maximum likelihood,
a tie counts half a win for each side) with bootstrap CIs. Inputs are `votes.votes_frame` tables.

Attention checks pair an image with one made from another text; on the question about the text, the
image of the shown text (`a`) is the right answer. `excluded_raters` applies EXCLUSION_RULE, and the
results page shows every table with and without the raters it names."""
from __future__ import annotations

import numpy as np
import pandas as pd

from eval.stats import wilson  # noqa: F401  (scipy's binomtest Wilson interval; vote counts are integers)

EXCLUSION_RULE = ("A rater is excluded when they fail any attention check: on a check pair, one image made from "
                  "the shown text and one from another text, they answer \"Which image better matches the text?\" "
                  "with the other text's image or a draw.")


def attention_checks(votes: pd.DataFrame) -> pd.DataFrame:
    """Per rater who answered at least one question: attention checks answered and passed."""
    checks = votes[(votes["kind"] == "check") & (votes["question"] == "text")]
    table = pd.DataFrame({"rater": sorted(votes["rater"].unique())}).set_index("rater")
    table["checks"] = checks.groupby("rater").size()
    table["checks_passed"] = checks[checks["choice"] == "a"].groupby("rater").size()
    return table.fillna(0).astype(int)


def excluded_raters(votes: pd.DataFrame) -> dict[str, str]:
    """{rater: reason} for the raters EXCLUSION_RULE removes."""
    table = attention_checks(votes)
    failed = table[table["checks_passed"] < table["checks"]]
    return {rater: f"failed {row.checks - row.checks_passed} of {row.checks} attention checks"
            for rater, row in failed.iterrows()}


def oriented(votes: pd.DataFrame) -> pd.DataFrame:
    """Each compare vote twice, once from each system's side: system, opponent, outcome win/draw/loss."""
    compare = votes[votes["kind"] == "compare"]
    flip = {"a": "b", "b": "a", "draw": "draw"}
    a_side = compare.assign(system=compare["system_a"], opponent=compare["system_b"], won=compare["choice"])
    b_side = compare.assign(system=compare["system_b"], opponent=compare["system_a"], won=compare["choice"].map(flip))
    both = pd.concat([a_side, b_side], ignore_index=True)
    both["outcome"] = both["won"].map({"a": "win", "b": "loss", "draw": "draw"})
    return both[["question", "rater", "pair_id", "system", "opponent", "outcome"]]


def win_rates(votes: pd.DataFrame) -> pd.DataFrame:
    """Per question and ordered system pair: counts, win/draw/loss rates with 95% Wilson CIs, and the win
    rate without ties (wins / decisive votes) with its CI."""
    rows = []
    if votes.empty:
        return pd.DataFrame(rows)
    for (question, system, opponent), group in oriented(votes).groupby(["question", "system", "opponent"]):
        counts = group["outcome"].value_counts()
        wins, draws, losses = (int(counts.get(k, 0)) for k in ("win", "draw", "loss"))
        n = wins + draws + losses
        row = {"question": question, "system": system, "opponent": opponent, "n": n,
               "wins": wins, "draws": draws, "losses": losses}
        for name, k in (("win", wins), ("draw", draws), ("loss", losses)):
            row[f"{name}_rate"] = k / n
            row[f"{name}_low"], row[f"{name}_high"] = wilson(k, n)
        decisive = wins + losses
        row["win_rate_no_ties"] = wins / decisive if decisive else np.nan
        row["no_ties_low"], row["no_ties_high"] = wilson(wins, decisive) if decisive else (np.nan, np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def rater_agreement(votes: pd.DataFrame, min_votes: int = 5) -> pd.DataFrame:
    """Per rater: how often they agree with the leave-one-out majority of the other raters on the same
    pair and question, attention checks passed, and an outlier flag with the reason."""
    compare = votes[votes["kind"] == "compare"]
    counts = compare.groupby(["pair_id", "question", "choice"]).size().unstack(fill_value=0)
    checks = attention_checks(votes)
    rows = []
    for rater, mine in votes.groupby("rater"):
        agree = total = 0
        for vote in mine[mine["kind"] == "compare"].itertuples(index=False):
            others = counts.loc[(vote.pair_id, vote.question)].copy()
            others[vote.choice] -= 1
            top = others[others == others.max()]
            if others.max() > 0 and len(top) == 1:
                total += 1
                agree += int(top.index[0] == vote.choice)
        rows.append({"rater": rater, "votes": len(mine), "compared": total,
                     "agreement": agree / total if total else np.nan,
                     "checks": checks.loc[rater, "checks"], "checks_passed": checks.loc[rater, "checks_passed"]})
    table = pd.DataFrame(rows)
    return _flag_outliers(table, min_votes) if not table.empty else table


def _flag_outliers(table: pd.DataFrame, min_votes: int) -> pd.DataFrame:
    """Outlier: agreement more than 2 robust SDs (1.4826 MAD, at least 0.05) below the median rater,
    or any failed attention check."""
    rated = table[table["compared"] >= min_votes]["agreement"]
    median = rated.median()
    spread = max(1.4826 * (rated - median).abs().median(), 0.05) if len(rated) else np.nan
    reasons = []
    for row in table.itertuples(index=False):
        why = []
        if row.compared >= min_votes and len(rated) >= 3 and row.agreement < median - 2 * spread:
            why.append(f"agreement {row.agreement:.2f} vs median {median:.2f}")
        if row.checks_passed < row.checks:
            why.append(f"failed {row.checks - row.checks_passed} of {row.checks} attention checks")
        reasons.append("; ".join(why))
    return table.assign(outlier=[bool(r) for r in reasons], reason=reasons)


def bradley_terry(i: np.ndarray, j: np.ndarray, score: np.ndarray, n_systems: int, iters: int = 500,
                  tol: float = 1e-9) -> np.ndarray:
    """Log-strengths (mean 0) maximising the Bradley-Terry likelihood of comparisons (i vs j, score of i:
    1 win, 0.5 tie, 0 loss) by Hunter's MM iteration. A tiny pseudo-tie between every two systems keeps
    the estimate finite when a system never loses."""
    wins = np.zeros(n_systems)
    games = np.zeros((n_systems, n_systems))
    np.add.at(wins, i, score)
    np.add.at(wins, j, 1 - score)
    np.add.at(games, (i, j), 1)
    np.add.at(games, (j, i), 1)
    prior = 0.01 * (1 - np.eye(n_systems))
    wins = wins + prior.sum(axis=1) / 2
    games = games + prior
    strength = np.ones(n_systems)
    for _ in range(iters):
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        new = wins / denom
        new /= np.exp(np.log(new).mean())
        if np.max(np.abs(new - strength)) < tol:
            strength = new
            break
        strength = new
    log_strength = np.log(strength)
    return log_strength - log_strength.mean()


def bt_scores(votes: pd.DataFrame, question: str, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Bradley-Terry log-strengths per system for one question, with 95% bootstrap CIs (votes resampled)."""
    compare = votes[(votes["kind"] == "compare") & (votes["question"] == question)]
    systems = sorted(set(compare["system_a"]) | set(compare["system_b"]))
    if not systems:
        return pd.DataFrame(columns=["system", "score", "ci_low", "ci_high", "votes"])
    index = {s: k for k, s in enumerate(systems)}
    i = compare["system_a"].map(index).to_numpy()
    j = compare["system_b"].map(index).to_numpy()
    score = compare["choice"].map({"a": 1.0, "b": 0.0, "draw": 0.5}).to_numpy()
    estimate = bradley_terry(i, j, score, len(systems))
    rng = np.random.default_rng(seed)
    boot = np.array([bradley_terry(i[s], j[s], score[s], len(systems))
                     for s in (rng.integers(0, len(i), len(i)) for _ in range(n_boot))])
    low, high = np.quantile(boot, [0.025, 0.975], axis=0)
    played = pd.concat([compare["system_a"], compare["system_b"]]).value_counts()
    return pd.DataFrame({"system": systems, "score": estimate, "ci_low": low, "ci_high": high,
                         "votes": [int(played.get(s, 0)) for s in systems]}).sort_values("score", ascending=False)


PROGRESS_STATES = ("not started", "started", "finished")


def rater_progress(raters: pd.DataFrame, screens_per_rater: int) -> pd.DataFrame:
    """Per rater link: how far they got. `raters` has one row per rater with `rater` (name),
    `assigned` (screens chosen for them on their first visit; 0 before it), `shown` (screens served),
    `screens_answered` (screens with an answer) and `answers` (one per question answered: a screen
    asks every question). A rater who never opened the link has `screens_per_rater` screens ahead.
    Returns rater, state (not started / started / finished), screens, screens_answered, answers."""
    if raters.empty:
        return pd.DataFrame(columns=["rater", "state", "screens", "screens_answered", "answers"])
    screens = raters["assigned"].where(raters["assigned"] > 0, screens_per_rater).astype(int)
    began = (raters["assigned"] > 0) | (raters["shown"] > 0) | (raters["answers"] > 0)
    done = began & (raters["screens_answered"] >= screens)
    state = np.where(done, "finished", np.where(began, "started", "not started"))
    return pd.DataFrame({"rater": raters["rater"], "state": state, "screens": screens,
                         "screens_answered": raters["screens_answered"].astype(int),
                         "answers": raters["answers"].astype(int)}).reset_index(drop=True)


def progress_summary(progress: pd.DataFrame) -> dict:
    """Counts over rater_progress: raters, started (finished ones included), finished, screens
    answered of all screens, answers."""
    started = progress["state"].isin(["started", "finished"]) if len(progress) else pd.Series(dtype=bool)
    return {"raters": len(progress), "started": int(started.sum()),
            "finished": int((progress["state"] == "finished").sum()) if len(progress) else 0,
            "screens_answered": int(progress["screens_answered"].sum()) if len(progress) else 0,
            "screens": int(progress["screens"].sum()) if len(progress) else 0,
            "answers": int(progress["answers"].sum()) if len(progress) else 0}
