"""eval.clip_score with tiny random CLIPs loaded by path (transformers) or config (open_clip)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval import clip_score
from eval.common import Sample, write_samples
from eval.tiny_models import save_tiny_clip

PROMPTS = ["a green bench and a red car", "a blue backpack and a brown cow"]


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(0)
    samples = []
    for prompt_id, prompt in enumerate(PROMPTS):
        for seed in (42, 43):
            name = f"{prompt_id}_{seed}.png"
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / name)
            samples.append(Sample(file=name, prompt=prompt, seed=seed, prompt_id=prompt_id))
    write_samples(folder, samples)
    return folder


def test_transformers_clip_score_agrees_with_torchmetrics(samples_dir, tmp_path):
    model = save_tiny_clip(tmp_path / "clip", seed=3)  # seed 3: all cosines positive on these images
    out = clip_score.evaluate(samples_dir, model=str(model), crosscheck=True)
    assert out["metric"] == "clip_score" and out["comparable_to_paper"] is False
    cosines = [row["scores"]["cosine"] for row in out["per_image"]]
    assert len(cosines) == 4 and all(c > 0 for c in cosines)
    for row in out["per_image"]:
        assert row["scores"]["clip_score"] == pytest.approx(100 * row["scores"]["cosine"])
    assert out["crosscheck"]["torchmetrics_clip_score"] == pytest.approx(100 * np.mean(cosines), rel=1e-4)
    assert out["aggregate"]["clip_score"]["n"] == 2 and set(out["aggregate_by_seed"]) == {"42", "43"}
    json.dumps(out)


def test_open_clip_model_from_a_config(samples_dir, tmp_path):
    import open_clip

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                              "head_width": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-clip-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    with pytest.raises(ValueError, match="names no weights and would be randomly initialised"):
        clip_score.evaluate(samples_dir, model="tiny-clip-test")
    out = clip_score.evaluate(samples_dir, model="tiny-clip-test", allow_random=True)  # tests only
    assert out["protocol"]["backend"] == "open_clip"
    assert all(-100 <= row["scores"]["clip_score"] <= 100 for row in out["per_image"])
    assert 0 <= out["aggregate"]["clip_score"]["mean"] <= 100


def test_missing_weights_say_what_to_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download openai/clip-vit-base-patch32"):
        clip_score.ClipEmbedder("openai/clip-vit-base-patch32")
    with pytest.raises(FileNotFoundError, match="ViT-B-32/openai are not cached"):
        clip_score.ClipEmbedder("ViT-B-32", pretrained="openai")


@pytest.mark.parametrize("seed", [11, 8])  # 11: cosines of both signs, positive mean; 8: negative mean
def test_the_clamp_applies_to_the_mean_as_in_torchmetrics(samples_dir, tmp_path, seed):
    model = save_tiny_clip(tmp_path / "clip", seed=seed)
    out = clip_score.evaluate(samples_dir, model=str(model), crosscheck=True)
    cosines = [row["scores"]["cosine"] for row in out["per_image"]]
    assert min(cosines) < 0
    assert out["aggregate"]["clip_score"]["mean"] == pytest.approx(out["crosscheck"]["torchmetrics_clip_score"],
                                                                   abs=1e-4)
    assert out["aggregate"]["clip_score"]["mean"] == pytest.approx(max(100 * np.mean(cosines), 0.0), abs=1e-9)
    assert all(v["clip_score"]["mean"] >= 0 for v in out["aggregate_by_seed"].values())


def test_no_metric_of_the_grid_runs_on_random_clip_weights():
    from ablations.grid import registry

    metrics = registry("metrics")
    for name, model, pretrained in (("t2i_compbench", metrics["t2i_compbench"]["options"].get("clip"),
                                     metrics["t2i_compbench"]["options"].get("clip_pretrained")),
                                    ("clip_score", metrics["clip_score"]["options"].get("model", clip_score.weights.CLIP_B32),
                                     metrics["clip_score"]["options"].get("pretrained"))):
        assert (model, pretrained) in clip_score.PAPER_MODELS, (name, model, pretrained)
    with pytest.raises(ValueError, match="--pretrained openai"):
        clip_score.ClipEmbedder("ViT-B-32")
    with pytest.raises(SystemExit):
        clip_score.main([str(Path(__file__).parent), "--model", "ViT-B-32"])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_scoring_in_shards_merges_into_the_unsharded_result(samples_dir, tmp_path, batch_size):
    model = str(save_tiny_clip(tmp_path / "clip", seed=11))
    whole = clip_score.evaluate(samples_dir, model=model, batch_size=batch_size)
    for count in (2, 3):
        paths = [tmp_path / f"k{count}" / f"{k}.json" for k in range(count)]
        parts = [clip_score.evaluate(samples_dir, model=model, batch_size=batch_size, shard=(k, count), out=path)
                 for k, path in enumerate(paths)]
        assert sum(len(p["per_image"]) for p in parts) == 4
        merged = clip_score.merge(paths)
        assert merged["per_image"] == whole["per_image"] and merged["per_prompt"] == whole["per_prompt"]
        for aggregates, expected in ((merged["aggregate"], whole["aggregate"]),
                                     *zip(merged["aggregate_by_seed"].values(), whole["aggregate_by_seed"].values())):
            for name, value in expected.items():
                for key in ("mean", "ci_low", "ci_high"):
                    assert aggregates[name][key] == pytest.approx(value[key], abs=1e-12)
        assert merged == json.loads(json.dumps(whole))
    with pytest.raises(ValueError, match="without --shard"):
        clip_score.evaluate(samples_dir, model=model, crosscheck=True, shard=(0, 2))
    clip_score.main([str(samples_dir), "--model", model, "--batch-size", str(batch_size), "--shard", "0/2", "--out",
                     str(tmp_path / "c0.json")])
    clip_score.main([str(samples_dir), "--model", model, "--batch-size", str(batch_size), "--shard", "1/2", "--out",
                     str(tmp_path / "c1.json")])
    clip_score.main(["merge", str(tmp_path / "c0.json"), str(tmp_path / "c1.json"), "--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["aggregate"] == whole["aggregate"]
    with pytest.raises(SystemExit):  # shards of another split (batch size) do not merge
        clip_score.main(["merge", str(tmp_path / "c0.json"), str(paths[1]), "--out", str(tmp_path / "bad.json")])
