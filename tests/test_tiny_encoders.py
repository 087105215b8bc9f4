"""The tiny trained text encoders (gentron.text.pretrain): trained once per recipe into a folder that
loads through build_text_encoder as real weights do, cached, resumable bit-identically, deterministic."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gentron.errors import ConfigError
from gentron.text import build_text_encoder
from gentron.text.pretrain import (
    EncoderRecipe,
    encoder_spec,
    ensure_trained,
    load_recipe,
    random_spans_mask,
    span_corrupt,
)

TINY = {"width": 16, "layers": 1, "heads": 2, "steps": 6, "batch_size": 8, "num_pairs": 24, "ckpt_every": 2,
        "warmup_steps": 2}
OBJECTIVES = ["clip_contrastive", "t5_span"]


def recipe(objective: str, **overrides) -> EncoderRecipe:
    return load_recipe({"objective": objective, **TINY, **overrides})


def weights(folder) -> dict[str, torch.Tensor]:
    files = list(folder.glob("*.safetensors"))
    assert len(files) == 1, files
    return load_file(str(files[0]))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_trained_encoder_loads_as_real_weights(tmp_path, objective):
    r = recipe(objective)
    folder = ensure_trained(r, tmp_path)
    assert folder == tmp_path / r.folder_name() and folder.is_dir()
    assert not list(tmp_path.glob("*.partial")), "the partial folder is renamed into place"
    assert not list(folder.glob("checkpoint*")), "the resume checkpoint does not ship with the weights"
    saved = json.loads((folder / "recipe.json").read_text())
    assert saved["objective"] == objective and saved["steps"] == 6
    history = json.loads((folder / "training.json").read_text())["history"]
    assert history[-1]["step"] == 6

    spec = encoder_spec(r, tmp_path)
    assert spec["kind"] == ("clip" if objective == "clip_contrastive" else "t5")
    encoder = build_text_encoder(spec)
    emb = encoder.encode(["a red circle and a blue square", "a green diamond", ""])
    assert emb.tokens.shape[0] == 3 and emb.tokens.shape[2] == 16 == encoder.width
    assert emb.mask[0].sum() > emb.mask[1].sum() >= emb.mask[2].sum() >= 1
    assert torch.isfinite(emb.tokens).all() and torch.isfinite(emb.pooled).all()
    assert not any(p.requires_grad for p in encoder.parameters()), "frozen"
    # the encoder runs the trained weights, not a fresh initialisation
    stored = weights(folder)
    if objective == "clip_contrastive":
        assert torch.equal(encoder.token_embedding.weight, stored["token_embedding.weight"])
        assert encoder.pool == "eot" and encoder.attn_mask is not None  # CLIP's causal tower, EOT pooled
    else:
        assert torch.equal(encoder.model.shared.weight, stored["shared.weight"])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_training_changes_the_weights_and_lowers_the_loss(tmp_path, objective):
    r = recipe(objective, steps=60, lr=3e-3, warmup_steps=5)
    folder = ensure_trained(r, tmp_path)
    history = json.loads((folder / "training.json").read_text())["history"]
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_cached_resumed_and_deterministic(tmp_path, objective):
    r = recipe(objective)
    whole = ensure_trained(r, tmp_path / "a")
    stamp = {p.name: p.stat().st_mtime_ns for p in whole.iterdir()}
    assert ensure_trained(r, tmp_path / "a") == whole
    assert {p.name: p.stat().st_mtime_ns for p in whole.iterdir()} == stamp, "a finished recipe is reused"

    # the same recipe elsewhere: bit-identical weights
    again = ensure_trained(r, tmp_path / "b")
    a, b = weights(whole), weights(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # interrupted after 3 of 6 steps (a checkpoint is left in the partial folder), then resumed
    assert ensure_trained(r, tmp_path / "c", stop_after=3) is None
    partial = tmp_path / "c" / (r.folder_name() + ".partial")
    assert torch.load(partial / "checkpoint.pt", weights_only=False)["step"] == 3
    resumed = ensure_trained(r, tmp_path / "c")
    c = weights(resumed)
    assert all(torch.equal(a[k], c[k]) for k in a), "resuming ends where an uninterrupted run ends"

    # another seed is another encoder, in another folder
    other = ensure_trained(recipe(objective, seed=1), tmp_path / "a")
    assert other != whole
    d = weights(other)
    assert any(not torch.equal(a[k], d[k]) for k in a)


def test_recipe_key_follows_every_field():
    base = EncoderRecipe()
    assert base.key() == EncoderRecipe().key()
    assert len({base.key(), EncoderRecipe(seed=1).key(), EncoderRecipe(steps=999).key(),
                EncoderRecipe(objective="t5_span").key()}) == 4


def test_bad_recipes_are_refused():
    with pytest.raises(ConfigError, match="unknown config key 'recipe.stpes'; did you mean 'recipe.steps'"):
        load_recipe({"objective": "clip_contrastive", "stpes": 3})
    with pytest.raises(ConfigError, match="objective"):
        load_recipe({"objective": "bert"})
    with pytest.raises(ConfigError, match="multiple of heads"):
        load_recipe({"width": 30, "heads": 4})
    with pytest.raises(ConfigError, match="recipe.steps=2.5 must be of type int"):
        load_recipe({"steps": 2.5})
    with pytest.raises(ConfigError, match="noise_density"):
        load_recipe({"objective": "t5_span", "noise_density": 1.0})


@pytest.mark.parametrize("length", [3, 10, 31, 50])
def test_span_corruption_hides_spans_and_keeps_everything(length):
    generator = torch.Generator().manual_seed(length)
    ids = list(range(10, 10 + length))
    mask = random_spans_mask(length, 0.15, 8.0, generator)
    assert mask.sum() == min(max(round(length * 0.15), 1), length - 1)
    assert not mask[0], "T5's masks start with kept tokens"
    sentinels, eos = [900, 901, 902, 903], 1
    source, target = span_corrupt(ids, mask, sentinels, eos)
    spans = int(np.sum(mask[1:] & ~mask[:-1]) + mask[0])
    assert source.count(900) == 1 and sum(s in source for s in sentinels) == spans
    assert source[-1] == eos and target[-1] == eos
    # putting the spans back into the input gives the caption again
    pieces, current = {}, None
    for token in target[:-1]:
        if token in sentinels:
            current = token
            pieces[current] = []
        else:
            pieces[current].append(token)
    rebuilt = [t for token in source[:-1] for t in (pieces[token] if token in sentinels else [token])]
    assert rebuilt == ids
