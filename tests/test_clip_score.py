"""eval.clip_score with tiny random CLIPs loaded by path (transformers) or config (open_clip)."""
import json

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
        assert row["scores"]["clip_score"] == pytest.approx(100 * max(row["scores"]["cosine"], 0))
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
    out = clip_score.evaluate(samples_dir, model="tiny-clip-test")
    assert out["protocol"]["backend"] == "open_clip"
    assert all(0 <= row["scores"]["clip_score"] <= 100 for row in out["per_image"])


def test_missing_weights_say_what_to_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download openai/clip-vit-base-patch32"):
        clip_score.ClipEmbedder("openai/clip-vit-base-patch32")
    with pytest.raises(FileNotFoundError, match="ViT-B-32/openai are not cached"):
        clip_score.ClipEmbedder("ViT-B-32", pretrained="openai")
