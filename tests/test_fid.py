"""eval.fid: the Fréchet distance against closed forms, shards, KID, reference stats, torchmetrics."""
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from eval import fid
from eval.common import Sample, read_partials, write_samples


def _folder(path, n, seed, size=24, shift=0):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        pixels = np.clip(rng.integers(0, 200, (size, size, 3)) + shift, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path / f"{i:04d}.png")
        samples.append(Sample(file=f"{i:04d}.png", prompt=f"p{i}", seed=42 + i % 2, prompt_id=i // 2))
    write_samples(path, samples)
    return path


def test_frechet_distance_matches_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    assert fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)
    # Same covariance, pure mean shift: FID is the squared shift.
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + np.eye(6)
    assert fid.frechet_distance(mu1, cov, mu1 + 0.5, cov) == pytest.approx(6 * 0.25, abs=1e-8)
    # A full covariance pair against clean-fid's scipy.sqrtm implementation.
    b = rng.normal(size=(6, 6))
    cov2 = b @ b.T + 0.1 * np.eye(6)
    from cleanfid.fid import frechet_distance as cleanfid_fd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = cleanfid_fd(mu1, cov, mu2, cov2)
    assert fid.frechet_distance(mu1, cov, mu2, cov2) == pytest.approx(reference, rel=1e-8)
    # Sample statistics of large Gaussian draws approach the closed form.
    x = rng.normal(size=(20000, 3))
    y = rng.normal(size=(20000, 3)) * 2 + 1
    assert fid.frechet_distance(*fid.feature_stats(x), *fid.feature_stats(y)) == pytest.approx(3 + 3 * (1 + 4 - 4), rel=0.05)


def test_kid_matches_cleanfid_when_subsets_cover_the_sets():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(30, 8)) + 0.3
    assert fid.kernel_distance(x, y, num_subsets=3) == pytest.approx(kernel_distance(x, y, num_subsets=3), rel=1e-10)


def test_fid_of_a_set_against_itself_is_zero_and_torchmetrics_agrees(tmp_path):
    gen = _folder(tmp_path / "gen", 24, 0)
    other = _folder(tmp_path / "ref", 24, 1, shift=40)
    same = fid.evaluate(gen, ref=str(gen), n_boot=5, cache_dir=tmp_path / "cache")
    assert abs(same["aggregate"]["fid"]["mean"]) < 1e-6 and same["comparable_to_paper"] is False
    assert same["aggregate"]["kid"]["n"] == 24 and set(same["aggregate_by_seed"]) == {"42", "43"}
    out = fid.evaluate(gen, ref=str(other), n_boot=5, crosscheck=True, cache_dir=tmp_path / "cache")
    value = out["aggregate"]["fid"]["mean"]
    assert value > 0.01
    assert out["crosscheck"]["fid_torchmetrics"] == pytest.approx(value, rel=1e-4)
    for key in ("feature_extractor", "mode", "resize", "sample_formats", "reference_formats"):
        assert key in out["protocol"]
    # Reference statistics from a file give the same number as the folder.
    stats = fid.make_reference_stats(other, tmp_path / "ref.npz")
    from_stats = fid.evaluate(gen, ref=str(stats), n_boot=0, cache_dir=tmp_path / "cache")
    assert from_stats["aggregate"]["fid"]["mean"] == pytest.approx(value, rel=1e-9)


def test_merged_shards_equal_unsharded_and_a_lost_shard_is_recomputed_alone(tmp_path, monkeypatch):
    gen = _folder(tmp_path / "gen", 20, 2)
    files = sorted(gen.glob("*.png"))
    ext = fid.build_extractor("random", "clean")
    whole = fid.sharded_features(files, None, ext, "clean")
    cache = tmp_path / "cache"
    merged = fid.sharded_features(files, cache, ext, "clean", shard_size=6)
    np.testing.assert_allclose(merged, whole, rtol=1e-6)
    for a, b in zip(fid.feature_stats(merged), fid.feature_stats(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    shard_files = sorted(cache.glob("feats-*.npz"))
    assert len(shard_files) == 4
    os.remove(shard_files[0])
    computed = []
    real = fid.file_features
    monkeypatch.setattr(fid, "file_features", lambda fs, *a, **k: computed.append(len(fs)) or real(fs, *a, **k))
    np.testing.assert_allclose(fid.sharded_features(files, cache, ext, "clean", shard_size=6), merged)
    assert len(computed) == 1 and len(list(cache.glob("feats-*.npz"))) == 4


def test_missing_inception_weights_name_the_file_and_the_fix():
    if os.path.exists("/tmp/inception-2015-12-05.pt"):
        pytest.skip("Inception weights are installed here")
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt.*nvlabs-fi-cdn"):
        fid.build_extractor("inception", "clean")


def _captions_json(path, n_images=12):
    images = [{"id": 100 + i, "file_name": f"COCO_val2014_{100 + i:012d}.jpg"} for i in range(n_images)]
    annotations = [{"id": k, "image_id": 100 + i, "caption": f"image {i} caption {j} "}
                   for k, (i, j) in enumerate((i, j) for i in range(n_images) for j in range(5))]
    path.write_text(__import__("json").dumps({"images": images, "annotations": annotations}))
    return path


def test_coco_plan_is_deterministic_one_caption_per_image_and_shards_partition(tmp_path):
    from eval import coco

    captions = _captions_json(tmp_path / "captions_val2014.json")
    rows = coco.sample_captions(captions, n=10, seed=0)
    assert rows == coco.sample_captions(captions, n=10, seed=0)
    assert rows != coco.sample_captions(captions, n=10, seed=1)
    assert len({r["image_id"] for r in rows}) == 10
    for r in rows:
        assert r["prompt"] == f"image {r['image_id'] - 100} caption {r['prompt'].split()[-1]}"
    parts = [coco.shard(rows, i, 3) for i in range(3)]
    assert sorted(r["prompt_id"] for p in parts for r in p) == list(range(10))
    with pytest.raises(ValueError, match="only 12"):
        coco.sample_captions(captions, n=13)
    coco.main(["plan", "--captions", str(captions), "--out", str(tmp_path / "plan"), "-n", "10"])
    assert coco.read_plan(tmp_path / "plan" / "prompts.jsonl") == rows


def test_coco_references_are_center_cropped_and_lanczos_resized(tmp_path):
    from eval import coco

    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, 20:60] = 255  # the centre square is white, the sides black
    Image.fromarray(wide).save(tmp_path / "x.jpg", quality=100)
    rows = [{"coco_file": "x.jpg"}]
    assert coco.prepare_references(rows, tmp_path, tmp_path / "refs", resolution=16) == 1
    out = np.asarray(Image.open(tmp_path / "refs" / "x.png"))
    assert out.shape == (16, 16, 3) and out.min() > 240
    assert coco.prepare_references(rows, tmp_path, tmp_path / "refs", resolution=16) == 0


def test_fid_and_kid_are_clean_fids_own_functions():
    from cleanfid.fid import frechet_distance as cleanfid_fd
    from cleanfid.fid import kernel_distance as cleanfid_kid

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(300, 16)), rng.normal(size=(200, 16)) * 1.5 + 0.2
    stats_x, stats_y = fid.feature_stats(x), fid.feature_stats(y)
    assert fid.frechet_distance(*stats_x, *stats_y) == cleanfid_fd(*stats_x, *stats_y)
    state = np.random.get_state()
    np.random.seed(7)
    expected = cleanfid_kid(x, y, num_subsets=5, max_subset_size=50)
    np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    assert fid.kernel_distance(x, y, num_subsets=5, max_subset_size=50, seed=7) == expected
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # numpy's global generator is left as it was
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_from_statistics_files_or_a_clear_refusal(tmp_path):
    gen = _folder(tmp_path / "gen", 16, 0)
    ref = _folder(tmp_path / "ref", 16, 1, shift=40)
    folder = fid.evaluate(gen, ref=str(ref), n_boot=0, cache_dir=tmp_path / "cache")
    ours = fid.make_reference_stats(ref, tmp_path / "ours.npz")
    from_ours = fid.evaluate(gen, ref=str(ours), n_boot=0, cache_dir=tmp_path / "cache")
    assert from_ours["aggregate"]["kid"]["mean"] == pytest.approx(folder["aggregate"]["kid"]["mean"], rel=1e-9)
    data = np.load(ours)
    np.savez(tmp_path / "cleanfid_kid.npz", feats=data["feats"])  # clean-fid's _kid.npz holds only the features
    from_kid = fid.evaluate(gen, ref=str(tmp_path / "cleanfid_kid.npz"), n_boot=0, cache_dir=tmp_path / "cache")
    assert from_kid["aggregate"]["fid"]["mean"] == pytest.approx(folder["aggregate"]["fid"]["mean"], rel=1e-9)
    assert from_kid["aggregate"]["kid"]["mean"] == pytest.approx(folder["aggregate"]["kid"]["mean"], rel=1e-9)
    np.savez(tmp_path / "cleanfid.npz", mu=data["mu"], sigma=data["sigma"])  # clean-fid's statistics: no features
    with pytest.raises(ValueError, match="KID needs the reference features.*--no-kid"):
        fid.evaluate(gen, ref=str(tmp_path / "cleanfid.npz"), n_boot=0, cache_dir=tmp_path / "cache")
    only_fid = fid.evaluate(gen, ref=str(tmp_path / "cleanfid.npz"), kid=False, n_boot=0, cache_dir=tmp_path / "cache")
    assert only_fid["aggregate"]["fid"]["mean"] == pytest.approx(folder["aggregate"]["fid"]["mean"], rel=1e-9)


def test_features_in_shards_merge_into_the_unsharded_statistics_and_scores(tmp_path):
    gen = _folder(tmp_path / "gen", 23, 3)
    ref = _folder(tmp_path / "ref", 20, 4, shift=30)
    (gen / "generation.json").write_text(json.dumps({"precision": "bf16 autocast, tf32 matmuls"}))
    options = dict(ref=str(ref), n_boot=5, shard_size=5, batch_size=4)
    whole = fid.evaluate(gen, cache_dir=tmp_path / "whole", **options)
    assert whole["protocol"]["generation"]["precision"].startswith("bf16")
    unsharded = fid.sharded_features([gen / f"{i:04d}.png" for i in range(23)], None, fid.build_extractor("random", "clean"),
                                     "clean", batch_size=4)
    for count in (2, 3, 6):  # 5 feature shards (the last of 3 images); 6 shards leave one empty
        paths = [tmp_path / f"k{count}" / f"{k}.json" for k in range(count)]
        parts = [fid.evaluate(gen, cache_dir=tmp_path / f"cache{count}", shard=(k, count), out=path, **options)
                 for k, path in enumerate(paths)]
        assert sum(p["n_images"] for p in parts) == 23
        feats = fid.merged_features(read_partials(paths, "fid"))
        for merged, expected in zip(fid.feature_stats(feats), fid.feature_stats(unsharded)):
            np.testing.assert_allclose(merged, expected, rtol=1e-6, atol=1e-9)
        result = fid.merge(paths)
        assert result["aggregate"] == whole["aggregate"] and result["aggregate_by_seed"] == whole["aggregate_by_seed"]
        assert result["protocol"] == whole["protocol"]
    os.remove(parts[1]["feature_files"][0])
    with pytest.raises(FileNotFoundError, match=r"features of shard \[1, 6\], is gone; score that shard again"):
        fid.merge(paths)
    with pytest.raises(ValueError, match="without --shard"):
        fid.evaluate(gen, crosscheck=True, shard=(0, 2), **options)
