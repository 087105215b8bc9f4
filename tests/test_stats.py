"""eval.stats and the shared parts of eval.common: CIs, paired comparisons, seeds, sample folders."""
import json

import numpy as np
import pytest
from PIL import Image

from eval.common import aggregate_by_seed, load_samples, read_samples, result, samples_from_images, _make_manifest
from eval.stats import bootstrap_ci, bootstrap_statistic, paired_bootstrap, wilson


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic():
    values = np.random.default_rng(0).normal(0.5, 0.1, 200)
    ci = bootstrap_ci(values)
    assert ci["ci_low"] < ci["mean"] < ci["ci_high"] and ci["n"] == 200
    assert ci == bootstrap_ci(values)
    assert ci["ci_high"] - ci["ci_low"] == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(200), rel=0.25)
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])


def test_paired_bootstrap_uses_shared_prompts_only():
    a = {i: 1.0 + 0.01 * i for i in range(50)}
    b = {i: 0.01 * i for i in range(40)} | {"extra": 5.0}
    out = paired_bootstrap(a, b)
    assert out["n"] == 40 and out["diff"] == pytest.approx(1.0)
    assert out["ci_low"] == pytest.approx(1.0) and out["p_value"] == 0.0
    noisy = paired_bootstrap({i: float(i % 2) for i in range(40)}, {i: float((i + 1) % 2) for i in range(40)})
    assert noisy["ci_low"] < 0 < noisy["ci_high"] and noisy["p_value"] > 0.5


def test_bootstrap_statistic_point_value_and_no_ci():
    x = np.arange(10.0)
    out = bootstrap_statistic(lambda idx: x[idx].var(), 10, n_boot=100)
    assert out["mean"] == pytest.approx(x.var()) and out["ci_low"] < out["ci_high"]
    assert bootstrap_statistic(lambda idx: x[idx].var(), 10, n_boot=0)["ci_low"] is None


def test_result_keeps_per_prompt_means_and_per_seed_aggregates():
    per_image = [{"file": f"{p}_{s}.png", "prompt_id": p, "seed": s, "scores": {"x": float(p + (s == 43))}}
                 for p in range(4) for s in (42, 43)]
    out = result("m", per_image, {"k": 1}, False)
    assert [row["scores"]["x"] for row in out["per_prompt"]] == [0.5, 1.5, 2.5, 3.5]
    assert out["aggregate"]["x"]["mean"] == pytest.approx(2.0) and out["aggregate"]["x"]["n"] == 4
    assert out["aggregate_by_seed"]["42"]["x"]["mean"] == pytest.approx(1.5)
    assert out["aggregate_by_seed"]["43"]["x"]["mean"] == pytest.approx(2.5)
    assert aggregate_by_seed(per_image).keys() == {"42", "43"}


def test_official_file_names_become_samples_and_a_manifest(tmp_path):
    for prompt in ("a green bench and a red car", "a blue backpack and a brown cow"):
        for index in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / f"{prompt}_{index:06}.png")
    samples = samples_from_images(tmp_path)
    assert {(s.prompt, s.seed) for s in samples} == {(p, 42 + i) for p in ("a green bench and a red car",
                                                                         "a blue backpack and a brown cow")
                                                     for i in range(3)}
    assert len({s.prompt_id for s in samples}) == 2
    _make_manifest([str(tmp_path)])
    assert [s.file for s in read_samples(tmp_path)] == [s.file for s in samples]
    assert json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])["seed"] == 42
    assert len(load_samples(tmp_path)) == 6


def _percentile_bootstrap(x, n_boot=2000, alpha=0.05, seed=0):
    """The textbook percentile bootstrap, written out: resample with replacement, take quantiles of the means."""
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return np.quantile(means, [alpha / 2, 1 - alpha / 2]), means


def test_scipy_bootstrap_gives_the_written_out_percentile_bootstrap():
    x = np.random.default_rng(1).normal(0.3, 0.2, 150)
    (low, high), _ = _percentile_bootstrap(x)
    ci = bootstrap_ci(x)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((low, high), rel=1e-12)
    a = {f"{i:03d}": v for i, v in enumerate(x)}
    b = {f"{i:03d}": v * 0.5 for i, v in enumerate(x)}
    (low, high), means = _percentile_bootstrap(x - x * 0.5)
    out = paired_bootstrap(a, b)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((low, high), rel=1e-12)
    assert out["p_value"] == pytest.approx(min(2 * min((means <= 0).mean(), (means >= 0).mean()), 1.0))


def test_one_prompt_keeps_its_point_interval():
    # scipy.stats.bootstrap refuses a single observation; one prompt is a point with a zero-width interval
    from scipy import stats

    with pytest.raises(ValueError):
        stats.bootstrap((np.array([0.5]),), np.mean, method="percentile")
    assert bootstrap_ci([0.5]) == {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n": 1}
    assert paired_bootstrap({0: 1.0}, {0: 0.25})["diff"] == 0.75


@pytest.mark.parametrize("k, n", [(50, 100), (0, 10), (10, 10), (3, 7), (1, 2000)])
def test_wilson_interval_is_scipys_and_the_textbook_formula(k, n):
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson(k, n) == pytest.approx((max(0.0, centre - half), min(1.0, centre + half)), abs=1e-12)
    assert wilson(0, 0) == (0.0, 0.0)


def test_partials_merge_protocols_and_a_changed_option_scores_again(tmp_path):
    from eval.common import generation_protocol, merged_protocol, shard_partial

    a = {"partial": {"shard": [0, 2]}, "protocol": {"model": "x", "precision": "fp32"}}
    b = {"partial": {"shard": [1, 2]}, "protocol": {"model": "x", "detector": "owl"}}
    assert merged_protocol([a, b]) == {"model": "x", "precision": "fp32", "detector": "owl"}
    with pytest.raises(ValueError, match="shards disagree on protocol 'model'"):
        merged_protocol([a, {**b, "protocol": {"model": "y"}}])

    (tmp_path / "samples.jsonl").write_text('{"file": "a.png", "prompt": "p", "seed": 1}\n')
    calls = []

    def score():
        calls.append(1)
        return {"protocol": {}, "per_image": [{"file": "a.png"}]}
    out = tmp_path / "part.json"
    first = shard_partial("m", tmp_path, "0/1", out, {"size": 1}, score)
    assert first["partial"]["shard"] == [0, 1] and len(calls) == 1
    assert shard_partial("m", tmp_path, (0, 1), out, {"size": 1}, score) == first and len(calls) == 1
    shard_partial("m", tmp_path, (0, 1), out, {"size": 2}, score)  # other options: scored again
    assert len(calls) == 2
    assert generation_protocol(tmp_path) == {}
    (tmp_path / "generation.json").write_text("{torn")
    with pytest.raises(ValueError, match="generation.json is not valid JSON"):
        generation_protocol(tmp_path)
