"""eval.verdicts: paired differences, their reduction to the paired bootstrap and the paired t-test,
the hierarchical bootstrap's draws, multiplicity, metric directions, set-level differences, grid
folders, results.parquet columns and the seeds planner. Calibration by simulation:
tests/test_verdicts_calibration.py."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from eval import planner as P
from eval import paired as S
from eval import verdicts as V
from eval.stats import paired_bootstrap
from tests.support.report_fixtures import build_grid


def two_arms(rng, seeds=(0,), units=60, shift=0.0):
    arm = {s: {f"color/{u}": float(rng.random() < 0.5 + shift) for u in range(units)} for s in seeds}
    control = {s: {f"color/{u}": float(rng.random() < 0.5) for u in range(units)} for s in seeds}
    return arm, control


# ---------------------------------------------------------------- the difference


@pytest.mark.parametrize("binary", [True, False])
def test_one_seed_is_the_paired_bootstrap_over_prompts(binary):
    rng = np.random.default_rng(0)
    if binary:
        arm, control = (x[0] for x in two_arms(rng, shift=0.15))
    else:
        x = rng.normal(0.3, 0.2, 150)
        arm, control = {i: v for i, v in enumerate(x)}, {i: 0.5 * v for i, v in enumerate(x)}
    ours = S.paired_difference(arm, control, seed=3)
    theirs = paired_bootstrap(arm, control, seed=3)
    assert ours.method == "bootstrap" and ours.n_seeds == 1 and ours.n_units == theirs["n"]
    assert (ours.difference, ours.ci_low, ours.ci_high) == pytest.approx(
        (theirs["diff"], theirs["ci_low"], theirs["ci_high"]), rel=1e-12)
    assert ours.p_value == pytest.approx(theirs["p_value"], abs=1e-12)


def test_several_seeds_without_a_prompt_term_are_the_paired_t_test_on_seed_means():
    """Seed means of the difference that differ but prompts that carry no shared effect: the prompt
    term is zero and the interval is scipy's one-sample t on the per-seed mean differences."""
    d = np.array([[1.0, -1.0, 0.5, -0.5], [2.0, 0.0, 1.5, 0.5], [0.7, -1.3, 0.2, -0.8]])
    d = d - d.mean(0) + d.mean()  # every prompt mean equal: MS_prompts = 0
    arm = {s: {u: float(d[s, u]) for u in range(4)} for s in range(3)}
    control = {s: {u: 0.0 for u in range(4)} for s in range(3)}
    out = S.paired_difference(arm, control)
    test = stats.ttest_1samp(d.mean(1), 0.0)
    ci = test.confidence_interval(0.95)
    assert out.method == "t" and out.n_seeds == 3
    assert out.p_value == pytest.approx(test.pvalue, rel=1e-6)
    assert (out.ci_low, out.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_the_prompt_term_widens_the_interval_when_prompts_share_an_effect():
    rng = np.random.default_rng(1)
    v = rng.normal(0, 0.5, 40)  # the arm is better on some prompts in every seed
    d = 0.1 + v[None, :] + rng.normal(0, 0.1, (3, 40))
    arm = {s: dict(enumerate(d[s])) for s in range(3)}
    control = {s: dict.fromkeys(range(40), 0.0) for s in range(3)}
    out = S.paired_difference(arm, control)
    seed_only = stats.ttest_1samp(d.mean(1), 0.0).confidence_interval(0.95)
    assert out.ci_high - out.ci_low > seed_only.high - seed_only.low


def test_the_interval_and_p_agree_at_the_level():
    rng = np.random.default_rng(2)
    for shift in (0.0, 0.1, 0.2, 0.3):
        for seeds in ((0,), (0, 1, 2)):
            out = S.paired_difference(*two_arms(rng, seeds, 80, shift))
            excludes_zero = out.ci_low > 0 or out.ci_high < 0
            assert excludes_zero == (out.p_value < 0.05), (shift, seeds, out)


def test_hierarchical_bootstrap_draws_seeds_then_prompts_within_them():
    """The replicates of method='bootstrap' over several seeds, written out as a loop."""
    rng = np.random.default_rng(3)
    d = rng.normal(0, 1, (3, 7))
    replicates = S._hierarchical_replicates(d[None], 50, seed=9)[0]
    draws = np.random.default_rng(9)
    expected = []
    seeds = draws.integers(0, 3, (50, 3))
    units = draws.integers(0, 7, (50 * 3, 7)).reshape(50, 3, 7)
    for b in range(50):
        expected.append(np.mean([d[seeds[b, j], units[b, j]].mean() for j in range(3)]))
    assert replicates == pytest.approx(expected, rel=1e-12)


def test_pairs_are_the_shared_seeds_and_the_prompts_every_one_of_them_scored():
    arm = {0: {"a": 1.0, "b": 1.0, "c": 1.0}, 1: {"a": 1.0, "b": 0.0}, 2: {"a": 1.0}}
    control = {0: {"a": 0.0, "b": 0.0, "c": 0.0}, 1: {"a": 0.0, "b": 0.0, "c": 0.0}}
    d, seeds, units = S.paired_table(arm, control)
    assert seeds == [0, 1] and units == ["a", "b"] and d.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="share no training seed"):
        S.paired_table({3: {"a": 1.0}}, control)
    with pytest.raises(ValueError, match="share no scored prompt"):
        S.paired_table({0: {"x": 1.0}}, control)


def test_data_frames_and_flat_mappings_are_accepted():
    frame = pd.DataFrame({"seed": [0, 0, 1, 1], "unit": ["a", "b", "a", "b"], "value": [1.0, 0.0, 1.0, 1.0]})
    zero = frame.assign(value=0.0)
    assert S.paired_difference(frame, zero).difference == pytest.approx(0.75)
    assert S.paired_difference({"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 0.0}).n_seeds == 1
    with pytest.raises(ValueError, match="method"):
        S.paired_difference(frame, zero, method="magic")


# ---------------------------------------------------------------- multiplicity and verdicts


def test_holm_matches_the_step_down_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x, 3 x, 2 x, 1 x, running maximum
    assert S.holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([0.5, np.nan, 0.01]).tolist()[::2] == pytest.approx([0.5, 0.02])
    assert np.isnan(S.holm([0.5, np.nan, 0.01])[1])
    assert S.holm([0.9, 0.8]).max() <= 1.0


def test_bh_is_scipys_and_none_leaves_p():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    assert S.adjust(p, "bh") == pytest.approx(stats.false_discovery_control(p, method="bh"))
    assert S.adjust(p, "none") == pytest.approx(p)
    with pytest.raises(ValueError, match="correction"):
        S.adjust(p, "bonferonni")


@pytest.mark.parametrize("diff, p, higher, expected", [
    (0.2, 0.01, True, "better"), (-0.2, 0.01, True, "worse"), (-3.0, 0.01, False, "better"),
    (3.0, 0.01, False, "worse"), (0.2, 0.06, True, "not separated"), (0.2, 0.01, None, "higher"),
    (0.2, float("nan"), True, "not separated")])
def test_verdict_follows_the_metric_direction(diff, p, higher, expected):
    assert S.verdict(diff, p, higher) == expected


def test_directions_defaults_mapping_and_registry(tmp_path):
    assert V.direction("compshapes_judge/color") is True
    assert V.direction("fid/fid") is False and V.direction("fid/kid") is False
    assert V.direction("my_metric/score") is None
    assert V.direction("my_metric/score", {"my_metric": False}) is False
    assert V.direction("my_metric/score", {"my_metric/score": True, "my_metric": False}) is True
    registry = tmp_path / "metrics.yaml"
    registry.write_text("fid:\n  module: eval.fid\n  higher_is_better: false\n"
                        "mine:\n  module: x\n  higher_is_better: {good: true, loss: false}\n"
                        "other:\n  module: y\n")
    assert V.directions_from_registry(registry) == {"fid": False, "mine/good": True, "mine/loss": False}
    assert V.directions_from_registry(tmp_path / "missing.yaml") == {}
    with pytest.raises(ValueError, match="higher_is_better"):
        V.require_directions(["my_metric/score", "fid/fid"])


# ---------------------------------------------------------------- set-level metrics


def _fid_like(features):
    return float(np.sum(features.mean(0) ** 2) + np.sum((features.std(0) - 1) ** 2))


def test_set_difference_from_features_and_from_callbacks_agree():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.0, 1, (120, 4)), rng.normal(0.0, 1, (100, 4))
    same = S.set_difference(a, b, _fid_like, n_boot=200, seed=1)
    assert same["ci_low"] < 0 < same["ci_high"] and same["p_value"] > 0.05
    by_index = S.set_difference_by_index(lambda i: _fid_like(a[i]), lambda i: _fid_like(b[i]), 120, 100,
                                         n_boot=200, seed=1)
    assert by_index == same
    worse = S.set_difference(rng.normal(0.6, 1, (100, 4)), b, _fid_like, n_boot=200)
    assert worse["ci_low"] > 0 and worse["p_value"] < 0.05
    assert S.verdict(worse["difference"], worse["p_value"], V.direction("fid/fid")) == "worse"


def test_set_difference_paired_and_bad_input():
    rng = np.random.default_rng(5)
    base = rng.normal(0, 1, (80, 3))
    out = S.set_difference(base + 0.5, base, _fid_like, paired=True, n_boot=100)
    assert out["paired"] and out["ci_low"] > 0
    with pytest.raises(ValueError, match="same images"):
        S.set_difference(base, base[:50], _fid_like, paired=True)
    with pytest.raises(ValueError, match="at least 2"):
        S.set_difference(base[:1], base, _fid_like)


def test_several_seeds_of_a_set_level_metric_pool_over_seeds():
    per_seed = [{"difference": d, "ci_low": d - 1, "ci_high": d + 1, "p_value": 0.5} for d in (1.0, 2.0, 1.5)]
    out = S.combine_seed_differences(per_seed)
    test = stats.ttest_1samp([1.0, 2.0, 1.5], 0.0)
    assert out["difference"] == pytest.approx(1.5) and out["n_seeds"] == 3
    assert out["p_value"] == pytest.approx(test.pvalue, rel=1e-6)
    assert S.combine_seed_differences(per_seed[:1]) == per_seed[0]


# ---------------------------------------------------------------- grid folders


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdict_runs")
    return build_grid(root, "conditioning", {"conditioning": ["adaln", "cross_attn"], "seed": [0]}, n_prompts=120,
                      images=False)


def test_grid_verdicts_compare_every_arm_with_the_first(grid):
    table = V.grid_verdicts(grid)
    assert set(table["control"]) == {"conditioning=adaln"} and set(table["arm"]) == {"conditioning=cross_attn"}
    assert len(table) == 6 and table.attrs["m"] == 6 and table.attrs["correction"] == "holm"
    assert set(table["verdict"]) == {"better"}, table[["metric", "difference", "p_adjusted"]]
    assert (table["n_seeds"] == 1).all() and (table["n_units"] == 20).all() and (table["method"] == "bootstrap").all()
    assert (table["p_adjusted"] >= table["p_value"]).all()
    assert (table["arm_mean"] - table["control_mean"]).to_numpy() == pytest.approx(table["difference"].to_numpy())
    text = V.format_verdicts(table)
    assert "against conditioning=adaln" in text and "Holm over 6 comparisons" in text
    assert "about this training run" in text
    flipped = V.grid_verdicts(grid, control={"conditioning": "cross_attn"})
    assert set(flipped["verdict"]) == {"worse"}


def test_grid_verdicts_read_images_when_asked(grid):
    table = V.grid_verdicts(grid, unit="image")
    assert (table["unit"] == "image").all() and (table["n_units"] == 20).all()


def test_grid_order_and_arm_names_come_from_grid_yaml(tmp_path):
    """The control is the grid file's first arm (here listed second alphabetically), found by its
    label or its grid-file name (cell.json's `arms`)."""
    grid_dir = build_grid(tmp_path, "mfg", {"mfg_scale": [None, 1.0, 2.0], "seed": [0, 1]}, n_prompts=24, images=False)
    for cell in grid_dir.glob("*/cell.json"):
        info = json.loads(cell.read_text())
        info["arms"] = {"mfg_scale": "off" if info["axes"]["mfg_scale"] is None else str(info["axes"]["mfg_scale"])}
        cell.write_text(json.dumps(info))
    table = V.grid_verdicts(grid_dir)
    assert table.attrs["arms"] == ["mfg_scale=none", "mfg_scale=1.0", "mfg_scale=2.0"]
    assert set(table["control"]) == {"mfg_scale=none"} and (table["method"] == "t").all()
    assert set(V.grid_verdicts(grid_dir, control="off")["control"]) == {"mfg_scale=none"}
    every = V.grid_verdicts(grid_dir, pairs="all")
    assert len(every) == 3 * 6 and every.attrs["m"] == 18
    with pytest.raises(ValueError, match="names 0 arms"):
        V.grid_verdicts(grid_dir, control="7.5")


def test_stale_cells_are_left_out(tmp_path):
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln", "cross_attn"], "seed": [0]}, n_prompts=12,
                          images=False)
    import yaml
    record = yaml.safe_load((grid_dir / "grid.yaml").read_text())
    cells = sorted(p.name for p in grid_dir.iterdir() if p.is_dir())
    record["cell_ids"] = cells[:1]
    (grid_dir / "grid.yaml").write_text(yaml.safe_dump(record))
    assert V.grid_verdicts(grid_dir).empty


def test_verdicts_become_columns_of_results_parquet(grid):
    from ablations.runfolder import collect

    results = collect(grid)
    table = V.grid_verdicts(grid)
    merged = V.add_to_results(results, table)
    assert len(merged) == len(results) and list(merged.columns[:len(results.columns)]) == list(results.columns)
    arm = merged["axis.conditioning"] == "cross_attn"
    assert merged.loc[arm, "verdict.verdict"].eq("better").all()
    assert merged.loc[~arm, "verdict.verdict"].isna().all()
    assert merged.loc[arm, "verdict.control"].eq("conditioning=adaln").all()
    assert set(merged.columns) - set(results.columns) == {V.VERDICT_PREFIX + c for c in (
        "control", "difference", "ci_low", "ci_high", "p_value", "p_adjusted", "verdict", "correction", "level",
        "method", "n_seeds")}
    assert len(V.add_to_results(merged, table).columns) == len(merged.columns), "idempotent"


def test_set_level_outputs_are_listed_not_compared(tmp_path):
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln", "cross_attn"], "seed": [0]}, n_prompts=12,
                          images=False)
    for cell in grid_dir.iterdir():
        if cell.is_dir():
            (cell / "eval" / "fid.json").write_text(json.dumps({"metric": "fid", "per_image": [], "per_prompt": [],
                                                                "aggregate": {"fid": {"mean": 3.0}}}))
    table = V.grid_verdicts(grid_dir)
    assert set(table.attrs["set_level"]) == {"fid/fid"} and not table["metric"].str.startswith("fid").any()
    assert "set_difference" in V.format_verdicts(table)


# ---------------------------------------------------------------- the planner


def test_components_recover_known_variances():
    rng = np.random.default_rng(6)
    d = (rng.normal(0, 0.3, (40, 1)) + rng.normal(0, 0.2, (1, 400)) + rng.normal(0, 0.5, (40, 400)))
    c = P.variance_components(d)
    assert c.between_seed == pytest.approx(0.09, rel=0.35)
    assert c.prompt == pytest.approx(0.04, rel=0.25) and c.within == pytest.approx(0.25, rel=0.05)
    one = P.variance_components(d[:1])
    assert one.between_seed is None and one.within == pytest.approx(d[0].var(ddof=1))


def test_predicted_power_without_a_prompt_term_is_the_t_tests():
    c = P.Components(between_seed=0.01, prompt=0.0, within=0.25, n_seeds=3, n_units=100)
    for seeds in (2, 4, 10):
        se = np.sqrt((0.01 * 100 + 0.25) / (seeds * 100))
        t = stats.t.isf(0.025, seeds - 1)
        exact = stats.nct.sf(t, seeds - 1, 0.1 / se) + stats.nct.cdf(-t, seeds - 1, 0.1 / se)
        assert P.predicted_power(c, seeds, 100, 0.1, 0.05, grid=4000) == pytest.approx(exact, abs=0.003)


def test_plan_seeds_and_the_prompt_floor():
    c = P.Components(between_seed=0.06 ** 2, prompt=0.15 ** 2, within=0.25, n_seeds=3, n_units=100)
    plan = P.plan_seeds(c, min_effect=0.05, m=6)
    assert plan.level == pytest.approx(0.05 / 6)
    assert plan.seeds is None, "the prompt population alone is too wide at 100 prompts"
    assert plan.options[1]["seeds"] is not None and plan.options[2]["seeds"] < plan.options[1]["seeds"]
    uncorrected = P.plan_seeds(c, min_effect=0.1, correction="none")
    corrected = P.plan_seeds(c, min_effect=0.1, m=6)
    assert uncorrected.seeds < corrected.seeds
    assert P.predicted_power(c, corrected.seeds, 100, 0.1, corrected.level) >= 0.8
    assert P.predicted_power(c, corrected.seeds - 1, 100, 0.1, corrected.level) < 0.8


def test_format_seed_plan_reads_a_grid_and_prices_the_seeds(tmp_path):
    grid_dir = build_grid(tmp_path, "g", {"conditioning": ["adaln", "cross_attn"], "seed": [0, 1, 2]},
                          n_prompts=60, images=False)
    text = P.format_seed_plan(grid_dir, n_arms=2, per_cell_s=600, workers=2)
    lines = text.splitlines()
    assert "0.05 / 6 comparisons" in lines[0] and "Holm" in lines[0]
    assert len(lines) == 1 + 6 and all("seeds" in line for line in lines[1:])
    one = build_grid(tmp_path, "one", {"conditioning": ["adaln", "cross_attn"], "seed": [0]}, n_prompts=60,
                     images=False)
    assert "lower bounds" in P.format_seed_plan(one, n_arms=2, per_cell_s=600)
    assert "run a pilot" in P.format_seed_plan(tmp_path / "nothing", n_arms=2, per_cell_s=600)
    given = {"x/y": P.Components(0.0036, 0.0, 0.25, 3, 100)}
    priced = P.format_seed_plan(tmp_path / "nothing", n_arms=2, per_cell_s=3600, workers=1, components=given, m=1)
    seeds = P.plan_seeds(given["x/y"], m=1).seeds
    assert f"100 prompts: {seeds} seeds ({2 * seeds} cells, {2 * seeds:.1f} h)" in priced
